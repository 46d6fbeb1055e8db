"""Model specs and the adapter behind them.

Spec forms (one :class:`Model` behind all of them)::

    pkg.module:factory  [--weights FILE.safetensors|FILE.pt]   a Python factory + weights
    FILE.pt | FILE.pth                                         a TorchScript archive
    FILE.pt2                                                   a torch.export archive
    hf:DIR                                                     a local Hugging Face model
    FILE.json                                                  a raigate model spec file

>>> from raigate.models import load_model
>>> model = load_model(
...     "raigate.zoo:small_cnn", class_names=["a", "b"], input_size=(3, 32, 32), random_init=True
... )
>>> model.random_init  # no --weights: an untrained network, and every report says so
True
>>> model.num_classes
2
"""

from __future__ import annotations

from raigate.models.base import Capabilities, Model, Normalize, state_digest, wrap
from raigate.models.specs import (
    ModelOptions,
    load_model,
    parse_model_spec,
    register_model_loader,
)

__all__ = [
    "Capabilities",
    "Model",
    "ModelOptions",
    "Normalize",
    "load_model",
    "parse_model_spec",
    "register_model_loader",
    "state_digest",
    "wrap",
]
