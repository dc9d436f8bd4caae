"""Knowledge distillation: Distiller's options and loss, its window, the YAML form and a real gain on digits."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch
import torch.nn.functional as F

import hookprune
from hookprune import knowledge_distillation as kd
from hookprune import models
from hookprune.knowledge_distillation import DistillationLossWeights, KnowledgeDistillationPolicy
from hookprune.pruning.base import ArgumentError

DISTILLERS = """\
version: 1
distillers:
  kd:
    temperature: 3.0
    distill_weight: 0.7
    student_weight: 0.3
policies:
  - distiller:
      instance_name: kd
    starting_epoch: 1
    ending_epoch: 3
    frequency: 1
"""


def mlp(hidden: int = 16, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))


def teacher_net(seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.create_model("lenet300_100", input_features=64)


def batch(seed: int = 0, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 64, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def step(sched, forward, x, y, epoch, i=0, n=1):
    """One training step's forward and loss; returns (loss as the loop computed it, total after the hook)."""
    loss = F.cross_entropy(forward(x), y)
    total = sched.fire("before_backward", epoch=epoch, minibatch_id=i, minibatches_per_epoch=n, loss=loss)
    return loss, total


def run(sched, forward, epochs, batches=2, lr=0.1):
    """A plain loop calling ``forward`` for the training step; returns every loss ``before_backward`` gave."""
    optimizer = sched.optimizer
    data = [batch(seed) for seed in range(batches)]
    totals = []
    for epoch in range(epochs):
        sched.fire("on_epoch_begin", epoch=epoch)
        for i, (x, y) in enumerate(data):
            args = dict(epoch=epoch, minibatch_id=i, minibatches_per_epoch=batches)
            sched.fire("on_minibatch_begin", **args)
            _, total = step(sched, forward, x, y, epoch, i, batches)
            totals.append(total.detach())
            optimizer.zero_grad()
            total.backward()
            sched.fire("before_optimizer_step", **args)
            optimizer.step()
            sched.fire("on_minibatch_end", **args)
        sched.fire("on_epoch_end", epoch=epoch)
    return totals


# -- Distiller's command line --------------------------------------------------------------------


def test_argparse_options_have_distillers_flags_dests_and_defaults():
    parser = argparse.ArgumentParser()
    kd.add_distillation_args(parser)
    assert vars(parser.parse_args([])) == {
        "kd_teacher": None, "kd_resume": "", "kd_temp": 1.0, "kd_distill_wt": 0.5, "kd_student_wt": 0.5,
        "kd_teacher_wt": 0.0, "kd_start_epoch": 0}
    long = parser.parse_args(["--kd-teacher", "resnet56_cifar", "--kd-resume", "t.pth", "--kd-temperature", "4",
                              "--kd-distill-wt", "0.7", "--kd-student-wt", "0.3", "--kd-teacher-wt", "0",
                              "--kd-start-epoch", "5"])
    short = parser.parse_args(["--kd-teacher", "resnet56_cifar", "--kd-resume", "t.pth", "--kd-temp", "4",
                               "--kd-dw", "0.7", "--kd-sw", "0.3", "--kd-tw", "0", "--kd-start-epoch", "5"])
    assert vars(long) == vars(short) == {
        "kd_teacher": "resnet56_cifar", "kd_resume": "t.pth", "kd_temp": 4.0, "kd_distill_wt": 0.7,
        "kd_student_wt": 0.3, "kd_teacher_wt": 0.0, "kd_start_epoch": 5}


def test_argparse_pretrained_flag_and_arch_choices(capsys):
    parser = argparse.ArgumentParser()
    kd.add_distillation_args(parser, arch_choices=["resnet20_cifar", "resnet56_cifar"], enable_pretrained=True)
    args = parser.parse_args(["--kd-teacher", "resnet56_cifar", "--kd-pretrained"])
    assert args.kd_teacher == "resnet56_cifar" and args.kd_pretrained is True
    assert parser.parse_args([]).kd_pretrained is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--kd-teacher", "vgg16_cifar"])
    assert "invalid choice: 'vgg16_cifar'" in capsys.readouterr().err
    plain = argparse.ArgumentParser()
    kd.add_distillation_args(plain)
    with pytest.raises(SystemExit):
        plain.parse_args(["--kd-pretrained"])


