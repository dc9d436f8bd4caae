"""The model zoo: Distiller's architectures with the names its schedules use, and legacy parameter names."""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import hookprune
from hookprune import cli, models
from hookprune._engine.params import LEGACY_RULES, LegacyRule, ParamIndex
from hookprune.errors import ScheduleError, ScheduleWarning
from tests.conftest import CORPUS
from tests.test_corpus import manifest

#: small constructor arguments where the defaults make a needlessly big model for a CPU test
SMALL = {"alexnet_bn": {"num_classes": 7}, "word_lm": {"num_classes": 50}}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


@functools.cache
def meta_index(arch: str) -> ParamIndex:
    return ParamIndex(models.create_model(arch, device="meta"))


@pytest.mark.parametrize("arch", sorted(models.ZOO))
def test_every_zoo_model_trains_on_its_dummy_input(arch):
    torch.manual_seed(0)
    model = models.create_model(arch, **SMALL.get(arch, {}))
    inputs = models.dummy_input(arch, model, batch_size=2)
    output = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    logits = output[0] if isinstance(output, tuple) else output
    outputs = {"word_lm": 50, "alexnet_bn": 7, "mobilenet": 1000, "preact_resnet18": 1000}.get(arch, 10)
    assert logits.shape[-1] == outputs
    assert logits.shape[-2 if arch == "word_lm" else 0] == 2
    logits.float().square().mean().backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


def test_zoo_input_shapes():
    assert models.input_shape("resnet20_cifar") == (3, 32, 32)
    assert models.input_shape("vgg16_cifar") == (3, 32, 32)
    assert models.input_shape("simplenet_mnist") == (1, 28, 28)
    assert models.input_shape("lenet300_100") == (1, 28, 28)
    assert models.input_shape("mobilenet") == (3, 224, 224)
    assert models.input_shape("resnet50") == (3, 224, 224)
    assert models.input_shape("inception_v3") == (3, 299, 299)
    assert models.input_shape("maskrcnn_resnet50_fpn") == (3, 800, 800)
    assert models.input_shape("r3d_18") == (3, 16, 112, 112)
    assert models.input_shape("word_lm") == (35,)
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet20_cifr' \(did you mean 'resnet20_cifar'"):
        models.input_shape("resnet20_cifr")


def test_imagenet_zoo_models_run_at_their_full_size_too():
    model = models.create_model("mobilenet", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, *models.input_shape("mobilenet"))).shape == (1, 5)


# He et al. 2016, table 6: parameters of the CIFAR ResNets, whose shortcuts have none (option A).
HE_PARAMS_M = {"resnet20_cifar": 0.27, "resnet32_cifar": 0.46, "resnet44_cifar": 0.66, "resnet56_cifar": 0.85,
               "resnet110_cifar": 1.7}


@pytest.mark.parametrize(("arch", "total"), [
    ("resnet20_cifar", 272_474), ("resnet32_cifar", 466_906), ("resnet44_cifar", 661_338),
    ("resnet56_cifar", 855_770), ("resnet110_cifar", 1_730_714)])
def test_cifar_resnets_have_he_et_al_sizes_plus_projection_shortcuts(arch, total):
    model = models.create_model(arch, device="meta")
    assert count(model) == total
    projections = sum(p.numel() for name, p in model.named_parameters() if ".downsample." in name)
    assert projections == 16 * 32 + 32 + 32 + 32 * 64 + 64 + 64
    body = (total - projections) / 1e6
    assert round(body, 1 if arch == "resnet110_cifar" else 2) == HE_PARAMS_M[arch]


@pytest.mark.parametrize(("arch", "total"), [
    ("plain20_cifar", 269_722), ("preact_resnet20_cifar", 269_722), ("vgg16_cifar", 14_719_818),
    ("simplenet_cifar", 62_006), ("simplenet_mnist", 431_080), ("lenet300_100", 266_610),
    ("mobilenet", 4_231_976), ("preact_resnet18", 11_687_720), ("alexnet_bn", 60_981_320),
    ("word_lm", 13_987_678)])
def test_parameter_counts(arch, total):
    assert count(models.create_model(arch, device="meta")) == total


