"""Small closed-form statistics shared by the checks."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta, norm


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927).

    Preferred over the normal approximation because it stays inside [0, 1] and keeps its
    coverage for small groups and accuracies near 0 or 1. ``(nan, nan)`` when ``n == 0``.
    """
    if n <= 0:
        return (math.nan, math.nan)
    z = float(norm.ppf(1 - alpha / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def clopper_pearson(
    successes: np.ndarray | int, n: np.ndarray | int, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided ``1 - alpha`` interval of a binomial proportion (Clopper & Pearson
    1934), vectorized: each side misses with probability at most ``alpha / 2`` for every n
    and true proportion, so pass ``2 * a`` for a one-sided bound at level ``a``. NaN where
    ``n <= 0``.

    >>> lo, hi = clopper_pearson(0, 10)
    >>> float(lo), round(float(hi), 4)
    (0.0, 0.3085)
    """
    k = np.asarray(successes, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, beta.ppf(alpha / 2, k, m - k + 1), 0.0)
        hi = np.where(k < m, beta.ppf(1 - alpha / 2, k + 1, m - k), 1.0)
    empty = m <= 0
    return np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)
