"""The fairness check's reported point estimates are fairlearn's: checked against fairlearn
called directly on the same predictions, against a hand-worked case, and against the
confusion matrices the bootstrap and the gates use (to 1e-12, on the demo data and on
random data), so the two paths cannot drift apart."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
    equalized_odds_ratio,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score

import raigate
from raigate.audit import fairness
from raigate.audit import fairness_fairlearn as ffl
from raigate.audit import fairness_stats as fs
from raigate.audit import fairness_tables as ft
from raigate.audit.evaluate import predict
from raigate.data.fairface import RACES
from raigate.errors import RaigateError

pytestmark = pytest.mark.usefixtures("one_thread")

GENDERS = ["Male", "Female"]
RATE_KEYS = ("selection", "tpr", "fpr")


def report(
    y: np.ndarray,
    pred: np.ndarray,
    attrs: pd.DataFrame,
    columns: list[tuple[str, ...]],
    classes: list[str],
    *,
    task: str | None = None,
    **kw: Any,
) -> tuple[list[ft.SpecStats], dict[str, list[dict[str, Any]]], fairness.FairnessParams]:
    """What ``fairness.run`` reports after predicting: analyse (the gates' path), then
    fairlearn's points attached, then the tables."""
    p = fairness.FairnessParams(progress=False, plots=False, n_boot=100, **kw)
    a = fairness.analyse(y, pred, attrs, columns, classes, p, task=task)
    stats = [ffl.attach(s, y, pred, len(classes), p.min_group_size) for s in a.stats]
    tables: dict[str, list[dict[str, Any]]] = {
        "by_group": [],
        "selection_rates": [],
        "tpr_fpr": [],
        "disparities": [],
        "parity": [],
        "summary": a.summary,
    }
    for s in stats:
        tables["by_group"] += ft.by_group_rows(s, p)
        sel, rates = ft.class_rows(s, classes, p)
        tables["selection_rates"] += sel
        tables["tpr_fpr"] += rates
        tables["disparities"] += ft.disparity_rows(s, classes, p)
        tables["parity"] += ffl.parity_rows(s, classes)
    return stats, tables, p


def pick(table: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    (row,) = [r for r in table if all(r.get(k) == v for k, v in match.items())]
    return row


def ovr(rate: Any, c: int) -> Any:
    """One-vs-rest rate of class c, written out here independently of raigate."""
    return lambda t, p: rate(np.asarray(t) == c, np.asarray(p) == c, pos_label=True)


# -- a hand-worked case ------------------------------------------------------------------------
def test_hand_worked_eight_predictions_in_two_groups() -> None:
    # group A: y 1 1 0 0, pred 1 0 0 0 -> TP 1, FN 1, TN 2, FP 0
    # group B: y 1 1 0 0, pred 1 1 1 0 -> TP 2, FN 0, TN 1, FP 1
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    pred = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    attrs = pd.DataFrame({"g": ["A"] * 4 + ["B"] * 4})
    _, t, _ = report(y, pred, attrs, [("g",)], ["neg", "pos"], min_group_size=1)

    expect = {  # group: (accuracy, selection of pos, TPR of pos, FPR of pos)
        "A": (3 / 4, 1 / 4, 1 / 2, 0.0),
        "B": (3 / 4, 3 / 4, 1.0, 1 / 2),
    }
    for g, (acc, sel, tpr, fpr) in expect.items():
        assert pick(t["by_group"], group=g)["n"] == 4
        assert pick(t["by_group"], group=g)["accuracy"] == pytest.approx(acc, abs=1e-15)
        s = pick(t["selection_rates"], group=g, **{"class": "pos"})
        assert s["selection_rate"] == pytest.approx(sel, abs=1e-15)
        row = pick(t["tpr_fpr"], group=g, rate="tpr", **{"class": "pos"})
        assert row["value"] == pytest.approx(tpr, abs=1e-15)
        row = pick(t["tpr_fpr"], group=g, rate="fpr", **{"class": "pos"})
        assert row["value"] == pytest.approx(fpr, abs=1e-15)
        # class "neg" one-vs-rest: its TPR is pos's TNR, its FPR pos's FNR
        row = pick(t["tpr_fpr"], group=g, rate="tpr", **{"class": "neg"})
        assert row["value"] == pytest.approx(1 - fpr, abs=1e-15)

    acc = pick(t["disparities"], metric="accuracy")
    assert (acc["difference"], acc["ratio"]) == (0.0, 1.0)
    sel = pick(t["disparities"], metric="selection_rate", **{"class": "pos"})
    assert sel["difference"] == pytest.approx(1 / 2) and sel["ratio"] == pytest.approx(1 / 3)
    parity = pick(t["parity"], attribute="g")
    assert parity["class"] == "pos" and parity["groups_eligible"] == 2
    assert parity["demographic_parity_difference"] == pytest.approx(3 / 4 - 1 / 4)
    assert parity["demographic_parity_ratio"] == pytest.approx((1 / 4) / (3 / 4))
    # max(TPR gap 1 - 1/2, FPR gap 1/2 - 0); min(TPR ratio 1/2, FPR ratio 0 / (1/2))
    assert parity["equalized_odds_difference"] == pytest.approx(1 / 2)
    assert parity["equalized_odds_ratio"] == 0.0
    (eod,) = [r for r in t["summary"] if r["measure"] == "equalized_odds_difference"]
    assert eod["value"] == pytest.approx(parity["equalized_odds_difference"], abs=1e-12)


# -- fairlearn called directly -----------------------------------------------------------------
RARE = (0.2, 0.2, 0.2, 0.15, 0.15, 0.09, 0.01)  # the last race below min_group_size


def unequal_groups(
    n: int, k: int, seed: int, share: tuple[float, ...] = RARE
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Race x gender attributes, races in the given shares, accuracy rising with race."""
    rng = np.random.default_rng(seed)
    race = rng.choice(len(RACES), n, p=np.array(share))
    gender = rng.integers(0, 2, n)
    y = rng.integers(0, k, n)
    wrong = (y + rng.integers(1, k, n)) % k
    pred = np.where(rng.random(n) < 0.55 + 0.06 * race, y, wrong)
    attrs = pd.DataFrame(
        {
            "race": pd.Categorical.from_codes(race, RACES),
            "gender": pd.Categorical.from_codes(gender, GENDERS),
        }
    )
    return y, pred, attrs


def eligible_rows(sf: pd.DataFrame, keep: pd.Series | np.ndarray) -> np.ndarray:
    """Rows whose group (tuple of the columns' values) is in ``keep`` (a group-indexed bool)."""
    keys = list(sf.itertuples(index=False, name=None))
    index = keep.index if isinstance(keep, pd.Series) else None
    allowed = {k if isinstance(k, tuple) else (k,) for k, v in zip(index, keep, strict=True) if v}
    return np.array([k in allowed for k in keys])


def test_binary_values_differences_and_parity_equal_fairlearn_with_small_groups() -> None:
    y, pred, attrs = unequal_groups(1600, 2, seed=3)
    m = 30
    _, t, _ = report(y, pred, attrs, [("race",), ("race", "gender")], GENDERS, min_group_size=m)
    metrics = {
        "n": count,
        "accuracy": accuracy_score,
        **{f"sel{c}": (lambda t, p, c=c: selection_rate(t, p, pos_label=c)) for c in (0, 1)},
        **{f"tpr{c}": (lambda t, p, c=c: true_positive_rate(t, p, pos_label=c)) for c in (0, 1)},
        **{f"fpr{c}": (lambda t, p, c=c: false_positive_rate(t, p, pos_label=c)) for c in (0, 1)},
        "pos": lambda t, p: int(np.sum(t == 1)),
        "neg": lambda t, p: int(np.sum(t == 0)),
    }
    for name, cols in (("race", ["race"]), ("race+gender", ["race", "gender"])):
        sf = attrs[cols].astype(str)
        mf = MetricFrame(metrics=metrics, y_true=y, y_pred=pred, sensitive_features=sf)
        for idx, ref in mf.by_group.iterrows():
            group = "|".join(idx) if isinstance(idx, tuple) else idx
            g = pick(t["by_group"], attribute=name, group=group)
            assert g["n"] == ref["n"] and g["insufficient_data"] == (ref["n"] < m)
            assert g["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
            for c, cls in enumerate(GENDERS):
                s = pick(t["selection_rates"], attribute=name, group=group, **{"class": cls})
                assert s["selection_rate"] == pytest.approx(ref[f"sel{c}"], abs=1e-12)
                for rate in ("tpr", "fpr"):
                    r = pick(t["tpr_fpr"], attribute=name, group=group, rate=rate, **{"class": cls})
                    assert r["value"] == pytest.approx(ref[f"{rate}{c}"], abs=1e-12)
        # differences and ratios over the eligible groups: a MetricFrame of their rows
        by = mf.by_group
        big = by["n"] >= m
        assert (~big).sum() > 0 and big.sum() >= 2  # the rare race is left out

        def of(keep: pd.Series, sf: pd.DataFrame = sf) -> tuple[np.ndarray, MetricFrame]:
            rows = eligible_rows(sf, keep)
            frame = MetricFrame(
                metrics=metrics, y_true=y[rows], y_pred=pred[rows], sensitive_features=sf[rows]
            )
            return rows, frame

        rows, sub = of(big)
        acc = pick(t["disparities"], attribute=name, metric="accuracy")
        assert acc["groups_eligible"] == big.sum()
        assert acc["difference"] == pytest.approx(sub.difference()["accuracy"], abs=1e-12)
        assert acc["ratio"] == pytest.approx(sub.ratio()["accuracy"], abs=1e-12)
        for c, cls in enumerate(GENDERS):
            d = pick(t["disparities"], attribute=name, metric="selection_rate", **{"class": cls})
            assert d["difference"] == pytest.approx(sub.difference()[f"sel{c}"], abs=1e-12)
            assert d["ratio"] == pytest.approx(sub.ratio()[f"sel{c}"], abs=1e-12)
            # one-vs-rest TPR (FPR) of class c needs m samples labelled (not labelled) c
            enough = {"tpr": by["pos" if c else "neg"] >= m, "fpr": by["neg" if c else "pos"] >= m}
            for rate in ("tpr", "fpr"):
                _, frame = of(big & enough[rate])
                d = pick(t["disparities"], attribute=name, metric=rate, **{"class": cls})
                assert d["groups_eligible"] == (big & enough[rate]).sum()
                assert d["difference"] == pytest.approx(frame.difference()[f"{rate}{c}"], abs=1e-12)
                assert d["ratio"] == pytest.approx(frame.ratio()[f"{rate}{c}"], abs=1e-12)

        # fairlearn's parity functions on the usual 0/1 labels: demographic parity over the
        # groups with n >= m, equalized odds over those with m positives and m negatives too
        odds = big & (by["pos"] >= m) & (by["neg"] >= m)
        if name == "race+gender":
            assert odds.sum() < big.sum()  # a group with too few negatives is left out
        p = pick(t["parity"], attribute=name)
        assert p["class"] == "Female"
        assert (p["groups_eligible"], p["groups_eligible_odds"]) == (big.sum(), odds.sum())
        odds_rows = eligible_rows(sf, odds)
        expect = {
            "demographic_parity_difference": (demographic_parity_difference, rows),
            "demographic_parity_ratio": (demographic_parity_ratio, rows),
            "equalized_odds_difference": (equalized_odds_difference, odds_rows),
            "equalized_odds_ratio": (equalized_odds_ratio, odds_rows),
        }
        for key, (fn, r) in expect.items():
            value = fn(y[r], pred[r], sensitive_features=sf[r])
            assert p[key] == pytest.approx(value, abs=1e-12), key


def test_multiclass_intersection_equals_metricframe_with_two_sensitive_columns() -> None:
    names = ["a", "b", "c"]
    y, pred, attrs = unequal_groups(1500, 3, seed=4, share=(1 / 7,) * 7)
    pred = pred.copy()
    pred[::13] = -1  # a model class the data lacks: never class c, never correct
    attrs["gender"] = attrs["gender"].astype(object)
    attrs.loc[::10, "gender"] = None  # missing values: raigate's "(missing)" group
    # an empty combination: no (Indian, Female) sample; raigate lists it with n = 0
    attrs.loc[(attrs["race"] == "Indian") & (attrs["gender"] == "Female"), "gender"] = "Male"
    _, t, _ = report(y, pred, attrs, [("race", "gender")], names, min_group_size=1)

    levels = [r["group"] for r in t["by_group"]]
    parts = [RACES, ["Female", "Male", "(missing)"]]  # each column in vocabulary order
    assert levels == [f"{r}|{g}" for r in parts[0] for g in parts[1]]
    assert pick(t["by_group"], group="Indian|Female")["n"] == 0
    assert pick(t["by_group"], group="Indian|Female")["accuracy"] is None

    metrics: dict[str, Any] = {"accuracy": accuracy_score}
    for c in range(3):
        metrics[f"sel{c}"] = lambda t, p, c=c: selection_rate(t, p, pos_label=c)
        metrics[f"tpr{c}"] = ovr(true_positive_rate, c)
        metrics[f"fpr{c}"] = ovr(false_positive_rate, c)
    sf = attrs[["race", "gender"]].astype(object).fillna("(missing)")
    mf = MetricFrame(metrics=metrics, y_true=y, y_pred=pred, sensitive_features=sf)
    # fairlearn crosses the columns into the same grid, the empty combination as NaN
    assert len(mf.by_group) == len(levels)
    assert mf.by_group.loc[("Indian", "Female")].isna().all()
    for (race, gender), ref in mf.by_group.dropna().iterrows():
        group = f"{race}|{gender}"
        assert pick(t["by_group"], group=group)["accuracy"] == pytest.approx(ref["accuracy"])
        for c, cls in enumerate(names):
            s = pick(t["selection_rates"], group=group, **{"class": cls})
            assert s["selection_rate"] == pytest.approx(ref[f"sel{c}"], abs=1e-12)
            for rate in ("tpr", "fpr"):
                r = pick(t["tpr_fpr"], group=group, rate=rate, **{"class": cls})
                assert r["value"] == pytest.approx(ref[f"{rate}{c}"], abs=1e-12)
    for c, cls in enumerate(names):
        for metric, key in (("selection_rate", "sel"), ("tpr", "tpr"), ("fpr", "fpr")):
            d = pick(t["disparities"], metric=metric, **{"class": cls})
            assert d["difference"] == pytest.approx(mf.difference()[f"{key}{c}"], abs=1e-12)
            assert d["ratio"] == pytest.approx(mf.ratio()[f"{key}{c}"], abs=1e-12)
        # the multiclass parity rows: fairlearn's functions on the binarized labels
        p = pick(t["parity"], **{"class": cls})
        yc, pc = (y == c).astype(int), (pred == c).astype(int)
        kw = {"sensitive_features": sf}
        assert p["demographic_parity_difference"] == pytest.approx(
            demographic_parity_difference(yc, pc, **kw), abs=1e-12
        )
        assert p["demographic_parity_ratio"] == pytest.approx(
            demographic_parity_ratio(yc, pc, **kw), abs=1e-12
        )
        assert p["equalized_odds_difference"] == pytest.approx(
            equalized_odds_difference(yc, pc, **kw), abs=1e-12
        )
        assert p["equalized_odds_ratio"] == pytest.approx(
            equalized_odds_ratio(yc, pc, **kw), abs=1e-12
        )


# -- fairlearn's points equal the bootstrap path's ---------------------------------------------
def bootstrap_path_points(
    stats: list[ft.SpecStats], y: np.ndarray, pred: np.ndarray, k: int
) -> Iterator[dict[str, np.ndarray]]:
    """Each spec's rates from the original (not resampled) data the way the bootstrap
    builds them: confusions of the finest cells, summed into the spec's groups."""
    specs = [s.spec for s in stats]
    codes = np.stack([s.codes for s in specs], axis=1)
    cells, cell_of = np.unique(codes, axis=0, return_inverse=True)
    conf = fs.confusion_by_group(y, pred, cell_of.ravel(), n_groups=len(cells), n_classes=k)
    for i, spec in enumerate(specs):
        summed = fs.aggregate_cells(conf[None], cells[:, i], len(spec.levels))[0]
        yield fs.rates_from_confusion(summed)


def assert_paths_agree(stats: list[ft.SpecStats], y: np.ndarray, pred: np.ndarray, k: int) -> None:
    for s, ours in zip(stats, bootstrap_path_points(stats, y, pred, k), strict=True):
        assert s.fairlearn is not None
        fl = s.fairlearn.point
        assert np.array_equal(fl["n"], ours["n"])
        np.testing.assert_allclose(fl["accuracy"], ours["accuracy"], rtol=0, atol=1e-12)
        for key in RATE_KEYS:
            # fairlearn's 0 for an empty denominator is reported undefined, as raigate's
            np.testing.assert_allclose(fl[key], ours[key], rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [2, 4])
def test_fairlearn_points_equal_the_bootstrap_paths_on_random_data(k: int) -> None:
    y, pred, attrs = unequal_groups(1200, k, seed=10 + k)
    pred = np.where(np.arange(len(pred)) % 17 == 0, -1, pred)
    cols = [("race",), ("gender",), ("race", "gender")]
    stats, _, _ = report(y, pred, attrs, cols, [str(c) for c in range(k)], min_group_size=20)
    assert_paths_agree(stats, y, pred, k)


def test_demo_run_records_fairlearn_and_its_points_equal_the_bootstrap_paths(
    trained: raigate.Model,
) -> None:
    data = raigate.load_data("demo:test")
    p = fairness.FairnessParams(progress=False, plots=False, n_boot=100)
    r = fairness.run(trained, data, p)
    assert r.params["point_estimates"].startswith(f"fairlearn {version('fairlearn')} MetricFrame")

    pred, _ = predict(trained, data, progress=False)  # class names equal: indices match
    y, attrs = data.labels, data.attributes
    columns = fairness.resolve_groups(data, None, None)
    stats, _, _ = report(y, pred, attrs, columns, list(data.class_names), task=data.task)
    assert_paths_agree(stats, y, pred, 2)
    assert r.metric("accuracy") == accuracy_score(y, pred)

    # parity on the demo: race and age (gender and race+gender are the label itself)
    assert sorted(row["attribute"] for row in r.metrics["parity"]) == ["age", "race"]
    for row in r.metrics["parity"]:
        kw = {"sensitive_features": attrs[row["attribute"]]}  # every demo group is large
        assert row["demographic_parity_ratio"] == pytest.approx(
            demographic_parity_ratio(y, pred, **kw), abs=1e-12
        )
        assert row["equalized_odds_difference"] == pytest.approx(
            equalized_odds_difference(y, pred, **kw), abs=1e-12
        )


# -- the guard ---------------------------------------------------------------------------------
def test_a_drift_between_the_paths_raises() -> None:
    a = np.array([0.5, np.nan, 0.25])
    ffl.agree({"accuracy": a + 1e-13}, {"accuracy": a}, "same to 1e-12")  # passes
    with pytest.raises(RaigateError, match="fairlearn's accuracy differs"):
        ffl.agree({"accuracy": a + 1e-9}, {"accuracy": a}, "drift")
    with pytest.raises(RaigateError, match="undefined in one only: 1"):
        ffl.agree({"tpr": np.array([0.5, 0.0, 0.25])}, {"tpr": a}, "undefined")

    # end to end: a bootstrap-path point value off by 1e-9 stops the report
    y, pred, attrs = unequal_groups(300, 2, seed=5)
    p = fairness.FairnessParams(progress=False, plots=False, n_boot=100)
    (s,) = fairness.analyse(y, pred, attrs, [("race",)], GENDERS, p).stats
    s.point["accuracy"] = s.point["accuracy"] + 1e-9
    with pytest.raises(RaigateError, match="race: fairlearn's accuracy"):
        ffl.attach(s, y, pred, 2, p.min_group_size)