def test_resnet20_cifar_names_and_shapes():
    found = shapes(models.create_model("resnet20_cifar", device="meta"))
    assert found["conv1.weight"] == (16, 3, 3, 3)
    assert found["layer1.0.conv1.weight"] == (16, 16, 3, 3)
    assert found["layer1.2.bn2.weight"] == (16,)
    assert found["layer2.0.conv1.weight"] == (32, 16, 3, 3)
    assert found["layer2.0.downsample.0.weight"] == (32, 16, 1, 1)
    assert found["layer2.0.downsample.1.weight"] == (32,)
    assert found["layer3.2.conv2.weight"] == (64, 64, 3, 3)
    assert found["fc.weight"] == (10, 64)
    assert sorted({n.split(".downsample")[0] for n in found if ".downsample." in n}) == ["layer2.0", "layer3.0"]
    assert len([n for n in found if n.endswith("conv1.weight") or n.endswith("conv2.weight")]) == 19


def test_plain20_has_no_shortcuts_and_the_same_convolutions():
    plain = shapes(models.create_model("plain20_cifar", device="meta"))
    resnet = shapes(models.create_model("resnet20_cifar", device="meta"))
    assert not [n for n in plain if "downsample" in n]
    assert plain == {n: s for n, s in resnet.items() if "downsample" not in n}


def test_preact_resnet20_cifar_names():
    model = models.create_model("preact_resnet20_cifar", device="meta")
    found = shapes(model)
    modules = dict(model.named_modules())
    assert isinstance(modules["layer1.0.pre_relu"], nn.ReLU)
    assert isinstance(modules["final_relu"], nn.ReLU)
    assert found["layer2.0.pre_bn.weight"] == (16,)
    assert found["layer2.0.conv1.weight"] == (32, 16, 3, 3)
    assert found["layer2.0.bn.weight"] == (32,)
    assert found["final_bn.weight"] == (64,)
    assert not [n for n in found if "downsample" in n]  # parameter-free shortcuts
    shortcut = modules["layer2.0.downsample"]
    assert shortcut(torch.ones(1, 16, 8, 8)).shape == (1, 32, 4, 4)


