"""Fixtures for the explanation tests: a small CNN really trained on the demo data, and a
model-independent "explanation" (an edge filter) that the randomization test must fail."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import raigate
from raigate.explain.methods import AttributionConfig, Method
from raigate.models.base import Model
from raigate.training import fit


class EdgeFilter(Method):
    """Sobel edge magnitude of the grey image: looks like a saliency map, ignores the model."""

    name = "edge"
    summary = "Sobel edge magnitude (model-independent)"
    needs_gradients = False

    def compute(
        self, model: Model, x: Tensor, target: Tensor, config: AttributionConfig
    ) -> tuple[Tensor, Tensor | None]:
        gray = x.mean(dim=1, keepdim=True)
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        gx = F.conv2d(gray, kx.view(1, 1, 3, 3), padding=1)
        gy = F.conv2d(gray, kx.t().reshape(1, 1, 3, 3), padding=1)
        mag = torch.sqrt(gx**2 + gy**2)
        return mag.expand_as(x) / x.shape[1], None


@pytest.fixture(scope="session")
def trained_cnn() -> Model:
    """raigate.zoo:small_cnn trained for 2 epochs on 2,000 demo:train images (a few seconds);
    its test accuracy is asserted so the randomization test really runs on a trained model."""
    train = raigate.load_data("demo:train", limit=2000)
    model = raigate.load_model("raigate.zoo:small_cnn", data=train, random_init=True)
    fit(model.net, train, normalize=model.normalize, epochs=2, lr=3e-3, seed=0, progress=False)
    model.random_init = False  # trained in place above: no longer an untrained network
    test = raigate.load_data("demo:test", limit=256)
    x = torch.stack([test[i][0] for i in range(len(test))])
    acc = float((model.predict(x).numpy() == test.labels).mean())
    assert acc > 0.8, f"fixture model did not learn the demo task (accuracy {acc:.3f})"
    return model


@pytest.fixture
def edge_method() -> EdgeFilter:
    """The edge filter registered as method "edge" for the duration of one test."""
    from raigate.explain.methods import METHODS, register_method

    method = EdgeFilter()
    register_method("edge", method)
    yield method
    METHODS.pop("edge", None)
