"""Defenses that return a model with the interface of the one they wrap.

``SmoothedClassifier`` (randomized smoothing, Cohen et al. 2019: PREDICT, CERTIFY and an
EOT ``logits`` for adaptive attacks), ``harden_smoothing`` (Gaussian-noise training of
the base model, saved as a reusable model spec) and ``harden_fairness`` (group-balanced
reweighting or resampling, Group DRO, or fairlearn's group thresholds, saved the same way).

>>> import torch
>>> from raigate import wrap
>>> from raigate.defenses import SmoothedClassifier
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
>>> model = wrap(net, class_names=["a", "b"], input_shape=(1, 2, 2))
>>> SmoothedClassifier(model, sigma=0.5).logits(torch.rand(3, 1, 2, 2)).shape
torch.Size([3, 2])
"""

from __future__ import annotations

from raigate.defenses.fairness import METHODS, FairHardenResult, GroupDRO, harden_fairness
from raigate.defenses.harden import HardenResult, harden_smoothing
from raigate.defenses.smoothing import (
    ABSTAIN,
    Certificate,
    SmoothedClassifier,
    clopper_pearson_lower,
    train_noise,
)

__all__ = [
    "ABSTAIN",
    "METHODS",
    "Certificate",
    "FairHardenResult",
    "GroupDRO",
    "HardenResult",
    "SmoothedClassifier",
    "clopper_pearson_lower",
    "harden_fairness",
    "harden_smoothing",
    "train_noise",
]