def test_preact_resnet18_names():
    model = models.create_model("preact_resnet18", device="meta")
    found = shapes(model)
    modules = dict(model.named_modules())
    assert {"conv1", "relu1", "final_relu", "fc"} <= set(modules)
    assert "layer1.0.pre_bn.weight" not in found  # the stem activates layer1's first block
    assert found["layer1.1.pre_bn.weight"] == (64,)
    assert found["layer2.0.pre_bn.weight"] == (64,)
    assert found["layer2.0.bn1_2.weight"] == (128,)
    assert found["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert found["layer4.1.conv2.weight"] == (512, 512, 3, 3)
    assert found["fc.weight"] == (1000, 512)


def test_vgg16_cifar_names():
    found = shapes(models.create_model("vgg16_cifar", device="meta"))
    convs = sorted(int(n.split(".")[1]) for n in found if n.startswith("features.") and n.endswith(".weight"))
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert found["features.0.weight"] == (64, 3, 3, 3)
    assert found["features.28.weight"] == (512, 512, 3, 3)
    assert found["classifier.weight"] == (10, 512)


def test_mobilenet_names():
    found = shapes(models.create_model("mobilenet", device="meta"))
    assert found["model.0.0.weight"] == (32, 3, 3, 3)
    assert found["model.1.0.weight"] == (32, 1, 3, 3)  # depthwise
    assert found["model.1.3.weight"] == (64, 32, 1, 1)  # pointwise
    assert found["model.2.0.weight"] == (64, 1, 3, 3)
    assert found["model.13.3.weight"] == (1024, 1024, 1, 1)
    assert found["fc.weight"] == (1000, 1024)
    assert sorted({int(n.split(".")[1]) for n in found if n.startswith("model.")}) == list(range(14))


def test_alexnet_bn_names():
    model = models.create_model("alexnet_bn", device="meta")
    found = shapes(model)
    modules = dict(model.named_modules())
    assert [n for n in found if n.endswith("weight") and len(found[n]) == 4] == [
        "features.0.weight", "features.2.weight", "features.6.weight", "features.10.weight", "features.13.weight"]
    assert found["features.2.weight"] == (256, 48, 5, 5)  # two groups
    assert found["classifier.0.weight"] == (4096, 9216)
    assert "classifier.0.bias" not in found
    assert isinstance(modules["features.1"], nn.ReLU)
    assert isinstance(modules["classifier.5"], nn.ReLU)
    assert isinstance(modules["classifier.6"], nn.Linear)


def test_simplenets_names():
    assert list(shapes(models.create_model("simplenet_cifar", device="meta"))) == [
        f"{layer}.{kind}" for layer in ("conv1", "conv2", "fc1", "fc2", "fc3") for kind in ("weight", "bias")]
    found = shapes(models.create_model("simplenet_mnist", device="meta"))
    assert found["conv2.weight"] == (50, 20, 5, 5)
    assert found["fc1.weight"] == (500, 800)


def test_word_lm_names_and_forward():
    model = models.create_model("word_lm", num_classes=50)
    found = shapes(model)
    assert found["encoder.weight"] == (50, 200)
    assert found["rnn.weight_ih_l0"] == (800, 200)
    assert found["rnn.weight_hh_l0"] == (800, 200)
    assert found["rnn.weight_ih_l1"] == (800, 200)
    assert found["rnn.weight_hh_l1"] == (800, 200)
    assert found["decoder.weight"] == (50, 200)
    tokens, hidden = models.dummy_input("word_lm", model, batch_size=3)
    assert tokens.dtype == torch.int64 and tokens.shape[1] == 3 and int(tokens.max()) < 50
    assert [tuple(h.shape) for h in hidden] == [(2, 3, 200), (2, 3, 200)]
    logits, (h, c) = model(tokens, hidden)
    assert logits.shape == (tokens.shape[0], 3, 50)
    assert h.shape == c.shape == (2, 3, 200)


def test_word_lm_large_tied_configuration():
    model = models.create_model("word_lm", device="meta", ninp=1500, nhid=1500, dropout=0.65, tie_weights=True)
    found = shapes(model)
    assert model.decoder.weight is model.encoder.weight
    assert "decoder.weight" not in found  # tied: one parameter, named by the encoder
    assert found["rnn.weight_hh_l1"] == (6000, 1500)


def test_word_lm_variants_and_errors():
    gru = models.create_model("word_lm", num_classes=20, nlayers=1, rnn_type="GRU")  # no dropout warning
    hidden = gru.init_hidden(4)
    assert isinstance(hidden, torch.Tensor) and hidden.shape == (1, 4, 200)
    with pytest.raises(ValueError, match="tie_weights needs nhid == ninp"):
        models.create_model("word_lm", device="meta", nhid=100, tie_weights=True)
    with pytest.raises(ValueError, match="rnn_type must be"):
        models.create_model("word_lm", device="meta", rnn_type="LSTMX")


def test_lenet_dummy_input_follows_its_input_size():
    model = models.create_model("lenet300_100", input_features=64)
    assert models.dummy_input("lenet300_100", model, batch_size=3).shape == (3, 64)
    assert models.dummy_input("lenet300_100", models.create_model("lenet300_100")).shape == (2, 1, 28, 28)


def test_torchvision_classifiers_get_small_inputs_where_they_accept_them():
    model = models.create_model("resnet18", num_classes=3)
    x = models.dummy_input("resnet18", model)
    assert x.shape == (2, 3, 64, 64)
    assert model(x).shape == (2, 3)
    vit = models.create_model("vit_b_32", device="meta")
    x = models.dummy_input("vit_b_32", vit)
    assert x.shape == (2, 3, 224, 224) and x.device.type == "meta"
    assert vit(x).shape == (2, 1000)


def test_detection_dummy_input_is_a_list_of_small_images():
    model = models.create_model("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3, min_size=64,
                                max_size=64).eval()
    images = models.dummy_input("fasterrcnn_mobilenet_v3_large_320_fpn", model, batch_size=2)
    assert [tuple(i.shape) for i in images] == [(3, 64, 64), (3, 64, 64)]
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and {"boxes", "labels", "scores"} <= set(detections[0])


def test_meta_build_of_a_model_that_computes_its_layout_with_tensors():
    model = models.create_model("regnet_y_400mf", device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {b.device.type for b in model.buffers()} == {"meta"}
    assert models.dummy_input("regnet_y_400mf", model).device.type == "meta"


def test_segmentation_models_build_without_pretrained_backbones():
    model = models.create_model("fcn_resnet50", device="meta", num_classes=4)
    assert shapes(model)["classifier.4.weight"] == (4, 512, 1, 1)


# Legacy spellings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("legacy", "current"), [
    ("module.features.0.weight", "conv1.weight"),
    ("features.1.bias", "bn1.bias"),
    ("module.features.4.0.0.0.0.0.weight", "layer1.0.conv1.weight"),
    ("features.4.0.0.0.0.1.weight", "layer1.0.bn1.weight"),
    ("module.features.4.0.0.0.0.3.weight", "layer1.0.conv2.weight"),
    ("features.4.1.0.0.0.4.bias", "layer1.1.bn2.bias"),
    ("module.features.5.3.0.0.1.weight", "layer2.3.conv3.weight"),
    ("features.6.22.0.0.2.bias", "layer3.22.bn3.bias"),
    ("module.features.7.0.0.1.0.weight", "layer4.0.downsample.0.weight"),
    ("features.7.0.0.1.1.weight", "layer4.0.downsample.1.weight"),
    ("module.last_linear.weight", "fc.weight"),
])
def test_cadene_resnext_names_resolve_to_torchvision(legacy, current):
    assert meta_index("resnext101_32x8d").resolve(legacy) == current


