"""Time hookprune's exact magnitude selection against torch's selection primitives.

For each device (the CPU, and CUDA when available) and each size, two tasks are timed, every
method in the same run, each the median of ``--repeats`` runs:

* level: the mask zeroing the ``int(sparsity * n)`` smallest magnitudes of one float32 tensor
  (``hookprune.selection.level_keep_mask``);
* global: the same over eight tensors of unequal sizes that add up to ``n``
  (``hookprune.selection.global_keep_masks``).

The baselines compute only the k-th smallest magnitude (``torch.kthvalue``, ``torch.topk``,
``torch.sort``, ``torch.quantile``), including ``abs`` and, for the global task, the
concatenation they need; hookprune's time includes the whole exact mask. Every method's k-th
value is checked against hookprune's (the largest magnitude it prunes) and hookprune's mask
against the exact count; a disagreement is reported and makes the exit status 1.

    python benchmarks/selection.py                 # 1e6, 1e7, 1e8 (and 1e9 on a GPU)
    python benchmarks/selection.py --quick         # 1e5 and 1e6, one repeat: a smoke test
    python benchmarks/selection.py --sizes 1e6 1e9 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hookprune.selection import global_keep_masks, level_keep_mask

from machine import header, load_average, synchronize

BASELINES = ("kthvalue", "topk", "sort", "quantile")
#: bytes per element each method needs beyond the input, to skip sizes memory cannot hold
BYTES_PER_ELEMENT = {"hookprune": 2, "kthvalue": 12, "topk": 14, "sort": 20, "quantile": 20}
PARTS = 8


@dataclass
class Cell:
    """One method's result for one (device, size, task)."""

    text: str
    seconds: float | None = None


def free_bytes(device: torch.device) -> int:
    """Memory available for new tensors on ``device``."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def measure(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, object]:
    """Median wall time of ``fn`` over ``repeats`` runs, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def kth_value(method: str, magnitudes: Callable[[], torch.Tensor], k: int) -> Callable[[], float]:
    """A baseline computing the k-th smallest magnitude (1-based) with ``method``."""
    def run() -> float:
        values = magnitudes()
        n = values.numel()
        if method == "kthvalue":
            return float(torch.kthvalue(values, k).values)
        if method == "topk":
            if k <= n // 2:
                return float(torch.topk(values, k, largest=False, sorted=False).values.max())
            return float(torch.topk(values, n - k + 1, largest=True, sorted=False).values.min())
        if method == "sort":
            return float(torch.sort(values).values[k - 1])
        return float(torch.quantile(values, (k - 1) / (n - 1), interpolation="nearest"))
    return run


def split_sizes(n: int) -> list[int]:
    """Eight unequal sizes adding up to ``n`` (like a network's layers)."""
    weights = [1, 2, 3, 5, 8, 13, 21, 34]
    sizes = [n * w // sum(weights) for w in weights]
    sizes[-1] += n - sum(sizes)
    return sizes


def fmt(seconds: float) -> str:
    """A duration for the table: milliseconds below ten seconds."""
    return f"{seconds * 1e3:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def run_size(device: torch.device, n: int, sparsity: float, repeats: int,
             problems: list[str]) -> list[tuple[str, dict[str, Cell]]]:
    """Both tasks at size ``n`` on ``device``: rows of (task, method -> cell)."""
    gen = torch.Generator(device=device).manual_seed(n)
    x = torch.randn(n, device=device, generator=gen)
    k = int(sparsity * n)
    parts = dict(zip((f"layer{i}" for i in range(PARTS)), x.split(split_sizes(n)), strict=True))
    rows = []
    for task in ("level", "global"):
        cells: dict[str, Cell] = {}
        if task == "level":
            seconds, mask = measure(lambda: level_keep_mask(x, sparsity), repeats, device)
            assert isinstance(mask, torch.Tensor)
            pruned_count = int((~mask).sum())
            answer = float(x.abs()[~mask].max())
            magnitudes = x.abs
        else:
            seconds, masks = measure(lambda: global_keep_masks(parts, sparsity), repeats, device)
            assert isinstance(masks, dict)
            pruned_count = sum(int((~m).sum()) for m in masks.values())
            answer = max(float(p.abs()[~m].max()) for p, m in zip(parts.values(), masks.values(), strict=True)
                         if (~m).any())
            def magnitudes() -> torch.Tensor:
                return torch.cat([p.abs() for p in parts.values()])
        cells["hookprune"] = Cell(fmt(seconds), seconds)
        if pruned_count != k:
            problems.append(f"{device} n={n:g} {task}: hookprune zeroed {pruned_count}, expected {k}")
        for method in BASELINES:
            if BYTES_PER_ELEMENT[method] * n > free_bytes(device):
                cells[method] = Cell("skipped (memory)")
                continue
            try:
                seconds, value = measure(kth_value(method, magnitudes, k), repeats, device)
            except RuntimeError as exc:
                if method == "quantile" and "too large" in str(exc):
                    cells[method] = Cell("refused")
                    continue
                raise
            cells[method] = Cell(fmt(seconds), seconds)
            if value != answer:
                problems.append(f"{device} n={n:g} {task}: {method} gives {value!r}, hookprune {answer!r}")
        rows.append((task, cells))
        print(f"  {device.type} n={n:.0e} {task}: " + ", ".join(f"{m} {c.text}" for m, c in cells.items()),
              file=sys.stderr, flush=True)
    return rows


