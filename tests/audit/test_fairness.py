"""fairness: checked against fairlearn computed directly, closed forms, statsmodels, and
hand-worked cases; the demo's injected disparity must be found and named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import binom, ks_2samp, norm

import raigate
from raigate.audit import fairness
from raigate.audit import fairness_gates as fg
from raigate.audit import fairness_stats as fs
from raigate.data import DEMO_DISPARITY
from raigate.data.base import Dataset
from raigate.data.fairface import RACES
from raigate.errors import ConfigError, DataError
from raigate.stats import holm

GENDERS = ["Male", "Female"]


class TensorData(Dataset):
    """In-memory images: sample i is a constant image whose value encodes a prediction."""

    def __init__(
        self, x: torch.Tensor, labels: np.ndarray, names: list[str], attrs: pd.DataFrame, task: str
    ) -> None:
        super().__init__(
            spec="tensor:test",
            labels=labels,
            class_names=names,
            attributes=attrs,
            task=task,
            native_size=tuple(x.shape[-2:]),
        )
        self._x = x

    def _read(self, row: int, size: tuple[int, int] | None) -> torch.Tensor:
        return self._x[row]

    def _manifest_files(self, rows: np.ndarray) -> list[dict[str, Any]]:
        return [{"path": f"row{r}", "sha256": "0" * 64, "bytes": 0} for r in rows]


class Decoder(torch.nn.Module):
    """Predicts model class j for an image of constant value (j + 0.5) / K: so a test
    chooses every prediction exactly."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.mean(dim=(1, 2, 3)) * self.k
        return -(v[:, None] - (torch.arange(self.k) + 0.5)[None, :]).abs()


def coded(
    y: np.ndarray,
    pred_model: np.ndarray,
    data_names: list[str],
    model_names: list[str],
    attrs: pd.DataFrame,
    task: str = "t",
) -> tuple[raigate.Model, TensorData]:
    """A model and data such that the model predicts ``pred_model[i]`` (model index) on i."""
    k = len(model_names)
    values = torch.tensor((pred_model + 0.5) / k, dtype=torch.float32)
    x = values.view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
    model = raigate.wrap(Decoder(k), class_names=model_names, input_shape=(3, 2, 2))
    return model, TensorData(x, y, data_names, attrs, task)


def params(**kw: Any) -> fairness.FairnessParams:
    base: dict[str, Any] = {"progress": False, "plots": False, "n_boot": 200}
    return fairness.FairnessParams(**{**base, **kw})


