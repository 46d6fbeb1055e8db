"""Membership inference numbers against independent computations, and the DP model's
empirical bound below its epsilon (the overfit model is attacked in tests/audit)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

import raigate
from raigate.privacy.mia import (
    clopper_pearson,
    empirical_epsilon,
    model_outputs,
    score_attack,
    tpr_at_fpr,
)
from raigate.privacy.train import PrivateTraining

Runner = Callable[..., PrivateTraining]


@pytest.mark.parametrize(("k", "n"), [(0, 20), (7, 20), (20, 20), (3, 1000)])
def test_clopper_pearson_matches_statsmodels(k: int, n: int) -> None:
    lo, hi = proportion_confint(k, n, alpha=0.05, method="beta")
    assert clopper_pearson(k, n, 0.05) == pytest.approx((lo, hi), abs=1e-12)


def test_tpr_at_fpr_and_auc_by_hand() -> None:
    members = np.array([0.9, 0.8, 0.7, 0.2])
    others = np.array([0.85, 0.3, 0.1, 0.05])
    labels = np.r_[np.ones(4), np.zeros(4)]
    scores = np.r_[members, others]
    assert tpr_at_fpr(labels, scores, 0.0) == 0.25  # only 0.9 beats every non-member
    assert tpr_at_fpr(labels, scores, 0.25) == 0.75  # one false positive (0.85) allowed
    pairs = [(a > b) + 0.5 * (a == b) for a in members for b in others]  # Mann-Whitney
    res = score_attack("loss", members, others, delta=1e-5)
    assert res.auc == pytest.approx(sum(pairs) / len(pairs))


def test_empirical_epsilon_by_hand_on_separable_scores() -> None:
    members, others = np.full(400, 1.0), np.zeros(400)
    res = empirical_epsilon(members, others, delta=1e-5, alpha=0.05, seed=0)
    # test half: 200/200 members flagged, 0/200 non-members: one-sided bounds at alpha/2
    tpr_lo = (0.025) ** (1 / 200)
    fpr_hi = 1 - (0.025) ** (1 / 200)
    expected = max(math.log((tpr_lo - 1e-5) / fpr_hi), math.log((1 - fpr_hi - 1e-5) / (1 - tpr_lo)))
    assert res["eps_lower"] == pytest.approx(expected)
    same = empirical_epsilon(
        np.random.default_rng(1).random(400), np.random.default_rng(2).random(400), delta=1e-5
    )
    assert same["eps_lower"] < 0.3


def test_dp_model_bound_stays_below_its_epsilon(dp_runner: Runner) -> None:
    # epsilon 1 on 96 members: low enough that 96 vs 96 scores could prove it broken
    dp = dp_runner(epsilon=1.0)
    members = raigate.load_data("demo:train", limit=96)
    delta = dp.ledger.delta
    reachable = empirical_epsilon(np.ones(96), np.zeros(96), delta=delta)["eps_lower"]
    assert reachable > dp.ledger.epsilon  # a perfect attack at this n would break the claim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mo = model_outputs(dp.model, members, progress=False)
        no = model_outputs(dp.model, raigate.load_data("demo:test", limit=96), progress=False)
    res = score_attack("loss", -mo.loss, -no.loss, delta=delta)
    assert res.epsilon["eps_lower"] <= dp.ledger.epsilon