def speedup(cells: dict[str, Cell]) -> str:
    """How many times faster hookprune was than ``torch.kthvalue``."""
    ours, theirs = cells["hookprune"].seconds, cells["kthvalue"].seconds
    return f"{theirs / ours:.1f}x" if ours and theirs else "n/a"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; 1 when any method disagreed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=lambda s: int(float(s)),
                        help="element counts (default: 1e6 1e7 1e8, plus 1e9 on a GPU)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; the median is reported")
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of elements to zero")
    parser.add_argument("--quick", action="store_true", help="1e5 and 1e6 elements, one repeat")
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when it is available")
    args = parser.parse_args(argv)
    if not 0 < args.sparsity < 1:
        parser.error(f"--sparsity must be between 0 and 1, got {args.sparsity}")
    if args.sizes and min(args.sizes) * min(args.sparsity, 1 - args.sparsity) < 1:
        parser.error("every size must hold at least one pruned and one kept element at this sparsity")
    cuda = torch.cuda.is_available() and not args.cpu_only
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if cuda else [])
    repeats = 1 if args.quick else args.repeats
    problems: list[str] = []
    load_before = load_average()
    table = []
    for device in devices:
        sizes = args.sizes or ([100_000, 1_000_000] if args.quick else
                               [1_000_000, 10_000_000, 100_000_000] + ([1_000_000_000] if device.type == "cuda"
                                                                        else []))
        for n in sizes:
            if BYTES_PER_ELEMENT["hookprune"] * n + 4 * n > free_bytes(device):
                print(f"  {device.type} n={n:.0e}: skipped, not enough memory", file=sys.stderr)
                continue
            for task, cells in run_size(device, n, args.sparsity, repeats, problems):
                table.append((device.type, n, task, cells))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    load_after = load_average()

    print("\n".join(header(cuda)))
    print(f"Load average (1 min) before / after: {load_before:.1f} / {load_after:.1f}; sparsity "
          f"{args.sparsity}, median of {repeats} run{'s' if repeats > 1 else ''}; float32 input  ")
    print()
    print("| device | elements | task | hookprune (exact mask) | kthvalue | topk | sort | quantile "
          "| hookprune vs kthvalue |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for device_type, n, task, cells in table:
        print(f"| {device_type} | {n:.0e} | {task} | " + " | ".join(cells[m].text for m in ("hookprune", *BASELINES))
              + f" | {speedup(cells)} |")
    print()
    if problems:
        print("Disagreements:")
        for problem in problems:
            print(f"- {problem}")
        return 1
    print("Every method agreed on the k-th smallest magnitude, and hookprune zeroed exactly k elements.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
