"""CIFAR-10 models with the module names Distiller's CIFAR schedules use (32x32 inputs, 10 classes).

Every model ends in an adaptive average pool, so inputs larger than 32x32 run too.
"""

from __future__ import annotations

import torch
from torch import nn

CIFAR_CLASSES = 10


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """A 3x3 convolution with padding 1 and no bias (a BatchNorm follows it)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def he_init(model: nn.Module) -> None:
    """He et al.'s initialization for convolutions; BatchNorm starts as the identity."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (``conv1/bn1``, ``conv2/bn2``) added to a shortcut, then ``relu2``.

    ``downsample`` (a 1x1 convolution and a BatchNorm, He et al.'s projection shortcut "B") is present
    where the block changes the resolution or the width; without ``shortcut`` the block is a plain one.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.shortcut = shortcut
        self.downsample: nn.Sequential | None = None
        if shortcut and (stride != 1 or inplanes != planes):
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut:
            out = out + (self.downsample(x) if self.downsample is not None else x)
        return self.relu2(out)


class ResNetCifar(nn.Module):
    """He et al.'s CIFAR-10 ResNet ("Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2).

    ``conv1/bn1`` then three stages ``layer1..3`` of ``blocks_per_layer`` basic blocks with 16, 32 and 64
    filters (the first block of ``layer2`` and ``layer3`` halves the resolution), global average pooling
    and ``fc``: 6n+2 layers. ``shortcut=False`` gives the paper's "plain" network of the same depth.
    The two projection shortcuts add 2,752 parameters to the paper's counts (0.27M, 0.46M, 0.66M, 0.85M
    and 1.7M for depths 20 to 110), which are for parameter-free shortcuts.
    """

    def __init__(self, blocks_per_layer: tuple[int, int, int], num_classes: int = CIFAR_CLASSES,
                 shortcut: bool = True) -> None:
        super().__init__()
        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        inplanes = 16
        stages = []
        for planes, blocks, stride in zip((16, 32, 64), blocks_per_layer, (1, 2, 2), strict=True):
            layer = [BasicBlock(inplanes, planes, stride, shortcut)]
            layer += [BasicBlock(planes, planes, 1, shortcut) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layer))
            inplanes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet20_cifar(num_classes: int = CIFAR_CLASSES) -> ResNetCifar:
    """ResNet-20 for CIFAR-10 (He et al. 2016): 3 blocks per stage, 272,474 parameters."""
    return ResNetCifar((3, 3, 3), num_classes)


def resnet32_cifar(num_classes: int = CIFAR_CLASSES) -> ResNetCifar:
    """ResNet-32 for CIFAR-10 (He et al. 2016): 5 blocks per stage, 466,906 parameters."""
    return ResNetCifar((5, 5, 5), num_classes)


def resnet44_cifar(num_classes: int = CIFAR_CLASSES) -> ResNetCifar:
    """ResNet-44 for CIFAR-10 (He et al. 2016): 7 blocks per stage, 661,338 parameters."""
    return ResNetCifar((7, 7, 7), num_classes)


def resnet56_cifar(num_classes: int = CIFAR_CLASSES) -> ResNetCifar:
    """ResNet-56 for CIFAR-10 (He et al. 2016): 9 blocks per stage, 855,770 parameters."""
    return ResNetCifar((9, 9, 9), num_classes)


def resnet110_cifar(num_classes: int = CIFAR_CLASSES) -> ResNetCifar:
    """ResNet-110 for CIFAR-10 (He et al. 2016): 18 blocks per stage, 1,730,714 parameters."""
    return ResNetCifar((18, 18, 18), num_classes)


def plain20_cifar(num_classes: int = CIFAR_CLASSES) -> ResNetCifar:
    """The 20-layer plain network of He et al. 2016 (figure 6): ResNet-20 without shortcuts."""
    return ResNetCifar((3, 3, 3), num_classes, shortcut=False)


class PreactBasicBlock(nn.Module):
    """A pre-activation block: ``pre_bn/pre_relu``, ``conv1``, ``bn/relu``, ``conv2``, plus the shortcut.

    Where the block changes resolution and width, the shortcut (``downsample``) is parameter-free as in
    He et al.'s option "A": a 2x2 average pool and zero channels padded on both sides.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.pre_bn = nn.BatchNorm2d(inplanes)
        self.pre_relu = nn.ReLU(inplace=False)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != planes:
            pad = (planes - inplanes) // 2
            self.downsample = nn.Sequential(nn.AvgPool2d(stride), nn.ConstantPad3d((0, 0, 0, 0, pad, pad), 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.bn(self.conv1(self.pre_relu(self.pre_bn(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class PreactResNetCifar(nn.Module):
    """He et al.'s pre-activation ResNet for CIFAR-10 ("Identity Mappings in Deep Residual Networks", ECCV 2016).

    ``conv1``, three stages ``layer1..3`` of pre-activation blocks, ``final_bn/final_relu``, pooling and ``fc``.
    """

    def __init__(self, blocks_per_layer: tuple[int, int, int], num_classes: int = CIFAR_CLASSES) -> None:
        super().__init__()
        self.conv1 = conv3x3(3, 16)
        inplanes = 16
        stages = []
        for planes, blocks, stride in zip((16, 32, 64), blocks_per_layer, (1, 2, 2), strict=True):
            layer = [PreactBasicBlock(inplanes, planes, stride)]
            layer += [PreactBasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layer))
            inplanes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.final_bn = nn.BatchNorm2d(64)
        self.final_relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.final_relu(self.final_bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def preact_resnet20_cifar(num_classes: int = CIFAR_CLASSES) -> PreactResNetCifar:
    """Pre-activation ResNet-20 for CIFAR-10 (He et al., "Identity Mappings in Deep Residual Networks")."""
    return PreactResNetCifar((3, 3, 3), num_classes)


VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512, "M")


class VGGCifar(nn.Module):
    """Simonyan & Zisserman's VGG ("Very Deep Convolutional Networks for Large-Scale Image Recognition",
    ICLR 2015) for CIFAR-10: the convolutional ``features`` of a configuration, one linear ``classifier``."""

    def __init__(self, layout: tuple[int | str, ...] = VGG16_LAYOUT, num_classes: int = CIFAR_CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16_cifar(num_classes: int = CIFAR_CLASSES) -> VGGCifar:
    """VGG-16 (configuration "D" of Simonyan & Zisserman 2015) for CIFAR-10: 13 convolutions, 14.7M parameters."""
    return VGGCifar(VGG16_LAYOUT, num_classes)


class SimpleNetCifar(nn.Module):
    """The small CIFAR-10 network of PyTorch's classifier tutorial, a LeNet-5 (LeCun et al., "Gradient-based
    learning applied to document recognition", 1998) for 3-channel 32x32 images: two 5x5 convolutions with
    pooling, then ``fc1..fc3``."""

    def __init__(self, num_classes: int = CIFAR_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.relu_conv1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu_conv2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu_fc1 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu_fc2 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu_conv1(self.conv1(x)))
        x = self.pool2(self.relu_conv2(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(self.relu_fc2(self.fc2(self.relu_fc1(self.fc1(x)))))


def simplenet_cifar(num_classes: int = CIFAR_CLASSES) -> SimpleNetCifar:
    """The LeNet-5-style CIFAR-10 network of PyTorch's tutorial (``conv1``, ``conv2``, ``fc1..fc3``)."""
    return SimpleNetCifar(num_classes)
