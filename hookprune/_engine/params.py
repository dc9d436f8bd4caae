"""Parameter names: schedules name them with or without DataParallel/DDP's ``module.`` (and ``torch.compile``'s
``_orig_mod.``) at any depth.

A name the model lacks may be an older spelling of one it has: :data:`LEGACY_RULES` rewrite the
spellings of model definitions that Distiller's schedules were written against into today's names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from hookprune.errors import suggest

WRAPPER_SEGMENT = "module"
#: the segments wrappers add to the names of the modules they wrap: DataParallel's and DDP's ``module``, and
#: ``_orig_mod`` of the module ``torch.compile`` returns
WRAPPER_SEGMENTS = frozenset({WRAPPER_SEGMENT, "_orig_mod"})


def normalize_name(name: str) -> str:
    """Drop every wrapper segment: ``features.module.3.weight`` and ``_orig_mod.features.3.weight`` ->
    ``features.3.weight``."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_SEGMENTS)


@dataclass(frozen=True)
class LegacyRule:
    """One older spelling of parameter names: a name fully matching ``pattern`` becomes ``replacement``.

    ``replacement`` is a ``re`` template or a function of the match. ``requires`` names parameters the
    model must have for the rule to apply at all, so that a rule for one model family never renames
    another family's parameters.
    """

    name: str
    family: str
    pattern: re.Pattern[str]
    replacement: str | Callable[[re.Match[str]], str]
    requires: tuple[str, ...] = ()

    def rewrite(self, name: str) -> str | None:
        """The new spelling of ``name`` (without ``module.``), or None when the rule does not match it."""
        match = self.pattern.fullmatch(name)
        if match is None:
            return None
        if callable(self.replacement):
            return self.replacement(match)
        return match.expand(self.replacement)


#: inside one block of Cadene's ResNeXt ``features.S.B``: ``0`` is the map over (residual branch,
#: shortcut), the residual branch holds ``0`` = (conv1, bn1, relu, conv2, bn2, relu), ``1`` = conv3,
#: ``2`` = bn3, and the shortcut holds (conv, bn) where the block downsamples
_CADENE_BLOCK = {"0.0.0.0": "conv1", "0.0.0.1": "bn1", "0.0.0.3": "conv2", "0.0.0.4": "bn2",
                 "0.0.1": "conv3", "0.0.2": "bn3", "0.1.0": "downsample.0", "0.1.1": "downsample.1"}
_CADENE_STEM = {"features.0": "conv1", "features.1": "bn1", "last_linear": "fc"}
#: a torchvision ResNet with bottleneck blocks, which Cadene's ResNeXt features translate to
_BOTTLENECK_RESNET = ("conv1.weight", "layer1.0.conv3.weight", "layer4.0.conv3.weight", "fc.weight")


def _cadene_block(match: re.Match[str]) -> str:
    stage, block, inner, kind = match.groups()
    return f"layer{int(stage) - 3}.{block}.{_CADENE_BLOCK[inner]}.{kind}"


LEGACY_RULES: tuple[LegacyRule, ...] = (
    # Cadene's ``pretrainedmodels`` ResNeXt (resnext101_32x4d / 64x4d, converted from Torch7):
    # ``features`` = conv1, bn1, relu, maxpool, layer1..4 as nested Sequentials; ``last_linear`` = fc.
    LegacyRule("cadene-resnext-stem", "Cadene pretrainedmodels ResNeXt",
               re.compile(r"(features\.[01]|last_linear)\.(weight|bias)"),
               lambda m: f"{_CADENE_STEM[m.group(1)]}.{m.group(2)}", _BOTTLENECK_RESNET),
    LegacyRule("cadene-resnext-block", "Cadene pretrainedmodels ResNeXt",
               re.compile(r"features\.([4-7])\.(\d+)\.(" + "|".join(re.escape(k) for k in _CADENE_BLOCK)
                          + r")\.(weight|bias)"),
               _cadene_block, _BOTTLENECK_RESNET),
    # torchvision < 0.13 detection models: these convolutions were later wrapped in Conv2dNormActivation
    # (the same renames torchvision's own checkpoint upgrade performs).
    LegacyRule("torchvision-fpn-blocks", "torchvision < 0.13 FeaturePyramidNetwork",
               re.compile(r"(.*\bfpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)"), r"\1.0.\2"),
    LegacyRule("torchvision-rpn-head", "torchvision < 0.13 RPNHead",
               re.compile(r"(.*\brpn\.head\.conv)\.(weight|bias)"), r"\1.0.0.\2"),
    LegacyRule("torchvision-mask-head", "torchvision < 0.13 MaskRCNNHeads",
               re.compile(r"(.*\bmask_head)\.mask_fcn(\d+)\.(weight|bias)"),
               lambda m: f"{m.group(1)}.{int(m.group(2)) - 1}.0.{m.group(3)}"),
    LegacyRule("torchvision-retinanet-head", "torchvision < 0.13 RetinaNet heads",
               re.compile(r"(.*\b(?:classification|regression)_head\.conv)\.(\d+)\.(weight|bias)"),
               lambda m: f"{m.group(1)}.{int(m.group(2)) // 2}.0.{m.group(3)}"),
)


class ParamIndex:
    """The model's parameters by name, resolving any ``module.``-wrapped spelling to the model's own."""

    def __init__(self, model: torch.nn.Module, legacy_rules: tuple[LegacyRule, ...] = LEGACY_RULES) -> None:
        self.params: dict[str, torch.nn.Parameter] = dict(model.named_parameters())
        self._by_normal: dict[str, list[str]] = {}
        for name in self.params:
            self._by_normal.setdefault(normalize_name(name), []).append(name)
        self.legacy_rules = tuple(rule for rule in legacy_rules
                                  if all(len(self._by_normal.get(req, ())) == 1 for req in rule.requires))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.resolve(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def _lookup(self, name: str) -> str | None:
        if name in self.params:
            return name
        found = self._by_normal.get(normalize_name(name), [])
        return found[0] if len(found) == 1 else None

    def resolve(self, name: str) -> str | None:
        """The model's name for ``name``, or None when the model has no such parameter.

        A name the model lacks is tried in the legacy spellings of :data:`LEGACY_RULES`; a rewrite counts
        only when it names exactly one parameter of the model and no other rule points elsewhere.
        """
        actual = self._lookup(name)
        if actual is not None or not self.legacy_rules:
            return actual
        normal = normalize_name(name)
        found = set()
        for rule in self.legacy_rules:
            rewritten = rule.rewrite(normal)
            target = self._lookup(rewritten) if rewritten is not None else None
            if target is not None:
                found.add(target)
        return found.pop() if len(found) == 1 else None

    def unknown_message(self, name: str, what: str = "parameter") -> str:
        """One line saying the model lacks ``name``, with the nearest names it has."""
        hint = suggest(normalize_name(name), self._by_normal)
        if not hint:
            hint = suggest(name, self.params)
        return f"the model has no {what} '{name}'{hint}"
