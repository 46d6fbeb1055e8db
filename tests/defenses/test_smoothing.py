"""Randomized smoothing against closed forms and independent statistics libraries.

For a linear classifier f(x) = [w.x + b > 0] the smoothed class probability is known
exactly: p_1(x) = Phi((w.x + b) / (sigma ||w||)), so the true certified radius
sigma Phi^-1(p_A) is the distance |w.x + b| / ||w|| to the decision boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binom, binomtest
from scipy.stats import norm as gaussian
from statsmodels.stats.proportion import proportion_confint
from torch import nn

from raigate import ConfigError, wrap
from raigate.defenses import ABSTAIN, SmoothedClassifier
from raigate.defenses.smoothing import binomial_p_value, clopper_pearson_lower
from raigate.zoo import small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


SHAPE = (1, 4, 4)
D = 16


def _linear(scale: float = 1.0):
    torch.manual_seed(0)
    lin = nn.Linear(D, 2)
    with torch.no_grad():
        lin.weight.mul_(scale)
        lin.bias.mul_(scale)
    model = wrap(nn.Sequential(nn.Flatten(), lin), class_names=["neg", "pos"], input_shape=SHAPE)
    w = (lin.weight[1] - lin.weight[0]).detach().double()
    b = float((lin.bias[1] - lin.bias[0]).detach())
    return model, w, b


def _points(w: torch.Tensor, b: float, distances: np.ndarray) -> torch.Tensor:
    """Points at signed distance ``d`` from the boundary w.x + b = 0."""
    base = torch.full((D,), 0.5, dtype=torch.float64)
    base = base - (base @ w + b) / (w @ w) * w  # onto the boundary
    unit = w / w.norm()
    pts = base.unsqueeze(0) + torch.as_tensor(distances).unsqueeze(1) * unit.unsqueeze(0)
    return pts.float().view(-1, *SHAPE)


def test_certify_on_a_linear_model_matches_the_closed_form() -> None:
    sigma, n0, n, alpha = 0.25, 100, 4000, 0.001
    model, w, b = _linear()
    dist = np.array([-0.6, -0.3, -0.1, -0.02, 0.0, 0.01, 0.05, 0.15, 0.3, 0.45, 0.7])
    x = _points(w, b, dist)
    margin = (x.double().flatten(1) @ w + b).numpy()
    np.testing.assert_allclose(margin / float(w.norm()), dist, atol=1e-5)
    p_pos = gaussian.cdf(margin / (sigma * float(w.norm())))  # the closed form
    true_class = (margin > 0).astype(int)
    p_a = np.where(true_class == 1, p_pos, 1 - p_pos)

    cert = SmoothedClassifier(model, sigma, batch_size=1500, seed=3).certify(x, n0, n, alpha)
    pred, radius = cert.prediction.numpy(), cert.radius.numpy()
    counts = cert.count.numpy()

    # never a wrong class: either the side the point is on, or abstain
    assert np.all((pred == ABSTAIN) | (pred == true_class))
    assert np.all(pred[np.abs(dist) <= 0.02] == ABSTAIN)  # p_A within ~0.03 of 1/2
    assert np.all(pred[np.abs(dist) >= 0.1] == true_class[np.abs(dist) >= 0.1])
    # the bound is the one-sided Clopper-Pearson bound, computed independently by statsmodels
    certified = pred != ABSTAIN
    cp = np.array(
        [proportion_confint(int(k), n, alpha=2 * alpha, method="beta")[0] for k in counts]
    )
    np.testing.assert_allclose(cert.p_lower.numpy()[certified], cp[certified], rtol=1e-9)
    np.testing.assert_allclose(radius[certified], sigma * gaussian.ppf(cp[certified]), rtol=1e-9)
    assert np.all(radius[~certified] == 0)
    # ... and the radius lies within the Clopper-Pearson bounds the closed form implies:
    # n_A ~ Binomial(n, p_A), so (at 1 - 2e-5) it falls between these quantiles
    lo_k = binom.ppf(1e-5, n, p_a[certified])
    hi_k = binom.isf(1e-5, n, p_a[certified])
    assert np.all((counts[certified] >= lo_k) & (counts[certified] <= hi_k))
    r_lo = sigma * gaussian.ppf(
        [proportion_confint(int(k), n, alpha=2 * alpha, method="beta")[0] for k in lo_k]
    )
    r_hi = sigma * gaussian.ppf(
        [proportion_confint(int(k), n, alpha=2 * alpha, method="beta")[0] for k in hi_k]
    )
    assert np.all((radius[certified] >= r_lo - 1e-12) & (radius[certified] <= r_hi + 1e-12))
    # a lower confidence bound: never above the true distance to the boundary
    assert np.all(radius[certified] <= np.abs(dist[certified]) + 1e-9)
    assert np.all(radius[np.abs(dist) >= 0.3] > 0.5 * np.abs(dist[np.abs(dist) >= 0.3]))


def test_predict_abstains_by_the_binomial_test() -> None:
    sigma = 0.25
    model, w, b = _linear()
    x = _points(w, b, np.array([-0.5, -0.001, 0.0005, 0.5]))
    pred = SmoothedClassifier(model, sigma, seed=1).predict(x, n=500, alpha=0.001).numpy()
    assert pred[0] == 0 and pred[3] == 1
    assert pred[1] == ABSTAIN and pred[2] == ABSTAIN  # p_A = 0.5 +- 0.002: a coin flip
    for a in range(0, 61, 7):
        for bb in (0, 3, 30, 60):
            if a + bb:
                expect = binomtest(a, a + bb, 0.5).pvalue
                assert binomial_p_value(np.array([a]), np.array([bb]))[0] == pytest.approx(expect)


def test_clopper_pearson_lower_equals_statsmodels() -> None:
    n, alpha = 250, 0.001
    k = np.array([0, 1, 10, 125, 200, 249, 250])
    expect = [proportion_confint(int(v), n, alpha=2 * alpha, method="beta")[0] for v in k]
    np.testing.assert_allclose(clopper_pearson_lower(k, n, alpha), expect, rtol=1e-10, atol=1e-15)


def test_sigma_to_zero_matches_the_base_prediction() -> None:
    torch.manual_seed(5)
    model = wrap(small_cnn(num_classes=4), class_names=list("abcd"), input_shape=(3, 16, 16))
    x = torch.rand(24, 3, 16, 16)
    smoothed = SmoothedClassifier(model, 1e-6, batch_size=64)
    base = model.predict(x)
    assert torch.equal(smoothed.predict(x, n=20, alpha=0.001), base)
    assert torch.equal(smoothed.certify(x, n0=5, n=20, alpha=0.01).prediction, base)
    assert torch.equal(smoothed.logits(x).argmax(1), base)


def test_eot_logits_are_the_log_mean_softmax_over_noise() -> None:
    """With very large logits the softmax is one-hot, so exp(EOT logits) is the vote
    frequency, whose expectation is the closed-form p_1."""
    sigma = 0.25
    model, w, b = _linear(scale=1e4)
    x = _points(w, b, np.array([-0.1, 0.05, 0.2]))
    margin = (x.double().flatten(1) @ w + b).numpy()
    p_pos = gaussian.cdf(margin / (sigma * float(w.norm())))
    m = 4000
    smoothed = SmoothedClassifier(model, sigma, eot_samples=m, seed=2)
    xg = x.clone().requires_grad_(True)
    logp = smoothed.logits(xg)
    probs = logp.exp().detach().numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    tol = 4.5 * np.sqrt(p_pos * (1 - p_pos) / m)
    assert np.all(np.abs(probs[:, 1] - p_pos) <= tol)
    (grad,) = torch.autograd.grad(logp[:, 1].sum(), xg)
    assert torch.isfinite(grad).all()  # differentiable: EOT attacks can use it


def test_streamed_counts_add_up_and_are_reproducible() -> None:
    model, w, b = _linear()
    x = _points(w, b, np.array([-0.2, 0.0, 0.2]))
    a = SmoothedClassifier(model, 0.5, batch_size=7, seed=11).counts(x, 50)
    assert a.shape == (3, 2) and a.sum(1).tolist() == [50, 50, 50]
    again = SmoothedClassifier(model, 0.5, batch_size=7, seed=11).counts(x, 50)
    assert torch.equal(a, again)


def test_per_image_seeds_make_each_certificate_independent_of_batch_and_company() -> None:
    """CERTIFY with per-image seeds (the audit's, raigate.parallel): an image's votes are
    the same alone, in any batch of draws (7: one image's draws split across forward
    passes; 1000: several images per pass) and next to any other images, and equal the
    votes of its own two streams drawn by hand."""
    from raigate.parallel import item_seed

    model, w, b = _linear()
    x = _points(w, b, np.array([-0.1, 0.0, 0.05, 0.1]))
    seeds = [101, 102, 103, 104]

    def cert(batch: int, idx: list[int]):  # type: ignore[no-untyped-def]
        sm = SmoothedClassifier(model, 0.5, batch_size=batch, seed=0)
        return sm.certify(x[idx], 10, 300, 0.01, seeds=[seeds[i] for i in idx])

    full = cert(1000, [0, 1, 2, 3])
    for batch in (7, 16, 1000):
        for idx in ([2], [3, 2], [0, 1, 2, 3]):
            c = cert(batch, idx)
            assert torch.equal(c.count, full.count[idx]), (batch, idx)
            assert torch.equal(c.prediction, full.prediction[idx])

    # image 2's votes, from its own two streams by hand: selection picks the class,
    # estimation counts it (n_A, reported whether or not CERTIFY abstains)
    def votes(stream: str, n: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(item_seed(103, stream))
        noise = torch.randn((n, *SHAPE), generator=gen) * 0.5
        return torch.bincount(model.logits(x[2] + noise).argmax(1), minlength=2)

    selected = int(votes("selection", 10).argmax())
    assert int(votes("estimation", 300)[selected]) == int(full.count[2])


def test_bad_inputs() -> None:
    model, _, _ = _linear()
    with pytest.raises(ConfigError, match="--smoothing-sigma must be > 0"):
        SmoothedClassifier(model, 0.0)
    smoothed = SmoothedClassifier(model, 0.25)
    x = torch.rand(1, *SHAPE)
    with pytest.raises(
        ConfigError, match=r"--certify-n0 \(200\) must not exceed --certify-n \(100\)"
    ):
        smoothed.certify(x, n0=200, n=100, alpha=0.001)
    with pytest.raises(ConfigError, match="--alpha"):
        smoothed.predict(x, n=10, alpha=0.7)
