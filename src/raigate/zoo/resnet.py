"""CIFAR ResNets of He et al. (2016, "Deep Residual Learning", section 4.2).

Depth ``6n + 2``: a 3x3 stem with 16 channels, three stages of ``n`` basic blocks with
16/32/64 channels (stride 2 at the start of stages 2 and 3), global average pooling and a
linear head. Shortcuts are the paper's option A: subsample by 2 and zero-pad the new
channels, so they hold no parameters and ResNet-20 has 0.27M of them.

Attribute names follow akamaster/pytorch_resnet_cifar10 exactly (``conv1``, ``bn1``,
``layer1.0.conv1`` ... ``linear``), so its published checkpoints load strictly, e.g.
``raigate.zoo:resnet20 --weights akamaster_resnet20-12fca82f.th``.

>>> import torch
>>> from raigate.zoo import resnet20
>>> resnet20()(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from raigate.errors import ConfigError
from raigate.zoo._norm import Norm, norm_layer

__all__ = ["CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56"]


class _PadShortcut(nn.Module):
    """Option-A shortcut: take every second pixel and zero-pad the channels on both sides."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: Norm) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm_layer(norm, planes)
        # Separate ReLU modules (never reused) so Captum's DeepLift/LRP hooks see each one.
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            # akamaster pads planes // 4 on each side: 16 -> 32 and 32 -> 64 channels.
            self.shortcut = _PadShortcut(planes // 4)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Not in-place: Opacus and Captum hooks need the pre-addition tensor intact.
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; any size works thanks to adaptive pooling."""

    def __init__(
        self,
        blocks_per_stage: int,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        if norm not in ("batch", "group"):
            raise ConfigError(f"CIFAR ResNets take norm 'batch' or 'group', got {norm!r}")
        if blocks_per_stage < 1 or num_classes < 1:
            raise ConfigError("blocks_per_stage and num_classes must be positive")
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = norm_layer(norm, 16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(16, 16, blocks_per_stage, 1, norm)
        self.layer2 = self._make_layer(16, 32, blocks_per_stage, 2, norm)
        self.layer3 = self._make_layer(32, 64, blocks_per_stage, 2, norm)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        # Kaiming-normal init of conv and linear weights, as in akamaster's _weights_init.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _make_layer(in_planes: int, planes: int, n: int, stride: int, norm: Norm) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride, norm)]
        blocks += [BasicBlock(planes, planes, 1, norm) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.pool(out).flatten(1))


def resnet20(num_classes: int = 10, *, in_channels: int = 3, norm: Norm = "batch") -> CifarResNet:
    """ResNet-20 (n=3, 0.27M parameters; 91.7% on CIFAR-10 in akamaster's checkpoint)."""
    return CifarResNet(3, num_classes=num_classes, in_channels=in_channels, norm=norm)


def resnet32(num_classes: int = 10, *, in_channels: int = 3, norm: Norm = "batch") -> CifarResNet:
    """ResNet-32 (n=5, 0.46M parameters)."""
    return CifarResNet(5, num_classes=num_classes, in_channels=in_channels, norm=norm)


def resnet44(num_classes: int = 10, *, in_channels: int = 3, norm: Norm = "batch") -> CifarResNet:
    """ResNet-44 (n=7, 0.66M parameters)."""
    return CifarResNet(7, num_classes=num_classes, in_channels=in_channels, norm=norm)


def resnet56(num_classes: int = 10, *, in_channels: int = 3, norm: Norm = "batch") -> CifarResNet:
    """ResNet-56 (n=9, 0.85M parameters)."""
    return CifarResNet(9, num_classes=num_classes, in_channels=in_channels, norm=norm)
