"""ImageNet models with the module names Distiller's ImageNet schedules use (224x224 inputs, 1000 classes).

Each ends in an adaptive average pool, so smaller inputs (64x64, say) run too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

IMAGENET_CLASSES = 1000


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True)]


class MobileNet(nn.Module):
    """Howard et al.'s MobileNet v1 ("MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
    Applications", 2017), 4.2M parameters at width 1.

    ``model.0`` is the full 3x3 convolution (``model.0.0``); ``model.1`` .. ``model.13`` are the depthwise
    separable layers, each ``Sequential(depthwise conv, bn, relu, pointwise conv, bn, relu)`` so that
    ``model.N.0.weight`` is the depthwise and ``model.N.3.weight`` the pointwise kernel; ``model.14`` pools
    and ``fc`` classifies. ``channel_multiplier`` is the paper's width multiplier alpha.
    """

    #: (output channels at width 1, stride) of the 13 depthwise separable layers
    SEPARABLE = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                 (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

    def __init__(self, num_classes: int = IMAGENET_CLASSES, channel_multiplier: float = 1.0,
                 min_channels: int = 8) -> None:
        super().__init__()
        if channel_multiplier <= 0:
            raise ValueError(f"channel_multiplier must be positive, got {channel_multiplier}")

        def width(n: int) -> int:
            return max(math.floor(n * channel_multiplier), min_channels)

        channels = width(32)
        layers: list[nn.Module] = [nn.Sequential(*_conv_bn_relu(3, channels, 3, stride=2))]
        for base, stride in self.SEPARABLE:
            layers.append(nn.Sequential(*_conv_bn_relu(channels, channels, 3, stride=stride, groups=channels),
                                        *_conv_bn_relu(channels, width(base), 1)))
            channels = width(base)
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.model(x), 1))


def mobilenet(num_classes: int = IMAGENET_CLASSES) -> MobileNet:
    """MobileNet v1 at width 1.0 (Howard et al. 2017)."""
    return MobileNet(num_classes)


class AlexNetBN(nn.Module):
    """Krizhevsky et al.'s AlexNet ("ImageNet Classification with Deep Convolutional Neural Networks", NIPS
    2012) with batch normalization, in the layout of the DoReFa-Net AlexNet (Zhou et al. 2016) that
    Distiller's quantization schedules use: ``features.0..16`` (grouped convolutions, BatchNorm instead of
    biases) and ``classifier.0..6``.
    """

    def __init__(self, num_classes: int = IMAGENET_CLASSES) -> None:
        super().__init__()

        def bn2d(n: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(n, eps=1e-4)

        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=12, stride=4),
            nn.ReLU(inplace=True),
            nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2, bias=False),
            bn2d(256),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 384, kernel_size=3, padding=1, bias=False),
            bn2d(384),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2, bias=False),
            bn2d(384),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2, bias=False),
            bn2d(256),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.ReLU(inplace=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, 4096, bias=False),
            nn.BatchNorm1d(4096, eps=1e-4),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096, bias=False),
            nn.BatchNorm1d(4096, eps=1e-4),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def alexnet_bn(num_classes: int = IMAGENET_CLASSES) -> AlexNetBN:
    """AlexNet with batch normalization (Krizhevsky et al. 2012; DoReFa-Net's layout)."""
    return AlexNetBN(num_classes)


class PreactBasicBlock(nn.Module):
    """A pre-activation basic block: ``pre_bn/pre_relu`` (absent right after the stem), ``conv1``,
    ``bn1_2/relu1_2``, ``conv2``; ``downsample`` is a strided 1x1 convolution of the pre-activation."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, preactivate: bool = True) -> None:
        super().__init__()
        self.pre_bn: nn.BatchNorm2d | None = nn.BatchNorm2d(inplanes) if preactivate else None
        self.pre_relu: nn.ReLU | None = nn.ReLU(inplace=False) if preactivate else None
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1_2 = nn.BatchNorm2d(planes)
        self.relu1_2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = x
        if self.pre_bn is not None and self.pre_relu is not None:
            preact = self.pre_relu(self.pre_bn(x))
        out = self.conv2(self.relu1_2(self.bn1_2(self.conv1(preact))))
        return out + (self.downsample(preact) if self.downsample is not None else x)


class PreactResNet(nn.Module):
    """He et al.'s pre-activation ResNet for ImageNet ("Identity Mappings in Deep Residual Networks", ECCV
    2016): the ``conv1/bn1/relu1/maxpool`` stem, ``layer1..4``, ``final_bn/final_relu``, pooling, ``fc``."""

    def __init__(self, blocks_per_layer: tuple[int, int, int, int], num_classes: int = IMAGENET_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        stages = []
        for planes, blocks, stride in zip((64, 128, 256, 512), blocks_per_layer, (1, 2, 2, 2), strict=True):
            # the stem already activates the input of layer1's first block
            layer = [PreactBasicBlock(inplanes, planes, stride, preactivate=stride != 1)]
            layer += [PreactBasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layer))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.final_bn = nn.BatchNorm2d(512)
        self.final_relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.final_relu(self.final_bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def preact_resnet18(num_classes: int = IMAGENET_CLASSES) -> PreactResNet:
    """Pre-activation ResNet-18 for ImageNet (He et al., "Identity Mappings in Deep Residual Networks")."""
    return PreactResNet((2, 2, 2, 2), num_classes)
