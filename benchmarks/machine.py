"""What every benchmark report says about its run: the command, the machine, the load, and GPU timing.

The scripts beside this file import it by name (``python benchmarks/NAME.py`` puts this folder first on
``sys.path``), so each script stays runnable on its own.
"""

from __future__ import annotations

import math
import os
import platform
import shlex
import sys

import torch


def cpu_model() -> str:
    """The CPU's model name, for a report's header."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float:
    """The one-minute load average (NaN where the system has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def header(gpu: bool) -> list[str]:
    """A report's first lines: the command, the CPU with torch's version and threads, and the GPU when ``gpu``
    (each ending in Markdown's line break)."""
    lines = [f"Command: `{shlex.join(['python', *sys.argv])}`  ",
             f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with "
             f"{torch.get_num_threads()} threads, Python {platform.python_version()}  "]
    if gpu:
        lines.append(f"GPU: {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}  ")
    return lines
