"""raigate.stats: the statsmodels-backed intervals and Holm correction, checked against the
closed forms computed here independently (Wilson's formula, Beta quantiles from scipy, Holm's
step-down by hand) and at the edges the callers rely on (k = 0, k = n, n = 0, arrays,
one-sided bounds, NaN p-values)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta, norm

from raigate.stats import clopper_pearson, clopper_pearson_lower, holm, wilson_interval


def _wilson_closed_form(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Wilson (1927), eq. written out: centre and half-width of the score interval."""
    z = float(norm.ppf(1 - alpha / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _cp_closed_form(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Clopper & Pearson (1934): Beta quantiles, closed at 0 and 1."""
    lo = float(beta.ppf(alpha / 2, k, n - k + 1)) if k > 0 else 0.0
    hi = float(beta.ppf(1 - alpha / 2, k + 1, n - k)) if k < n else 1.0
    return lo, hi


CASES = [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (1, 37), (499, 1000), (1000, 1000)]


@pytest.mark.parametrize(("k", "n"), CASES)
@pytest.mark.parametrize("alpha", [0.05, 0.001])
def test_wilson_equals_the_closed_form(k: int, n: int, alpha: float) -> None:
    lo, hi = wilson_interval(k, n, alpha)
    assert (lo, hi) == pytest.approx(_wilson_closed_form(k, n, alpha), abs=1e-12)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert isinstance(lo, float) and isinstance(hi, float)


def test_wilson_hand_worked_and_empty() -> None:
    # 0 of 10 at 95%: upper = z^2/(n + z^2) with z = 1.959964 -> 3.841459 / 13.841459
    assert wilson_interval(0, 10) == pytest.approx((0.0, 3.841459 / 13.841459), abs=1e-6)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert wilson_interval(7, 7)[1] == pytest.approx(1.0, abs=1e-15)  # exactly 1 in theory


@pytest.mark.parametrize(("k", "n"), CASES)
def test_clopper_pearson_equals_beta_quantiles(k: int, n: int) -> None:
    lo, hi = clopper_pearson(k, n, 0.05)
    assert (float(lo), float(hi)) == pytest.approx(_cp_closed_form(k, n, 0.05), abs=1e-12)


def test_clopper_pearson_vectorized_with_empty_groups() -> None:
    k = np.array([0, 3, 10, 0, 5])
    n = np.array([10, 10, 10, 0, -1])
    with np.errstate(all="raise"):  # the n = 0 slots must not divide by zero anywhere
        lo, hi = clopper_pearson(k, n, 0.05)
    assert lo.shape == hi.shape == (5,)
    for i in range(3):
        assert (lo[i], hi[i]) == pytest.approx(_cp_closed_form(int(k[i]), int(n[i]), 0.05))
    assert np.isnan(lo[3:]).all() and np.isnan(hi[3:]).all()
    # a scalar n broadcasts against an array of counts (CERTIFY's use)
    lo2, _ = clopper_pearson(np.arange(11), 10, 0.05)
    assert lo2[0] == 0.0 and lo2[3] == pytest.approx(lo[1])


def test_one_sided_lower_bound_is_the_alpha_quantile() -> None:
    """CERTIFY's bound at level a is Beta(k, n - k + 1)'s a quantile, 0 at k = 0; at k = n
    it is a^(1/n) (Cohen et al.'s all-votes case)."""
    k = np.array([0, 1, 60, 99, 100])
    got = clopper_pearson_lower(k, 100, 0.001)
    ref = np.where(k > 0, beta.ppf(0.001, np.maximum(k, 1), 100 - k + 1), 0.0)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-15)
    assert got[-1] == pytest.approx(0.001 ** (1 / 100), rel=1e-12)


def _holm_by_hand(p: list[float]) -> list[float]:
    """Holm (1979) step-down, written out: sort, scale by m - i, running max, cap at 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        out[i] = min(1.0, running)
    return out


def test_holm_equals_the_step_down_by_hand() -> None:
    pv = [0.01, 0.04, 0.03, 0.005, 0.2, 0.04, 0.9]
    np.testing.assert_allclose(holm(np.array(pv)), _holm_by_hand(pv), rtol=1e-12)
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])
    assert holm(np.array([])).shape == (0,)
    assert holm(np.array([[0.01, 0.02], [0.5, 0.04]])).shape == (2, 2)


def test_holm_keeps_nan_and_ranks_it_last() -> None:
    """A NaN p-value counts in m (conservative) and stays NaN; the others adjust as if it
    were the largest."""
    got = holm(np.array([0.01, np.nan, 0.02]))
    assert np.isnan(got[1])
    np.testing.assert_allclose(got[[0, 2]], [0.03, 0.04])
