"""Pure-numpy statistics behind the fairness check: per-group confusion matrices, a
stratified bootstrap of them, rates, percentile intervals and z-tests (Holm's correction is
:func:`raigate.stats.holm`, statsmodels').

Everything a group-level classification metric needs is in the group's confusion matrix
``C[true, predicted]``, so the bootstrap resamples confusion matrices, not rows.
Resampling a group's ``n_g`` rows with replacement gives cell counts distributed exactly as
``Multinomial(n_g, C_g / n_g)``, so one ``Generator.multinomial`` call per group draws all
``B`` replicates at once: the same distribution as drawing a ``[B, n_g]`` index matrix, at a
cost independent of ``n_g`` (Efron & Tibshirani 1993, ch. 6 and 13, for the bootstrap and
its percentile interval; the stratified form keeps every group at its own size, unlike
fairlearn's ``MetricFrame(n_boot=...)``, which resamples the whole table so group sizes
vary between replicates).

Confusion matrices here are ``[..., K, K + 1]``: ``K`` true classes by ``K`` predicted
classes plus one "other" column for a prediction that is none of the data's classes (a
model class with no data label), which always counts as an error.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1, 1, 0])
>>> pred = np.array([0, 1, 1, 1, -1, 0])
>>> conf = confusion_by_group(y, pred, np.array([0, 0, 0, 1, 1, 1]), n_groups=2, n_classes=2)
>>> rates_from_confusion(conf)["accuracy"].tolist()
[0.6666666666666666, 0.6666666666666666]
>>> boot = bootstrap_confusions(conf, n_boot=4, rng=np.random.default_rng(0))
>>> boot.shape, boot.sum(axis=(2, 3)).tolist()[0]
((4, 2, 2, 3), [3, 3])
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm


def confusion_by_group(
    y: np.ndarray, pred: np.ndarray, groups: np.ndarray, *, n_groups: int, n_classes: int
) -> np.ndarray:
    """Counts ``[G, K, K + 1]`` of (group, true class, predicted class); ``pred == -1`` (a
    model class the data lacks) goes to the last column."""
    k1 = n_classes + 1
    p = np.where(pred < 0, n_classes, pred)
    flat = (groups.astype(np.int64) * n_classes + y.astype(np.int64)) * k1 + p.astype(np.int64)
    counts = np.bincount(flat, minlength=n_groups * n_classes * k1)
    return counts.reshape(n_groups, n_classes, k1)


def bootstrap_confusions(conf: np.ndarray, *, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``B`` stratified bootstrap replicates ``[B, G, K, K + 1]`` of per-group confusions.

    Each group keeps its own size ``n_g`` in every replicate; its cells are drawn as
    ``Multinomial(n_g, C_g / n_g)``, which is exactly the distribution of the cell counts
    of ``n_g`` rows drawn with replacement from the group. Groups are resampled
    independently, so a difference between two groups computed replicate by replicate has
    the joint bootstrap distribution of that difference. Empty groups stay all zero.
    """
    g, k, k1 = conf.shape
    cells = conf.reshape(g, k * k1).astype(np.int64)
    out = np.zeros((n_boot, g, k * k1), dtype=np.int32)
    for i in range(g):
        n = int(cells[i].sum())
        if n:
            out[:, i, :] = rng.multinomial(n, cells[i] / n, size=n_boot)
    return out.reshape(n_boot, g, k, k1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def rates_from_confusion(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Group rates from confusions ``[..., K, K + 1]`` (NaN where a denominator is 0).

    ``accuracy`` = trace / n; ``selection[..., c]`` = share predicted ``c``;
    ``base[..., c]`` = share labelled ``c``; one-vs-rest ``tpr[..., c]`` = P(pred c | y c)
    and ``fpr[..., c]`` = P(pred c | y not c), with their denominators ``pos`` and ``neg``.
    """
    k = conf.shape[-2]
    n = conf.sum(axis=(-2, -1))
    diag = np.diagonal(conf[..., :k], axis1=-2, axis2=-1)  # [..., K]
    correct = diag.sum(axis=-1)
    predicted = conf[..., :k].sum(axis=-2)  # [..., K] column sums (without "other")
    pos = conf.sum(axis=-1)  # [..., K] row sums
    neg = n[..., None] - pos
    return {
        "n": n,
        "correct": correct,
        "accuracy": _ratio(correct, n),
        "selection": _ratio(predicted, n[..., None]),
        "base": _ratio(pos, n[..., None]),
        "tpr": _ratio(diag, pos),
        "fpr": _ratio(predicted - diag, neg),
        "pos": pos,
        "neg": neg,
    }


def ordinal_from_confusion(conf: np.ndarray) -> dict[str, np.ndarray]:
    """For ordered classes (age bins): mean absolute error in bins and off-by-one accuracy.

    ``mae`` = mean ``|true bin - predicted bin|`` over the samples whose prediction is a
    bin (an "other" prediction has no bin distance and is left out of ``mae``);
    ``off_by_one`` = share of all samples predicted within one bin (an "other" prediction
    counts as a miss).
    """
    k = conf.shape[-2]
    idx = np.arange(k)
    dist = np.abs(idx[:, None] - idx[None, :]).astype(np.float64)  # [K, K]
    inner = conf[..., :k].astype(np.float64)
    mapped = inner.sum(axis=(-2, -1))
    total = conf.sum(axis=(-2, -1))
    return {
        "mae": _ratio((inner * dist).sum(axis=(-2, -1)), mapped),
        "off_by_one": _ratio((inner * (dist <= 1)).sum(axis=(-2, -1)), total),
    }


def percentile_interval(samples: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval over axis 0; non-finite replicates are ignored and a
    column with none finite gives NaN.

    Linear interpolation between order statistics, exactly ``numpy.nanquantile``'s default
    (and fairlearn's), but vectorized: one sort instead of nanquantile's per-column loop.
    """
    x = np.asarray(samples, dtype=np.float64)
    x = np.sort(np.where(np.isfinite(x), x, np.nan), axis=0)  # NaN sorts last
    k = np.isfinite(x).sum(axis=0)
    out = []
    for q in (alpha / 2, 1 - alpha / 2):
        pos = np.maximum(k - 1, 0) * q
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(k - 1, 0))
        w = pos - lo
        v_lo = np.take_along_axis(x, lo[None, ...], axis=0)[0]
        v_hi = np.take_along_axis(x, hi[None, ...], axis=0)[0]
        v = v_lo + (v_hi - v_lo) * w
        out.append(np.where(k > 0, v, np.nan))
    return out[0], out[1]


def two_proportion_pvalue(
    s1: np.ndarray, n1: np.ndarray, s2: np.ndarray, n2: np.ndarray
) -> np.ndarray:
    """Two-sided p-value of the pooled two-proportion z-test of ``s1/n1 == s2/n2``.

    For two disjoint groups (independent samples). When the pooled proportion is 0 or 1
    both groups agree exactly and the p-value is 1.
    """
    s1, n1, s2, n2 = (np.asarray(a, dtype=np.float64) for a in (s1, n1, s2, n2))
    pooled = (s1 + s2) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (s1 / n1 - s2 / n2) / np.where(se > 0, se, 1.0), 0.0)
    return 2 * norm.sf(np.abs(z))


