"""What compression buys at inference: latency and model size of dense, thinned, int8 and thinned+int8 models,
on the CPU with PyTorch and with ONNX Runtime, side by side in one run; 2:4 sparse against dense on a GPU.

For each of LeNet-300-100 (784 inputs), SimpleNet-MNIST (1x28x28) and ResNet-20 (3x32x32), with random weights
(seed 0; nothing is downloaded), four variants are built in the script itself:

- **dense**: the float model;
- **thinned**: L1-ranked structured pruning (LeNet: 70% of the inputs of fc2 and fc3, ``group_type: Rows``;
  SimpleNet: 70% of the filters of conv1 and conv2; ResNet-20: 50% of the filters of every block's first
  convolution), one pruning step through a hookprune schedule, then thinning (``remove_channels`` /
  ``remove_filters``) removes the zero structures for good;
- **int8**: the BatchNorms folded into their convolutions (``torch.fx.experimental.optimization.fuse``, as
  Distiller's post-training quantization folds them), then ``PostTrainLinearQuantizer`` (8 bits, symmetric,
  per-channel weights) calibrated on 4 random batches,
  then in PyTorch ``hookprune.deploy.convert_to_pytorch`` (torch's quantized modules, the x86 engine) and in
  ONNX Runtime the QDQ file of ``hookprune.deploy.export_onnx`` (which ONNX Runtime fuses into integer kernels);
- **thinned+int8**: both.

Latency is the median of the repeats of one forward pass on a batch (``--batch``, default 32), after warm-up,
with torch and ONNX Runtime on the same number of threads (``--threads``, default 1); the variants of a model are
timed in interleaved rounds. Size is the bytes of the saved file: ``torch.save`` of the state dict (the int8
model's holds its packed int8 weights) and the ONNX file. On a CUDA GPU of compute capability 8.0 or later, a
feed-forward block (4096 -> 16384 -> 4096, float16, 8192 rows) is pruned 2:4 by ``NMSparsityPruner`` and timed
dense against ``torch.sparse.to_sparse_semi_structured`` weights.

    python benchmarks/inference.py               # the three models; about three minutes on a 2-core CPU
    python benchmarks/inference.py --quick       # LeNet-300-100 only, few repeats: a smoke test
    python benchmarks/inference.py --batch 1 --threads 2 --repeats 200
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

import hookprune
from hookprune import models
from hookprune.deploy import convert_to_pytorch, export_onnx, onnx_session, to_semi_structured, unsupported_reason
from hookprune.quantization import PostTrainLinearQuantizer
from hookprune.thinning import remove_channels, remove_filters

from machine import header, load_average, synchronize

VARIANTS = ("dense", "thinned", "int8", "thinned+int8")
#: architecture -> (input shape, pruner settings, thinning function)
MODELS: dict[str, tuple[tuple[int, ...], dict[str, Any], Callable[..., Any]]] = {
    "lenet300_100": ((784,), {"group_type": "Rows", "desired_sparsity": 0.7, "weights": ["fc2.weight", "fc3.weight"]},
                     remove_channels),
    "simplenet_mnist": ((1, 28, 28), {"group_type": "Filters", "desired_sparsity": 0.7,
                                      "weights": ["conv1.weight", "conv2.weight"]}, remove_filters),
    "resnet20_cifar": ((3, 32, 32), {"group_type": "Filters", "desired_sparsity": 0.5,
                                     "weights": [f"layer{s}.{b}.conv1.weight" for s in (1, 2, 3) for b in range(3)]},
                       remove_filters),
}
INT8_WARNING = "torch.quantize_per_tensor"


@dataclass
class Variant:
    """One variant of a model: its runners by runtime, its file sizes, its latencies."""

    name: str
    runners: dict[str, Callable[[torch.Tensor], Any]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=dict)
    params: int = 0


def thinned(model: nn.Module, arch: str) -> nn.Module:
    """``model`` pruned by one step of the script's structured schedule for ``arch``, then thinned."""
    shape, pruner, thin = MODELS[arch]
    model = copy.deepcopy(model)
    schedule = {"pruners": {"structure": {"class": "L1RankedStructureParameterPruner", **pruner}},
                "policies": [{"pruner": {"instance_name": "structure"}, "epochs": [0]}]}
    sched = hookprune.load(schedule, model)
    sched.fire("on_epoch_begin", epoch=0)
    sched.fire("on_minibatch_begin", epoch=0, minibatch_id=0, minibatches_per_epoch=1)
    thin(model, torch.zeros(2, *shape), sched.masks)
    return model.eval()


