"""MNIST models (28x28 grey images, 10 classes) with the names Distiller's schedules use."""

from __future__ import annotations

import torch
from torch import nn

MNIST_CLASSES = 10


class LeNet300100(nn.Module):
    """LeCun et al.'s fully connected LeNet-300-100 (``fc1``, ``fc2``, ``fc3``), as Han et al. pruned it."""

    def __init__(self, num_classes: int = MNIST_CLASSES, input_features: int = 28 * 28) -> None:
        super().__init__()
        self.fc1 = nn.Linear(input_features, 300)
        self.relu1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


class SimpleNetMNIST(nn.Module):
    """The convolutional network of PyTorch's MNIST example, a LeNet-5 variant (LeCun et al., "Gradient-based
    learning applied to document recognition", 1998): ``conv1`` (20 5x5 filters), ``conv2`` (50), each followed
    by 2x2 max pooling, then ``fc1`` (500) and ``fc2``. The forward returns log-probabilities, as the example's.
    """

    def __init__(self, num_classes: int = MNIST_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.relu1 = nn.ReLU(inplace=False)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.relu2 = nn.ReLU(inplace=False)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.relu3 = nn.ReLU(inplace=False)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(torch.flatten(x, 1)))
        return torch.log_softmax(self.fc2(x), dim=1)


def simplenet_mnist(num_classes: int = MNIST_CLASSES) -> SimpleNetMNIST:
    """The LeNet-5-style network of PyTorch's MNIST example (``conv1``, ``conv2``, ``fc1``, ``fc2``)."""
    return SimpleNetMNIST(num_classes)
