"""Model-parameter randomization test (Adebayo et al. 2018, "Sanity Checks for Saliency
Maps", section 3, cascading randomization).

An explanation that is about the model must change when the model's learned weights are
destroyed. Starting at the top (the logits layer) and moving down, the layers of a *deep
copy* of the network are re-initialized one after another, cumulatively; at chosen depths
the attributions are recomputed on the same images and compared with the originals by
Spearman rank correlation of the absolute maps. A map that stays highly correlated after
every layer has been randomized does not depend on what the model learned: it fails.

"Layers" are the modules that own parameters directly (``Conv2d``, ``Linear``,
``BatchNorm``, an embedding holding a class token ...), in reverse registration order, which
for ``nn.Sequential`` stacks, ResNets and ViTs is reverse forward order. Each is reset with
its own ``reset_parameters()`` (PyTorch's default initialization; BatchNorm also forgets
its running statistics), seeded per layer; parameters of modules without one are redrawn
from N(0, s^2) with ``s`` the standard deviation of the trained tensor. The user's model is
never touched.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(16, 2))
>>> [name for name, _ in randomization_units(net)]
['2', '0']
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from raigate.explain.methods import seeded
from raigate.models.base import Model

__all__ = [
    "CascadeStep",
    "PlannedStep",
    "cascade",
    "cascade_plan",
    "checkpoint_positions",
    "randomization_units",
    "randomize_",
]


def randomization_units(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules owning parameters directly, top layer first (reverse registration order)."""
    units = [
        (name, m)
        for name, m in net.named_modules()
        if any(True for _ in m.parameters(recurse=False))
    ]
    return list(reversed(units))


@torch.no_grad()
def randomize_(module: nn.Module, seed: int) -> None:
    """Re-initialize ``module``'s own parameters (and BatchNorm statistics), seeded."""
    with seeded(seed):
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            return
        for p in module.parameters(recurse=False):
            std = float(p.float().std()) if p.numel() > 1 else 1.0
            p.copy_(torch.randn(p.shape, dtype=p.dtype) * (std if std > 0 else 1.0))


def checkpoint_positions(n_units: int, n_checkpoints: int) -> list[int]:
    """How many units are randomized at each checkpoint: evenly spaced from 1 (the top layer
    only) to ``n_units`` (all layers), without repeats."""
    if n_units <= 0:
        return []
    k = max(1, min(n_checkpoints, n_units))
    if k == 1:
        return [n_units]
    return sorted({round(float(v)) for v in np.linspace(1, n_units, k)})


@dataclass(frozen=True)
class PlannedStep:
    """A checkpoint of the cascade: ``randomized`` of ``total`` units, down to ``layer``."""

    layer: str
    randomized: int
    total: int


def cascade_plan(model: Model, *, checkpoints: int = 5) -> list[PlannedStep]:
    """The checkpoints :func:`cascade` stops at, without copying or randomizing anything:
    a rank that computes none of the test's images still names its rows."""
    units = randomization_units(model.net)
    return [
        PlannedStep(layer=units[p - 1][0] or "(root)", randomized=p, total=len(units))
        for p in checkpoint_positions(len(units), checkpoints)
    ]


@dataclass(frozen=True)
class CascadeStep:
    """The randomized copy after ``randomized`` of ``total`` units, down to ``layer``."""

    layer: str
    randomized: int
    total: int
    model: Model


def cascade(model: Model, *, checkpoints: int = 5, seed: int = 0) -> Iterator[CascadeStep]:
    """Yield progressively randomized copies of ``model`` (one deep copy, randomized in
    place from the top down) at ``checkpoints`` evenly spaced depths. Each layer is reset
    under a seed of its own (``seed`` + its depth), so every call builds the same copies."""
    randomized = copy.deepcopy(model)
    units = randomization_units(randomized.net)
    done = 0
    for step in cascade_plan(randomized, checkpoints=checkpoints):
        while done < step.randomized:
            randomize_(units[done][1], seed + done)
            done += 1
        randomized.train(False)
        yield CascadeStep(
            layer=step.layer, randomized=step.randomized, total=step.total, model=randomized
        )
