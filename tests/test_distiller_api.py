"""Distiller's API on the engine: add_policy's arguments, loss chaining of Distiller-style policies, and the
per-parameter maskers, each as Distiller behaves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hookprune
from hookprune import DistillationLossWeights, KnowledgeDistillationPolicy, PolicyLoss, RegularizationPolicy
from hookprune.compat.distiller import LossComponent
from hookprune.regularization import L1Regularizer

STEP = {"epoch": 0, "minibatch_id": 0, "minibatches_per_epoch": 1}


class Recorder:
    @hookprune.hookimpl
    def on_epoch_begin(self, epoch):
        pass


def test_add_policy_refuses_an_epochs_list_together_with_a_range(lenet):
    sched = hookprune.CompressionScheduler(lenet)
    with pytest.raises(ValueError, match=r"^add_policy: give either 'epochs' or starting_epoch/ending_epoch/frequency, "
                                         r"not both \('epochs' and 'starting_epoch', 'ending_epoch' were given\)$"):
        sched.add_policy(Recorder(), epochs=[1, 2, 3], starting_epoch=4, ending_epoch=5)
    with pytest.raises(ValueError, match=r"\('epochs' and 'frequency' were given\)"):
        sched.add_policy(Recorder(), epochs=[1], frequency=2)
    assert sched.scheduled == ()


class AddOne:
    """A Distiller-style policy adding 1 to the loss it receives."""

    def before_backward_pass(self, model, epoch, minibatch_id, minibatches_per_epoch, loss, zeros_mask_dict,
                             optimizer=None):
        one = torch.ones_like(loss)
        return PolicyLoss(loss + one, [LossComponent("one", one)])


class Double:
    """A Distiller-style policy doubling the loss it receives."""

    def before_backward_pass(self, model, epoch, minibatch_id, minibatches_per_epoch, loss, zeros_mask_dict,
                             optimizer=None):
        return PolicyLoss(2 * loss, [LossComponent("doubled", loss)])


def test_distiller_style_policies_chain_the_loss_in_policy_order(lenet):
    sched = hookprune.CompressionScheduler(lenet)
    sched.add_policy(AddOne(), epochs=[0])
    sched.add_policy(Double(), epochs=[0])
    total = sched.before_backward_pass(loss=torch.tensor(3.0), **STEP)
    assert float(total) == 8.0
    assert {k: float(v) for k, v in sched.loss_components.items()} == {"one": 1.0, "doubled": 4.0}


def test_native_hooks_add_to_the_loops_loss_and_a_distiller_policy_after_them_scales_their_terms(lenet):
    class Penalty:
        @hookprune.hookimpl
        def before_backward(self, loss):
            return hookprune.LossTerm("penalty", torch.tensor(2.0))

    class Seen:
        @hookprune.hookimpl
        def before_backward(self, loss):
            self.loss = float(loss)

    sched = hookprune.CompressionScheduler(lenet)
    seen = Seen()
    sched.add_policy(Penalty(), epochs=[0])
    sched.add_policy(seen, epochs=[0])
    sched.add_policy(Double(), epochs=[0])
    assert float(sched.fire("before_backward", **STEP, loss=torch.tensor(3.0))) == 10.0
    assert seen.loss == 3.0, "a native hook receives the loop's loss"


def test_a_regularizer_and_knowledge_distillation_through_distillers_api_chain_as_distiller_does():
    """Distiller's compress_classifier adds the KD policy after the schedule's: the regularizer's term is scaled
    by the student weight along with the loss."""
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(8, 4))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(8, 4))
    x, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 0])
    sched = hookprune.CompressionScheduler(student)
    regularizer = L1Regularizer("l1", student, {"1.weight": 0.01})
    sched.add_policy(RegularizationPolicy(regularizer), epochs=[0])
    kd = KnowledgeDistillationPolicy(student, teacher, temperature=2.0,
                                     loss_weights=DistillationLossWeights(0.7, 0.3, 0.0))
    sched.add_policy(kd, epochs=[0])
    sched.fire("on_epoch_begin", epoch=0)
    loss = nn.functional.cross_entropy(kd.forward(x), y)
    total = sched.fire("before_backward", **STEP, loss=loss)

    l1 = 0.01 * student[1].weight.abs().sum()
    soft = nn.functional.kl_div(nn.functional.log_softmax(student(x) / 2.0, dim=1),
                                nn.functional.softmax(teacher(x) / 2.0, dim=1), reduction="batchmean")
    distiller = 0.3 * (loss + l1) + 0.7 * 4.0 * soft
    torch.testing.assert_close(total, distiller)
    added = 0.3 * loss + l1 + 0.7 * 4.0 * soft
    assert abs(float((added - distiller).detach())) > 1e-3, "the regularizer's term is scaled, not added"
    assert list(sched.loss_components) == ["L1Regularizer_loss", "distillation"]


def test_masking_a_copy_leaves_the_parameters_pending_mask_pending(lenet):
    sched = hookprune.CompressionScheduler(lenet)
    masker = sched.zeros_mask_dict["fc3.weight"]
    mask = torch.ones_like(lenet.fc3.weight, dtype=torch.bool)
    mask[0, :16] = False
    masker.mask = mask
    copy = lenet.fc3.weight.detach().clone()
    masker.apply_mask(copy)
    assert int((copy == 0).sum()) == 16
    sched.fire("on_minibatch_begin", **STEP)
    assert int((lenet.fc3.weight == 0).sum()) == 16


def test_maskers_are_views_of_the_engines_masks_and_options(lenet):
    sched = hookprune.CompressionScheduler(lenet)
    masker = sched.zeros_mask_dict["module.fc2.weight"]
    masker.mask = torch.zeros_like(lenet.fc2.weight)
    assert sched.masks["fc2.weight"].dtype == torch.bool and not sched.masks["fc2.weight"].any()
    masker.mask_on_forward_only = True
    assert sched.masks.options("fc2.weight") == {"mask_on_forward_only"}
    masker.mask = None
    assert "fc2.weight" not in sched.masks
