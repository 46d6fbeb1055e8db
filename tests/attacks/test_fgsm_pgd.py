"""Native FGSM/PGD against independent references: ART's FastGradientMethod on the same
model and inputs, and the closed-form distance to a linear decision boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from raigate import ConfigError, wrap
from raigate.attacks import fgsm, perturbation_norm, pgd, pgd_search, to_art_classifier
from raigate.zoo import small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


SHAPE = (3, 8, 8)
D = int(np.prod(SHAPE))


def _mlp(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(D, 64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, classes),
    )


def _art_fgsm(model, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str) -> np.ndarray:
    from art.attacks.evasion import FastGradientMethod

    attack = FastGradientMethod(
        to_art_classifier(model), norm=np.inf if norm == "linf" else 2, eps=eps, batch_size=13
    )
    return attack.generate(x.numpy(), y=np.eye(model.num_classes, dtype=np.float32)[y.numpy()])


@pytest.mark.parametrize(
    "norm,eps", [("linf", 8 / 255), ("linf", 1 / 255), ("l2", 0.5), ("l2", 0.1)]
)
def test_fgsm_equals_art(norm: str, eps: float) -> None:
    torch.manual_seed(1)
    model = wrap(small_cnn(num_classes=3), class_names=list("abc"), input_shape=SHAPE,
                 mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))  # fmt: skip
    x = torch.rand(40, *SHAPE)
    x[:5] = 1.0  # saturated pixels: the clip to [0, 1] matters
    y = torch.randint(0, 3, (40,))
    ours = fgsm(model, x, y, eps=eps, norm=norm).numpy()
    art = _art_fgsm(model, x, y, eps, norm)
    if norm == "linf":
        np.testing.assert_array_equal(ours, art)  # sign steps: bit-identical
    else:  # the per-sample gradient norm is summed in a different order: float rounding only
        np.testing.assert_allclose(ours, art, rtol=0, atol=1e-6)
    assert np.abs(ours - x.numpy()).max() > 0


class _DeadFor(nn.Module):
    """Logits that do not depend on the input when its mean is below 0.5: zero gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(D, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.relu(x.flatten(1).mean(1, keepdim=True) - 0.5)
        return self.head(x.flatten(1)) * gate


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_zero_gradient_handled_like_art(norm: str) -> None:
    torch.manual_seed(2)
    model = wrap(_DeadFor(), class_names=["a", "b"], input_shape=SHAPE)
    x = torch.cat([torch.rand(6, *SHAPE) * 0.4, 0.6 + torch.rand(6, *SHAPE) * 0.4])
    y = torch.tensor([0, 1] * 6)
    ours = fgsm(model, x, y, eps=0.05, norm=norm)
    np.testing.assert_allclose(ours.numpy(), _art_fgsm(model, x, y, 0.05, norm), atol=1e-6, rtol=0)
    assert torch.equal(ours[:6], x[:6])  # no gradient, no step (and no NaN)
    assert not torch.isnan(ours).any()


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.6)])
def test_pgd_at_least_as_strong_as_fgsm_on_every_input(norm: str, eps: float) -> None:
    model = wrap(_mlp(3), class_names=list("abc"), input_shape=SHAPE, mean=0.5, std=0.3)
    x = torch.rand(200, *SHAPE)
    with torch.no_grad():
        y = model.logits(x).argmax(1)  # every sample starts correct
    ok_fgsm = model.predict(fgsm(model, x, y, eps=eps, norm=norm)) == y
    res = pgd_search(model, x, y, eps=eps, norm=norm, steps=10, restarts=2, seed=0)
    ok_pgd = model.predict(res.x_adv) == y
    ok_own = model.predict(res.x_own) == y
    assert not (ok_pgd & ~ok_fgsm).any()  # per sample: PGD never loses to FGSM
    assert torch.equal(ok_pgd, ok_own & ok_fgsm)  # ... because FGSM's point is a candidate
    assert 0 < int(ok_pgd.sum()) < int(ok_fgsm.sum()) < len(y)  # and the sweep is informative
    for x_adv in (res.x_adv, res.x_own):
        assert float(perturbation_norm(x_adv, x, norm).max()) <= eps + 1e-5
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_matches_closed_form_distance_to_a_linear_boundary(norm: str) -> None:
    """For f(x) = sign(w.x + b) away from the box faces, the smallest perturbation that flips
    x has L2 length |w.x + b| / ||w||_2 and L-inf size |w.x + b| / ||w||_1 (dual norms)."""
    torch.manual_seed(4)
    lin = nn.Linear(D, 2)
    model = wrap(nn.Sequential(nn.Flatten(), lin), class_names=["a", "b"], input_shape=SHAPE)
    w = (lin.weight[1] - lin.weight[0]).detach()
    b = float((lin.bias[1] - lin.bias[0]).detach())
    x = 0.35 + 0.3 * torch.rand(400, *SHAPE)
    margin = x.flatten(1) @ w + b
    y = (margin > 0).long()
    dual = w.abs().sum() if norm == "linf" else w.norm()
    dist = (margin.abs() / dual).numpy()
    eps = float(np.median(dist))
    keep = np.abs(dist - eps) > 0.02 * eps  # leave out the knife edge
    flipped = (model.predict(pgd(model, x, y, eps=eps, norm=norm, steps=20)) != y).numpy()
    np.testing.assert_array_equal(flipped[keep], dist[keep] < eps)


def test_eps_zero_and_bad_inputs() -> None:
    model = wrap(_mlp(), class_names=list("abc"), input_shape=SHAPE)
    x, y = torch.rand(3, *SHAPE), torch.tensor([0, 1, 2])
    assert torch.equal(fgsm(model, x, y, eps=0.0), x)
    assert torch.equal(pgd(model, x, y, eps=0.0), x)
    with pytest.raises(ConfigError, match="--eps"):
        fgsm(model, x, y, eps=-0.1)
    with pytest.raises(ConfigError, match="--norm must be one of linf, l2, got 'l3'"):
        pgd(model, x, y, eps=0.1, norm="l3")  # type: ignore[arg-type]