@pytest.mark.parametrize("name", [
    "features.8.0.0.0.0.0.weight",  # no fifth stage
    "features.4.3.0.0.0.0.weight",  # layer1 has three blocks
    "features.4.1.0.1.0.weight",  # only the first block of a stage has a projection shortcut
    "features.4.0.0.0.0.2.weight",  # a ReLU: no parameters
    "features.4.0.0.0.0.0.bias",  # convolutions without bias
    "features.2.weight",
])
def test_cadene_names_without_a_counterpart_are_rejected(name):
    assert meta_index("resnext101_32x8d").resolve(name) is None


def test_cadene_rules_apply_only_to_bottleneck_resnets():
    assert meta_index("resnet50").resolve("features.4.0.0.0.0.0.weight") == "layer1.0.conv1.weight"
    assert meta_index("resnet18").resolve("features.0.weight") is None  # basic blocks: not Cadene's ResNeXt
    assert meta_index("resnet18").resolve("last_linear.weight") is None
    assert meta_index("vgg16").resolve("last_linear.weight") is None


@pytest.mark.parametrize(("legacy", "current"), [
    ("module.backbone.fpn.inner_blocks.0.weight", "backbone.fpn.inner_blocks.0.0.weight"),
    ("backbone.fpn.inner_blocks.3.bias", "backbone.fpn.inner_blocks.3.0.bias"),
    ("module.backbone.fpn.layer_blocks.2.weight", "backbone.fpn.layer_blocks.2.0.weight"),
    ("module.rpn.head.conv.weight", "rpn.head.conv.0.0.weight"),
    ("roi_heads.mask_head.mask_fcn1.weight", "roi_heads.mask_head.0.0.weight"),
    ("module.roi_heads.mask_head.mask_fcn4.bias", "roi_heads.mask_head.3.0.bias"),
    ("backbone.fpn.inner_blocks.0.0.weight", "backbone.fpn.inner_blocks.0.0.weight"),
    ("module.roi_heads.box_head.fc6.weight", "roi_heads.box_head.fc6.weight"),
])
def test_old_torchvision_detection_names_resolve(legacy, current):
    assert meta_index("maskrcnn_resnet50_fpn").resolve(legacy) == current


@pytest.mark.parametrize("name", [
    "backbone.fpn.inner_blocks.4.weight", "roi_heads.mask_head.mask_fcn5.weight",
    "roi_heads.mask_head.mask_fcn0.weight", "rpn.head.conv.bias_x", "backbone.fpn.inner_blocks.0.1.weight"])
def test_old_torchvision_detection_names_without_a_counterpart_are_rejected(name):
    assert meta_index("maskrcnn_resnet50_fpn").resolve(name) is None


def test_old_retinanet_head_names_resolve():
    index = meta_index("retinanet_resnet50_fpn")
    assert index.resolve("head.classification_head.conv.2.weight") == "head.classification_head.conv.1.0.weight"
    assert index.resolve("module.head.regression_head.conv.6.bias") == "head.regression_head.conv.3.0.bias"
    assert index.resolve("head.regression_head.conv.8.bias") is None


