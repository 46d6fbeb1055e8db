"""The demo trains, saves a reusable model spec, and finds the injected disparity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import raigate
from raigate.data import DEMO_DISPARITY
from raigate.demo import run_demo


def test_demo_trains_evaluates_and_finds_the_planted_gap(tmp_path: Path) -> None:
    lines: list[str] = []
    run = run_demo(tmp_path, epochs=4, progress=False, echo=lines.append)
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
    # the bundle is signed with a throwaway key made in the folder, and verifies
    assert any("throwaway key pair" in line for line in lines)
    assert any(line.startswith("[demo 4/4] verify: signature OK") for line in lines)
    assert run.outcome.signed and (tmp_path / "attestation.dsse.json").is_file()
    assert (tmp_path / "report.html").is_file()
    # the fairness gate fails on the planted disparity and names the group
    gates = {g["id"]: g for g in run.outcome.report.gates if g["check"] == "fairness"}
    assert any(g["severity"] == "fail" and group in g["message"] for g in gates.values()), gates
    assert run.outcome.report.verdict == "fail" and not run.outcome.passed

    # the saved spec reloads to the same function (same digest) and the same accuracy
    model = raigate.load_model(str(run.model_spec))
    assert model.digest == doc["model"]["digest"]
    again = raigate.audit.evaluate.run(
        model, raigate.load_data("demo:test"), raigate.audit.evaluate.EvaluateParams(progress=False)
    )
    assert again.metric("accuracy") == pytest.approx(doc["metrics"]["accuracy"])


def test_demo_is_reproducible_bit_for_bit(tmp_path: Path) -> None:
    only = {"evaluate": "min_accuracy = 0.5\n"}
    a = run_demo(tmp_path / "a", epochs=1, checks=only, progress=False, echo=lambda _: None)
    b = run_demo(tmp_path / "b", epochs=1, checks=only, progress=False, echo=lambda _: None)
    assert a.weights.read_bytes() == b.weights.read_bytes()
    assert a.result.model.digest == b.result.model.digest
    assert a.result.metrics == b.result.metrics
