"""One-run privacy audit with canaries (Steinke, Nasr & Jagielski 2023, "Privacy Auditing
with One (1) Training Run", NeurIPS 2023).

``m`` training examples become canaries: each gets a wrong label (mislabelled examples
stand out most when memorized) and is included in training independently with
probability 1/2; the excluded ones are dropped from the training set. After training the
auditor scores every canary (the negative cross-entropy of its wrong label: high means
"looks trained on"), guesses "in" for the ``r/2`` highest and "out" for the ``r/2``
lowest scores, and counts the ``v`` correct guesses. Under (epsilon, delta)-DP, ``v`` is
stochastically dominated by a Binomial(r, e^eps / (1 + e^eps)) plus a delta term
(Theorem 5.2), so a large ``v`` rejects small epsilons: ``eps_lower`` is the largest
epsilon rejected at level ``alpha`` (:func:`eps_lower_bound`, the paper's Appendix D code).

Guess counts ``r`` are fixed in advance (:data:`GUESS_FRACTIONS` of ``m``) and each is
tested at ``alpha / len(GUESS_FRACTIONS)`` (Bonferroni), so reporting the best of them
keeps the overall level ``alpha``. One run gives a valid but loose lower bound: for a
well-trained DP model it is usually far below the claimed epsilon, and a value above it
means the guarantee is broken.

>>> round(eps_lower_bound(1000, 100, 75, 1e-4, 0.05), 3)  # the paper's Appendix D example
0.673
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binom

from raigate.errors import ConfigError

GUESS_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0)
"""Guesses ``r`` as fractions of the canary count ``m`` (abstaining on the rest)."""

__all__ = [
    "GUESS_FRACTIONS",
    "CanaryAudit",
    "CanaryPlan",
    "audit_canaries",
    "eps_lower_bound",
    "p_value",
    "plan_canaries",
]


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[at least ``v`` of ``r`` guesses correct] under (eps, delta)-DP with ``m`` canaries
    (Steinke et al. 2023, Corollary 5.4; Appendix D's ``p_value_DP_audit``, vectorized)."""
    if not (0 <= v <= r <= m) or eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need 0 <= v <= r <= m, eps >= 0, delta in [0,1]: {m, r, v, eps, delta}")
    q = 1.0 / (1.0 + math.exp(-eps))  # accuracy of eps-DP randomized response
    beta = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    alpha = 0.0
    if v > 0 and delta > 0:
        # sum_i = P[v > Binomial(r, q) >= v - i];  alpha = max_i sum_i / i
        tail = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))
        alpha = float(np.max(tail / np.arange(1, v + 1)))
    return min(beta + alpha * delta * 2 * m, 1.0)


def eps_lower_bound(m: int, r: int, v: int, delta: float, alpha: float) -> float:
    """Largest epsilon whose p-value stays below ``alpha``: with confidence ``1 - alpha``
    the training run is not (epsilon, delta)-DP for any smaller epsilon. Appendix D's
    ``get_eps_audit``: widen the bracket by 1 until it holds, then 30 bisection steps,
    returning the conservative end."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < alpha:
        hi += 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class CanaryPlan:
    """Which training examples are canaries, their wrong labels, and which are included."""

    positions: np.ndarray  # positions in the training data
    labels: np.ndarray  # the wrong labels they carry
    included: np.ndarray  # bool: trained on
    seed: int

    @property
    def m(self) -> int:
        return len(self.positions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "m": self.m,
            "seed": self.seed,
            "positions": self.positions.tolist(),
            "labels": self.labels.tolist(),
            "included": self.included.astype(int).tolist(),
        }


def plan_canaries(labels: np.ndarray, num_classes: int, m: int, *, seed: int) -> CanaryPlan:
    """Pick ``m`` training examples (seeded), give each a uniformly random wrong label and
    include each with probability 1/2."""
    n = len(labels)
    if m < 0 or m > n // 2:
        raise ConfigError(f"--canaries must lie in 0..{n // 2} (half the {n} examples), got {m}")
    if num_classes < 2:
        raise ConfigError("canaries need at least two classes to mislabel")
    rng = np.random.default_rng([seed, 0xCA7A])
    positions = np.sort(rng.choice(n, size=m, replace=False)).astype(np.int64)
    shift = rng.integers(1, num_classes, size=m)
    wrong = (labels[positions] + shift) % num_classes
    included = rng.random(m) < 0.5
    return CanaryPlan(
        positions=positions, labels=wrong.astype(np.int64), included=included, seed=seed
    )


@dataclass(frozen=True)
class CanaryAudit:
    """Result of the one-run audit: the best lower bound and the per-``r`` table."""

    eps_lower: float
    alpha: float
    delta: float
    m: int
    table: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "eps_lower": self.eps_lower,
            "alpha": self.alpha,
            "delta": self.delta,
            "m": self.m,
            "guesses": self.table,
            "definition": (
                "Steinke, Nasr & Jagielski 2023 one-run audit: guess 'in' for the r/2 highest "
                "and 'out' for the r/2 lowest canary scores (score = -cross-entropy of the "
                "canary's wrong label); eps_lower is the largest epsilon rejected at level "
                f"alpha={self.alpha} (Bonferroni over r in {list(GUESS_FRACTIONS)} x m)"
            ),
        }


def audit_canaries(
    scores: np.ndarray, included: np.ndarray, *, delta: float, alpha: float = 0.05
) -> CanaryAudit:
    """Lower-bound epsilon from canary ``scores`` (higher: more member-like) and the true
    inclusion bits. Ties are broken by canary order, never by the inclusion bits."""
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    m = len(scores)
    if m == 0:
        return CanaryAudit(eps_lower=0.0, alpha=alpha, delta=delta, m=0)
    order = np.argsort(-scores, kind="stable")  # most member-like first
    per_test = alpha / len(GUESS_FRACTIONS)
    table = []
    best = 0.0
    for frac in GUESS_FRACTIONS:
        half = max(1, round(frac * m / 2))
        half = min(half, m // 2)
        if half == 0:
            continue
        top, bottom = order[:half], order[m - half :]
        correct = int(included[top].sum() + (~included[bottom]).sum())
        r = 2 * half
        eps = eps_lower_bound(m, r, correct, delta, per_test)
        best = max(best, eps)
        table.append(
            {
                "r": r,
                "correct": correct,
                "accuracy": correct / r,
                "eps_lower": eps,
                "alpha": per_test,
            }
        )
    return CanaryAudit(eps_lower=best, alpha=alpha, delta=delta, m=m, table=table)
