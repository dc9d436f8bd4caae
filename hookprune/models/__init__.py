"""The model zoo that ``hookprune check --arch`` and the examples build models from.

Distiller's own models keep the module and parameter names its schedules use (``resnet20_cifar``,
``mobilenet``, ``word_lm`` ...); every torchvision classification, detection, segmentation, video and
optical-flow architecture is available by its torchvision name (weights are never downloaded).
:func:`input_shape` and :func:`dummy_input` say what each architecture's forward takes.
"""

from hookprune.models.cifar import PreactResNetCifar, ResNetCifar, SimpleNetCifar, VGGCifar
from hookprune.models.imagenet import AlexNetBN, MobileNet, PreactResNet
from hookprune.models.language import RNNModel
from hookprune.models.mnist import LeNet300100, SimpleNetMNIST
from hookprune.models.zoo import ZOO, architectures, create_model, dummy_input, input_shape

__all__ = [
    "ZOO",
    "AlexNetBN",
    "LeNet300100",
    "MobileNet",
    "PreactResNet",
    "PreactResNetCifar",
    "RNNModel",
    "ResNetCifar",
    "SimpleNetCifar",
    "SimpleNetMNIST",
    "VGGCifar",
    "architectures",
    "create_model",
    "dummy_input",
    "input_shape",
]
