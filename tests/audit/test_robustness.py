"""The robustness check: its numbers against independent computations (ART's FGSM, the
evaluate check, per-group sums), and its gradient-masking findings on a model that masks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from scipy.stats import norm as gaussian
from statsmodels.stats.proportion import proportion_confint
from torch import nn

import raigate
from raigate.attacks import to_art_classifier
from raigate.audit import CHECKS, evaluate, robustness
from raigate.models.base import Normalize
from raigate.training import fit
from raigate.zoo import small_cnn


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small batches: one intra-op thread avoids oversubscription on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained() -> raigate.Model:
    """small_cnn trained for a few seconds on the synthetic demo data (gender task)."""
    train = raigate.load_data("demo:train", limit=600)
    torch.manual_seed(0)
    net = small_cnn(num_classes=2)
    fit(net, train, normalize=Normalize([0.5] * 3, [0.5] * 3), epochs=3, lr=3e-3, progress=False)
    return raigate.wrap(
        net.eval(), class_names=train.class_names, input_shape=(3, 32, 32), mean=0.5, std=0.5
    )


@pytest.fixture(scope="module")
def test_data() -> raigate.Dataset:
    return raigate.load_data("demo:test", sample=64, seed=1)


@pytest.fixture(scope="module")
def result(trained: raigate.Model, test_data: raigate.Dataset, tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("robustness")
    params = robustness.RobustnessParams(
        eps=[2 / 255, 8 / 255], norms=["linf", "l2"], pgd_steps=3, smoothing_sigma=0.12,
        eot_samples=2, predict_n=16, certify_n=100, certify_n0=10, certify_max_samples=24,
        progress=False,
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