def post_trained(model: nn.Module, shape: tuple[int, ...]) -> tuple[nn.Module, PostTrainLinearQuantizer]:
    """``model`` with its BatchNorms folded into the convolutions before them, post-training quantized."""
    model = fuse(copy.deepcopy(model))
    quantizer = PostTrainLinearQuantizer(model, per_channel_wts=True)
    generator = torch.Generator().manual_seed(1)
    quantizer.calibrate([torch.rand(16, *shape, generator=generator) for _ in range(4)])
    quantizer.prepare_model()
    return model.eval(), quantizer


def saved_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def build_variants(arch: str, folder: Path, example: torch.Tensor, threads: int) -> list[Variant]:
    """The four variants of ``arch`` with their PyTorch and ONNX Runtime runners and file sizes."""
    shape = MODELS[arch][0]
    torch.manual_seed(0)
    dense = models.create_model(arch, **({"input_features": 784} if arch == "lenet300_100" else {})).eval()
    floats = {"dense": dense, "thinned": thinned(dense, arch)}
    variants = []
    for name in VARIANTS:
        base = floats[name.split("+")[0] if name != "int8" else "dense"]
        variant = Variant(name, params=sum(p.numel() for p in base.parameters()))
        path = folder / f"{arch}.{name}.onnx"
        if name.endswith("int8"):
            quantized, quantizer = post_trained(base, shape)
            export_onnx(quantized, path, example, quantizer=quantizer, check=False)
            pytorch = convert_to_pytorch(quantized, quantizer)
        else:
            export_onnx(base, path, example, check=False)
            pytorch = base
        variant.runners["PyTorch"] = pytorch
        variant.sizes["PyTorch"] = saved_bytes(pytorch)
        session = onnx_session(path, threads)
        input_name = session.get_inputs()[0].name
        variant.runners["ONNX Runtime"] = lambda x, s=session, n=input_name: s.run(None, {n: x.numpy()})
        variant.sizes["ONNX Runtime"] = path.stat().st_size
        variants.append(variant)
    return variants


