"""The one-run audit (Steinke, Nasr & Jagielski 2023) against the paper's own numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from raigate.privacy.canaries import (
    GUESS_FRACTIONS,
    audit_canaries,
    eps_lower_bound,
    p_value,
    plan_canaries,
)


def paper_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Appendix D's ``p_value_DP_audit`` as printed: a loop, no vectorization."""
    q = 1 / (1 + math.exp(-eps))
    beta = scipy.stats.binom.sf(v - 1, r, q)
    alpha = 0.0
    total = 0.0
    for i in range(1, v + 1):
        total = total + scipy.stats.binom.pmf(v - i, r, q)
        if total > i * alpha:
            alpha = total / i
    return min(beta + alpha * delta * 2 * m, 1)


@pytest.mark.parametrize(
    ("m", "r", "v", "delta", "published"),
    [
        (1000, 100, 75, 1e-4, 0.673),  # arXiv:2305.08846v1, Appendix D, p. 46
        (100000, 1510, 1439, 1e-5, 2.675),  # same paper, section 7, p. 28 (printed truncated)
    ],
)
def test_eps_lower_bound_reproduces_the_paper(m, r, v, delta, published) -> None:  # type: ignore[no-untyped-def]
    assert abs(eps_lower_bound(m, r, v, delta, 0.05) - published) < 1e-3


CASES = [
    (100, 100, 75, math.log(3), 0.0),
    (1000, 100, 75, 0.7, 1e-4),
    (500, 60, 41, 1.3, 1e-3),
    (50, 10, 0, 0.2, 1e-5),
]


@pytest.mark.parametrize(("m", "r", "v", "eps", "delta"), CASES)
def test_p_value_equals_the_papers_loop(m, r, v, eps, delta) -> None:  # type: ignore[no-untyped-def]
    assert p_value(m, r, v, eps, delta) == pytest.approx(
        paper_p_value(m, r, v, eps, delta), rel=1e-12
    )


def test_audit_on_perfect_and_on_random_scores() -> None:
    m = 1000
    rng = np.random.default_rng(0)
    included = rng.random(m) < 0.5
    perfect = audit_canaries(included.astype(float), included, delta=1e-5)
    # all-correct guesses: the best r is the largest; each r tested at alpha / 4
    r = 2 * min(m // 2, int(included.sum()), int((~included).sum()))
    best = max(
        eps_lower_bound(m, 2 * round(f * m / 2), 2 * round(f * m / 2), 1e-5, 0.05 / 4)
        for f in GUESS_FRACTIONS
        if 2 * round(f * m / 2) <= r
    )
    assert perfect.eps_lower == pytest.approx(best) and perfect.eps_lower > 2
    noise = audit_canaries(rng.random(m), included, delta=1e-5)
    assert noise.eps_lower < 0.5  # chance-level guessing proves next to nothing


def test_plan_mislabels_and_includes_about_half() -> None:
    labels = np.arange(2000) % 10
    plan = plan_canaries(labels, 10, 400, seed=3)
    assert plan.m == 400 and len(set(plan.positions.tolist())) == 400
    assert np.all(plan.labels != labels[plan.positions])
    assert 160 < plan.included.sum() < 240
    again = plan_canaries(labels, 10, 400, seed=3)
    assert np.array_equal(plan.positions, again.positions)
    assert np.array_equal(plan.included, again.included)
