"""The fairness gates' false-alarm rate and power, measured by simulation, and the max-T
machinery checked against hand-worked cases and closed forms.

The simulation calls :func:`raigate.audit.fairness.analyse` (labels and predictions in, the
check's findings out: the path ``raigate fairness`` takes after predicting) on audits drawn
from a known truth, so "fair" and "unfair" are facts, not estimates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom, norm

from raigate.audit import fairness
from raigate.audit import fairness_gates as fg
from raigate.audit import fairness_stats as fs
from raigate.data.fairface import RACES

ALPHA = 0.05
COLUMNS = [("race",), ("gender",), ("race", "gender")]


def draw_audit(
    accuracy: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """14 race x gender groups of ``n`` faces each, half of each group labelled 1; a
    prediction is right with the group's true ``accuracy`` whatever the label, so TPR, FPR
    and selection rates are equal across groups exactly when accuracies are."""
    g = len(accuracy)
    group = np.repeat(np.arange(g), n)
    y = np.tile(np.arange(n) % 2, g)
    right = rng.random(g * n) < accuracy[group]
    pred = np.where(right, y, 1 - y)
    attrs = pd.DataFrame(
        {
            "race": pd.Categorical.from_codes(group // 2, RACES),
            "gender": pd.Categorical.from_codes(group % 2, ["Male", "Female"]),
        }
    )
    return y, pred, attrs


def fail_share(accuracy: np.ndarray, n: int, runs: int, seed: int) -> float:
    params = fairness.FairnessParams(progress=False, plots=False, seed=seed, alpha=ALPHA)
    rng = np.random.default_rng(seed)
    fails = 0
    for r in range(runs):
        y, pred, attrs = draw_audit(accuracy, n, rng)
        p = params.model_copy(update={"seed": seed * 100_000 + r})
        a = fairness.analyse(y, pred, attrs, COLUMNS, ["0", "1"], p)
        fails += a.verdict == "fail"
    return fails / runs


def slack_bound(runs: int, rate: float = ALPHA) -> float:
    """The 99.9th percentile of the FAIL share of ``runs`` audits failing at ``rate``."""
    return float(binom.ppf(0.999, runs, rate)) / runs


def test_fair_model_with_14_groups_of_40_rarely_fails() -> None:
    # the case that failed 18 of 40 audits (45%) with the pick-the-extremes gate
    share = fail_share(np.full(14, 0.85), n=40, runs=200, seed=1)
    assert share <= slack_bound(200)


def test_gaps_exactly_at_the_threshold_fail_at_most_alpha() -> None:
    # least favourable for a false FAIL: 49 of the 91 race x gender pairs differ by exactly
    # the threshold (0.05); a gap is "beyond" only when it exceeds it
    share = fail_share(np.repeat([0.85, 0.80], 7), n=40, runs=200, seed=2)
    assert share <= slack_bound(200)


def test_one_group_040_worse_at_n80_fails_at_least_90_percent() -> None:
    acc = np.full(14, 0.85)
    acc[5] = 0.45
    share = fail_share(acc, n=80, runs=200, seed=3)
    assert share >= 0.9


def test_critical_value_and_pvalues_agree_on_every_contrast() -> None:
    rng = np.random.default_rng(4)
    y, pred, attrs = draw_audit(np.linspace(0.6, 0.9, 14), 60, rng)
    params = fairness.FairnessParams(progress=False, plots=False, n_boot=400)
    a = fairness.analyse(y, pred, attrs, COLUMNS, ["0", "1"], params)
    c = a.family.critical
    for b in a.family.blocks:
        # fail <=> interval beyond the margin <=> adjusted p <= alpha: the same event
        beyond = np.abs(b.est) - c * b.se > b.margin
        assert np.array_equal(beyond, b.p <= params.alpha)
    for row in a.summary:
        if row.get("p_value") is not None:
            assert (row["severity"] == "fail") == (row["p_value"] <= params.alpha)


def test_max_t_equals_a_hand_computed_family() -> None:
    # two groups, accuracy only: c is the 95% quantile of |d* - d| / se over replicates,
    # computed here from the replicates the check uses
    y = np.array([1] * 100 + [1] * 100)
    pred = np.array([1] * 90 + [0] * 10 + [1] * 70 + [0] * 30)
    attrs = pd.DataFrame({"site": ["a"] * 100 + ["b"] * 100})
    params = fairness.FairnessParams(
        progress=False, plots=False, n_boot=2000, thresholds={"selection_rate_ratio": None}
    )
    a = fairness.analyse(y, pred, attrs, [("site",)], ["0", "1"], params)
    (acc,) = [b for b in a.family.blocks if b.measure == "accuracy_difference"]
    reps = a.stats[0].boot["accuracy"]
    d_star = reps[:, 0] - reps[:, 1]
    se = np.sqrt(91 * 11 / 102**3 + 71 * 31 / 102**3)  # Agresti-Caffo by hand
    assert acc.se[0] == pytest.approx(se, rel=1e-12)
    assert acc.est[0] == pytest.approx(0.2, abs=1e-12)
    # with EO off the family is the accuracy block plus TPR/FPR blocks; compute all by hand
    worst = np.zeros(2000)
    for b in a.family.blocks:
        worst = np.maximum(worst, np.nan_to_num(np.abs(b.boot - b.est) / b.se).max(axis=1))
    assert np.abs(d_star - 0.2).max() / se <= worst.max()
    assert a.family.critical == pytest.approx(np.sort(worst)[2000 - 100 - 1])
    (row,) = [r for r in a.summary if r["measure"] == "accuracy_difference"]
    c = a.family.critical
    assert row["ci"] == pytest.approx([0.2 - c * se, 0.2 + c * se])
    # one gap of 0.2 between groups of 100 lies well beyond 0.05: fail, with its p
    assert row["severity"] == "fail" and row["p_value"] <= 0.05


def test_a_single_contrast_reduces_to_a_normal_interval() -> None:
    # One contrast, large groups: max-T is a single |Z|, so c -> 1.96 (Monte-Carlo error)
    rng = np.random.default_rng(5)
    n = 4000
    y = np.ones(2 * n, dtype=np.int64)
    pred = (rng.random(2 * n) < 0.7).astype(np.int64)
    attrs = pd.DataFrame({"g": ["a"] * n + ["b"] * n})
    params = fairness.FairnessParams(
        progress=False,
        plots=False,
        n_boot=4000,
        thresholds={"selection_rate_ratio": None, "equalized_odds_difference": None},
    )
    a = fairness.analyse(y, pred, attrs, [("g",)], ["0", "1"], params)
    assert a.family.size == 1
    assert a.family.critical == pytest.approx(norm.ppf(0.975), abs=0.08)


def test_groups_too_small_to_pass_are_said_with_the_samples_needed() -> None:
    rng = np.random.default_rng(6)
    y, pred, attrs = draw_audit(np.full(14, 0.85), 40, rng)
    params = fairness.FairnessParams(progress=False, plots=False)
    a = fairness.analyse(y, pred, attrs, COLUMNS, ["0", "1"], params)
    (rg,) = [
        r
        for r in a.summary
        if r["attribute"] == "race+gender" and r["measure"] == "accuracy_difference"
    ]
    assert rg["equal_groups_pass"] is False and rg["severity"] == "warn"
    # the detectable gap is threshold + (c + z_0.8) * se_max, se_max over the 91 pairs
    (blk,) = [
        b
        for b in a.family.blocks
        if b.measure == "accuracy_difference" and a.stats[b.spec].spec.name == "race+gender"
    ]
    c, se = a.family.critical, blk.se.max()
    assert rg["detectable_gap_80"] == pytest.approx(0.05 + (c + norm.ppf(0.8)) * se)
    # equal groups pass once c * se <= 0.025; se ~ 1/sqrt(n), from 40 per group
    assert rg["samples_to_pass"] == int(np.ceil(40 * (2 * c * se / 0.05) ** 2))
    assert rg["samples_to_pass"] > 2000
    (f,) = [f for f in a.findings if f.id == "fairness.accuracy_difference[race+gender]"]
    assert f"about {rg['samples_to_pass']:,} samples per group (here 40)" in f.message
    assert "80% power" in f.message


def test_maxt_helpers_hand_worked() -> None:
    m = np.array([0.5, 1.0, 2.0, 3.0])
    assert fs.maxt_critical(m, 0.25) == 2.0  # r = 1: the 3rd smallest
    assert fs.maxt_pvalues(m, np.array([2.0, 2.5, 3.5])).tolist() == [0.5, 0.25, 0.0]
    assert fs.agresti_caffo_var(np.array([0]), np.array([10])).item() == pytest.approx(
        (1 / 12) * (11 / 12) / 12
    )
    boot = np.arange(2 * 3 * 2).reshape(2, 3, 2)
    agg = fs.aggregate_cells(boot, np.array([1, 0, 1]), 2)
    assert agg.tolist() == [[[2, 3], [4, 6]], [[8, 9], [16, 18]]]


def test_ratio_contrast_uses_smoothed_logs() -> None:
    values = np.array([0.5, 0.0])
    n = np.array([40, 40])
    reps = np.array([[0.5, 0.0]])
    i, j, est, se, boot, smaller = fg._log_ratio(values, reps, n, np.array([True, True]))
    p = np.array([20.5 / 41, 0.5 / 41])
    assert (i.tolist(), j.tolist(), smaller.tolist()) == ([0], [1], [40])
    assert est[0] == pytest.approx(np.log(p[0]) - np.log(p[1]))
    assert boot[0, 0] == pytest.approx(est[0])  # the replicate equals the sample here
    assert se[0] == pytest.approx(np.sqrt(((1 - p) / (40 * p)).sum()))