def test_every_legacy_rule_is_documented():
    assert {rule.name for rule in LEGACY_RULES} >= {"cadene-resnext-stem", "cadene-resnext-block",
                                                     "torchvision-fpn-blocks"}
    assert all(rule.family for rule in LEGACY_RULES)


def test_a_rewrite_must_be_unique():
    model = nn.Sequential()
    model.add_module("a", nn.Linear(2, 2))
    model.add_module("b", nn.Linear(2, 2))
    to_a = LegacyRule("to-a", "test", re.compile(r"old\.(weight|bias)"), r"a.\1")
    to_b = LegacyRule("to-b", "test", re.compile(r"old\.(weight|bias)"), r"b.\1")
    assert ParamIndex(model, legacy_rules=(to_a,)).resolve("module.old.weight") == "a.weight"
    assert ParamIndex(model, legacy_rules=(to_a, to_b)).resolve("old.weight") is None  # ambiguous
    same = LegacyRule("also-a", "test", re.compile(r"old\.(weight|bias)"), r"a.\1")
    assert ParamIndex(model, legacy_rules=(to_a, same)).resolve("old.bias") == "a.bias"
    assert ParamIndex(model, legacy_rules=()).resolve("old.weight") is None


def test_a_rewrite_to_a_name_the_model_has_twice_is_rejected():
    model = nn.Module()
    model.add_module("module", nn.Module())
    model.module.add_module("a", nn.Linear(2, 2))
    model.add_module("a", nn.Module())
    model.a.add_module("module", nn.Linear(2, 2))  # "module.a.weight" and "a.module.weight" both read "a.weight"
    rule = LegacyRule("to-a", "test", re.compile(r"old\.weight"), "a.weight")
    assert ParamIndex(model, legacy_rules=(rule,)).resolve("old.weight") is None


def test_legacy_names_in_a_schedule_reach_the_pruner_in_the_models_spelling(tmp_path):
    schedule = tmp_path / "s.yaml"
    schedule.write_text(
        "version: 1\npruners:\n  p:\n    class: AutomatedGradualPruner\n    initial_sparsity: 0.05\n"
        "    final_sparsity: 0.5\n    weights: [module.features.4.0.0.0.0.3.weight, module.last_linear.weight,\n"
        "              module.features.9.0.0.0.0.0.weight]\n"
        "policies:\n  - pruner: {instance_name: p}\n    starting_epoch: 0\n    ending_epoch: 2\n")
    model = models.create_model("resnext50_32x4d", device="meta")
    with pytest.raises(ScheduleError, match=r"s.yaml:8:15: .*the model has no parameter "
                                            r"'module.features.9.0.0.0.0.0.weight'"):
        hookprune.load(schedule, model)
    schedule.write_text(schedule.read_text().replace(",\n              module.features.9.0.0.0.0.0.weight", ""))
    sched = hookprune.load(schedule, model)
    assert sched.instances["p"].params_names == ["layer1.0.conv2.weight", "fc.weight"]


# The corpus ----------------------------------------------------------------------------------------


PARAMETER = re.compile(r"[A-Za-z_]\w*(?:\.\w+)*\.(?:weight|bias)\w*")


@pytest.mark.parametrize(("schedule", "arch"), manifest() or [pytest.param("-", "-", marks=pytest.mark.skip(
    reason=f"the Distiller schedule corpus is not at {CORPUS}"))])
def test_every_parameter_the_corpus_names_exists_in_its_architecture(schedule, arch):
    text = "\n".join(line.split("#")[0] for line in (CORPUS / schedule).read_text().splitlines())
    names = sorted(set(PARAMETER.findall(text)))
    index = meta_index(arch)
    assert [name for name in names if index.resolve(name) is None] == []


@pytest.mark.parametrize(("schedule", "arch"), [
    ("agp-pruning/prune_resnext101_fine75.yaml", "resnext101_32x8d"),
    ("object_detection_compression/maskrcnn.scheduler_agp.yaml", "maskrcnn_resnet50_fpn"),
    ("object_detection_compression/maskrcnn.scheduler_agp.non_parallel.yaml", "maskrcnn_resnet50_fpn"),
])
def test_corpus_schedules_with_legacy_names_pass_check(corpus, schedule, arch, capsys):
    path: Path = corpus / schedule
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScheduleWarning)
        status = cli.main(["check", str(path), "--arch", arch])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert out.startswith(f"{path}: ok (")