# -- the policy in code ----------------------------------------------------------------------------


def scheduled(student, teacher, temperature=3.0, weights=(0.7, 0.3, 0.0), start=0, end=1):
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    sched = hookprune.CompressionScheduler(student, optimizer=optimizer)
    policy = KnowledgeDistillationPolicy(student, teacher, temperature, DistillationLossWeights(*weights))
    sched.add_policy(policy, starting_epoch=start, ending_epoch=end, frequency=1)
    return sched, policy


def test_loss_is_hintons_formula_with_t_squared_and_its_gradient_reaches_the_student():
    student = mlp()
    teacher = torch.nn.Sequential(teacher_net(), torch.nn.Dropout(0.5))
    sched, policy = scheduled(student, teacher, temperature=3.0, weights=(0.7, 0.3, 0.0))
    x, y = batch()
    sched.fire("on_epoch_begin", epoch=0)
    teacher.train()
    loss, total = step(sched, policy.forward, x, y, epoch=0)

    assert not teacher.training, "the teacher runs in eval mode (no dropout)"
    with torch.no_grad():
        teacher_logits = teacher(x)
    student_logits = student(x)
    p_teacher = torch.softmax(teacher_logits / 3.0, dim=1)
    log_p_student = torch.log_softmax(student_logits / 3.0, dim=1)
    kl = (p_teacher * (p_teacher.log() - log_p_student)).sum() / x.shape[0]
    expected = 0.3 * F.cross_entropy(student_logits, y) + 0.7 * 3.0 ** 2 * kl
    torch.testing.assert_close(total, expected)
    assert list(sched.loss_components) == ["distillation"]
    torch.testing.assert_close(sched.loss_components["distillation"], expected - loss)
    torch.testing.assert_close(policy.last_distill_loss, kl.detach())

    total.backward()
    got = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    expected.backward()
    for g, want in zip(got, [p.grad for p in student.parameters()], strict=True):
        torch.testing.assert_close(g, want)
    assert all(p.grad is None for p in teacher.parameters())


def test_outside_its_window_forward_is_the_student_alone_and_no_term_is_added():
    student, teacher = mlp(), teacher_net()
    sched, policy = scheduled(student, teacher, start=1, end=2)
    teacher_calls = []
    teacher.register_forward_hook(lambda *_: teacher_calls.append(1))
    x, y = batch()
    seen = {}
    for epoch in range(3):
        sched.fire("on_epoch_begin", epoch=epoch)
        seen[epoch, "active"] = policy.state_dict()["active"]
        before = len(teacher_calls)
        loss, total = step(sched, policy.forward, x, y, epoch)
        seen[epoch, "teacher ran"] = len(teacher_calls) > before
        seen[epoch, "term"] = dict(sched.loss_components)
        seen[epoch, "unchanged"] = total is loss
        sched.fire("on_epoch_end", epoch=epoch)
        assert policy.state_dict() == {"active": False}
    assert [seen[e, "active"] for e in range(3)] == [False, True, False]
    assert [seen[e, "teacher ran"] for e in range(3)] == [False, True, False]
    assert [seen[e, "unchanged"] for e in range(3)] == [True, False, True]
    assert seen[0, "term"] == seen[2, "term"] == {}
    assert list(seen[1, "term"]) == ["distillation"]


def test_the_active_flag_is_scheduler_state():
    sched, _ = scheduled(mlp(), teacher_net(), start=0, end=2)
    sched.fire("on_epoch_begin", epoch=0)
    state = sched.state_dict()
    assert list(state["plugins"].values()) == [{"active": True}]
    fresh, fresh_policy = scheduled(mlp(), teacher_net(), start=0, end=2)
    fresh.load_state_dict(state)
    assert fresh_policy.active is True
    sched.fire("on_epoch_end", epoch=0)
    assert list(sched.state_dict()["plugins"].values()) == [{"active": False}]


