"""Faithfulness metrics against independent computations: scipy's spearmanr, a naive
deletion/insertion loop, closed forms of infidelity and max-sensitivity on a linear model,
and group maps worked by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from raigate import wrap
from raigate.explain.methods import AttributionConfig, gaussian_blur, get_method
from raigate.explain.metrics import (
    auc,
    deletion_insertion,
    group_mean_maps,
    infidelity_scores,
    perturbation_curve,
    pixel_ranks,
    sensitivity_scores,
    spearman_rows,
    square_removal,
)
from raigate.zoo import small_cnn

STD = 0.25


def linear_model() -> tuple[object, nn.Linear]:
    torch.manual_seed(0)
    lin = nn.Linear(3 * 5 * 5, 2)
    model = wrap(
        nn.Sequential(nn.Flatten(), lin),
        class_names=["a", "b"],
        input_shape=(3, 5, 5),
        mean=0.5,
        std=STD,
    )
    return model, lin


def test_spearman_rows_matches_scipy_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (6, 30), generator=gen).float()  # many ties
    b = a + torch.randn(6, 30, generator=gen)
    got = spearman_rows(a, b)
    for i in range(6):
        ref = spearmanr(a[i].numpy(), b[i].numpy()).statistic
        assert abs(float(got[i]) - ref) < 1e-6
    # hand-worked: ranks (1,2,3) vs (1,3,2): rho = 1 - 6*2/(3*8) = 0.5
    assert float(spearman_rows(torch.tensor([[1.0, 2, 3]]), torch.tensor([[1.0, 3, 2]]))) == 0.5
    const = torch.zeros(1, 4)
    assert float(spearman_rows(const, torch.tensor([[1.0, 2, 3, 4]]))) == 0.0
    assert float(spearman_rows(const, const)) == 1.0


def naive_curve(model, start, end, scores, target, steps):  # type: ignore[no-untyped-def]
    """Per image, per step: sort pixels, copy the top ones, softmax. No batching."""
    b, c, h, w = start.shape
    out = np.zeros((b, steps + 1))
    for i in range(b):
        order = np.argsort(-scores[i].flatten().numpy(), kind="stable")
        for k in range(steps + 1):
            n = round(k / steps * h * w)
            img = start[i].clone().view(c, -1)
            img[:, order[:n]] = end[i].view(c, -1)[:, order[:n]]
            with torch.no_grad():
                p = model.logits(img.view(1, c, h, w)).softmax(1)[0, target[i]]
            out[i, k] = float(p)
    return out


def test_deletion_and_insertion_match_a_naive_loop() -> None:
    torch.manual_seed(0)
    model = wrap(small_cnn(num_classes=3), class_names=list("abc"), input_shape=(3, 8, 8))
    x = torch.rand(3, 3, 8, 8)
    scores = torch.randn(3, 8, 8)
    target = torch.tensor([0, 2, 1])
    steps = 8
    curve = perturbation_curve(
        model, x, torch.zeros_like(x), scores, target, steps=steps, batch_size=5
    )
    ref = naive_curve(model, x, torch.zeros_like(x), scores, target, steps)
    np.testing.assert_allclose(curve.numpy(), ref, rtol=1e-5, atol=1e-6)
    d, i = deletion_insertion(model, x, scores, target, steps=steps, blur_sigma=1.0, batch_size=7)
    np.testing.assert_allclose(d.numpy(), np.trapezoid(ref, dx=1 / steps, axis=1), rtol=1e-5)
    ins = naive_curve(model, gaussian_blur(x, 1.0), x, scores, target, steps)
    np.testing.assert_allclose(i.numpy(), np.trapezoid(ins, dx=1 / steps, axis=1), rtol=1e-5)


def test_auc_and_ranks_hand_worked() -> None:
    # a straight line from 1 to 0 has area 1/2; a step down at the start has area 1/(2*steps)
    assert float(auc(torch.tensor([[1.0, 0.5, 0.0]]))) == pytest.approx(0.5)
    assert float(auc(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))) == pytest.approx(1 / 6)
    ranks = pixel_ranks(torch.tensor([[[0.1, 0.9], [0.5, 0.5]]]))
    assert ranks.tolist() == [[3, 0, 1, 2]]  # ties keep position order


def test_square_removal_replaces_one_square_by_the_baseline() -> None:
    x = torch.rand(5, 3, 8, 8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        removed, perturbed = square_removal(3, lambda t: torch.full_like(t, 0.5))(x)
    torch.testing.assert_close(removed + perturbed, x)
    for i in range(5):
        changed = (perturbed[i] != x[i]).any(dim=0)
        rows, cols = torch.nonzero(changed, as_tuple=True)
        assert int(changed.sum()) == 9  # exactly one 3x3 square
        assert int(rows.max() - rows.min()) == 2 and int(cols.max() - cols.min()) == 2
        assert torch.all(perturbed[i][:, changed] == 0.5)


def test_infidelity_is_zero_for_the_exact_linear_explanation() -> None:
    model, lin = linear_model()
    x = torch.rand(4, 3, 5, 5)
    target = torch.tensor([0, 1, 1, 0])
    grad = lin.weight.detach()[target].view(4, 3, 5, 5) / STD
    perturb = square_removal(2, torch.zeros_like)
    kw = {"perturb": perturb, "n_perturb": 8, "batch_size": 16, "seed": 0}
    # f(x) - f(x - I) = I . grad exactly, so the gradient explanation has no infidelity
    exact = infidelity_scores(model, x, grad, target, **kw)  # type: ignore[arg-type]
    assert float(exact.abs().max()) < 1e-6  # float32 rounding only
    shuffled = grad.flatten(1)[:, torch.randperm(75)].view_as(grad)
    wrong = infidelity_scores(model, x, shuffled, target, **kw)  # type: ignore[arg-type]
    assert float(wrong.min()) > 1e-4


def test_sensitivity_max_closed_forms_on_a_linear_model() -> None:
    model, _ = linear_model()
    x = torch.rand(3, 3, 5, 5) * 0.5 + 0.25
    target = torch.tensor([0, 1, 0])
    config = AttributionConfig(n_steps=4)
    saliency = get_method("saliency")

    def explain_saliency(inp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return saliency.attribute(model, inp, t, config)

    kw = {"radius": 0.02, "n_perturb": 6, "batch_size": 32, "seed": 0}
    zero = sensitivity_scores(explain_saliency, x, target, **kw)  # type: ignore[arg-type]
    assert float(zero.abs().max()) == 0.0  # the gradient of a linear model never moves
    ig = get_method("integrated-gradients")

    def explain_ig(inp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return ig.attribute(model, inp, t, config)

    # IG = x * w / s on a black baseline: ||d * w|| / ||x * w|| <= r / min(x) for |d| <= r
    sens = sensitivity_scores(explain_ig, x, target, **kw)  # type: ignore[arg-type]
    assert torch.all(sens > 0)
    assert torch.all(sens <= 0.02 / x.flatten(1).min(dim=1).values + 1e-6)


def test_group_mean_maps_hand_worked() -> None:
    maps = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 0.0]],
            [[2.0, 0.0], [0.0, 0.0]],  # same shape of map as the first, other scale
            [[0.0, 0.0], [0.0, 1.0]],
        ]
    )
    attrs = pd.DataFrame(
        {"race": pd.Categorical(["A", "A", "B"], categories=["A", "B", "C"], ordered=True)}
    )
    records, means = group_mean_maps(maps, attrs, ["race"])
    # normalized maps: e00, e00, e11; overall = (2/3, 0, 0, 1/3)
    assert [r["n"] for r in records] == [2, 1, 0]
    assert records[0]["tv_distance"] == pytest.approx(1 / 3)  # A = e00
    assert records[1]["tv_distance"] == pytest.approx(2 / 3)  # B = e11
    assert records[2]["tv_distance"] is None
    torch.testing.assert_close(means[("race", "B")], torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(means[("all", "all")], torch.tensor([[2 / 3, 0.0], [0.0, 1 / 3]]))
