"""The documented CIFAR-100 DP-SGD recipe: a GroupNorm ResNet-20 for 32x32 images, SGD,
large Poisson batches and augmentation multiplicity.

Where each choice comes from:

* GroupNorm instead of BatchNorm (Opacus refuses BatchNorm; De et al. 2022 use GroupNorm in
  their WRNs); 8 groups per layer (:data:`raigate.zoo.GROUP_NORM_GROUPS`, Wu & He 2018);
* batch 4,096, clipping norm C = 1, plain SGD at learning rate 4 without momentum, and 16
  augmented copies per example (random crop after 4-pixel reflection padding, horizontal
  flip), averaged before clipping: the settings De et al. 2022 ("Unlocking High-Accuracy
  Differentially Private Image Classification through Scale", sections 3-4) report for
  CIFAR from scratch;
* ResNet-20 (0.27M parameters) rather than their WRN-16-4: small enough to train on a few
  CPU cores, at the price of accuracy.

``raigate privacy train --model raigate.privacy.recipe:cifar100_resnet20 --data
cifar100:ROOT:train --eval-data cifar100:ROOT:test`` plus :func:`recipe_options` is the
recipe as a command; ``tests/privacy/test_recipe.py`` runs it, scaled down, on generated
pickles in the official ``cifar-100-python`` layout. What accuracy it reaches on the real
CIFAR-100 at epsilon 2 is not measured here (no real CIFAR-100 on this machine): see
docs/privacy.md, "CIFAR-100 recipe".
"""

from __future__ import annotations

from typing import Any

from raigate.zoo import CifarResNet, resnet20

CIFAR100_RECIPE: dict[str, Any] = {
    "epsilon": 2.0,
    "delta": 1e-5,
    "batch_size": 4096,
    "physical_batch_size": 256,
    "epochs": 100,
    "max_grad_norm": 1.0,
    "optimizer": "sgd",
    "lr": 4.0,
    "momentum": 0.0,
    "augmult": 16,
    "accountant": "prv",
}
"""DPParams of the recipe. 100 epochs at batch 4,096 on CIFAR-100's 50,000 training images
is 1,221 steps; the step count is raigate's choice for this smaller network."""

__all__ = ["CIFAR100_RECIPE", "cifar100_resnet20", "recipe_options"]


def cifar100_resnet20(num_classes: int = 100) -> CifarResNet:
    """ResNet-20 with GroupNorm (8 groups), the recipe's network, as a factory spec."""
    return resnet20(num_classes=num_classes, norm="group")


def recipe_options(**overrides: Any) -> list[str]:
    """The recipe as ``raigate privacy train`` options (``overrides`` replace values)."""
    values = {**CIFAR100_RECIPE, **overrides}
    out: list[str] = []
    for key, value in values.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out