def test_calling_the_model_instead_of_forward_is_an_error_naming_the_fix():
    student, teacher = mlp(), teacher_net()
    sched, policy = scheduled(student, teacher)
    x, y = batch()
    sched.fire("on_epoch_begin", epoch=0)
    with pytest.raises(RuntimeError, match=r"use policy\.forward\(x\) instead of model\(x\)"):
        step(sched, student, x, y, epoch=0)
    with torch.no_grad():
        policy.forward(x)
    with pytest.raises(RuntimeError, match=r"no gradient .*use policy\.forward\(x\) instead of model\(x\)"):
        step(sched, student, x, y, epoch=0)


def test_logits_are_used_once_so_a_later_step_without_forward_fails():
    sched, policy = scheduled(mlp(), teacher_net())
    x, y = batch()
    sched.fire("on_epoch_begin", epoch=0)
    step(sched, policy.forward, x, y, epoch=0)
    with pytest.raises(RuntimeError, match=r"instead of model\(x\)"):
        step(sched, sched.model, x, y, epoch=0)


def test_forward_helper_uses_the_active_distiller_or_else_the_model():
    student, teacher = mlp(), teacher_net()
    x, _ = batch()
    plain = hookprune.CompressionScheduler(student)
    torch.testing.assert_close(kd.forward(plain, x), student(x))
    sched, policy = scheduled(student, teacher, start=1, end=2)
    sched.fire("on_epoch_begin", epoch=0)
    kd.forward(sched, x)
    assert policy.last_teacher_logits is None
    sched.fire("on_epoch_end", epoch=0)
    sched.fire("on_epoch_begin", epoch=1)
    out = kd.forward(sched, x)
    assert policy.last_students_logits is out
    with torch.no_grad():
        torch.testing.assert_close(policy.last_teacher_logits, teacher(x))


