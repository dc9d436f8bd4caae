"""Measure what hookprune adds to training: time per step, memory per masked element, event dispatch,
and the time of one AGP mask recomputation, each against its baselines in the same run.

1. **step**: one training step (forward, backward, SGD with momentum and weight decay) of the same
   model on the same minibatches, masked with the same masks (those hookprune's AGP pruner computes)
   five ways: the plain loop without masks; hookprune, firing the events as the example application
   does (and, to split its cost, the plain loop followed by hookprune's re-masking alone, no events);
   ``torch.nn.utils.prune.custom_from_mask`` (a forward pre-hook recomputes ``weight`` from
   ``weight_orig * weight_mask``); ``torch.ao.pruning.WeightNormSparsifier`` (its ``FakeSparsity``
   parametrization multiplies the weight by the sparsifier's mask at every access, the masks written
   into the buffers its ``step()`` fills); and float masks multiplied into each parameter separately
   after each optimizer step, as Distiller did. The variants run in interleaved blocks, the order
   rotating every round, after a warm-up; the median time per step is reported with its ratio to
   the plain loop. Afterwards every masked variant's effective weights must be zero exactly where
   the mask says, ``int(sparsity * numel)`` per layer.
2. **memory**: the bytes of every tensor a variant holds (model, optimizer, its masks and hooks:
   each tensor reachable from them, counted once per storage, gradients included) minus the plain
   loop's, per masked element; on CUDA also the peak of ``torch.cuda.max_memory_allocated`` over a
   few steps, minus the plain loop's.
3. **dispatch**: the time ``scheduler.fire`` takes per minibatch event with 0, 1, 5 and 20 no-op
   schedule instances, in an epoch where they are active and in one where they are not.
4. **agp**: one AGP step (every listed weight's mask recomputed, through ``on_epoch_begin``) on a
   GPT-style transformer of about 150M parameters against ``torch.kthvalue`` per layer, which finds
   only each layer's threshold. Both must agree on it and hookprune must zero exactly ``k`` elements.

LeNet-300-100 (minibatch 32x64) and ResNet-20 (32x3x32x32) run on the CPU; ResNet-50 (32x3x224x224)
and the transformer (8 sequences of 512 tokens) train on CUDA when it is available. Every variant's
loop has the example application's order (forward, loss, ``zero_grad``, backward, step); hookprune's
masks are computed once, before the timed steps, at an epoch inside the AGP window, so its steps are
those of a pruning epoch. Installed hook plugins (entry point group ``hookprune``) are left out unless
``--with-plugins`` is given. The exit status is 1 when a correctness check fails.

    python benchmarks/overhead.py                  # everything; about two minutes on a 2-core CPU
    python benchmarks/overhead.py --quick          # LeNet only, few rounds, a small transformer: a smoke test
    python benchmarks/overhead.py --device cpu --repeat 50 --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.pruning import WeightNormSparsifier
from torch.nn.utils import prune

import hookprune
from hookprune import hookimpl, models
from hookprune._engine.masks import FLOAT_MULTIPLIER_BYTES
from hookprune._engine.registry import DISABLE_AUTOLOAD_ENV, autoloaded_plugins
from hookprune.compat.distiller import CompressionScheduler
from hookprune.pruning.levels import agp_target

from machine import header, load_average, synchronize

VARIANTS = ("plain", "hookprune", "hookprune masks only", "torch.nn.utils.prune", "torch.ao.pruning",
            "distiller float masks")
#: the AGP schedule every masked variant's masks come from: epoch EPOCH of a 0..10 window
INITIAL_SPARSITY, FINAL_SPARSITY, START, END, EPOCH = 0.05, 0.9, 0, 10, 6
MINIBATCHES_PER_EPOCH = 1000
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4
#: how long one timed block of steps of one variant lasts, roughly
BLOCK_SECONDS = 0.05
DISPATCH_EVENTS = ("on_minibatch_begin", "before_backward", "before_optimizer_step", "on_minibatch_end")
GOAL_STEP_RATIO, GOAL_DISPATCH_US, GOAL_AGP_CUDA_MS = 1.03, 10.0, 20.0


# -- models -----------------------------------------------------------------------------------

class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused query/key/value projection, as in GPT-2."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over earlier positions only; ``x`` is ``(batch, sequence, width)``."""
        batch, length, width = x.shape
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2)
                   for t in self.qkv(x).split(width, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """A pre-norm transformer block: attention, then a 4x-wide GELU MLP, each added to the residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One block over ``(batch, sequence, width)``."""
        x = x + self.attn(self.ln_1(x))
        return x + self.out(F.gelu(self.fc(self.ln_2(x))))


class GPT(nn.Module):
    """A GPT-2-style decoder with the output projection tied to the token embedding.

    The default (width 768, 16 blocks, GPT-2's vocabulary of 50257 tokens, 1024 positions) has about
    153M parameters, 113M of them in the blocks' linear weights.
    """

    def __init__(self, vocab: int = 50257, context: int = 1024, width: int = 768, depth: int = 16,
                 heads: int = 12) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.wte.weight
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(batch, sequence, vocab)`` for token ids ``(batch, sequence)``."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def block_weights(model: GPT) -> list[str]:
    """The names of the transformer blocks' linear weights: what LLM pruning usually prunes."""
    return [name for name, p in model.named_parameters() if name.startswith("blocks.") and p.dim() == 2]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of next-token logits ``(batch, sequence, vocab)`` against ``(batch, sequence)``."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@dataclass
class Workload:
    """One model on one device, its minibatches, its loss, and the weights the schedule prunes."""

    name: str
    device: torch.device
    model: nn.Module
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    weights: list[str]

    @property
    def masked_elements(self) -> int:
        """How many elements the masks cover."""
        params = dict(self.model.named_parameters())
        return sum(params[name].numel() for name in self.weights)


def image_batches(shape: tuple[int, ...], classes: int, count: int, device: torch.device,
                  seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` random minibatches of inputs shaped ``shape`` with labels below ``classes``."""
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(shape, generator=gen), torch.randint(0, classes, shape[:1], generator=gen))
               for _ in range(count)]
    return [(x.to(device), y.to(device)) for x, y in batches]


def make_workload(name: str, device: torch.device, quick: bool = False) -> Workload:
    """Build workload ``name`` (lenet300_100, resnet20_cifar, resnet50 or gpt) on ``device``."""
    torch.manual_seed(0)
    if name == "lenet300_100":
        model = models.create_model("lenet300_100", input_features=64)
        batches = image_batches((32, 64), 10, 4, device, seed=1)
        weights = ["fc1.weight", "fc2.weight", "fc3.weight"]
        criterion = F.cross_entropy
    elif name in ("resnet20_cifar", "resnet50"):
        model = models.create_model(name)
        size = 32 if name == "resnet20_cifar" else 224
        batches = image_batches((32, 3, size, size), 10 if name == "resnet20_cifar" else 1000, 4, device, seed=1)
        weights = [n for n, p in model.named_parameters() if p.dim() > 1]
        criterion = F.cross_entropy
    elif name == "gpt":
        model = GPT(vocab=1000, context=64, width=64, depth=2, heads=4) if quick else GPT()
        gen = torch.Generator().manual_seed(1)
        vocab, length = model.wte.num_embeddings, min(512, model.wpe.num_embeddings)
        batches = []
        for _ in range(4):
            tokens = torch.randint(0, vocab, (8, length + 1), generator=gen).to(device)
            batches.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))
        weights = block_weights(model)
        criterion = lm_loss
    else:
        raise ValueError(f"unknown workload {name!r}")
    return Workload(name, device, model.to(device), batches, criterion, weights)


def agp_schedule(weights: list[str]) -> dict[str, Any]:
    """The AGP schedule of every masked variant: ``weights`` from 5% to 90% over epochs 0..9."""
    return {
        "version": 1,
        "pruners": {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": INITIAL_SPARSITY,
                            "final_sparsity": FINAL_SPARSITY, "weights": list(weights)}},
        "policies": [{"pruner": {"instance_name": "agp"}, "starting_epoch": START, "ending_epoch": END,
                      "frequency": 1}],
    }


def target_sparsity() -> float:
    """The AGP level at the epoch the benchmark trains in."""
    return agp_target(INITIAL_SPARSITY, FINAL_SPARSITY, START, END, 1, EPOCH)


# -- the variants -----------------------------------------------------------------------------

def sgd(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer every variant uses: SGD with momentum and weight decay."""
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def submodule(model: nn.Module, param_name: str) -> tuple[nn.Module, str]:
    """The module holding parameter ``param_name``, and the parameter's attribute name there."""
    module_name, _, attr = param_name.rpartition(".")
    return model.get_submodule(module_name), attr


class Variant:
    """One way of training the workload's model: a private copy of it, its optimizer, one step."""

    name = "plain"

    def __init__(self, work: Workload, masks: dict[str, torch.Tensor]) -> None:
        self.work = work
        self.model = copy.deepcopy(work.model)
        self.prepare(masks)
        self.optimizer = sgd(self.model)
        self.start(masks)
        self.batch = 0

    def prepare(self, masks: dict[str, torch.Tensor]) -> None:
        """Change the model before its optimizer exists (reparametrizations)."""

    def start(self, masks: dict[str, torch.Tensor]) -> None:
        """Set up what needs the optimizer."""

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next of the workload's minibatches, in the same order for every variant."""
        x, y = self.work.batches[self.batch % len(self.work.batches)]
        self.batch += 1
        return x, y

    def step(self) -> None:
        """One training step, in the example application's order (``zero_grad`` after the forward pass)."""
        x, y = self.next_batch()
        loss = self.work.criterion(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def effective_weights(self) -> dict[str, torch.Tensor]:
        """The weights the next forward pass uses, by the workload's parameter names."""
        params = dict(self.model.named_parameters())
        return {name: params[name].detach() for name in self.work.weights}

    def roots(self) -> list[Any]:
        """The objects whose tensors make up this variant's memory."""
        return [self.model, self.optimizer]


class Hookprune(Variant):
    """hookprune with the AGP schedule, events fired as the example application fires them."""

    name = "hookprune"

    def start(self, masks: dict[str, torch.Tensor]) -> None:
        """Load the schedule and compute the masks of epoch ``EPOCH``."""
        self.sched = hookprune.load(agp_schedule(self.work.weights), self.model, self.optimizer)
        self.sched.fire("on_epoch_begin", epoch=EPOCH)

    def step(self) -> None:
        """One training step with the four minibatch events (written out: ``hookprune.testing.train`` runs whole
        epochs, whose ``on_epoch_begin`` recomputes the masks, and keeps every loss)."""
        x, y = self.next_batch()
        sched = self.sched
        step = {"epoch": EPOCH, "minibatch_id": self.batch % MINIBATCHES_PER_EPOCH,
                "minibatches_per_epoch": MINIBATCHES_PER_EPOCH}
        sched.fire("on_minibatch_begin", **step)
        loss = sched.fire("before_backward", **step, loss=self.work.criterion(self.model(x), y))
        self.optimizer.zero_grad()
        loss.backward()
        sched.fire("before_optimizer_step", **step)
        self.optimizer.step()
        sched.fire("on_minibatch_end", **step)

    def roots(self) -> list[Any]:
        """The model, the optimizer and the scheduler (masks, plugin manager, pruner)."""
        return [self.model, self.optimizer, self.sched]


class HookpruneMasksOnly(Variant):
    """The plain loop and hookprune's re-masking after each step (``mask_all_weights(is_forward=False)``),
    no events: what the fused multiply costs alone."""

    name = "hookprune masks only"

    def start(self, masks: dict[str, torch.Tensor]) -> None:
        """A scheduler holding the masks, applied once."""
        self.sched = CompressionScheduler(self.model)
        for name in self.work.weights:
            self.sched.masks[name] = masks[name]
        self.sched.mask_all_weights()

    def step(self) -> None:
        """The plain step, then the masks."""
        super().step()
        self.sched.mask_all_weights(is_forward=False)

    def roots(self) -> list[Any]:
        """The model, the optimizer and the scheduler."""
        return [self.model, self.optimizer, self.sched]


class TorchPrune(Variant):
    """``torch.nn.utils.prune.custom_from_mask`` on every masked weight."""

    name = "torch.nn.utils.prune"

    def prepare(self, masks: dict[str, torch.Tensor]) -> None:
        """Reparametrize each weight as ``weight_orig * weight_mask``."""
        for name in self.work.weights:
            module, attr = submodule(self.model, name)
            prune.custom_from_mask(module, attr, masks[name].clone())

    def effective_weights(self) -> dict[str, torch.Tensor]:
        """``weight_orig * weight_mask``, what the forward pre-hook computes."""
        out = {}
        for name in self.work.weights:
            module, attr = submodule(self.model, name)
            out[name] = (getattr(module, attr + "_orig") * getattr(module, attr + "_mask")).detach()
        return out


class TorchAO(Variant):
    """``torch.ao.pruning.WeightNormSparsifier``'s mask parametrization on every masked weight."""

    name = "torch.ao.pruning"

    def prepare(self, masks: dict[str, torch.Tensor]) -> None:
        """Attach the sparsifier's parametrizations and write the masks into their buffers."""
        self.sparsifier = WeightNormSparsifier(sparsity_level=target_sparsity(), sparse_block_shape=(1, 1),
                                               zeros_per_block=1)
        self.sparsifier.prepare(self.model, [{"tensor_fqn": name} for name in self.work.weights])
        for name in self.work.weights:
            module, attr = submodule(self.model, name)
            module.parametrizations[attr][0].mask.copy_(masks[name])

    def effective_weights(self) -> dict[str, torch.Tensor]:
        """The parametrized weights, as the forward pass reads them."""
        out = {}
        for name in self.work.weights:
            module, attr = submodule(self.model, name)
            out[name] = getattr(module, attr).detach()
        return out

    def roots(self) -> list[Any]:
        """The model, the optimizer and the sparsifier."""
        return [self.model, self.optimizer, self.sparsifier]


class DistillerMasks(Variant):
    """Float masks, multiplied into each parameter separately after every optimizer step."""

    name = "distiller float masks"

    def start(self, masks: dict[str, torch.Tensor]) -> None:
        """Keep a float copy of every mask and apply it once."""
        params = dict(self.model.named_parameters())
        self.masked = [(params[name], masks[name].to(params[name].dtype)) for name in self.work.weights]
        self.apply()

    def apply(self) -> None:
        """Multiply each mask into its parameter."""
        for param, mask in self.masked:
            param.data.mul_(mask)

    def step(self) -> None:
        """The plain step, then the masks."""
        super().step()
        self.apply()

    def roots(self) -> list[Any]:
        """The model, the optimizer and the float masks."""
        return [self.model, self.optimizer, self.masked]


VARIANT_CLASSES: tuple[type[Variant], ...] = (Variant, Hookprune, HookpruneMasksOnly, TorchPrune, TorchAO,
                                               DistillerMasks)


def build_variants(work: Workload) -> tuple[list[Variant], dict[str, torch.Tensor]]:
    """Every variant on a copy of the workload's model, masked with the masks hookprune computes."""
    ours = Hookprune(work, {})
    masks = {name: ours.sched.masks[name].clone() for name in work.weights}
    variants: list[Variant] = []
    for cls in VARIANT_CLASSES:
        variants.append(ours if cls is Hookprune else cls(work, masks))
    return variants, masks


# -- measuring ---------------------------------------------------------------------------------

def time_steps(variants: list[Variant], rounds: int, warmup: float,
               clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per step of each variant: a warm-up, then ``rounds`` rounds of one block of steps per
    variant, the order rotating each round. On the CPU every step is one sample, read from ``clock``;
    on CUDA a block's wall-clock mean is, since a step's kernels run asynchronously."""
    device = variants[0].work.device
    step_seconds = []
    for variant in variants:
        synchronize(device)
        start = time.perf_counter()
        steps = 0
        while steps < 3 or time.perf_counter() - start < warmup:
            variant.step()
            steps += 1
            synchronize(device)
        step_seconds.append((time.perf_counter() - start) / steps)
    block = max(1, int(BLOCK_SECONDS / max(min(step_seconds), 1e-9)))
    samples: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(rounds):
        shift = r % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            out = samples[variant.name]
            if device.type == "cuda":
                synchronize(device)
                start = time.perf_counter()
                for _ in range(block):
                    variant.step()
                synchronize(device)
                out.append((time.perf_counter() - start) / block)
            else:
                for _ in range(block):
                    start = clock()
                    variant.step()
                    out.append(clock() - start)
    return samples


def sparsity_problems(variants: Iterable[Variant], masks: dict[str, torch.Tensor], sparsity: float) -> list[str]:
    """Every way a masked variant's effective weights differ from the masks (zeros exactly where a mask is
    False), and every mask that does not zero ``int(sparsity * numel)`` elements."""
    problems = []
    for name, mask in masks.items():
        expected = int(sparsity * mask.numel())
        zeroed = int((~mask).sum())
        if zeroed != expected:
            problems.append(f"the mask of {name} zeroes {zeroed} elements, expected {expected}")
    for variant in variants:
        if variant.name == "plain":
            continue
        for name, weight in variant.effective_weights().items():
            zeros = weight == 0
            wrong = int((zeros != ~masks[name].to(zeros.device)).sum())
            if wrong:
                problems.append(f"{variant.work.name} {variant.name}: {name} differs from its mask at {wrong} "
                                f"elements ({int(zeros.sum())} zeros, the mask {int((~masks[name]).sum())})")
    return problems


_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType, types.FrameType)


def held_bytes(roots: Iterable[Any]) -> int:
    """Bytes of every tensor reachable from ``roots`` through Python references (and gradients), each
    storage counted once; classes, modules and functions are not followed."""
    seen: set[int] = set()
    storages: dict[tuple[str, int], int] = {}
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _OPAQUE):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.is_leaf and obj.grad is not None:
                stack.append(obj.grad)
            storage = obj.untyped_storage()
            if storage.nbytes():
                storages[(str(obj.device), storage.data_ptr())] = storage.nbytes()
        stack.extend(gc.get_referents(obj))
    return sum(storages.values())


def cuda_peak_bytes(cls: type[Variant], work: Workload, masks: dict[str, torch.Tensor], steps: int = 3) -> int:
    """The peak of allocated CUDA memory over ``steps`` steps of a fresh ``cls`` variant, above what was
    allocated before it was built."""
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(work.device)
    variant = cls(work, masks)
    variant.step()
    synchronize(work.device)
    torch.cuda.reset_peak_memory_stats(work.device)
    for _ in range(steps):
        variant.step()
    synchronize(work.device)
    peak = torch.cuda.max_memory_allocated(work.device) - before
    del variant
    gc.collect()
    torch.cuda.empty_cache()
    return peak


@dataclass
class StepRow:
    """One variant's results on one workload."""

    device: str
    model: str
    variant: str
    seconds: float
    ratio: float
    bytes_per_element: float
    peak_bytes_per_element: float | None = None
    masked_elements: int = 0


def bench_steps(work: Workload, rounds: int, warmup: float, problems: list[str],
                clock: Callable[[], float] = time.perf_counter) -> list[StepRow]:
    """The step, memory and sparsity measurements of every variant on ``work``."""
    variants, masks = build_variants(work)
    samples = time_steps(variants, rounds, warmup, clock)
    problems.extend(sparsity_problems(variants, masks, target_sparsity()))
    plain = statistics.median(samples["plain"])
    held = {v.name: held_bytes(v.roots()) for v in variants}
    n = work.masked_elements
    peaks: dict[str, float] = {}
    if work.device.type == "cuda":
        classes = {cls.name: cls for cls in VARIANT_CLASSES}
        del variants
        raw = {name: cuda_peak_bytes(cls, work, masks) for name, cls in classes.items()}
        peaks = {name: (value - raw["plain"]) / n for name, value in raw.items()}
    rows = []
    for name in VARIANTS:
        median = statistics.median(samples[name])
        rows.append(StepRow(work.device.type, work.name, name, median, median / plain,
                            (held[name] - held["plain"]) / n, peaks.get(name), n))
    print(f"  {work.device.type} {work.name}: " + ", ".join(f"{r.variant} {r.seconds * 1e3:.3f} ms" for r in rows),
          file=sys.stderr, flush=True)
    return rows


class NoOp:
    """A schedule instance whose hooks do nothing, so that firing an event times dispatch alone."""

    @hookimpl
    def on_minibatch_begin(self, epoch: int, minibatch_id: int) -> None:
        """Nothing."""

    @hookimpl
    def before_backward(self, loss: torch.Tensor) -> None:
        """Nothing: no loss term."""

    @hookimpl
    def before_optimizer_step(self, minibatch_id: int) -> None:
        """Nothing."""

    @hookimpl
    def on_minibatch_end(self, minibatch_id: int) -> None:
        """Nothing."""


@dataclass
class DispatchRow:
    """Microseconds per event of each minibatch event, for ``instances`` no-op instances."""

    instances: int
    active: bool
    micros: dict[str, float] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        """The mean over the four minibatch events."""
        return sum(self.micros.values()) / len(self.micros)


def bench_dispatch(counts: Iterable[int], calls: int, rounds: int) -> list[DispatchRow]:
    """``fire`` per minibatch event with each count of no-op instances, active (epoch 0) and inactive
    (epoch 1), interleaved over ``rounds`` rounds of ``calls`` calls of each event; medians of the rounds."""
    loss = torch.zeros(())
    cases = []
    for count in counts:
        sched = CompressionScheduler(nn.Linear(4, 4))
        for i in range(count):
            sched.add_policy(NoOp(), starting_epoch=0, ending_epoch=1, name=f"noop{i}")
        for active in (True, False) if count else (True,):
            cases.append((DispatchRow(count, active), sched, 0 if active else 1))
    samples: dict[tuple[int, str], list[float]] = {}
    for r in range(rounds):
        shift = r % len(cases)
        for index, (_, sched, epoch) in (list(enumerate(cases))[shift:] + list(enumerate(cases))[:shift]):
            fire = sched.fire
            for event in DISPATCH_EVENTS:
                extra = {"loss": loss} if event == "before_backward" else {}
                start = time.perf_counter()
                for i in range(calls):
                    fire(event, epoch=epoch, minibatch_id=i, minibatches_per_epoch=calls, **extra)
                samples.setdefault((index, event), []).append((time.perf_counter() - start) / calls * 1e6)
    rows = []
    for index, (row, _, _) in enumerate(cases):
        row.micros = {event: statistics.median(samples[(index, event)]) for event in DISPATCH_EVENTS}
        rows.append(row)
    return rows


@dataclass
class AGPRow:
    """One AGP step of every listed weight's mask against ``torch.kthvalue`` per layer."""

    device: str
    parameters: int
    layers: int
    elements: int
    ours: float
    kthvalue: float


def bench_agp(device: torch.device, quick: bool, repeats: int, problems: list[str]) -> AGPRow:
    """Time hookprune's AGP mask recomputation on the transformer and the per-layer kthvalue baseline."""
    torch.manual_seed(0)
    model = (GPT(vocab=1000, context=64, width=64, depth=2, heads=4) if quick else GPT()).to(device)
    weights = block_weights(model)
    params = dict(model.named_parameters())
    sched = hookprune.load(agp_schedule(weights), model)
    sparsity = target_sparsity()

    def ours() -> None:
        sched.fire("on_epoch_begin", epoch=EPOCH)

    def kthvalue() -> dict[str, float]:
        out = {}
        for name in weights:
            magnitudes = params[name].detach().abs().flatten()
            out[name] = torch.kthvalue(magnitudes, int(sparsity * magnitudes.numel())).values
        return {name: float(value) for name, value in out.items()}

    ours()
    kthvalue()
    ours_times, kth_times, thresholds = [], [], {}
    for _ in range(repeats):
        for fn, out in ((ours, ours_times), (kthvalue, kth_times)):
            synchronize(device)
            start = time.perf_counter()
            result = fn()
            synchronize(device)
            out.append(time.perf_counter() - start)
            if result is not None:
                thresholds = result
    for name in weights:
        mask = sched.masks[name]
        magnitudes = params[name].detach().abs()
        expected = int(sparsity * mask.numel())
        if int((~mask).sum()) != expected:
            problems.append(f"agp {device.type}: {name} zeroes {int((~mask).sum())}, expected {expected}")
        elif float(magnitudes[~mask].max()) != thresholds[name] or bool((magnitudes[mask] < thresholds[name]).any()):
            problems.append(f"agp {device.type}: {name}'s pruned magnitudes disagree with kthvalue's threshold")
    row = AGPRow(device.type, sum(p.numel() for p in model.parameters()), len(weights),
                 sum(params[n].numel() for n in weights), statistics.median(ours_times), statistics.median(kth_times))
    print(f"  {device.type} agp: hookprune {row.ours * 1e3:.1f} ms, kthvalue {row.kthvalue * 1e3:.1f} ms",
          file=sys.stderr, flush=True)
    return row


# -- report ------------------------------------------------------------------------------------

def fmt_ms(seconds: float) -> str:
    """A step time in milliseconds, with three significant decimals below 10 ms."""
    ms = seconds * 1e3
    return f"{ms:.3f} ms" if ms < 10 else f"{ms:,.1f} ms"


@dataclass
class Report:
    """Everything one run measured, and the correctness problems it found."""

    steps: list[StepRow]
    dispatch: list[DispatchRow]
    agp: list[AGPRow]
    problems: list[str]


def run(args: argparse.Namespace) -> Report:
    """Run the measurements ``args`` select."""
    problems: list[str] = []
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    want_cpu = args.device in ("auto", "cpu")
    want_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    rounds = args.repeat or (5 if args.quick else 30)
    warmup = 0.05 if args.quick else 1.0
    workloads: list[tuple[str, torch.device]] = []
    if want_cpu:
        workloads += [("lenet300_100", cpu)] + ([] if args.quick else [("resnet20_cifar", cpu)])
    if want_cuda:
        workloads += [("resnet50", cuda), ("gpt", cuda)]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    steps: list[StepRow] = []
    for name, device in workloads:
        steps += bench_steps(make_workload(name, device, args.quick), rounds, warmup, problems, clock)
        gc.collect()
    dispatch = bench_dispatch((0, 1, 5, 20), 200 if args.quick else 2000, 3 if args.quick else rounds)
    agp = []
    for device in ([cpu] if want_cpu else []) + ([cuda] if want_cuda else []):
        agp.append(bench_agp(device, args.quick, 1 if args.quick else 3, problems))
        gc.collect()
    return Report(steps, dispatch, agp, problems)


def print_report(report: Report, left_out: list[str], clock: str, load_before: float, load_after: float) -> None:
    """The Markdown tables, with the command, machine, versions, load and the hook plugins ``left_out``."""
    print("\n".join(header(any(row.device == "cuda" for row in report.steps))))
    print(f"Load average (1 min) before / after: {load_before:.1f} / {load_after:.1f}; CPU steps timed by "
          f"{'process CPU time' if clock == 'cpu' else 'wall clock'}; AGP level "
          f"{target_sparsity():.4f} (epoch {EPOCH} of {START}..{END - 1}, {INITIAL_SPARSITY} to {FINAL_SPARSITY})  ")
    if left_out:
        print(f"Installed hook plugins left out (--with-plugins keeps them): {', '.join(left_out)}  ")
    print()
    cuda = any(row.peak_bytes_per_element is not None for row in report.steps)
    print("| device | model | variant | median time per step | vs plain | bytes held per masked element"
          + (" | peak bytes per masked element |" if cuda else " |"))
    print("|---|---|---|---:|---:|---:|" + ("---:|" if cuda else ""))
    for row in report.steps:
        held = "" if row.variant == "plain" else f"{row.bytes_per_element:.2f}"
        line = (f"| {row.device} | {row.model} | {row.variant} | {fmt_ms(row.seconds)} | {row.ratio:.3f}x "
                f"| {held} |")
        if cuda:
            peak = row.peak_bytes_per_element
            line += " |" if peak is None or row.variant == "plain" else f" {peak:.2f} |"
        print(line)
    print()
    print("| no-op instances | their epoch | " + " | ".join(DISPATCH_EVENTS) + " | mean |")
    print("|---:|---|" + "---:|" * (len(DISPATCH_EVENTS) + 1))
    for d in report.dispatch:
        state = "active" if d.active else "inactive"
        print(f"| {d.instances} | {state if d.instances else '-'} | "
              + " | ".join(f"{d.micros[e]:.2f} us" for e in DISPATCH_EVENTS) + f" | {d.mean:.2f} us |")
    print()
    print("| device | transformer parameters | masked weights | elements | hookprune AGP step | kthvalue per layer "
          "| kthvalue / hookprune |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for a in report.agp:
        print(f"| {a.device} | {a.parameters / 1e6:.1f}M | {a.layers} | {a.elements / 1e6:.1f}M "
              f"| {fmt_ms(a.ours)} | {fmt_ms(a.kthvalue)} | {a.kthvalue / a.ours:.1f}x |")
    print()
    print("Goals:")
    for row in report.steps:
        if row.variant == "hookprune":
            goal = GOAL_STEP_RATIO if row.device == "cpu" else None
            verdict = "" if goal is None else (" (met)" if row.ratio <= goal else " (MISSED)")
            peak = row.peak_bytes_per_element
            copies = (row.bytes_per_element - 1) * row.masked_elements
            print(f"- {row.device} {row.model}: hookprune {row.ratio:.3f}x the plain loop"
                  + (f", goal {goal}x{verdict}" if goal else "")
                  + f"; {row.bytes_per_element:.2f} bytes held per masked element"
                  + ("" if peak is None else f" ({peak:.2f} at the peak)")
                  + f": the 1-byte masks and {copies / 2**20:.2f} MiB of float copies of the smallest masks "
                  + f"(at most {FLOAT_MULTIPLIER_BYTES / 2**20:g} MiB)")
    five = next((d for d in report.dispatch if d.instances == 5 and d.active), None)
    if five is not None:
        print(f"- dispatch with 5 active instances: {five.mean:.2f} us per event, goal {GOAL_DISPATCH_US} us"
              + (" (met)" if five.mean <= GOAL_DISPATCH_US else " (MISSED)"))
    for a in report.agp:
        if a.device == "cuda":
            print(f"- AGP step on CUDA: {a.ours * 1e3:.1f} ms, goal {GOAL_AGP_CUDA_MS} ms"
                  + (" (met)" if a.ours * 1e3 <= GOAL_AGP_CUDA_MS else " (MISSED)"))
    print()
    if report.problems:
        print("Correctness problems:")
        for problem in report.problems:
            print(f"- {problem}")
    else:
        print("Every masked variant's weights were zero exactly where the masks say, int(sparsity * numel) "
              "per layer, and hookprune's AGP masks matched kthvalue's thresholds.")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables; 1 when a correctness check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="LeNet only, few rounds, a small transformer: a smoke test in seconds")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cpu: the CPU workloads; cuda: the GPU ones; auto (default): both when CUDA is there")
    parser.add_argument("--repeat", type=int, default=0,
                        help="interleaved rounds per workload (default 30, 5 with --quick)")
    parser.add_argument("--threads", type=int, default=0, help="torch's CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="what times a CPU step: wall-clock time (default), or the process's CPU time, "
                             "which leaves out the time it waited for a core on a busy machine (use with --threads 1)")
    parser.add_argument("--with-plugins", action="store_true",
                        help="keep the installed hook plugins (entry point group 'hookprune') in hookprune's rows")
    args = parser.parse_args(argv)
    if args.repeat < 0 or args.threads < 0:
        parser.error("--repeat and --threads must not be negative")
    if args.threads:
        torch.set_num_threads(args.threads)
    installed = [plugin.provider.name for plugin in autoloaded_plugins()]
    autoload = os.environ.get(DISABLE_AUTOLOAD_ENV)
    if not args.with_plugins:
        os.environ[DISABLE_AUTOLOAD_ENV] = "1"
        autoloaded_plugins.cache_clear()
    flushed = torch.set_flush_denormal(True)
    try:
        load_before = load_average()
        report = run(args)
        load_after = load_average()
    finally:
        if flushed:
            torch.set_flush_denormal(False)
        if not args.with_plugins:
            if autoload is None:
                del os.environ[DISABLE_AUTOLOAD_ENV]
            else:
                os.environ[DISABLE_AUTOLOAD_ENV] = autoload
            autoloaded_plugins.cache_clear()
    print_report(report, installed if not args.with_plugins else [], args.clock, load_before, load_after)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
