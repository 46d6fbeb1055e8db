"""The binomial intervals and the multiple-testing correction every check reports, computed
by statsmodels.

One thin module so that every caller reads these numbers from one well-tested library
(``statsmodels.stats.proportion.proportion_confint`` and
``statsmodels.stats.multitest.multipletests``) rather than from hand-written formulas, and
so that the conventions raigate relies on are fixed in one place whatever the installed
statsmodels version does at the edges:

- ``n <= 0`` gives NaN (an empty group has no interval), without a numpy warning;
- Clopper-Pearson at ``k = 0`` and ``k = n`` gives the bounds 0 and 1 exactly (the Beta
  quantile there is undefined; statsmodels fills it in, this module does not rely on that);
- one-sided bounds at level ``a`` are the matching side of the two-sided interval at
  ``2 * a`` (statsmodels 0.14, the lowest supported, has no one-sided option; the two are the same
  number);
- Holm over p-values that include NaN keeps those NaN and ranks them last.
"""

from __future__ import annotations

import math

import numpy as np
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

__all__ = ["clopper_pearson", "clopper_pearson_lower", "holm", "wilson_interval"]


def _interval(
    successes: np.ndarray | int, n: np.ndarray | int, alpha: float, method: str
) -> tuple[np.ndarray, np.ndarray]:
    """``proportion_confint`` on broadcast arrays, with NaN where ``n <= 0`` (computed on a
    placeholder ``n = 1`` there, so statsmodels never divides by zero)."""
    k, m = np.broadcast_arrays(
        np.asarray(successes, dtype=np.float64), np.asarray(n, dtype=np.float64)
    )
    empty = m <= 0
    safe_m = np.where(empty, 1.0, m)
    safe_k = np.where(empty, 0.0, k)
    lo, hi = proportion_confint(safe_k, safe_m, alpha=alpha, method=method)
    lo = np.clip(np.asarray(lo, dtype=np.float64), 0.0, 1.0)
    hi = np.clip(np.asarray(hi, dtype=np.float64), 0.0, 1.0)
    return np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927), statsmodels'
    ``method="wilson"``.

    Preferred over the normal approximation because it stays inside [0, 1] and keeps its
    coverage for small groups and accuracies near 0 or 1. ``(nan, nan)`` when ``n == 0``.

    >>> [round(v, 4) for v in wilson_interval(0, 10)]
    [0.0, 0.2775]
    """
    if n <= 0:
        return (math.nan, math.nan)
    lo, hi = _interval(successes, n, alpha, "wilson")
    return (float(lo), float(hi))


def clopper_pearson(
    successes: np.ndarray | int, n: np.ndarray | int, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided ``1 - alpha`` interval of a binomial proportion (Clopper & Pearson
    1934), statsmodels' ``method="beta"``, vectorized: each side misses with probability at
    most ``alpha / 2`` for every n and true proportion, so pass ``2 * a`` for a one-sided
    bound at level ``a``. NaN where ``n <= 0``; always arrays (0-d for scalar input).

    >>> lo, hi = clopper_pearson(0, 10)
    >>> float(lo), round(float(hi), 4)
    (0.0, 0.3085)
    """
    lo, hi = _interval(successes, n, alpha, "beta")
    k, m = np.broadcast_arrays(np.asarray(successes), np.asarray(n))
    seen = m > 0
    return np.where(seen & (k <= 0), 0.0, lo), np.where(seen & (k >= m), 1.0, hi)


def clopper_pearson_lower(count: np.ndarray | int, n: np.ndarray | int, alpha: float) -> np.ndarray:
    """One-sided ``(1 - alpha)`` Clopper-Pearson lower bound on a binomial proportion: the
    ``alpha`` quantile of ``Beta(k, n - k + 1)``, 0 at k = 0 (what Cohen et al.'s CERTIFY
    needs for ``p_A``).

    >>> round(float(clopper_pearson_lower(100, 100, 0.001)), 4)
    0.9333
    """
    return clopper_pearson(count, n, 2 * alpha)[0]


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979), statsmodels'
    ``multipletests(method="holm")``, in the input order and shape (one family however
    shaped).

    Controls the family-wise error rate over all ``m`` comparisons without assuming
    independence: the i-th smallest p is multiplied by ``m - i + 1``, then made monotone.
    NaN p-values count in ``m``, rank last and stay NaN (statsmodels would sort them
    arbitrarily); a p-value of 1 ranks last too and adjusts to 1 either way.

    >>> holm(np.array([0.01, 0.04, 0.03, 0.5])).tolist()
    [0.04, 0.09, 0.09, 0.5]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.size == 0:
        return p.copy()
    missing = np.isnan(p)
    adjusted = multipletests(np.where(missing, 1.0, p).ravel(), method="holm")[1]
    return np.where(missing, np.nan, np.asarray(adjusted, dtype=np.float64).reshape(p.shape))