class KeywordNet(torch.nn.Module):
    """A model called with keyword inputs, as transformers' models are."""

    def __init__(self) -> None:
        super().__init__()
        self.body = mlp()

    def forward(self, *, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_routed_forward_runs_the_teacher_beside_a_positional_call_and_restores_forward():
    student, teacher = mlp(), teacher_net()
    x, _ = batch()
    sched, policy = scheduled(student, teacher)
    sched.fire("on_epoch_begin", epoch=0)
    with kd.routed_forward(sched, student, " (a hint)"):
        out = student(x)
        assert policy.last_students_logits is out
        with pytest.raises(TypeError, match=r"must be positional; the student was called with keyword arguments "
                                            r"\['input'\] \(a hint\)$"):
            student(input=x)
    with torch.no_grad():
        torch.testing.assert_close(policy.last_teacher_logits, teacher(x))
    assert "forward" not in student.__dict__


def test_routed_forward_leaves_the_model_alone_without_distillers():
    model = KeywordNet()
    x, _ = batch()
    sched = hookprune.CompressionScheduler(model)
    with kd.routed_forward(sched, model):
        assert "forward" not in model.__dict__
        torch.testing.assert_close(model(x=x), model.body(x))


@pytest.mark.parametrize(("kwargs", "argument", "message"), [
    ({"loss_weights": DistillationLossWeights(0.5, 0.5, 0.1)}, "loss_weights.teacher",
     "the teacher weight must be 0: training the teacher against the labels is not supported"),
    ({"loss_weights": DistillationLossWeights(-0.5, 0.5, 0)}, "loss_weights.distill",
     "the distill weight must be a number >= 0, got -0.5"),
    ({"loss_weights": (0.5, 0.5)}, "loss_weights", "loss_weights must be DistillationLossWeights"),
    ({"temperature": 0}, "temperature", "the temperature must be a number > 0, got 0"),
])
def test_bad_arguments_are_refused_at_construction(kwargs, argument, message):
    with pytest.raises(ArgumentError, match=message) as info:
        KnowledgeDistillationPolicy(mlp(), teacher_net(), **kwargs)
    assert info.value.argument == argument


# -- the YAML form ---------------------------------------------------------------------------------


def test_yaml_and_code_forms_give_the_same_losses(tmp_path):
    schedule = tmp_path / "kd.yaml"
    schedule.write_text(DISTILLERS)
    teacher = teacher_net()
    student_a, student_b = mlp(), mlp()
    yaml_sched = hookprune.load(schedule, student_a, torch.optim.SGD(student_a.parameters(), lr=0.1),
                                teacher=copy.deepcopy(teacher))
    code_sched = hookprune.CompressionScheduler(student_b, optimizer=torch.optim.SGD(student_b.parameters(), lr=0.1))
    code_sched.add_policy(KnowledgeDistillationPolicy(student_b, copy.deepcopy(teacher), 3.0,
                                                      DistillationLossWeights(0.7, 0.3, 0.0)),
                          starting_epoch=1, ending_epoch=3, frequency=1)
    assert isinstance(yaml_sched.instances["kd"], KnowledgeDistillationPolicy)
    from_yaml = run(yaml_sched, lambda x: kd.forward(yaml_sched, x), epochs=4)
    from_code = run(code_sched, lambda x: kd.forward(code_sched, x), epochs=4)
    assert len(from_yaml) == 8
    # the YAML form adds its term to the loop's loss (a native plugin), the code form chains it as Distiller does
    # (student_w * loss + ...): equal sums, rounded in a different order
    torch.testing.assert_close(torch.stack(from_yaml), torch.stack(from_code), rtol=1e-6, atol=0)
    assert from_yaml[0].item() == from_code[0].item()
    plain_student = mlp()
    plain = hookprune.CompressionScheduler(plain_student, optimizer=torch.optim.SGD(plain_student.parameters(),
                                                                                      lr=0.1))
    undistilled = run(plain, plain_student, epochs=4)
    assert [torch.equal(a, b) for a, b in zip(from_yaml, undistilled, strict=True)] == [True] * 2 + [False] * 6
    assert yaml_sched.state_dict()["instances"] == {"kd": {"active": False}}


@pytest.mark.parametrize("form", ["raw", "state_dict", "model"])
def test_teacher_is_built_by_arch_and_loaded_from_a_weights_only_checkpoint(tmp_path, form):
    trained = teacher_net(seed=5)
    weights = trained.state_dict()
    saved = {"raw": weights,
             "state_dict": {"state_dict": {f"module.{k}": v for k, v in weights.items()}, "epoch": 7,
                            "arch": "lenet300_100"},
             "model": {"model": weights}}[form]
    torch.save(saved, tmp_path / "teacher.pth")
    schedule = {"distillers": {"kd": {"class": "KnowledgeDistillationPolicy", "teacher_arch": "lenet300_100",
                                      "teacher_args": {"input_features": 64},
                                      "teacher_checkpoint": str(tmp_path / "teacher.pth")}},
                "policies": [{"distiller": {"instance_name": "kd"}, "starting_epoch": 0, "ending_epoch": 1}]}
    sched = hookprune.load(schedule, mlp())
    teacher = sched.instances["kd"].teacher
    assert isinstance(teacher, models.LeNet300100)
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, weights[name]), name


def test_a_checkpoint_of_another_shape_is_refused_naming_the_tensors(tmp_path):
    torch.save(models.create_model("lenet300_100").state_dict(), tmp_path / "mnist.pth")
    schedule = {"distillers": {"kd": {"teacher_arch": "lenet300_100", "teacher_args": {"input_features": 64},
                                      "teacher_checkpoint": str(tmp_path / "mnist.pth")}}}
    with pytest.raises(hookprune.ScheduleError) as info:
        hookprune.load(schedule, mlp())
    assert str(info.value).endswith(f"teacher checkpoint '{tmp_path / 'mnist.pth'}' does not fit the LeNet300100 "
                                    "teacher: tensors 1 of another shape (fc1.weight)")


