"""The robustness check: its numbers against independent computations (ART's FGSM, the
evaluate check, per-group sums), and its gradient-masking findings on a model that masks."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from scipy.stats import binom
from scipy.stats import norm as gaussian
from statsmodels.stats.proportion import proportion_confint
from torch import nn

import raigate
from raigate import ConfigError
from raigate.attacks import hop_skip_jump, square_attack, to_art_classifier
from raigate.audit import CHECKS, evaluate, robustness
from raigate.audit.robustness_gates import (
    NOT_GATED,
    SEVERITIES,
    CertifiedAccuracyRule,
    RobustAccuracyRule,
    decide,
    detectable_shortfall,
)
from raigate.models.base import Capabilities, Model
from raigate.models.blackbox import QueryNet

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def test_data() -> raigate.Dataset:
    return raigate.load_data("demo:test", sample=64, seed=1)


# the plan's table form and the CLI's string form, mixed: both must mean the same rules
GATES = [
    {"attack": "fgsm", "norm": "linf", "eps": "8/255", "min": 0.7},
    "pgd:linf:8/255=0.9",
    {"attack": "pgd", "norm": "linf", "eps": 2 / 255, "min": "1/2", "model": "smoothed"},
]


@pytest.fixture(scope="module")
def result(trained: raigate.Model, test_data: raigate.Dataset, tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("robustness")
    params = robustness.RobustnessParams(
        eps=[2 / 255, 8 / 255], norms=["linf", "l2"], pgd_steps=3, smoothing_sigma=0.12,
        eot_samples=2, predict_n=16, certify_n=100, certify_n0=10, certify_max_samples=24,
        progress=False, min_robust_accuracy=GATES, min_certified_accuracy=["0.1=0.6"],
    )  # fmt: skip
    messages: list[str] = []
    res = robustness.run(trained, test_data, params, out_dir=out, echo=messages.append)
    return res, out, messages


def test_registered_as_a_check() -> None:
    assert CHECKS["robustness"] == (robustness.run, robustness.RobustnessParams)


def test_clean_and_fgsm_rows_equal_independent_computations(
    trained: raigate.Model, test_data: raigate.Dataset, result: tuple
) -> None:
    from art.attacks.evasion import FastGradientMethod

    res, _, _ = result
    rows = res.table("attacks")
    base = rows[rows["model"] == "base"].set_index(["attack", "norm", "eps"], drop=False)
    clean = evaluate.run(trained, test_data, evaluate.EvaluateParams(progress=False))
    assert base.loc[("clean", None, 0.0), "accuracy"].item() == pytest.approx(
        clean.metric("accuracy")
    )

    x = torch.stack([test_data[i][0] for i in range(len(test_data))])
    y = test_data.labels
    clf = to_art_classifier(trained)
    for norm, eps in (("linf", 8 / 255), ("l2", 2 / 255)):
        attack = FastGradientMethod(clf, norm=np.inf if norm == "linf" else 2, eps=eps)
        x_adv = attack.generate(x.numpy(), y=np.eye(2, dtype=np.float32)[y])
        independent = float((clf.predict(x_adv).argmax(1) == y).mean())
        ours = base[(base["attack"] == "fgsm") & (base["norm"] == norm) & (base["eps"] == eps)]
        assert ours["accuracy"].item() == pytest.approx(independent)
        assert ours["n"].item() == len(y) == res.metrics["n"]


def test_gates_decide_as_an_independent_clopper_pearson_on_the_per_image_outcomes(
    trained: raigate.Model, test_data: raigate.Dataset, result: tuple
) -> None:
    """Each gate's severity equals FAIL/WARN/PASS from statsmodels' Clopper-Pearson interval at
    alpha/m over outcomes counted here: FGSM's per image through ART, the certified ones
    from certification.csv, the others from the rows' counts."""
    from art.attacks.evasion import FastGradientMethod

    res, out, _ = result
    rows = res.table("attacks").set_index(["model", "attack", "norm", "eps_text"])
    x = torch.stack([test_data[i][0] for i in range(len(test_data))])
    y = test_data.labels
    clf = to_art_classifier(trained)
    x_adv = FastGradientMethod(clf, norm=np.inf, eps=8 / 255).generate(
        x.numpy(), y=np.eye(2, dtype=np.float32)[y]
    )
    fgsm_ok = clf.predict(x_adv).argmax(1) == y  # per image, independent of raigate's attack
    per = pd.read_csv(out / "certification.csv")
    certified_ok = per["correct"].to_numpy() & (per["radius"].to_numpy() >= 0.1)
    outcomes = {
        "robustness.min_robust_accuracy[fgsm:linf:8/255]": (int(fgsm_ok.sum()), len(y), 0.7),
        "robustness.min_robust_accuracy[pgd:linf:8/255]": (
            int(rows.loc[("base", "pgd", "linf", "8/255"), "correct"]), len(y), 0.9,
        ),
        "robustness.min_robust_accuracy[smoothed:pgd:linf:2/255]": (
            int(rows.loc[("smoothed", "pgd", "linf", "2/255"), "correct"]), len(y), 0.5,
        ),
        "robustness.min_certified_accuracy[r=0.1]": (int(certified_ok.sum()), len(per), 0.6),
    }  # fmt: skip
    alpha_each = 0.05 / 4  # Bonferroni over the 4 gates
    found = {f.id: f for f in res.findings if f.id.startswith("robustness.min_")}
    assert set(found) == set(outcomes)
    for fid, (k, n, minimum) in outcomes.items():
        lo, hi = proportion_confint(k, n, alpha=alpha_each, method="beta")
        expected = "fail" if hi < minimum else "pass" if lo >= minimum else "warn"
        f = found[fid]
        assert (f.severity, f.value, f.threshold) == (expected, pytest.approx(k / n), minimum)
        assert f"({k} of n={n})" in f.message and "m=4 gates" in f.message
        assert f"[{lo:.4f}, {hi:.4f}]" in f.message and "98.75% two-sided exact" in f.message
    assert {f.severity for f in found.values()} == {"pass", "warn", "fail"}  # all three levels
    assert "upper bound on true robust accuracy" in found[next(iter(outcomes))].message
    assert "lower bound" in found["robustness.min_certified_accuracy[r=0.1]"].message
    gates = res.params["gates"]
    assert gates["m"] == 4 and gates["alpha_per_gate"] == pytest.approx(alpha_each)
    assert "Clopper-Pearson" in gates["interval"] and "Bonferroni" in gates["adjustment"]
    assert gates["rules"] == [
        "fgsm:linf:8/255=0.7",
        "pgd:linf:8/255=0.9",
        "smoothed:pgd:linf:2/255=0.5",
        "0.1=0.6",
    ]
    assert [g["n"] for g in res.metrics["gates"]] == [64, 64, 64, 24]
    for g in res.metrics["gates"]:
        shortfall = float(detectable_shortfall(g["n"], g["min"], alpha_each))
        assert g["shortfall_80"] == pytest.approx(shortfall)
        assert f"a FAIL is 80% likely once the true value is {shortfall:.3f} below" in (
            found[g["gate"]].message
        )
    assert res.verdict == "fail" and res.verdict_scope is None  # gated: no scope note
    assert res.verdict_label == "FAIL"


