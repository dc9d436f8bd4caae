"""The README's first command: compress LeNet-300-100 on the digits data."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def test_quickstart_prunes_to_the_schedule_and_keeps_accuracy():
    out = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, check=True, timeout=300)
    rows = dict(re.findall(r"^(fc\d\.weight) .* (\d+\.\d\d)%$", out.stdout, re.M))
    assert rows == {"fc1.weight": "90.00", "fc2.weight": "90.00", "fc3.weight": "80.00"}
    top1 = float(re.search(r"Test top-1: (\d+\.\d+)%", out.stdout).group(1))
    assert top1 >= 95.0