def test_a_checkpoint_needing_pickled_classes_is_refused_at_its_line(tmp_path):
    student = mlp()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    torch.save({"state_dict": teacher_net().state_dict(), "optimizer_type": type(optimizer)}, tmp_path / "t.pth")
    schedule = tmp_path / "kd.yaml"
    schedule.write_text(DISTILLERS.replace("    temperature: 3.0\n",
                                           "    teacher_arch: lenet300_100\n    teacher_args: {input_features: 64}\n"
                                           f"    teacher_checkpoint: {tmp_path / 't.pth'}\n"))
    with pytest.raises(hookprune.ScheduleError) as info:
        hookprune.load(schedule, student, optimizer)
    assert str(info.value) == (
        f"{schedule}:6:25: distillers.kd (KnowledgeDistillationPolicy): cannot read teacher checkpoint "
        f"'{tmp_path / 't.pth'}' with torch.load(weights_only=True): Unsupported global: GLOBAL "
        "torch.optim.sgd.SGD was not an allowed global by default; save the teacher's state_dict() alone")


@pytest.mark.parametrize(("old", "new", "teacher", "message"), [
    ("    temperature: 3.0\n", "    temprature: 3.0\n", True,
     "4:5: distillers.kd (KnowledgeDistillationPolicy) has no argument 'temprature' (did you mean 'temperature'?); "
     "it takes: teacher_arch, teacher_args, teacher_checkpoint, temperature, distill_weight, student_weight, "
     "teacher_weight"),
    ("    student_weight: 0.3\n", "    student_weight: half\n", True,
     "6:21: distillers.kd (KnowledgeDistillationPolicy): 'student_weight' must be a number, got 'half'"),
    ("    student_weight: 0.3\n", "    student_weight: 0.3\n    teacher_weight: 0.5\n", True,
     "7:21: distillers.kd (KnowledgeDistillationPolicy): the teacher weight must be 0: training the teacher "
     "against the labels is not supported (the loss hook receives no labels); train the teacher beforehand"),
    ("    temperature: 3.0\n", "    temperature: -1\n", True,
     "4:18: distillers.kd (KnowledgeDistillationPolicy): the temperature must be a number > 0, got -1"),
    ("  kd:\n", "  kd:\n    class: KnowledgeDistilationPolicy\n", True,
     "4:12: unknown class 'KnowledgeDistilationPolicy' (did you mean 'KnowledgeDistillationPolicy'?); "
     "'hookprune plugins' lists the installed ones"),
    ("  kd:\n", "  kd:\n    teacher_arch: lenet300-100\n", False,
     "4:19: distillers.kd (KnowledgeDistillationPolicy): unknown architecture 'lenet300-100' (did you mean "
     "'lenet300_100'?)"),
    ("  kd:\n", "  kd:\n    teacher_arch: lenet300_100\n", True,
     "4:19: distillers.kd (KnowledgeDistillationPolicy): the teacher is given twice: by 'teacher_arch' and by "
     "hookprune.load(..., teacher=...); keep one"),
    ("    temperature: 3.0\n", "    temperature: 3.0\n", False,
     "3:3: distillers.kd (KnowledgeDistillationPolicy): no teacher: give 'teacher_arch' (and "
     "'teacher_checkpoint'), or pass the teacher model as hookprune.load(schedule, model, optimizer, "
     "teacher=teacher)"),
    ("      instance_name: kd\n", "      instance_name: kd\n      args: {keep_mask: true}\n", True,
     "10:14: policy for 'kd': unknown arg 'keep_mask'; it takes: chain_loss"),
    ("      instance_name: kd\n", "      instance_name: k\n", True,
     "9:22: distiller instance 'k' is not declared under 'distillers' (did you mean 'kd'?)"),
])
def test_schedule_errors_are_one_line_at_the_culprit(tmp_path, old, new, teacher, message):
    schedule = tmp_path / "kd.yaml"
    assert DISTILLERS.count(old) == 1
    schedule.write_text(DISTILLERS.replace(old, new))
    with pytest.raises(hookprune.ScheduleError) as info:
        hookprune.load(schedule, mlp(), teacher=teacher_net() if teacher else None)
    assert str(info.value) == f"{schedule}:{message}"


