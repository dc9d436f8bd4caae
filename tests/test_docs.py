"""The README says what the code does: its training loop, run as written, prunes a real model to its schedule's
levels, and its hook reference table is the hook specification, hook for hook and argument for argument."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import hookprune
from hookprune import hookspecs
from hookprune.models import create_model
from hookprune.testing import random_batches

README = Path(__file__).resolve().parents[1] / "README.md"

#: AGP from 10% to 50% over epochs 0..3 on two of LeNet-300-100's three weights
SCHEDULE = """\
version: 1
pruners:
  agp:
    class: AutomatedGradualPruner
    initial_sparsity: 0.1
    final_sparsity: 0.5
    weights: [fc1.weight, fc2.weight]
policies:
  - pruner: {instance_name: agp}
    starting_epoch: 0
    ending_epoch: 4
    frequency: 1
"""


def section(title: str) -> str:
    """The text of the README's ``## title`` section, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README.read_text(encoding="utf-8"), re.M | re.S)
    assert match is not None, f"README.md has no section '## {title}'"
    return match.group(1)


def python_block(text: str) -> str:
    """The one ```python block of ``text``."""
    blocks = re.findall(r"^```python\n(.*?)^```$", text, re.M | re.S)
    assert len(blocks) == 1, f"expected one python block, found {len(blocks)}"
    return blocks[0]


def test_the_readmes_loop_prunes_lenet_to_its_schedules_levels(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "schedule.yaml").write_text(SCHEDULE)
    torch.manual_seed(0)
    model = create_model("lenet300_100", input_features=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    names = {"torch": torch, "model": model, "optimizer": optimizer, "epochs": 5, "loader": random_batches(3),
             "criterion": F.cross_entropy, "val_loss": 1.0, "top1": 50.0}
    exec(compile(python_block(section("Driving a schedule from your loop")), str(README), "exec"), names)

    sched = names["sched"]
    params = dict(model.named_parameters())
    assert sorted(sched.masks) == ["fc1.weight", "fc2.weight"]
    for name in sched.masks:
        pruned = int(0.5 * params[name].numel())
        assert int((~sched.masks[name]).sum()) == pruned, name
        assert int((params[name] == 0).sum()) == pruned, name
        assert bool(params[name][~sched.masks[name]].eq(0).all()), name
    assert capsys.readouterr().out == f"{sched.total_sparsity()} {{}}\n"
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert torch.equal(checkpoint["model"]["fc1.weight"], params["fc1.weight"].detach())
    assert torch.equal(checkpoint["compression_sched"]["masks_dict"]["fc2.weight"], sched.masks["fc2.weight"])


def readme_hook_table() -> list[tuple[str, list[str]]]:
    """Each row of the README's hook reference: the hook's name and its arguments, in order."""
    rows = re.findall(r"^\| `(\w+)` \| ([^|]*) \|", section("Hook reference"), re.M)
    return [(name, [arg.strip() for arg in args.split(",")]) for name, args in rows]


def test_the_readmes_hook_table_is_the_hook_specification():
    specs = sorted((f for _, f in inspect.getmembers(hookspecs, inspect.isfunction)
                    if hasattr(f, f"{hookspecs.PROJECT}_spec")), key=lambda f: f.__code__.co_firstlineno)
    assert len(specs) == 6
    assert readme_hook_table() == [(f.__name__, list(inspect.signature(f).parameters)) for f in specs]


def test_the_readmes_plugin_example_prunes_exactly_as_it_says(lenet):
    blocks = re.findall(r"^```python\n(.*?)^```$", section("Writing and shipping a plugin"), re.M | re.S)
    (example,) = [block for block in blocks if "class MagnitudeOnce" in block]
    names: dict[str, object] = {}
    exec(compile(example, str(README), "exec"), names)
    pruner = names["MagnitudeOnce"](name="once", weights=["fc1.weight", "fc3.weight"], sparsity=0.25)
    sched = hookprune.CompressionScheduler(lenet)
    sched.add_policy(pruner, epochs=[0])
    sched.fire("on_epoch_begin", epoch=0)
    sched.fire("on_minibatch_begin", epoch=0, minibatch_id=0, minibatches_per_epoch=1)
    for name, param in (("fc1.weight", lenet.fc1.weight), ("fc3.weight", lenet.fc3.weight)):
        assert int((param == 0).sum()) == int(0.25 * param.numel()), name
    assert int((lenet.fc2.weight == 0).sum()) == 0
    with pytest.raises(hookprune.ArgumentError, match=r"'sparsity' must be within \[0, 1\), got 1.5"):
        names["MagnitudeOnce"](name="bad", weights=["fc1.weight"], sparsity=1.5)