def time_variants(variants: list[Variant], x: torch.Tensor, repeats: int, rounds: int) -> None:
    """Median-ready timings: ``rounds`` interleaved rounds of ``repeats // rounds`` calls per variant and runtime."""
    with torch.inference_mode():
        for variant in variants:
            for runtime, run in variant.runners.items():
                for _ in range(3):
                    run(x)
                variant.times[runtime] = []
        per_round = max(1, repeats // rounds)
        for _ in range(rounds):
            for variant in variants:
                for runtime, run in variant.runners.items():
                    for _ in range(per_round):
                        tic = time.perf_counter()
                        run(x)
                        variant.times[runtime].append(time.perf_counter() - tic)


def cpu_table(arch_variants: dict[str, list[Variant]], batch: int) -> list[str]:
    lines = [f"| model | variant | parameters | runtime | latency, batch {batch} (ms) | vs dense | size (bytes) "
             "| vs dense |", "|---|---|---:|---|---:|---:|---:|---:|"]
    for arch, variants in arch_variants.items():
        dense = variants[0]
        for runtime in ("PyTorch", "ONNX Runtime"):
            base_time = statistics.median(dense.times[runtime])
            for variant in variants:
                latency = statistics.median(variant.times[runtime])
                lines.append(f"| {arch} | {variant.name} | {variant.params:,} | {runtime} | {1e3 * latency:.3f} | "
                             f"{latency / base_time:.2f}x | {variant.sizes[runtime]:,} | "
                             f"{variant.sizes[runtime] / dense.sizes[runtime]:.2f}x |")
    return lines


def gpu_semi_structured(repeats: int) -> list[str]:
    """Dense against 2:4 semi-structured weights for a float16 feed-forward block on the GPU."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4096, 16384), nn.ReLU(), nn.Linear(16384, 4096)).half().to(device).eval()
    schedule = {"pruners": {"nm": {"class": "NMSparsityPruner", "n": 2, "m": 4, "weights": ["0.weight", "2.weight"]}},
                "policies": [{"pruner": {"instance_name": "nm"}, "epochs": [0]}]}
    sched = hookprune.load(schedule, block)
    sched.fire("on_epoch_begin", epoch=0)
    sched.fire("on_minibatch_begin", epoch=0, minibatch_id=0, minibatches_per_epoch=1)
    x = torch.randn(8192, 4096, device=device, dtype=torch.float16)
    sparse = copy.deepcopy(block)
    skipped = {name: why for name, why in to_semi_structured(sparse).items() if why}
    results = {}
    with torch.inference_mode():
        expected = block(x)
        error = float((sparse(x) - expected).abs().max() / expected.abs().max())
        for name, model in (("dense (2:4 zeros stored)", block), ("2:4 semi-structured", sparse)):
            for _ in range(5):
                model(x)
            times = []
            for _ in range(repeats):
                synchronize(device)
                tic = time.perf_counter()
                model(x)
                synchronize(device)
                times.append(time.perf_counter() - tic)
            results[name] = statistics.median(times)
    base = results["dense (2:4 zeros stored)"]
    lines = ["| GPU block | weights | latency, 8192 rows (ms) | vs dense |", "|---|---|---:|---:|"]
    for name, latency in results.items():
        lines.append(f"| Linear 4096-16384-4096, float16 | {name} | {1e3 * latency:.3f} | {latency / base:.2f}x |")
    lines.append("")
    lines.append(f"Largest difference of the 2:4 output from dense, relative to its largest value: {error:.1e}"
                 + (f"; left dense: {skipped}" if skipped else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    """Build the variants, time them, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="inputs per forward pass")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and ONNX Runtime")
    parser.add_argument("--repeats", type=int, default=100, help="timed forward passes per variant and runtime")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="architectures (default: all three)")
    parser.add_argument("--quick", action="store_true", help="LeNet-300-100 only, 10 repeats, no GPU part")
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU part even when a GPU is present")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.threads < 1 or args.repeats < 1:
        parser.error("--batch, --threads and --repeats must be >= 1")
    archs = ["lenet300_100"] if args.quick else (args.models or list(MODELS))
    repeats = 10 if args.quick else args.repeats
    torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available() and not args.cpu_only and not args.quick
    gpu_reason = unsupported_reason("cuda") if gpu else None
    load_before = load_average()
    results: dict[str, list[Variant]] = {}
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:
        warnings.filterwarnings("ignore", INT8_WARNING, UserWarning)
        for arch in archs:
            x = torch.rand(args.batch, *MODELS[arch][0], generator=torch.Generator().manual_seed(2))
            variants = build_variants(arch, Path(folder), x, args.threads)
            time_variants(variants, x, repeats, rounds=5)
            results[arch] = variants
    gpu_lines = gpu_semi_structured(repeats) if gpu and gpu_reason is None else []
    load_after = load_average()
    print("\n".join(header(gpu)))
    print(f"Load average (1 min) before / after: {load_before:.1f} / {load_after:.1f}; median of {repeats} forward "
          f"passes; quantized engine {torch.backends.quantized.engine}; random weights (seed 0)  ")
    print()
    print("\n".join(cpu_table(results, args.batch)))
    if gpu_lines:
        print()
        print("\n".join(gpu_lines))
    elif gpu_reason is not None:
        print()
        print(f"GPU part skipped: {gpu_reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
