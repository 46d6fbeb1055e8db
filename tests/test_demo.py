"""The demo trains, saves a reusable model spec, finds the injected disparity, and audits
its variants (smoothing, fairness hardening, DP-SGD) in the same signed report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import raigate
from raigate.data import DEMO_DISPARITY
from raigate.demo import DEMO_CHECKS, run_demo


def test_demo_trains_evaluates_and_finds_the_planted_gap(tmp_path: Path) -> None:
    lines: list[str] = []
    # the shipped check tables, on fewer attacked images to keep the test short
    checks = {
        k: v.replace("max_samples = 200", "max_samples = 60").replace(
            "certify_max_samples = 100", "certify_max_samples = 30"
        )
        for k, v in DEMO_CHECKS.items()
    }
    run = run_demo(
        tmp_path, epochs=4, harden_epochs=2, dp_epochs=5, checks=checks, progress=False,
        echo=lines.append,
    )  # fmt: skip
    doc = json.loads(run.result_path.read_text())
    assert doc["check"] == "evaluate" and doc["data"]["synthetic"] is True
    assert doc["metrics"]["accuracy"] > 0.85
    race = {
        r["value"]: r["accuracy"]
        for r in doc["metrics"]["per_attribute"]
        if r["attribute"] == "race"
    }
    group = DEMO_DISPARITY["group"]
    others = [v for k, v in race.items() if k != group]
    assert min(others) - race[group] > 0.1
    assert any("SYNTHETIC" in line for line in lines)
    assert any(line.startswith("injected disparity") for line in lines)
    # every stage is announced, in order
    stages = [line[: len("[demo 1/7]")] for line in lines if line.startswith("[demo ")]
    assert stages == [f"[demo {k}/7]" for k in range(1, 8)], stages
    # the bundle is signed with a throwaway key made in the folder, and verifies
    assert any("throwaway key pair" in line for line in lines)
    assert any("signature OK" in line for line in lines)
    assert run.outcome.signed and (tmp_path / "audit" / "attestation.dsse.json").is_file()
    assert (tmp_path / "audit" / "report.html").is_file()
    # the fairness gate fails on the planted disparity and names the group
    gates = {g["id"]: g for g in run.outcome.report.gates if g["check"] == "fairness"}
    assert any(g["severity"] == "fail" and group in g["message"] for g in gates.values()), gates
    assert run.outcome.report.verdict == "fail" and not run.outcome.passed
    # the Group DRO variant is audited like the model: the race gap before and after, each
    # with its simultaneous interval, printed from the two fairness results
    checks = run.outcome.report.checks
    fair = raigate.load_model(str(run.fair_spec))
    assert checks["fairness_fair"].model.digest == fair.digest != checks["fairness"].model.digest
    (line,) = [ln for ln in lines if ln.startswith("fairness hardening (group-dro over race)")]
    for name in ("fairness", "fairness_fair"):
        (row,) = [
            r
            for r in checks[name].metrics["summary"]
            if r["measure"] == "accuracy_difference" and r["attribute"] == "race"
        ]
        assert f"{row['value']:.3f} [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}]" in line

    # the saved spec reloads to the same function (same digest) and the same accuracy
    model = raigate.load_model(str(run.model_spec))
    assert model.digest == doc["model"]["digest"]
    test = raigate.load_data("demo:test")
    again = raigate.audit.evaluate.run(
        model, test, raigate.audit.evaluate.EvaluateParams(progress=False)
    )
    assert again.metric("accuracy") == pytest.approx(doc["metrics"]["accuracy"])


def test_demo_audits_the_smoothed_and_private_variants(tmp_path: Path) -> None:
    """Stages 3 and 4: the noise-trained variant is what the robustness check smooths, the
    DP-SGD variant is evaluated and attacked against its own ledger, all in one report."""
    from opacus.accountants import RDPAccountant

    cheap = {
        "evaluate": DEMO_CHECKS["evaluate"],
        "robustness": (
            "eps = [0.03137254901960784]\npgd_steps = 2\nmax_samples = 24\n"
            'smoothing_sigma = 0.25\nsmoothing_model = "smoothed"\neot_samples = 1\n'
            "predict_n = 8\ncertify_n = 50\ncertify_n0 = 8\ncertify_max_samples = 8\n"
        ),
        "evaluate_private": DEMO_CHECKS["evaluate_private"],
        "privacy_private": DEMO_CHECKS["privacy_private"].replace("2000", "400"),
    }
    run = run_demo(
        tmp_path, epochs=2, harden_epochs=1, fair_epochs=1, dp_epochs=5, checks=cheap,
        progress=False, echo=lambda _: None,
    )  # fmt: skip
    report = run.outcome.report
    smoothed = raigate.load_model(str(run.smoothed_spec))
    private = raigate.load_model(str(run.private_spec))
    fair = raigate.load_model(str(run.fair_spec))
    assert report.models["smoothed"]["digest"] == smoothed.digest
    assert report.models["private"]["digest"] == private.digest
    assert report.models["fair"]["digest"] == fair.digest
    assert len({report.model["digest"], smoothed.digest, private.digest, fair.digest}) == 4
    record = json.loads((run.fair_spec.parent / "harden.json").read_text())
    assert record["method"] == "group-dro" and record["attribute"] == "race"
    assert sum(record["q_final"]) == pytest.approx(1.0)

    rob = report.checks["robustness"]
    assert rob.model.digest == report.model["digest"]  # attacks hit the model as shipped
    (ref,) = rob.metrics["smoothing_model"]
    assert ref["digest"] == smoothed.digest and rob.params["smoothing_model"] == "smoothed"

    ev = report.checks["evaluate_private"]
    assert ev.model.digest == private.digest
    direct = raigate.audit.evaluate.run(
        private, raigate.load_data("demo:test"),
        raigate.audit.evaluate.EvaluateParams(progress=False),
    )  # fmt: skip
    assert ev.metric("accuracy") == direct.metric("accuracy") > 0.85

    # the ledger's epsilon, recomputed from its history by Opacus' RDP accountant directly
    ledger = json.loads(run.ledger.read_text())
    assert ledger["epsilon"] <= ledger["target_epsilon"] == 2.0
    acc = RDPAccountant()
    acc.history = [tuple(h) for h in ledger["history"]]
    assert acc.get_epsilon(ledger["delta"]) == pytest.approx(ledger["epsilons"]["rdp"], rel=1e-6)
    pr = report.checks["privacy_private"]
    assert pr.model.digest == private.digest
    assert pr.metrics["claimed_epsilon"] == pytest.approx(ledger["epsilon"])
    (finding,) = [f for f in pr.findings if f.id == "privacy.empirical_epsilon"]
    assert finding.threshold == pytest.approx(ledger["epsilon"])
    assert (finding.severity == "fail") == (finding.value > ledger["epsilon"])

    # every model's weights are signed subjects
    import base64

    envelope = json.loads((run.bundle / "attestation.dsse.json").read_text())
    stmt = json.loads(base64.b64decode(envelope["payload"]))
    signed = {s["name"] for s in stmt["subject"] if s["name"].startswith("model:")}
    for spec in (run.model_spec, run.smoothed_spec, run.private_spec, run.fair_spec):
        for f in raigate.load_model(str(spec)).files:
            assert any(name.endswith(Path(f["path"]).name) for name in signed), (spec, signed)
    assert stmt["predicate"]["variant_digests"] == {
        "smoothed": smoothed.digest,
        "fair": fair.digest,
        "private": private.digest,
    }


def test_demo_is_reproducible_bit_for_bit(tmp_path: Path) -> None:
    only = {"evaluate": "min_accuracy = 0.5\n"}
    kw = dict(epochs=1, harden_epochs=1, fair_epochs=1, dp_epochs=1, checks=only, progress=False)
    a = run_demo(tmp_path / "a", **kw, echo=lambda _: None)  # type: ignore[arg-type]
    b = run_demo(tmp_path / "b", **kw, echo=lambda _: None)  # type: ignore[arg-type]
    assert a.weights.read_bytes() == b.weights.read_bytes()
    assert a.result.model.digest == b.result.model.digest
    assert a.result.metrics == b.result.metrics
    # the variants too: noise training, Group DRO and DP-SGD are seeded end to end
    digests = [{k: v["digest"] for k, v in r.outcome.report.models.items()} for r in (a, b)]
    assert digests[0] == digests[1] and len(digests[0]) == 3
