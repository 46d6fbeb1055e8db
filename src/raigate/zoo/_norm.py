"""The normalization layer choice shared by the zoo's networks.

BatchNorm is what published checkpoints use; GroupNorm is what DP-SGD needs, because
per-sample gradients are undefined when a layer mixes samples of a batch (Opacus refuses
BatchNorm for that reason).
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from raigate.errors import ConfigError

Norm = Literal["none", "batch", "group"]

GROUP_NORM_GROUPS = 8
"""Groups per GroupNorm layer, capped at the channel count.

8 groups keeps 2, 4 and 8 channels per group in the 16/32/64-channel stages of the CIFAR
ResNets. Wu & He (2018, Group Normalization, table 3) find accuracy flat between 8 and 32
groups for wide nets; for these narrow ones, 16 groups would turn the 16-channel stage into
InstanceNorm (one channel per group), which they show is clearly worse.
"""


def norm_layer(norm: str, channels: int) -> nn.Module:
    """A 2-d normalization layer for ``channels`` feature maps (``Identity`` for "none")."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(min(GROUP_NORM_GROUPS, channels), channels)
    if norm == "none":
        return nn.Identity()
    raise ConfigError(f"norm must be one of none, batch, group; got {norm!r}")
