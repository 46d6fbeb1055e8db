"""Small networks: the built-in demo CNN and the CIFAR-10 net of Captum's tutorials.

>>> import torch
>>> from raigate.zoo import captum_cifar_net, small_cnn
>>> small_cnn(num_classes=2)(torch.zeros(4, 3, 32, 32)).shape
torch.Size([4, 2])
>>> captum_cifar_net()(torch.zeros(1, 3, 32, 32)).shape
torch.Size([1, 10])
"""

from __future__ import annotations

from itertools import pairwise

from torch import Tensor, nn

from raigate.errors import ConfigError
from raigate.zoo._norm import Norm, norm_layer

__all__ = ["CaptumCifarNet", "SmallCNN", "captum_cifar_net", "small_cnn"]


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks (16/32/64 channels) and a linear head: about 27k parameters.

    Small enough to train in seconds on a CPU, so the demo and the test suite can train a
    real model end to end; adaptive pooling to 2x2 keeps some spatial layout for any input
    size of at least 4x4 while the head stays the same size.
    """

    def __init__(self, num_classes: int = 10, *, in_channels: int = 3, norm: Norm = "none") -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ConfigError("num_classes and in_channels must be positive")
        # A conv bias right before a norm layer is cancelled by the mean subtraction.
        bias = norm == "none"
        layers: list[nn.Module] = []
        widths = [in_channels, 16, 32, 64]
        for i, (cin, cout) in enumerate(pairwise(widths)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=bias), norm_layer(norm, cout)]
            layers.append(nn.ReLU())
            if i < 2:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Linear(64 * 2 * 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def small_cnn(num_classes: int = 10, *, in_channels: int = 3, norm: Norm = "none") -> SmallCNN:
    """The built-in demo model; ``norm="group"`` makes it DP-SGD compatible."""
    return SmallCNN(num_classes, in_channels=in_channels, norm=norm)


class CaptumCifarNet(nn.Module):
    """The LeNet-style CIFAR-10 net of Captum's tutorials (62k parameters, 32x32 only).

    conv 3->6 (5x5), max-pool, conv 6->16 (5x5), max-pool, fc 400->120->84->K, with ReLU
    modules that are never reused, as Captum's DeepLift requires. Trained on inputs
    normalized with mean 0.5, std 0.5: pass ``--mean 0.5 --std 0.5``.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.relu3 = nn.ReLU()
        self.relu4 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(x.flatten(1)))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


def captum_cifar_net(num_classes: int = 10) -> CaptumCifarNet:
    """Architecture of ``captum_cifar_torchvision.pt`` (pytorch/captum tutorials)."""
    return CaptumCifarNet(num_classes)
