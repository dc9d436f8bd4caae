"""The example application's pieces in hookprune.apputils, used on their own: the device and seed choices,
Distiller's data set rule, RNG state, scores, checkpoint weights and the run folder."""

from __future__ import annotations

import random
from datetime import datetime

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hookprune.apputils import run_folder
from hookprune.apputils.checkpoint import CheckpointError, load_weights
from hookprune.apputils.data_loaders import infer_dataset
from hookprune.apputils.device import choose_device
from hookprune.apputils.errors import AppError
from hookprune.apputils.evaluation import evaluate
from hookprune.apputils.history import best_key
from hookprune.apputils.rng import resolve_seed, restore_rng, rng_state
from hookprune.models import create_model

CPU = torch.device("cpu")


def test_choose_device_takes_the_cpu_when_asked_and_refuses_ids_the_machine_lacks():
    assert choose_device(cpu=True, gpus="0") == (CPU, [])
    with pytest.raises(AppError) as err:
        choose_device(gpus="0,x")
    assert str(err.value) == "--gpus takes comma-separated GPU ids such as 0,1, not '0,x'"
    count = torch.cuda.device_count()
    with pytest.raises(AppError) as err:
        choose_device(gpus=str(count))
    assert str(err.value) == (f"--gpus {count}: this machine has {count} GPU(s)"
                              + ("; use --cpu" if not count else f" (ids 0..{count - 1})"))


def test_resolve_seed_prefers_the_given_seed_then_the_resumed_runs_then_zero_when_deterministic():
    resumed = {"extras": {"seed": 7}}
    assert resolve_seed(3, resumed, deterministic=True) == 3
    assert resolve_seed(None, resumed, deterministic=True) == 7
    assert resolve_seed(None, {"extras": {}}, deterministic=True) == 0
    assert 0 <= resolve_seed(None, None) < 2**31


@pytest.mark.parametrize(("arch", "data_dir", "dataset", "expected"), [
    ("resnet20_cifar", None, None, "digits"),
    ("resnet20_cifar", "data", None, "cifar10"),
    ("simplenet_mnist", "data", None, "mnist"),
    ("lenet300_100", "data", None, "mnist"),
    ("resnet18", "data", None, "imagenet"),
    ("resnet18", "data", "cifar10", "cifar10"),
])
def test_infer_dataset_follows_distillers_rule(arch, data_dir, dataset, expected):
    assert infer_dataset(arch, data_dir, dataset) == expected


def test_restored_rng_state_draws_the_same_numbers_again():
    state = rng_state(CPU)
    first = (torch.rand(4), random.random())
    restore_rng(state, CPU)
    again = (torch.rand(4), random.random())
    assert torch.equal(first[0], again[0]) and first[1] == again[1]


def test_evaluate_scores_top1_top5_and_mean_loss_and_refuses_an_empty_split():
    # the label ranks first, fifth and sixth of six classes: one top-1 hit, two top-5 hits
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5], [2.0, 9, 1, 3, 4, 5], [9.0, 8, 7, 6, 5, 1]])
    labels = torch.tensor([0, 0, 5])
    scores = evaluate(nn.Identity(), [(logits[:2], labels[:2]), (logits[2:], labels[2:])], CPU)
    assert scores.top1 == pytest.approx(100 / 3) and scores.top5 == pytest.approx(200 / 3)
    assert scores.loss == pytest.approx(float(F.cross_entropy(logits, labels)))
    with pytest.raises(AppError, match=r"^the evaluation split is empty: lower --vs or raise --effective-\*-size$"):
        evaluate(nn.Identity(), [], CPU)


def test_best_key_prefers_fewer_nonzeros_then_accuracy_then_the_later_epoch():
    history = [{"epoch": 0, "nonzeros": 10, "val_top1": 99.0}, {"epoch": 1, "nonzeros": 5, "val_top1": 90.0},
               {"epoch": 2, "nonzeros": 5, "val_top1": 91.0}, {"epoch": 3, "nonzeros": 5, "val_top1": 91.0}]
    assert max(history, key=best_key)["epoch"] == 3


def test_load_weights_reads_dataparallel_names_and_names_the_arch_that_does_not_fit(tmp_path):
    torch.manual_seed(0)
    saved = create_model("lenet300_100", input_features=64)
    path = tmp_path / "dp.pth.tar"
    torch.save({"state_dict": nn.DataParallel(saved).state_dict()}, path)
    model = create_model("lenet300_100", input_features=64)
    load_weights(model, path, "lenet300_100")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.state_dict().values(),
                                                   strict=True))
    with pytest.raises(CheckpointError, match=rf"^checkpoint '{tmp_path}/dp.pth.tar' does not fit 'lenet300_100': "
                                              r"size mismatch for fc1.weight"):
        load_weights(create_model("lenet300_100", input_features=784), path, "lenet300_100")


def test_run_folders_of_the_same_second_get_numbered(tmp_path, monkeypatch):
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2024, 5, 6, 7, 8, 9)

    monkeypatch.setattr(run_folder, "datetime", Frozen)
    folders = [run_folder.new_run_folder(tmp_path / "logs", "net") for _ in range(3)]
    assert [f.name for f in folders] == ["net___2024.05.06-070809", "net___2024.05.06-070809.2",
                                         "net___2024.05.06-070809.3"]
    assert all(f.is_dir() for f in folders)