def test_a_teacher_for_a_schedule_without_distillers_is_an_error():
    with pytest.raises(hookprune.ScheduleError) as info:
        hookprune.load({"version": 1}, mlp(), teacher=teacher_net())
    assert str(info.value) == ("<schedule>: a teacher model was passed to hookprune.load, but the schedule "
                               "declares no 'distillers'")


# -- a real gain -----------------------------------------------------------------------------------


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:1200], order[1200:]
    return x[train], y[train], x[test], y[test]


def train_on_digits(model, data, epochs, seed, distill_from=None):
    """SGD with momentum, minibatches of 64; with ``distill_from``, Hinton's setting: T = 4, the soft
    targets weighted 0.7 (times T^2, which the policy applies)."""
    x_train, y_train, _, _ = data
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = hookprune.CompressionScheduler(model, optimizer=optimizer)
    if distill_from is not None:
        policy = KnowledgeDistillationPolicy(model, distill_from, temperature=4.0,
                                             loss_weights=DistillationLossWeights(0.7, 0.3, 0.0))
        sched.add_policy(policy, starting_epoch=0, ending_epoch=epochs, frequency=1)
    gen = torch.Generator().manual_seed(seed)
    batches = (len(x_train) + 63) // 64
    for epoch in range(epochs):
        sched.fire("on_epoch_begin", epoch=epoch)
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(batches):
            idx = order[i * 64:(i + 1) * 64]
            args = dict(epoch=epoch, minibatch_id=i, minibatches_per_epoch=batches)
            sched.fire("on_minibatch_begin", **args)
            loss = F.cross_entropy(kd.forward(sched, x_train[idx]), y_train[idx])
            loss = sched.fire("before_backward", **args, loss=loss)
            optimizer.zero_grad()
            loss.backward()
            sched.fire("before_optimizer_step", **args)
            optimizer.step()
            sched.fire("on_minibatch_end", **args)
        sched.fire("on_epoch_end", epoch=epoch)
    return sched


def accuracy(model, data) -> float:
    _, _, x_test, y_test = data
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).float().mean().item()


def test_a_small_student_distilled_from_lenet_beats_the_same_student_trained_alone():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = digits_split()
        teacher = teacher_net(seed=100)
        train_on_digits(teacher, data, epochs=25, seed=100)
        assert accuracy(teacher, data) > 0.97
        alone, distilled = [], []
        for seed in range(3):
            student = mlp(seed=seed)
            train_on_digits(student, data, epochs=10, seed=seed)
            alone.append(accuracy(student, data))
            student = mlp(seed=seed)
            sched = train_on_digits(student, data, epochs=10, seed=seed, distill_from=teacher)
            distilled.append(accuracy(student, data))
            assert list(sched.loss_components) == ["distillation"]
            assert sched.loss_components["distillation"].requires_grad
    finally:
        torch.set_num_threads(threads)
    assert sum(distilled) / 3 >= sum(alone) / 3, (distilled, alone)


def test_check_gives_a_teacherless_distiller_the_teacher_architecture(tmp_path, capsys):
    from hookprune import cli

    schedule = tmp_path / "kd.yaml"
    schedule.write_text("version: 1\ndistillers:\n  kd: {temperature: 4.0}\n"
                        "policies:\n  - distiller: {instance_name: kd}\n    starting_epoch: 0\n    ending_epoch: 3\n")
    assert cli.main(["check", str(schedule), "--arch", "lenet300_100", "--teacher", "simplenet_mnist"]) == 0
    assert capsys.readouterr().out == f"{schedule}: ok (1 instance, epochs 0..2, arch lenet300_100)\n"

    assert cli.main(["check", str(schedule), "--arch", "lenet300_100"]) == 1
    assert "3:3: distillers.kd (KnowledgeDistillationPolicy): no teacher" in capsys.readouterr().err

    assert cli.main(["check", str(schedule), "--arch", "lenet300_100", "--teacher", "simplenet"]) == 2
    assert capsys.readouterr().err == ("hookprune check: --teacher: unknown architecture 'simplenet' (did you mean "
                                       "'simplenet_mnist', 'simplenet_cifar' or 'mobilenet'?)\n")
