"""The small saved model most bundle tests audit: raigate.zoo:small_cnn (2 classes, Male /
Female, 3x32x32, mean and std 0.5) initialized from seed 5, as a spec file beside its
safetensors weights, so every test folder holds the same network."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from raigate.models.loaders import write_model_spec
from raigate.zoo import small_cnn


def saved_small_cnn(spec: Path, weights: Path | None = None) -> Path:
    """Write the weights (default: ``model.safetensors`` beside ``spec``) and the spec;
    return the spec's path."""
    weights = weights or spec.with_name("model.safetensors")
    spec.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(5)
    net = small_cnn(num_classes=2)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
    write_model_spec(
        spec, factory="raigate.zoo:small_cnn", kwargs={"num_classes": 2}, weights=weights,
        class_names=["Male", "Female"], input_shape=[3, 32, 32], mean=[0.5] * 3, std=[0.5] * 3,
    )  # fmt: skip
    return spec
