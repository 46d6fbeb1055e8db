"""Stratified group bootstrap of raigate's fairness check vs fairlearn's
``MetricFrame(n_boot=...)`` on the same 10,000 predictions with race x gender groups
(7 x 2 = 14 groups), computing per-group accuracy and selection-rate intervals.

fairlearn (reference) resamples the whole table and recomputes every group metric with
pandas once per replicate; raigate draws every replicate of a group's confusion matrix in
one multinomial call (:mod:`raigate.audit.fairness_stats`). fairlearn is timed at
``n_boot=50`` because it costs about a tenth of a second per replicate; every case of that
benchmark does the same 50 replicates, so its ratios are per replicate. A second benchmark
times raigate's default 1,000 replicates against a [B, n_g] index-matrix numpy version.
Goal: at least 100x faster per replicate than fairlearn.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness import Benchmark, Case
from raigate.audit import fairness_stats as fs
from raigate.data.fairface import GENDERS, RACES

N = 10_000
QUANTILES = [0.025, 0.975]


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    race = rng.integers(0, len(RACES), N)
    gender = rng.integers(0, 2, N)
    y = rng.integers(0, 2, N)
    pred = np.where(rng.random(N) < 0.80 + 0.02 * race, y, 1 - y)
    sf = pd.DataFrame(
        {
            "race": pd.Categorical.from_codes(race, RACES),
            "gender": pd.Categorical.from_codes(gender, GENDERS),
        }
    )
    return y, pred, sf


def raigate_bootstrap(y: np.ndarray, pred: np.ndarray, sf: pd.DataFrame, n_boot: int) -> None:
    """Group codes, per-group confusions, B stratified replicates, percentile intervals."""
    codes = sf["race"].cat.codes.to_numpy().astype(np.int64) * 2 + sf["gender"].cat.codes.to_numpy()
    conf = fs.confusion_by_group(y, pred, codes, n_groups=len(RACES) * 2, n_classes=2)
    boot = fs.bootstrap_confusions(conf, n_boot=n_boot, rng=np.random.default_rng(0))
    rates = fs.rates_from_confusion(boot)
    fs.percentile_interval(rates["accuracy"], 0.05)
    fs.percentile_interval(rates["selection"][..., 1], 0.05)


def numpy_index_bootstrap(y: np.ndarray, pred: np.ndarray, sf: pd.DataFrame, n_boot: int) -> None:
    """The straightforward vectorized alternative: a [B, n_g] index matrix per group."""
    codes = sf["race"].cat.codes.to_numpy().astype(np.int64) * 2 + sf["gender"].cat.codes.to_numpy()
    rng = np.random.default_rng(0)
    correct = (y == pred).astype(np.float64)
    selected = (pred == 1).astype(np.float64)
    for g in range(len(RACES) * 2):
        rows = np.flatnonzero(codes == g)
        idx = rows[rng.integers(0, rows.size, size=(n_boot, rows.size))]
        np.quantile(correct[idx].mean(axis=1), QUANTILES)
        np.quantile(selected[idx].mean(axis=1), QUANTILES)


def fairlearn_bootstrap(y: np.ndarray, pred: np.ndarray, sf: pd.DataFrame, n_boot: int) -> None:
    from fairlearn.metrics import MetricFrame, selection_rate
    from sklearn.metrics import accuracy_score

    mf = MetricFrame(
        metrics={"accuracy": accuracy_score, "selection_rate": selection_rate},
        y_true=y,
        y_pred=pred,
        sensitive_features=sf,
        n_boot=n_boot,
        ci_quantiles=QUANTILES,
        random_state=0,
    )
    mf.by_group_ci  # noqa: B018 - the intervals are what is timed


def build(fairlearn_boot: int = 50, default_boot: int = 1000) -> list[Benchmark]:
    y, pred, sf = _data()
    ref = f"fairlearn MetricFrame n_boot={fairlearn_boot}"
    common = {"n": N, "groups": 14, "metrics": ["accuracy", "selection_rate"]}
    vs_fairlearn = Benchmark(
        name="fairness_bootstrap",
        description=(
            f"per-group accuracy + selection-rate intervals, {N:,} predictions, race x gender "
            f"(14 groups), {fairlearn_boot} bootstrap replicates, CPU"
        ),
        reference=ref,
        cases=[
            Case(ref, lambda: fairlearn_bootstrap(y, pred, sf, fairlearn_boot)),
            Case(
                f"numpy [B, n_g] index resampling n_boot={fairlearn_boot}",
                lambda: numpy_index_bootstrap(y, pred, sf, fairlearn_boot),
            ),
            Case(
                f"raigate stratified multinomial n_boot={fairlearn_boot}",
                lambda: raigate_bootstrap(y, pred, sf, fairlearn_boot),
            ),
        ],
        items=fairlearn_boot,
        rounds=5,
        warmup=1,
        params={**common, "n_boot": fairlearn_boot, "items": "bootstrap replicates"},
    )
    at_default = Benchmark(
        name="fairness_bootstrap_default",
        description=(
            f"the same at raigate's default {default_boot} replicates (fairlearn would take "
            f"about {default_boot // fairlearn_boot}x its n_boot={fairlearn_boot} time)"
        ),
        reference=f"numpy [B, n_g] index resampling n_boot={default_boot}",
        cases=[
            Case(
                f"numpy [B, n_g] index resampling n_boot={default_boot}",
                lambda: numpy_index_bootstrap(y, pred, sf, default_boot),
            ),
            Case(
                f"raigate stratified multinomial n_boot={default_boot}",
                lambda: raigate_bootstrap(y, pred, sf, default_boot),
            ),
        ],
        items=default_boot,
        rounds=7,
        warmup=1,
        params={**common, "n_boot": default_boot, "items": "bootstrap replicates"},
    )
    return [vs_fairlearn, at_default]