def aggregate_cells(boot_cells: np.ndarray, cell_group: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum replicates of fine cells ``[B, C, ...]`` into groups ``[B, G, ...]`` given each
    cell's group ``cell_group[C]``. A stratified bootstrap of the finest cells, summed, is a
    stratified bootstrap of every coarser grouping at once, so contrasts between groups of
    different attributes (race and race+gender) come from one joint distribution."""
    out = np.zeros((boot_cells.shape[0], n_groups, *boot_cells.shape[2:]), dtype=np.int64)
    for g in range(n_groups):
        cells = np.flatnonzero(cell_group == g)
        if cells.size:
            out[:, g] = boot_cells[:, cells].sum(axis=1)
    return out


def agresti_caffo_var(successes: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Variance of a proportion with one success and one failure added (Agresti & Caffo
    2000): never 0, even for a group at 0% or 100%, where the plain ``p(1-p)/n`` (and the
    bootstrap, which can only resample what it saw) would claim certainty."""
    s = np.asarray(successes, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    p = (s + 1) / (m + 2)
    return p * (1 - p) / (m + 2)


def maxt_critical(max_stats: np.ndarray, alpha: float) -> float:
    """Critical value ``c`` of a bootstrap max-T family (Westfall & Young 1993; Romano &
    Wolf 2005): the ``(B - floor(alpha B))``-th smallest of the replicate maxima.

    Chosen so that ``t > c`` holds exactly when :func:`maxt_pvalues` gives ``p <= alpha``:
    a gate that compares intervals with ``c`` and a p-value with ``alpha`` cannot disagree.

    >>> maxt_critical(np.arange(1.0, 101.0), 0.05)
    95.0
    >>> float(maxt_pvalues(np.arange(1.0, 101.0), np.array([95.0, 95.5]))[0]), 0.05
    (0.06, 0.05)
    """
    m = np.sort(np.asarray(max_stats, dtype=np.float64))
    r = int(np.floor(alpha * m.size + 1e-9))
    return float(m[m.size - r - 1])


def maxt_pvalues(max_stats: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Family-wise adjusted p-values: the share of replicate maxima at or above each ``t``."""
    m = np.sort(np.asarray(max_stats, dtype=np.float64))
    t = np.asarray(t, dtype=np.float64)
    return (m.size - np.searchsorted(m, t, side="left")) / m.size