def test_tables_hold_together(result: tuple, test_data: raigate.Dataset) -> None:
    res, out, messages = result
    rows = res.table("attacks")
    assert {"attack", "norm", "eps", "model", "accuracy", "n"} <= set(rows.columns)
    # deterministic base model: PGD counts the FGSM point and its own iterates, so it is
    # never weaker than either (the smoothed model's votes are Monte Carlo, so no such law)
    r = rows[rows["model"] == "base"].set_index(["attack", "norm", "eps"])
    for norm in ("linf", "l2"):
        for eps in (2 / 255, 8 / 255):
            pgd_acc = r.loc[("pgd", norm, eps), "accuracy"]
            assert pgd_acc <= r.loc[("fgsm", norm, eps), "accuracy"]
            assert pgd_acc <= r.loc[("pgd", norm, eps), "pgd_own_accuracy"]
    assert rows["accuracy"].between(0, 1).all()
    linf = rows[(rows["norm"] == "linf") & (rows["attack"] != "clean")]
    assert (linf["max_perturbation"] <= linf["eps"] + 1e-6).all()

    # the smoothed/base ratio is what it says
    ratios = res.table("smoothed_vs_base")
    for rec in ratios.to_dict("records"):
        if rec["base_accuracy"] > 0:
            assert rec["ratio"] == pytest.approx(rec["smoothed_accuracy"] / rec["base_accuracy"])
        assert rec["sigma"] == 0.12 and rec["eot_samples"] == 2 and rec["predict_n"] == 16

    # per-group rows add back up to the overall accuracy
    groups = res.table("attacks_by_group")
    for (model, attack, norm, eps), part in groups[groups["attribute"] == "race"].groupby(
        ["model", "attack", "norm", "eps"], dropna=False
    ):
        match = rows[(rows["model"] == model) & (rows["attack"] == attack) & (rows["eps"] == eps)]
        match = match[match["norm"].isna()] if pd.isna(norm) else match[match["norm"] == norm]
        weighted = (part["accuracy"].fillna(0) * part["n"]).sum() / part["n"].sum()
        assert weighted == pytest.approx(match["accuracy"].item())
    assert set(groups["attribute"]) == {"race", "gender", "age"}

    # certification: a monotone curve, and ACR/abstain rate recomputed from the CSV
    cert = res.table("certification")
    assert list(cert["radius"]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert cert["certified_accuracy"].is_monotonic_decreasing
    per = pd.read_csv(out / "certification.csv")
    assert len(per) == 24 == res.metrics["certified_n"]
    # a seeded class-stratified subset, not the first 24 (data sorted by class would bias it)
    share = pd.Series(test_data.class_names)[test_data.labels].value_counts(normalize=True)
    for label, count in per["label"].value_counts().items():
        assert abs(count - 24 * share[label]) < 1
    assert per["index"].is_monotonic_increasing and per["index"].max() < len(test_data)
    assert res.metric("abstain_rate") == pytest.approx(
        (per["certified_class"] == "(abstain)").mean()
    )
    wrong = (per["certified_class"] != "(abstain)") & (per["certified_class"] != per["label"])
    assert res.metric("certified_wrong_rate") == pytest.approx(wrong.mean())
    acr = np.where(per["correct"], per["radius"], 0.0).mean()
    assert res.metric("average_certified_radius") == pytest.approx(acr, abs=1e-6)
    at_quarter = (per["correct"] & (per["radius"] >= 0.25)).mean()
    assert cert.loc[cert["radius"] == 0.25, "certified_accuracy"].item() == pytest.approx(
        at_quarter
    )
    all_votes = proportion_confint(100, 100, alpha=2 * 0.001, method="beta")[0]  # n_A = n
    assert res.metrics["max_certifiable_radius"] == pytest.approx(0.12 * gaussian.ppf(all_votes))

    assert sorted(res.artifacts) == [
        "certification.csv",
        "certification.png",
        "robust_accuracy.png",
    ]
    assert all((out / a).is_file() for a in res.artifacts)
    assert messages[0].startswith("attacks: about") and messages[1].startswith("certify: 24 images")
    assert "10 selection + 100 estimation" in messages[1]
    defs = res.params["definitions"]
    assert "EOT" in defs["smoothed_attack"] and "Clopper-Pearson" in defs["certified_accuracy"]
    ids = {f.id for f in res.findings}
    assert (
        "robustness.masking.single_step.base" in ids
        and "robustness.smoothing.certified_accuracy" in ids
    )
    res.write(out)
    assert raigate.CheckResult.load(out / "result.json").metrics == res.metrics


class _Quantize(nn.Module):
    """Rounds pixels to 8 levels: a classic gradient-masking 'defense' (zero gradient)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 7) / 7


def test_masking_findings_fire_on_a_model_with_no_gradient(
    trained: raigate.Model, test_data: raigate.Dataset
) -> None:
    masked = raigate.wrap(
        nn.Sequential(_Quantize(), trained),
        class_names=trained.class_names,
        input_shape=(3, 32, 32),
    )
    params = robustness.RobustnessParams(
        attacks=["fgsm", "pgd", "art:SquareAttack"], attack_params={"max_iter": 50},
        eps=[32 / 255], pgd_steps=3, max_samples=24, progress=False,
    )  # fmt: skip
    np.random.seed(0)  # ART's SquareAttack draws from numpy's global generator
    res = robustness.run(masked, test_data, params)
    sev = {f.id: f.severity for f in res.findings}
    rows = res.table("attacks").set_index("attack")
    assert rows.loc["fgsm", "accuracy"] == rows.loc["clean", "accuracy"]  # gradient is 0
    assert sev["robustness.masking.large_eps.base"] == "warn"
    assert sev["robustness.masking.black_box.base"] == "warn"
    assert rows.loc["art:SquareAttack", "accuracy"] < rows.loc["pgd", "accuracy"]
    # no robustness gate: the verdict says it covers the attack's soundness only
    assert res.verdict_scope == NOT_GATED == "attack soundness checked; robustness not gated"
    assert res.verdict_label == f"WARN ({NOT_GATED})" and "gates" not in res.metrics
    masking = [f for f in res.findings if f.id.startswith("robustness.masking.")]
    assert masking and all(f.message.startswith("attack soundness: ") for f in masking)


def test_bad_params_say_which_field() -> None:
    with pytest.raises(ValidationError, match="must be finite and >= 0"):
        robustness.RobustnessParams(eps=[-0.1])
    with pytest.raises(ValidationError, match="linf"):
        robustness.RobustnessParams(norms=["lnf"])
    with pytest.raises(ValidationError, match=r"--certify-n0 \(200\) must not exceed"):
        robustness.RobustnessParams(certify_n0=200, certify_n=100)
    with pytest.raises(ValidationError, match="unknown attack 'cw'"):
        robustness.RobustnessParams(attacks=["cw"])
    assert robustness.RobustnessParams(attacks=["pgd", "fgsm"]).attacks == ["fgsm", "pgd"]


def test_gate_levels_hand_worked_against_statsmodels() -> None:
    """30 of 50 at confidence 0.95: Clopper-Pearson [0.4518, 0.7359] (statsmodels 'beta')."""
    lo, hi = proportion_confint(30, 50, alpha=0.05, method="beta")
    assert (round(lo, 4), round(hi, 4)) == (0.4518, 0.7359)
    codes, los, his = decide([30, 30, 30, 0, 50], [50] * 5, [0.74, 0.6, 0.45, 0.0, 1.0], 0.05)
    assert [SEVERITIES[c] for c in codes] == ["fail", "warn", "pass", "pass", "warn"]
    assert los[0] == pytest.approx(lo) and his[0] == pytest.approx(hi)
    assert (los[3], his[4]) == (0.0, 1.0)  # k = 0 and k = n: the exact one-sided ends
    # power, by brute force: the largest failing count, and P(FAIL) at min - shortfall
    n, minimum = 64, 0.7
    k_fail = max(k for k in range(n + 1) if proportion_confint(k, n, 0.05, "beta")[1] < minimum)
    d = float(detectable_shortfall(n, minimum, 0.05))
    assert binom.cdf(k_fail, n, minimum - d) == pytest.approx(0.8)
    assert np.isnan(detectable_shortfall(50, 0.01, 0.05))  # 0 of 50 cannot fall below 1%


def _simulate(p_true: np.ndarray, minimum: np.ndarray, n: int, sims: int, alpha: float, seed: int):
    """``sims`` audits of ``len(minimum)`` gates: per-image Bernoulli outcomes at the true
    accuracies, counted and decided with the Bonferroni-adjusted level, as run() does."""
    rng = np.random.default_rng(seed)
    correct = rng.random((sims, len(p_true), n)) < p_true[None, :, None]
    codes, _, _ = decide(correct.sum(axis=2), n, minimum[None, :], alpha / len(minimum))
    return codes


def test_gate_simulation_false_fail_rate_and_power() -> None:
    """The family-wise rule of raigate.audit.robustness_gates, simulated (seeded, vectorized):
    with every true accuracy exactly at its minimum, the share of audits with any FAIL stays
    within alpha plus binomial slack (the bound is alpha/2); with one gate 0.2 below its
    minimum at n=100, FAIL in at least 90%."""
    alpha, sims, n = 0.05, 2000, 100
    slack = 3 * np.sqrt(alpha * (1 - alpha) / sims)
    minimum = np.array([0.3, 0.6, 0.9])
    codes = _simulate(minimum, minimum, n, sims, alpha, seed=0)
    false_fail = float((codes == 2).any(axis=1).mean())
    assert false_fail <= alpha + slack, false_fail
    # at the minimum a PASS is the other error (true accuracy not above it): also rare
    assert float((codes == 0).any(axis=1).mean()) <= alpha + slack
    power = _simulate(np.array([0.3, 0.4, 0.9]), minimum, n, sims, alpha, seed=1)
    assert float((power[:, 1] == 2).mean()) >= 0.9
    # the power the finding states: at min - shortfall_80, FAIL in 80% of audits
    d = float(detectable_shortfall(n, 0.6, alpha / 3))
    at = _simulate(np.array([0.3, 0.6 - d, 0.9]), minimum, n, sims, alpha, seed=3)
    assert abs(float((at[:, 1] == 2).mean()) - 0.8) <= 3 * np.sqrt(0.8 * 0.2 / sims)
    # and well above the minimum the gate passes (0.2 above at n=100)
    clear = _simulate(np.array([0.5, 0.8, 0.9]), np.array([0.3, 0.6, 0.0]), n, sims, alpha, 2)
    assert float((clear[:, :2] == 0).all(axis=1).mean()) >= 0.9


def test_rules_parse_both_forms_and_name_what_the_run_measures() -> None:
    rule = RobustAccuracyRule.from_text("smoothed:art:SquareAttack:l2:0.5=0.3")
    assert (rule.model, rule.attack, rule.norm, rule.eps, rule.min) == (
        "smoothed", "art:SquareAttack", "l2", 0.5, 0.3,
    )  # fmt: skip
    assert RobustAccuracyRule(attack="pgd", norm="linf", eps="8/255", min=0.4) == (
        RobustAccuracyRule.from_text("pgd:linf:8/255=0.4")
    )
    assert RobustAccuracyRule.from_text("pgd:linf:8/255=0.4").eps == 8 / 255
    assert CertifiedAccuracyRule.from_text("0.25=0.6") == CertifiedAccuracyRule(
        radius=0.25, min=0.6
    )
    # a plan's 0.0314 is not 8/255; a float written out in full is
    p = robustness.RobustnessParams(
        eps=[8 / 255], min_robust_accuracy=["pgd:linf:0.03137254901960784=0.4"]
    )
    assert p.min_robust_accuracy[0].eps == 8 / 255
    R, C = "min_robust_accuracy", "min_certified_accuracy"
    cases = [
        ({R: ["pgd:linf:0.0314=0.4"]}, "eps 0.0314 is not measured (eps: 8/255)"),
        ({R: ["pgd:l2:8/255=0.4"]}, "norm l2 is not run (norms: linf)"),
        ({R: ["cw:linf:8/255=0.4"], "attacks": ["pgd", "fgsm"]},
         "attack cw is not run (attacks: fgsm, pgd)"),
        # no attacks given: either mode's default may run, so rules may name any of them
        ({R: ["cw:linf:8/255=0.4"]}, "attack cw is not run (attacks: fgsm, pgd, square)"),
        ({R: ["smoothed:square:linf:8/255=0.4"], "smoothing_sigma": 0.12},
         "square attacks the base model only"),
        ({R: ["smoothed:pgd:linf:8/255=0.4"]}, "without smoothing_sigma"),
        ({R: ["pgd:linf:8/255=0.4", "pgd:linf:8/255=0.5"]}, "given twice"),
        ({R: ["pgd:linf:8/255=1.2"]}, "less than or equal to 1"),
        ({R: ["pgd:linf=0.4"]}, "is not ATTACK:NORM:EPS=MIN"),
        ({R: [{"attack": "pgd", "norm": "linf", "eps": "8/0", "min": 0.4}]},
         "'8/0' divides by zero"),
        ({C: ["0.25=0.6"]}, "needs smoothing_sigma"),
        ({C: ["0.25=0.6"], "smoothing_sigma": 0.12, "certify_n": 100},
         "largest certifiable radius 0.1801"),
        ({C: ["0.1=0.6"], "smoothing_sigma": 0.12, "certify": False},
         "with certification on"),
    ]  # fmt: skip
    for kwargs, needle in cases:
        with pytest.raises(ValidationError, match=re.escape(needle)):
            robustness.RobustnessParams(eps=[8 / 255], **kwargs)


# -- black-box models and query attacks ------------------------------------------------------


@pytest.fixture(scope="module")
def black_box(trained: raigate.Model) -> tuple[raigate.Model, QueryNet]:
    """The trained CNN behind a predictor that only answers queries (a QueryNet), so every
    number must equal the white-box model's where both can be computed."""

    def predict(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return trained.logits(torch.from_numpy(a)).numpy()

    net = QueryNet(predict)
    twin = Model(
        net,
        class_names=trained.class_names,
        input_shape=trained.input_shape,
        capabilities=Capabilities(gradients=False),
    )
    return twin, net


def _images(data: raigate.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([data[i][0] for i in range(len(data))]), torch.as_tensor(data.labels)


def test_black_box_model_gets_square_its_queries_and_a_gate(
    trained: raigate.Model, test_data: raigate.Dataset, black_box: tuple
) -> None:
    twin, _ = black_box
    params = robustness.RobustnessParams(
        eps=[8 / 255, 32 / 255], query_budget=100, progress=False,
        min_robust_accuracy=["square:linf:32/255=0.5"],
    )  # fmt: skip
    res = robustness.run(twin, test_data, params)
    assert res.mode == "black-box" and res.params["mode"] == "black-box"
    assert res.params["attacks"] == ["square"] and res.params["query_budget"] == 100
    assert set(res.params["skipped"]) == {
        "large_eps_check", "masking.single_step", "masking.black_box",
    }  # fmt: skip
    defs = res.params["definitions"]
    assert "upper bound on robust accuracy at 100 queries per image" in defs["square"]
    assert "fgsm" not in defs and defs["large_eps_check"].startswith("skipped: ")
    assert res.metrics["large_eps_check"] == []

    # the rows equal Square run directly on the white-box model (same batch, same seed)
    x, y = _images(test_data)
    rows = res.table("attacks").set_index("attack", drop=False)
    square = rows[rows["attack"] == "square"].set_index("eps")
    for eps in (8 / 255, 32 / 255):
        direct = square_attack(trained, x, y, eps=eps, query_budget=100, seed=0)
        row = square.loc[eps]
        assert row["accuracy"] == pytest.approx(
            float((trained.predict(direct.x_adv) == y).mean(dtype=torch.float64))
        )
        assert row["queries_mean"] == pytest.approx(direct.mean_queries, abs=1e-3)
        assert row["queries_max"] == direct.max_queries <= row["query_budget"] == 100
        assert row["max_perturbation"] <= eps + 1e-6 and bool(row["black_box"])
    clean = rows.loc["clean", "accuracy"]
    assert (square["accuracy"] <= clean).all()

    # the gate and the query finding call the accuracy an upper bound at 100 queries
    found = {f.id: f for f in res.findings}
    gate = found["robustness.min_robust_accuracy[square:linf:32/255]"]
    k, n = int(square.loc[32 / 255, "correct"]), int(square.loc[32 / 255, "n"])
    lo, hi = proportion_confint(k, n, alpha=0.05, method="beta")
    assert gate.severity == ("fail" if hi < 0.5 else "pass" if lo >= 0.5 else "warn")
    assert "an upper bound on robust accuracy at 100 queries" in gate.message
    query = found["robustness.query_budget.square"]
    assert "upper bound on robust accuracy at 100 queries" in query.message
    assert query.value == square["queries_max"].max() and query.threshold == 100
    masking = {i for i in found if i.startswith("robustness.masking.")}
    assert masking == {"robustness.masking.monotone.base"}  # the gradient-free one only


def test_black_box_model_refuses_gradient_attacks_in_one_line(
    test_data: raigate.Dataset, black_box: tuple
) -> None:
    twin, net = black_box
    before = net.queries
    for attacks, bad in (
        (["fgsm"], "fgsm"),
        (["square", "pgd", "art:ProjectedGradientDescent"], "pgd, art:ProjectedGradientDescent"),
    ):
        params = robustness.RobustnessParams(attacks=attacks, eps=[8 / 255], progress=False)
        with pytest.raises(ConfigError) as err:
            robustness.run(twin, test_data, params)
        msg = str(err.value)
        assert "\n" not in msg and "is a black-box model (queries only, no gradients)" in msg
        assert f": {bad} cannot attack it; attacks that only query it: square, hsj, art:" in msg
    # a gate on a default that does not run on this model is refused the same way
    params = robustness.RobustnessParams(
        eps=[8 / 255], progress=False, min_robust_accuracy=["pgd:linf:8/255=0.5"]
    )
    with pytest.raises(ConfigError, match=r"attack pgd is not run \(attacks: square\)"):
        robustness.run(twin, test_data, params)
    with pytest.raises(ConfigError, match="fgsm cannot attack it"):
        robustness.validate(
            twin, test_data, robustness.RobustnessParams(attacks=["fgsm"], progress=False)
        )
    assert net.queries == before  # refused before any query


def test_hsj_rows_respect_eps_and_equal_a_direct_run(
    trained: raigate.Model, test_data: raigate.Dataset
) -> None:
    from raigate.data.base import select

    eps = [4 / 255, 16 / 255, 64 / 255]
    params = robustness.RobustnessParams(
        attacks=["hsj", "pgd"], eps=eps, pgd_steps=3, query_budget=150, max_samples=16,
        large_eps_check=False, progress=False,
    )  # fmt: skip
    res = robustness.run(trained, test_data, params)
    assert res.mode == "white-box" and res.params["attacks"] == ["pgd", "hsj"]
    rows = res.table("attacks")
    hsj = rows[rows["attack"] == "hsj"].sort_values("eps")
    clean = rows.loc[rows["attack"] == "clean", "accuracy"].item()
    x, y = _images(select(test_data, sample=16, seed=0))
    direct = hop_skip_jump(trained, x, y, norm="linf", query_budget=150, seed=0)
    for _, row in hsj.iterrows():
        broken = direct.success & (direct.distance <= row["eps"])
        still = trained.predict(torch.where(broken.view(-1, 1, 1, 1), direct.x_adv, x)) == y
        assert row["accuracy"] == pytest.approx(float(still.double().mean()))
        assert 0 <= row["accuracy"] <= clean
        assert row["max_perturbation"] <= row["eps"] + 1e-6
        assert row["queries_max"] == direct.max_queries <= 150
        assert row["queries_mean"] == pytest.approx(direct.mean_queries, abs=1e-3)
    assert hsj["accuracy"].is_monotonic_decreasing  # one run, thresholded at each eps
    assert "minimal perturbation" in res.params["definitions"]["hsj"]
    ids = {f.id for f in res.findings}
    assert {"robustness.masking.black_box.base", "robustness.query_budget.hsj"} <= ids


def test_black_box_smoothing_still_predicts_and_certifies(
    trained: raigate.Model, test_data: raigate.Dataset, black_box: tuple
) -> None:
    """No EOT attacks without gradients, but PREDICT and CERTIFY only query: the certificates
    equal those of the white-box model's smoothed classifier on the same noise stream."""
    from raigate.audit.robustness import stratified_positions
    from raigate.data.base import select
    from raigate.defenses import SmoothedClassifier

    twin, _ = black_box
    params = robustness.RobustnessParams(
        eps=[8 / 255], query_budget=20, smoothing_sigma=0.12, predict_n=16, certify_n=100,
        certify_n0=10, certify_max_samples=8, max_samples=16, progress=False,
    )  # fmt: skip
    res = robustness.run(twin, test_data, params)
    rows = res.table("attacks")
    assert set(zip(rows["model"], rows["attack"], strict=True)) == {
        ("base", "clean"), ("base", "square"), ("smoothed", "clean"),
    }  # fmt: skip
    assert "smoothed_attacks" in res.params["skipped"]
    assert "smoothed_attack" not in res.params["definitions"]

    chosen = select(test_data, sample=16, seed=0)
    x, y = _images(chosen)
    sm = SmoothedClassifier(trained, 0.12, batch_size=1000, seed=0)
    votes = sm.counts(x, 16)  # the smoothed clean row, drawn first from the same stream
    smoothed_clean = rows[(rows["model"] == "smoothed") & (rows["attack"] == "clean")]
    assert smoothed_clean["accuracy"].item() == pytest.approx(
        float((votes.argmax(1) == y).double().mean())
    )
    pos = stratified_positions(chosen.labels, 8, 0)
    cert = sm.certify(x[pos], 10, 100, 0.001)
    ok = (cert.prediction == y[pos]).numpy()
    for rec in res.metrics["certification"]:
        expected = float((ok & (cert.radius.numpy() >= rec["radius"])).mean())
        assert rec["certified_accuracy"] == pytest.approx(expected)