def random_case(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Labels, predictions (accuracy depending on race) and FairFace-like attributes."""
    rng = np.random.default_rng(seed)
    race = rng.integers(0, len(RACES), n)
    gender = rng.integers(0, 2, n)
    y = rng.integers(0, k, n)
    p_correct = 0.6 + 0.05 * race
    wrong = (y + rng.integers(1, k, n)) % k
    pred = np.where(rng.random(n) < p_correct, y, wrong)
    attrs = pd.DataFrame(
        {
            "race": pd.Categorical.from_codes(race, RACES, ordered=True),
            "gender": pd.Categorical.from_codes(gender, GENDERS, ordered=True),
        }
    )
    return y, pred, attrs


def rows(result: raigate.results.CheckResult, table: str, **match: Any) -> list[dict[str, Any]]:
    return [r for r in result.metrics[table] if all(r.get(k) == v for k, v in match.items())]


# -- per-group values equal fairlearn's, computed directly on the same predictions ----------------
def test_binary_groups_equal_fairlearn_metricframe() -> None:
    from fairlearn.metrics import (
        MetricFrame,
        count,
        demographic_parity_difference,
        demographic_parity_ratio,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )
    from sklearn.metrics import accuracy_score

    y, pred, attrs = random_case(1400, 2, seed=1)
    model, data = coded(y, pred, GENDERS, GENDERS, attrs, task="label")
    r = fairness.run(model, data, params(min_group_size=1, sensitive=["race", "gender"]))

    metrics = {
        "n": count,
        "accuracy": accuracy_score,
        "sel1": selection_rate,
        "sel0": lambda t, p: selection_rate(t, p, pos_label=0),
        "tpr1": true_positive_rate,
        "fpr1": false_positive_rate,
        "tpr0": lambda t, p: true_positive_rate(t, p, pos_label=0),
        "fpr0": lambda t, p: false_positive_rate(t, p, pos_label=0),
    }
    for name, cols in (
        ("race", ["race"]),
        ("gender", ["gender"]),
        ("race+gender", ["race", "gender"]),
    ):
        sf = attrs[cols[0]] if len(cols) == 1 else attrs[cols]
        mf = MetricFrame(metrics=metrics, y_true=y, y_pred=pred, sensitive_features=sf)
        for idx, ref in mf.by_group.iterrows():
            group = idx if isinstance(idx, str) else "|".join(idx)
            (g,) = rows(r, "by_group", attribute=name, group=group)
            assert g["n"] == ref["n"]
            assert g["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
            for c, cls in enumerate(GENDERS):
                (s,) = rows(r, "selection_rates", attribute=name, group=group, **{"class": cls})
                assert s["selection_rate"] == pytest.approx(ref[f"sel{c}"], abs=1e-12)
                (t,) = rows(r, "tpr_fpr", attribute=name, group=group, rate="tpr", **{"class": cls})
                (f,) = rows(r, "tpr_fpr", attribute=name, group=group, rate="fpr", **{"class": cls})
                assert t["value"] == pytest.approx(ref[f"tpr{c}"], abs=1e-12)
                assert f["value"] == pytest.approx(ref[f"fpr{c}"], abs=1e-12)
        # between-group and to-overall spreads (all groups eligible here)
        (acc,) = rows(r, "disparities", attribute=name, metric="accuracy")
        assert acc["difference"] == pytest.approx(mf.difference()["accuracy"], abs=1e-12)
        assert acc["ratio"] == pytest.approx(mf.ratio()["accuracy"], abs=1e-12)
        assert abs(acc["to_overall_difference"]) == pytest.approx(
            mf.difference(method="to_overall")["accuracy"], abs=1e-12
        )
        (sel,) = rows(
            r, "disparities", attribute=name, metric="selection_rate", **{"class": "Female"}
        )
        assert sel["difference"] == pytest.approx(
            demographic_parity_difference(y, pred, sensitive_features=sf), abs=1e-12
        )
        assert sel["ratio"] == pytest.approx(
            demographic_parity_ratio(y, pred, sensitive_features=sf), abs=1e-12
        )
        (eod,) = rows(r, "summary", attribute=name, measure="equalized_odds_difference")
        assert eod["value"] == pytest.approx(
            equalized_odds_difference(y, pred, sensitive_features=sf), abs=1e-12
        )
    assert r.metric("accuracy") == pytest.approx(accuracy_score(y, pred))


def test_multiclass_one_vs_rest_equals_fairlearn_and_other_class_is_an_error() -> None:
    from fairlearn.metrics import MetricFrame, false_positive_rate, true_positive_rate
    from sklearn.metrics import accuracy_score

    names = ["a", "b", "c"]
    y, pred, attrs = random_case(900, 3, seed=2)
    pred = pred.copy()
    pred[::17] = 3  # the model's extra class "zz", which the data lacks
    model, data = coded(y, pred, names, [*names, "zz"], attrs)
    r = fairness.run(model, data, params(min_group_size=1, sensitive=["race"], intersections=[]))
    assert r.metric("predicted_other") == len(pred[::17])
    metrics: dict[str, Any] = {"accuracy": accuracy_score}
    for c in range(3):
        # one-vs-rest on binarized arrays: the definition, computed independently
        metrics[f"tpr{c}"] = lambda t, p, c=c: true_positive_rate(t == c, p == c)
        metrics[f"fpr{c}"] = lambda t, p, c=c: false_positive_rate(t == c, p == c)
    mf = MetricFrame(metrics=metrics, y_true=y, y_pred=pred, sensitive_features=attrs["race"])
    for group, ref in mf.by_group.iterrows():
        (g,) = rows(r, "by_group", attribute="race", group=group)
        assert g["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
        for c, cls in enumerate(names):
            for rate in ("tpr", "fpr"):
                (t,) = rows(r, "tpr_fpr", group=group, rate=rate, **{"class": cls})
                assert t["value"] == pytest.approx(ref[f"{rate}{c}"], abs=1e-12)
    others = rows(r, "confusion_by_group", attribute="race", predicted="(other model class)")
    assert sum(o["count"] for o in others) == len(pred[::17])
    # equalized odds for multiclass: largest between-group TPR/FPR gap over classes
    gaps = [mf.difference()[f"{rate}{c}"] for c in range(3) for rate in ("tpr", "fpr")]
    (eod,) = rows(r, "summary", attribute="race", measure="equalized_odds_difference")
    assert eod["value"] == pytest.approx(max(gaps), abs=1e-12)


# -- hand-worked case, small groups --------------------------------------------------------------
def test_hand_built_groups_and_small_group_marking() -> None:
    # a: 40 samples, 36 right (0.9); b: 40, 20 right (0.5); c: 10, 0 right (worst, but small)
    groups = ["a"] * 40 + ["b"] * 40 + ["c"] * 10
    y = np.zeros(90, dtype=np.int64)
    right = np.array([1] * 36 + [0] * 4 + [1] * 20 + [0] * 20 + [0] * 10, dtype=bool)
    pred = np.where(right, 0, 1)
    attrs = pd.DataFrame({"site": groups})
    model, data = coded(y, pred, ["neg", "pos"], ["neg", "pos"], attrs)
    r = fairness.run(model, data, params(sensitive=["site"], min_group_size=30, n_boot=2000))
    by = {g["group"]: g for g in r.metrics["by_group"]}
    assert {k: (v["n"], v["accuracy"]) for k, v in by.items()} == {
        "a": (40, 0.9),
        "b": (40, 0.5),
        "c": (10, 0.0),
    }
    assert [by[k]["insufficient_data"] for k in "abc"] == [False, False, True]
    assert r.metric("groups_insufficient") == 1
    # the stratified bootstrap keeps n fixed, so a group's accuracy replicates are exactly
    # Binomial(n, p_hat) / n: its percentile interval is that distribution's quantiles
    lo, hi = by["a"]["accuracy_ci"]
    assert lo == pytest.approx(binom.ppf(0.025, 40, 0.9) / 40, abs=1 / 40)
    assert hi == pytest.approx(binom.ppf(0.975, 40, 0.9) / 40, abs=1 / 40)
    (gap,) = rows(r, "summary", measure="accuracy_difference")
    assert (gap["group_low"], gap["group_high"]) == ("b", "a")  # c is never gated
    assert gap["value"] == pytest.approx(0.4)
    assert gap["ci"][0] > 0.05 and gap["ci"][0] < 0.4 < gap["ci"][1]
    (finding,) = [f for f in r.findings if f.metric == "accuracy_difference"]
    assert finding.severity == "fail" and finding.value == pytest.approx(0.4)
    assert "b (0.500, n=40)" in finding.message and "a (0.900, n=40)" in finding.message
    assert "1 of 3 groups have n<30" in finding.message
    (comp,) = r.metrics["comparisons"]  # only the eligible pair a-b is compared
    assert (comp["group_a"], comp["group_b"]) == ("a", "b")
    # c is reported with its n and an interval, never dropped
    assert by["c"]["accuracy_ci"] == [0.0, 0.0] and by["c"]["accuracy_wilson_ci"][1] > 0.2


def test_all_groups_small_warns_instead_of_passing() -> None:
    y = np.zeros(20, dtype=np.int64)
    attrs = pd.DataFrame({"site": ["a"] * 10 + ["b"] * 10})
    model, data = coded(y, y, ["neg", "pos"], ["neg", "pos"], attrs)
    r = fairness.run(model, data, params(sensitive=["site"]))
    (f,) = [f for f in r.findings if f.metric == "accuracy_difference"]
    assert f.severity == "warn" and f.value is None
    assert "not evaluated" in f.message and "--min-group-size" in f.message


def test_gate_rule_fail_warn_pass() -> None:
    # one contrast d with se 0.01 and critical value 2: interval d ± 0.02 against margin 0.05
    def block(d: float) -> fg.Block:
        z = np.zeros(1)
        b = fg.Block(0, "accuracy_difference", None, "accuracy", z, z, np.array([d]),
                     np.array([0.01]), np.zeros((1, 1)), np.array([100]), 0.05)  # fmt: skip
        b.t = (np.abs(b.est) - b.margin) / b.se
        b.p = fs.maxt_pvalues(np.full(100, 2.0), b.t)  # every replicate maximum is 2
        return b

    assert fg.decide([block(0.08)], 2.0, 0.05).severity == "fail"  # [0.06, 0.10] > 0.05
    assert fg.decide([block(-0.08)], 2.0, 0.05).severity == "fail"  # either direction
    assert fg.decide([block(0.06)], 2.0, 0.05).severity == "warn"  # [0.04, 0.08] straddles
    assert fg.decide([block(0.02)], 2.0, 0.05).severity == "pass"  # [0.00, 0.04] within
    gate = fg.decide([block(0.02), block(0.08)], 2.0, 0.05)  # one contrast fails the gate
    assert gate.severity == "fail" and gate.reported.block.est[0] == 0.08
    assert gate.p_value == 0.0 and fg.decide([block(0.06)], 2.0, 0.05).p_value == 1.0


def test_ordinal_age_mae_and_off_by_one() -> None:
    from raigate.data.fairface import AGES

    y = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    pred = np.array([0, 2, 2, 6, 4, 4, 8, 7])  # |d| = 0 1 0 3 0 1 2 0
    attrs = pd.DataFrame({"grp": ["x"] * 4 + ["y"] * 4})
    model, data = coded(y, pred, list(AGES), list(AGES), attrs, task="age")
    r = fairness.run(model, data, params(sensitive=["grp"], min_group_size=1))
    assert r.params["ordinal"] is True
    by = {g["group"]: g for g in r.metrics["by_group"]}
    assert by["x"]["mae_bins"] == pytest.approx(4 / 4)
    assert by["y"]["mae_bins"] == pytest.approx(3 / 4)
    assert by["x"]["off_by_one_accuracy"] == pytest.approx(3 / 4)
    assert by["y"]["off_by_one_accuracy"] == pytest.approx(3 / 4)
    assert r.metric("mae_bins") == pytest.approx(7 / 8)
    (mae,) = rows(r, "disparities", metric="mae_bins")
    assert mae["difference"] == pytest.approx(0.25) and mae["max_group"] == "x"


def test_label_defined_groups_skip_parity_and_odds() -> None:
    y, pred, attrs = random_case(400, 2, seed=3)
    attrs = attrs.assign(gender=pd.Categorical.from_codes(y, GENDERS, ordered=True))
    model, data = coded(y, pred, GENDERS, GENDERS, attrs, task="gender")
    r = fairness.run(model, data, params(sensitive=["gender"], intersections=[]))
    notes = {s["measure"]: s.get("note") for s in r.metrics["summary"]}
    assert notes["accuracy_difference"] is None
    assert "defined by the label" in notes["equalized_odds_difference"]
    assert [f.metric for f in r.findings] == ["accuracy_difference"]


# -- label mapping --------------------------------------------------------------------------------
def test_label_mapping_by_name_with_the_reference_models_race_order() -> None:
    # FairFace's reference model orders races differently from the CSV, and spells one
    # label with a slash: a mapping by index would score most predictions wrong.
    model_order = [
        "White",
        "Black",
        "Latino/Hispanic",
        "East Asian",
        "Southeast Asian",
        "Indian",
        "Middle Eastern",
    ]
    rng = np.random.default_rng(4)
    y = rng.integers(0, 7, 350)  # data indices, CSV order
    to_model = np.array([model_order.index(n.replace("_", "/")) for n in RACES])
    pred_model = to_model[y]  # always the right race, in the model's own order
    pred_model[:35] = (pred_model[:35] + 1) % 7  # 35 wrong
    attrs = pd.DataFrame({"race": pd.Categorical.from_codes(y, RACES, ordered=True)})
    model, data = coded(y, pred_model, list(RACES), model_order, attrs, task="race")
    r = fairness.run(model, data, params(intersections=[]))
    assert r.metric("accuracy") == pytest.approx(315 / 350)

    wrong_names = ["cat", "dog", *model_order[2:]]
    model_bad, _ = coded(y, pred_model, list(RACES), wrong_names, attrs, task="race")
    with pytest.raises(
        ConfigError, match=r"no model class matches data label\(s\) \['Black', 'White'\]"
    ) as e:
        fairness.run(model_bad, data, params(intersections=[]))
    assert "model classes are" in str(e.value) and "data labels are" in str(e.value)
    # and through an explicit label map
    fixed = fairness.run(
        model_bad, data, params(intersections=[], label_map={"cat": "White", "dog": "Black"})
    )
    assert fixed.metric("accuracy") == pytest.approx(315 / 350)


# -- bad inputs -----------------------------------------------------------------------------------
def test_bad_inputs_are_config_errors_naming_the_field() -> None:
    y, pred, attrs = random_case(50, 2, seed=5)
    model, data = coded(y, pred, GENDERS, GENDERS, attrs)
    with pytest.raises(ConfigError, match=r"--sensitive: unknown column\(s\) \['skin'\].*'race'"):
        fairness.run(model, data, params(sensitive=["skin"]))
    with pytest.raises(ConfigError, match=r"--intersections: unknown column\(s\) \['age'\]"):
        fairness.run(model, data, params(intersections=["race+age"]))
    with pytest.raises(ConfigError, match="two or more different columns"):
        fairness.run(model, data, params(intersections=["race+race"]))
    with pytest.raises(DataError, match="no samples to audit"):
        fairness.run(model, data.subset([]), params())
    with pytest.raises(ConfigError, match="--n-boot"):
        fairness.params_from_options(n_boot=10)
    plain = coded(y, pred, GENDERS, GENDERS, pd.DataFrame({"site": ["a"] * 50}))[1]
    with pytest.raises(ConfigError, match=r"none of the default sensitive.*\['site'\]"):
        fairness.run(model, plain, params())


def test_thresholds_file_json_toml_and_errors(tmp_path: Path) -> None:
    j = tmp_path / "t.json"
    j.write_text(json.dumps({"accuracy_difference": 0.02, "selection_rate_ratio": "off"}))
    t = fairness.load_thresholds(j)
    assert (t.accuracy_difference, t.selection_rate_ratio, t.equalized_odds_difference) == (
        0.02,
        None,
        0.1,
    )
    toml = tmp_path / "t.toml"
    toml.write_text("[thresholds]\nequalized_odds_difference = 0.2\n")
    assert fairness.load_thresholds(toml).equalized_odds_difference == 0.2
    bad = tmp_path / "bad.json"
    bad.write_text('{"accuracy_gap": 0.1}')
    with pytest.raises(ConfigError, match=r"unknown threshold\(s\) \['accuracy_gap'\]"):
        fairness.load_thresholds(bad)
    bad.write_text('{"selection_rate_ratio": 2}')
    with pytest.raises(ConfigError, match="selection_rate_ratio"):
        fairness.load_thresholds(bad)
    with pytest.raises(ConfigError, match="not found"):
        fairness.load_thresholds(tmp_path / "missing.toml")


# -- statistics ---------------------------------------------------------------------------------
def test_stratified_bootstrap_keeps_group_sizes_and_matches_row_resampling() -> None:
    rng = np.random.default_rng(6)
    y = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, 3, 300))
    groups = np.repeat([0, 1], [220, 80])
    conf = fs.confusion_by_group(y, pred, groups, n_groups=2, n_classes=3)
    boot = fs.bootstrap_confusions(conf, n_boot=4000, rng=np.random.default_rng(7))
    assert (boot.sum(axis=(2, 3)) == [220, 80]).all()  # every replicate, every group
    acc = fs.rates_from_confusion(boot)["accuracy"][:, 1]
    # independent reference: resample the group's rows by index, one replicate at a time
    rows_g = np.flatnonzero(groups == 1)
    ref_rng = np.random.default_rng(8)
    correct = (y == pred)[rows_g]
    naive = np.array([correct[ref_rng.integers(0, 80, 80)].mean() for _ in range(4000)])
    assert ks_2samp(acc, naive).pvalue > 1e-3
    p = correct.mean()
    assert acc.mean() == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / 80 / 4000))
    assert acc.std() == pytest.approx(np.sqrt(p * (1 - p) / 80), rel=0.08)


def test_large_group_interval_agrees_with_fairlearn_bootstrap() -> None:
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import accuracy_score

    rng = np.random.default_rng(9)
    n = 3000
    group = np.where(rng.random(n) < 0.6, "big", "other")
    y = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < np.where(group == "big", 0.8, 0.7), y, 1 - y)
    b_fl, b_rg = 120, 4000
    mf = MetricFrame(
        metrics=accuracy_score,
        y_true=y,
        y_pred=pred,
        sensitive_features=pd.Series(group, name="g"),
        n_boot=b_fl,
        ci_quantiles=[0.025, 0.975],
        random_state=0,
    )
    fl = (mf.by_group_ci[0]["big"], mf.by_group_ci[1]["big"])
    model, data = coded(y, pred, ["0", "1"], ["0", "1"], pd.DataFrame({"g": group}))
    r = fairness.run(model, data, params(sensitive=["g"], n_boot=b_rg))
    (row,) = rows(r, "by_group", group="big")
    p, m = row["accuracy"], row["n"]
    sigma = np.sqrt(p * (1 - p) / m)
    # Monte-Carlo s.e. of a 2.5% quantile estimated from B replicates of a ~normal statistic
    mc = lambda b: np.sqrt(0.025 * 0.975 / b) / norm.pdf(1.96) * sigma  # noqa: E731
    tol = 4 * np.hypot(mc(b_fl), mc(b_rg))
    assert row["accuracy_ci"][0] == pytest.approx(fl[0], abs=tol)
    assert row["accuracy_ci"][1] == pytest.approx(fl[1], abs=tol)
    # and with the closed-form normal interval, to within our own Monte-Carlo error
    assert row["accuracy_ci"][0] == pytest.approx(p - 1.96 * sigma, abs=4 * mc(b_rg) + 1 / m)
    assert row["accuracy_ci"][1] == pytest.approx(p + 1.96 * sigma, abs=4 * mc(b_rg) + 1 / m)


def test_percentile_interval_equals_numpy_nanquantile() -> None:
    rng = np.random.default_rng(10)
    x = rng.normal(size=(500, 4, 3))
    x[rng.random(x.shape) < 0.1] = np.nan
    x[:, 0, 0] = np.nan
    lo, hi = fs.percentile_interval(x, 0.1)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        ref = np.nanquantile(x, [0.05, 0.95], axis=0)
    np.testing.assert_allclose(lo, ref[0], equal_nan=True)
    np.testing.assert_allclose(hi, ref[1], equal_nan=True)


def test_z_test_and_holm_equal_statsmodels() -> None:
    from statsmodels.stats.multitest import multipletests
    from statsmodels.stats.proportion import proportions_ztest

    s1, n1 = np.array([30, 45, 10]), np.array([50, 60, 40])
    s2, n2 = np.array([20, 44, 30]), np.array([50, 70, 41])
    p = fs.two_proportion_pvalue(s1, n1, s2, n2)
    for i in range(3):
        _, ref = proportions_ztest([s1[i], s2[i]], [n1[i], n2[i]])
        assert p[i] == pytest.approx(ref, rel=1e-10)
    assert (
        fs.two_proportion_pvalue(np.array([5]), np.array([5]), np.array([7]), np.array([7]))[0]
        == 1.0
    )
    pv = np.array([0.01, 0.04, 0.03, 0.005, 0.2, 0.04])
    np.testing.assert_allclose(holm(pv), multipletests(pv, method="holm")[1])


# -- plots and the Python entry point -------------------------------------------------------------
def test_plots_written_and_listed(tmp_path: Path) -> None:
    y, pred, attrs = random_case(600, 2, seed=11)
    model, data = coded(y, pred, GENDERS, GENDERS, attrs, task="label")
    r = fairness.run(model, data, params(plots=True, sensitive=["race"]), out_dir=tmp_path)
    assert set(r.artifacts) == {
        "predictions.csv",
        "accuracy_by_race.png",
        "confusion_worst_race.png",
        "accuracy_by_race_x_gender.png",
        "heatmap_race_x_gender.png",
        "confusion_worst_race_x_gender.png",
    }
    for a in r.artifacts:
        head = (tmp_path / a).read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n" or a.endswith(".csv")
    assert len(pd.read_csv(tmp_path / "predictions.csv")) == 600


def test_registered_as_a_check() -> None:
    from raigate.audit import CHECKS

    assert CHECKS["fairness"] == (fairness.run, fairness.FairnessParams)


# -- the demo's injected disparity is found and named ---------------------------------------------
def trained_demo_net(cache: Path) -> torch.nn.Module:
    """small_cnn trained one epoch on demo:train; cached in the session's temp folder so
    tests/test_cli_fairness.py (which has the same helper) does not train it again."""
    from raigate.models.base import Normalize
    from raigate.training import fit
    from raigate.zoo import small_cnn

    path = cache / "fairness-demo-small_cnn-1epoch.pt"
    torch.manual_seed(0)
    net = small_cnn(num_classes=2)
    if path.is_file():
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    train = raigate.load_data("demo:train")
    fit(net, train, normalize=Normalize([0.5] * 3, [0.5] * 3), epochs=1, lr=2e-3, progress=False)
    torch.save(net.state_dict(), path)
    return net


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> raigate.Model:
    net = trained_demo_net(tmp_path_factory.getbasetemp())
    return raigate.wrap(net, class_names=GENDERS, input_shape=(3, 32, 32), mean=0.5, std=0.5)


def test_demo_injected_disparity_is_found_and_named(demo_model: raigate.Model) -> None:
    data = raigate.load_data("demo:test")
    r = fairness.run(demo_model, data, params(n_boot=500))
    weak = DEMO_DISPARITY["group"]
    (race,) = rows(r, "summary", attribute="race", measure="accuracy_difference")
    assert race["group_low"] == weak and race["severity"] == "fail"
    (f,) = [f for f in r.findings if f.id == "fairness.accuracy_difference[race]"]
    assert f.severity == "fail" and f.message.startswith(f"race: accuracy of {weak} (")
    (rg,) = rows(r, "summary", attribute="race+gender", measure="accuracy_difference")
    assert rg["group_low"].startswith(f"{weak}|")
    assert r.data.synthetic and r.metric("groups_insufficient") == 0
