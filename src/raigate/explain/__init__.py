"""Explanations: Captum attribution methods in pixel space, checked for faithfulness.

The registry (``METHODS``) maps a name to a :class:`Method`; every method answers
``attribute(model, x, target, config) -> Tensor[B, C, H, W]``. :mod:`.metrics` scores maps
(deletion/insertion AUC, infidelity, max-sensitivity, Spearman agreement, group maps) and
:mod:`.sanity` runs the cascading model-parameter randomization test. The audit check that
puts them together is :mod:`raigate.audit.explanations`.

>>> import torch
>>> from raigate import wrap
>>> from raigate.explain import AttributionConfig, get_method
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
>>> model = wrap(net, class_names=["a", "b"], input_shape=(3, 4, 4))
>>> ig = get_method("integrated-gradients")
>>> attr, delta = ig.attribute_with_delta(
...     model, torch.rand(2, 3, 4, 4), torch.tensor([0, 1]), AttributionConfig(n_steps=8)
... )
>>> attr.shape, bool(delta.abs().max() < 1e-4)
(torch.Size([2, 3, 4, 4]), True)
"""

from __future__ import annotations

from raigate.explain.methods import (
    BASELINES,
    METHODS,
    AttributionConfig,
    Baseline,
    Method,
    gaussian_blur,
    get_method,
    make_baseline,
    register_method,
)
from raigate.explain.metrics import (
    auc,
    deletion_insertion,
    group_mean_maps,
    importance,
    infidelity_scores,
    perturbation_curve,
    sensitivity_scores,
    spearman_rows,
)
from raigate.explain.sanity import cascade, randomization_units

__all__ = [
    "BASELINES",
    "METHODS",
    "AttributionConfig",
    "Baseline",
    "Method",
    "auc",
    "cascade",
    "deletion_insertion",
    "gaussian_blur",
    "get_method",
    "group_mean_maps",
    "importance",
    "infidelity_scores",
    "make_baseline",
    "perturbation_curve",
    "randomization_units",
    "register_method",
    "sensitivity_scores",
    "spearman_rows",
]
