"""Building models by name: the zoo's own architectures and every torchvision model (never pretrained).

Also the shape of one input for each architecture and a small dummy batch its forward accepts.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from hookprune.errors import suggest
from hookprune.models import cifar, imagenet, language, mnist

ZOO: dict[str, Callable[..., nn.Module]] = {
    "lenet300_100": mnist.LeNet300100,
    "simplenet_mnist": mnist.simplenet_mnist,
    "resnet20_cifar": cifar.resnet20_cifar,
    "resnet32_cifar": cifar.resnet32_cifar,
    "resnet44_cifar": cifar.resnet44_cifar,
    "resnet56_cifar": cifar.resnet56_cifar,
    "resnet110_cifar": cifar.resnet110_cifar,
    "plain20_cifar": cifar.plain20_cifar,
    "preact_resnet20_cifar": cifar.preact_resnet20_cifar,
    "vgg16_cifar": cifar.vgg16_cifar,
    "simplenet_cifar": cifar.simplenet_cifar,
    "mobilenet": imagenet.mobilenet,
    "alexnet_bn": imagenet.alexnet_bn,
    "preact_resnet18": imagenet.preact_resnet18,
    "word_lm": language.word_lm,
}

CIFAR_SHAPE = (3, 32, 32)
MNIST_SHAPE = (1, 28, 28)
IMAGENET_SHAPE = (3, 224, 224)
#: word_lm's default input: a sequence of 35 token ids (the example's ``--bptt``); see :func:`input_shape`
WORD_LM_SHAPE = (35,)

_ZOO_SHAPES: dict[str, tuple[int, ...]] = {
    "lenet300_100": MNIST_SHAPE,
    "simplenet_mnist": MNIST_SHAPE,
    "resnet20_cifar": CIFAR_SHAPE,
    "resnet32_cifar": CIFAR_SHAPE,
    "resnet44_cifar": CIFAR_SHAPE,
    "resnet56_cifar": CIFAR_SHAPE,
    "resnet110_cifar": CIFAR_SHAPE,
    "plain20_cifar": CIFAR_SHAPE,
    "preact_resnet20_cifar": CIFAR_SHAPE,
    "vgg16_cifar": CIFAR_SHAPE,
    "simplenet_cifar": CIFAR_SHAPE,
    "mobilenet": IMAGENET_SHAPE,
    "alexnet_bn": IMAGENET_SHAPE,
    "preact_resnet18": IMAGENET_SHAPE,
    "word_lm": WORD_LM_SHAPE,
}
#: the argument that sets the number of outputs, where it is not ``num_classes``
_CLASSES_ARGUMENT = {"word_lm": "ntoken"}

_FULL_SIZE_VIDEO = ("mvit_v1_b", "mvit_v2_s", "s3d")
#: torchvision classifiers that need their full input size (fixed position embeddings or window grids,
#: or Inception-v3's auxiliary head in training mode)
_FULL_SIZE_CLASSIFIERS = ("vit_", "maxvit_", "inception_v3", "quantized_inception_v3")
#: side of the dummy images for everything that takes any size; torchvision's classifiers, detectors and
#: segmenters all run at 64x64 (AlexNet's stem needs more than 32)
SMALL_SIDE = 64
DUMMY_TOKENS = 8


@functools.cache
def _torchvision_families() -> dict[str, str]:
    """Every torchvision model name and its family: "classification", "detection", "segmentation"..."""
    try:
        import torchvision
    except ImportError:
        return {}
    families = dict.fromkeys(torchvision.models.list_models(), "classification")
    for family, module in (("detection", torchvision.models.detection),
                           ("segmentation", torchvision.models.segmentation),
                           ("video", torchvision.models.video),
                           ("optical_flow", torchvision.models.optical_flow)):
        families.update(dict.fromkeys(torchvision.models.list_models(module=module), family))
    return families


def _torchvision_module(arch: str) -> str | None:
    """Which torchvision family provides ``arch``, or None when torchvision has no such model."""
    return _torchvision_families().get(arch)


def _torchvision_names() -> list[str]:
    return sorted(_torchvision_families())


def architectures() -> list[str]:
    """Every name :func:`create_model` accepts."""
    return sorted(set(ZOO) | set(_torchvision_names()))


def _unknown(arch: str) -> ValueError:
    hint = suggest(arch, architectures())
    if not _torchvision_names():
        hint += " (torchvision is not installed: pip install 'hookprune[vision]')"
    return ValueError(f"unknown architecture '{arch}'{hint}")


@contextlib.contextmanager
def _parameters_on(device: torch.device) -> Iterator[None]:
    """Move every parameter and buffer to ``device`` as its module registers it.

    For builders that compute their layout with tensor arithmetic (torchvision's RegNets), which fails
    when every new tensor lands on the meta device.
    """
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def parameter_on(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None:
            param = nn.Parameter(param.to(device), requires_grad=param.requires_grad)
        register_parameter(module, name, param)

    def buffer_on(module: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        register_buffer(module, name, tensor.to(device) if tensor is not None else None, persistent)

    nn.Module.register_parameter = parameter_on  # type: ignore[method-assign]
    nn.Module.register_buffer = buffer_on  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


def _build(build: Callable[[], nn.Module], device: torch.device | str | None) -> nn.Module:
    """Run ``build`` with every new tensor on ``device`` (or only the parameters and buffers, where needed)."""
    if device is None:
        return build()
    device = torch.device(device)
    try:
        with device:
            return build()
    except NotImplementedError:
        if device.type != "meta":
            raise
    with _parameters_on(device):
        return build()


def create_model(arch: str, *, num_classes: int | None = None, device: torch.device | str | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build ``arch`` with random weights; ``device='meta'`` builds only names and shapes (instant).

    ``num_classes`` sets the number of outputs (for ``word_lm``, the vocabulary size ``ntoken``); other
    keyword arguments go to the architecture's constructor.
    """
    extra = dict(kwargs)
    if arch in ZOO:
        if num_classes is not None:
            extra[_CLASSES_ARGUMENT.get(arch, "num_classes")] = num_classes
        return _build(lambda: ZOO[arch](**extra), device)
    if _torchvision_module(arch) is None:
        raise _unknown(arch)
    import torchvision

    if num_classes is not None:
        extra["num_classes"] = num_classes
    builder = torchvision.models.get_model_builder(arch)
    if "weights_backbone" in inspect.signature(builder).parameters:
        extra.setdefault("weights_backbone", None)
    return _build(lambda: builder(weights=None, **extra), device)


def input_shape(arch: str) -> tuple[int, ...]:
    """The shape of one input sample of ``arch`` at the size it was designed for, batch dimension excluded.

    Images are ``(channels, height, width)``: (3, 32, 32) for the CIFAR models, (1, 28, 28) for MNIST,
    (3, 224, 224) for ImageNet models and torchvision's classifiers (Inception-v3: (3, 299, 299)); one
    image at the detector's or segmenter's default size for those; ``(3, frames, height, width)`` for video
    models; one frame of the pair for optical flow. ``word_lm`` gives ``(35,)``: a sequence of 35 token
    ids, which a batch stacks as a ``(35, batch)`` integer tensor of ids below the model's ``ntoken``.
    """
    if arch in ZOO:
        return _ZOO_SHAPES[arch]
    family = _torchvision_module(arch)
    if family is None:
        raise _unknown(arch)
    if family == "detection":
        if arch.startswith("ssd300"):
            return (3, 300, 300)
        return (3, 320, 320) if "320" in arch else (3, 800, 800)
    if family == "segmentation":
        return (3, 520, 520)
    if family == "video":
        return (3, 16, 224, 224) if arch in _FULL_SIZE_VIDEO else (3, 16, 112, 112)
    if family == "optical_flow":
        return (3, 368, 496)
    return (3, 299, 299) if arch.endswith("inception_v3") else IMAGENET_SHAPE


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def dummy_input(arch: str, model: nn.Module, batch_size: int = 2) -> Any:
    """A small random input ``model`` (built as ``arch``) accepts, on the model's device.

    Images come at the smallest size the architecture runs at quickly: 32x32 for CIFAR, 28x28 for MNIST,
    64x64 for ImageNet models and torchvision's classifiers, detectors (a list of ``batch_size`` images)
    and segmenters; the full size only where the architecture needs it (ViT, MaxViT, Inception-v3).
    ``word_lm`` gives ``(tokens, hidden)``: 8 token ids per sequence and the zero state. Optical flow
    models give the two frames. A tuple is the forward's positional arguments.
    """
    device = _device_of(model)
    if arch == "word_lm":
        ntoken = model.encoder.num_embeddings
        tokens = torch.randint(ntoken, (DUMMY_TOKENS, batch_size), device=device)
        return tokens, model.init_hidden(batch_size)
    if arch == "lenet300_100" and model.fc1.in_features != 28 * 28:
        return torch.randn(batch_size, model.fc1.in_features, device=device)
    if arch in ZOO:
        shape = input_shape(arch)
        if shape == IMAGENET_SHAPE:
            shape = (3, SMALL_SIDE, SMALL_SIDE)
        return torch.randn(batch_size, *shape, device=device)
    family = _torchvision_module(arch)
    if family is None:
        raise _unknown(arch)
    small = (3, SMALL_SIDE, SMALL_SIDE)
    if family == "detection":
        return [torch.rand(*small, device=device) for _ in range(batch_size)]
    if family == "video":
        shape = input_shape(arch) if arch in _FULL_SIZE_VIDEO else (3, 4, 32, 32)
        return torch.randn(batch_size, *shape, device=device)
    if family == "optical_flow":
        frames = (batch_size, 3, 128, 128)
        return torch.randn(*frames, device=device), torch.randn(*frames, device=device)
    if arch.startswith(_FULL_SIZE_CLASSIFIERS):
        side = int(getattr(model, "image_size", input_shape(arch)[-1]))
        return torch.randn(batch_size, 3, side, side, device=device)
    return torch.randn(batch_size, *small, device=device)
