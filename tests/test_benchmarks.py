"""The overhead benchmark: its smoke run passes its own correctness checks, and the checks catch a wrong mask."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"


@pytest.fixture(scope="module")
def overhead():
    spec = importlib.util.spec_from_file_location("hookprune_benchmark_overhead", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    sys.path.insert(0, str(PATH.parent))  # as `python benchmarks/overhead.py` has it, for its `machine` module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(PATH.parent))
        sys.modules.pop("machine", None)
        del sys.modules[spec.name]


def table_row(out: str, model: str, variant: str) -> list[str]:
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 3 and cells[1] == model and cells[2] == variant:
            return cells
    raise AssertionError(f"no row for {model} / {variant} in:\n{out}")


def test_quick_run_passes_its_checks_and_reports_the_bytes_each_variant_holds(overhead, capsys):
    assert overhead.main(["--quick", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Correctness problems" not in out
    # bytes held beyond the plain loop, per masked element: hookprune's bool mask plus the float copy it
    # keeps for small masks (LeNet fits the 1 MiB budget whole); a float mask, the recomputed weight and
    # the bool mask custom_from_mask keeps; the sparsifier's float mask; Distiller's float mask
    held = {variant: table_row(out, "lenet300_100", variant)[5] for variant in overhead.VARIANTS[1:]}
    assert held == {"hookprune": "5.00", "hookprune masks only": "5.00", "torch.nn.utils.prune": "9.00",
                    "torch.ao.pruning": "4.00", "distiller float masks": "4.00"}
    assert "| 5 | active |" in out and "| 20 | inactive |" in out


def test_sparsity_check_reports_a_revived_weight_and_a_wrong_count(overhead):
    work = overhead.make_workload("lenet300_100", torch.device("cpu"))
    variants, masks = overhead.build_variants(work)
    for variant in variants:
        variant.step()
    sparsity = overhead.target_sparsity()
    assert overhead.sparsity_problems(variants, masks, sparsity) == []
    distiller = next(v for v in variants if v.name == "distiller float masks")
    pruned = (~masks["fc2.weight"]).nonzero()[0].tolist()
    with torch.no_grad():
        distiller.model.fc2.weight[tuple(pruned)] = 1.0
    zeroed = int((~masks["fc2.weight"]).sum())
    assert overhead.sparsity_problems(variants, masks, sparsity) == [
        f"lenet300_100 distiller float masks: fc2.weight differs from its mask at 1 elements ({zeroed - 1} zeros, "
        f"the mask {zeroed})"]
    assert overhead.sparsity_problems([], masks, 0.5)[0].startswith("the mask of fc1.weight zeroes ")


def test_held_bytes_counts_each_storage_once(overhead):
    weight = torch.zeros(100)
    holder = {"a": weight, "b": weight[:10], "c": [torch.zeros(25, dtype=torch.bool)]}
    assert overhead.held_bytes([holder]) == 400 + 25


INFERENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "inference.py"


def test_inference_benchmark_quick_run_reports_every_variant_on_both_runtimes(capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    spec = importlib.util.spec_from_file_location("hookprune_benchmark_inference", INFERENCE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    sys.path.insert(0, str(INFERENCE.parent))
    try:
        spec.loader.exec_module(module)
        assert module.main(["--quick", "--cpu-only"]) == 0
    finally:
        sys.path.remove(str(INFERENCE.parent))
        sys.modules.pop("machine", None)
        del sys.modules[spec.name]
    out = capsys.readouterr().out
    assert "latency, batch 32 (ms)" in out and "with 1 threads" in out
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| lenet300_100 |")]
    sizes = {(cells[1], cells[3]): int(cells[6].replace(",", "")) for cells in rows}
    assert set(sizes) == {(v, r) for v in module.VARIANTS for r in ("PyTorch", "ONNX Runtime")}
    # thinning keeps 30% of fc2's and fc3's inputs; int8 stores a byte a weight
    for runtime in ("PyTorch", "ONNX Runtime"):
        assert sizes["thinned", runtime] < 0.35 * sizes["dense", runtime]
        assert sizes["int8", runtime] < 0.3 * sizes["dense", runtime]
        assert sizes["thinned+int8", runtime] < 0.12 * sizes["dense", runtime]
