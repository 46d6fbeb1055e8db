"""The CycloneDX ML-BOM of an audit bundle (``mlbom.cdx.json``): valid CycloneDX 1.6 by the
library's strict JSON schema, signed like every bundle file, and stating the same digests
and numbers as report.json, the model files on disk and the DP-SGD ledger.

One real, signed `raigate audit` of a saved small_cnn and a DP-SGD-trained variant (6 steps
on 96 demo images) on 64 demo images: evaluate, fairness, robustness smoothing the variant,
and a privacy check of the variant against its ledger.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from typer.testing import CliRunner

import raigate
from model_helpers import saved_small_cnn
from raigate.cli import app
from raigate.config import load_plan
from raigate.privacy.train import DPParams, run_private_training
from raigate.reports.mlbom import MLBOM_FILE, build_mlbom
from raigate.results import AuditReport

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PLAN = """
seed = 3
[model]
spec = "models/model.json"
[models.private]
spec = "dp/model.json"
[data]
spec = "demo:test"
limit = 64
[checks.evaluate]
min_accuracy = 0.0
[checks.fairness]
sensitive = ["gender"]
intersections = []
min_group_size = 10
n_boot = 100
plots = false
[checks.robustness]
eps = ["4/255"]
pgd_steps = 1
large_eps_check = false
smoothing_sigma = 0.25
smoothing_model = "private"
eot_samples = 1
predict_n = 4
certify_n = 20
certify_n0 = 5
certify_max_samples = 4
[checks.privacy_private]
check = "privacy"
model = "private"
members = "demo:train"
members_limit = 96
attacks = ["loss"]
ledger = "dp/ledger.json"
[card]
intended_use = "Gender classification demo for the raigate tests"
out_of_scope_use = "Any decision about a person"
training_data = "96 synthetic demo images"
owners = "raigate maintainers"
license = "Apache-2.0"
"""


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tree/``: plan.toml, models/ (saved small_cnn), dp/ (DP-SGD variant and its ledger),
    keys/, out/ (the signed bundle)."""
    tmp = tmp_path_factory.mktemp("mlbom")
    saved_small_cnn(tmp / "models" / "model.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_private_training(
            "raigate.zoo:small_cnn",
            raigate.load_data("demo:train", limit=96),
            DPParams(
                epsilon=3.0,
                delta=1e-4,
                epochs=1,
                batch_size=16,
                lr=0.5,
                accountant="rdp",
                progress=False,
            ),
            kwargs={"norm": "group"},
            out_dir=tmp / "dp",
        )
    (tmp / "plan.toml").write_text(PLAN)
    assert runner.invoke(app, ["keys", "generate", "--out", str(tmp / "keys")]).exit_code == 0
    args = ["audit", str(tmp / "plan.toml"), "--out", str(tmp / "out")]
    res = runner.invoke(app, [*args, "--key", str(tmp / "keys" / "raigate.key")])
    assert res.exit_code in (0, 1), res.output
    return tmp


def load(tree: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the BOM, report.json), both as plain JSON."""
    out = tree / "out"
    return json.loads((out / MLBOM_FILE).read_text()), json.loads((out / "report.json").read_text())


def component(bom: dict[str, Any], ref: str) -> dict[str, Any]:
    (found,) = [c for c in bom["components"] if c["bom-ref"] == ref]
    return found


def metrics(bom: dict[str, Any], ref: str) -> list[dict[str, Any]]:
    return component(bom, ref)["modelCard"]["quantitativeAnalysis"]["performanceMetrics"]


def as_numbers(m: dict[str, Any]) -> tuple[float, float | None, float | None]:
    ci = m.get("confidenceInterval") or {}
    low, high = ci.get("lowerBound"), ci.get("upperBound")
    return (
        float(m["value"]),
        None if low is None else float(low),
        None if high is None else float(high),
    )


def test_the_bom_is_valid_cyclonedx_1_6(tree: Path) -> None:
    text = (tree / "out" / MLBOM_FILE).read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    assert (bom["bomFormat"], bom["specVersion"]) == ("CycloneDX", "1.6")
    assert [t["name"] for t in bom["metadata"]["tools"]["components"]] == ["raigate"]
    # the writer is build_mlbom, deterministic: the saved report and plan give the same bytes
    report = AuditReport.load(tree / "out" / "report.json")
    assert build_mlbom(report, load_plan(tree / "plan.toml")) == text


def test_models_carry_their_digest_and_each_file_sha256(tree: Path) -> None:
    bom, report = load(tree)
    for ref, described, folder in (
        ("model/model", report["model"], "models"),
        ("model/private", report["models"]["private"], "dp"),
    ):
        comp = component(bom, ref)
        assert comp["type"] == "machine-learning-model"
        assert comp["hashes"] == [
            {"alg": "SHA-256", "content": described["digest"].removeprefix("sha256:")}
        ]
        files = {f["name"]: f["hashes"][0]["content"] for f in comp["components"]}
        on_disk = {
            f"{folder}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (tree / folder).iterdir()
            if p.suffix in (".json", ".safetensors") and p.name != "ledger.json"
        }
        assert files == on_disk and len(files) == len(described["files"]) >= 2
    # the attestation signs the same files under the same names
    envelope = json.loads((tree / "out" / "attestation.dsse.json").read_text())
    import base64

    stmt = json.loads(base64.b64decode(envelope["payload"]))
    signed = {s["name"]: s["digest"]["sha256"] for s in stmt["subject"]}
    for ref in ("model/model", "model/private"):
        for f in component(bom, ref)["components"]:
            assert signed[f"model:{f['name']}"] == f["hashes"][0]["content"]
    assert (
        signed[MLBOM_FILE] == hashlib.sha256((tree / "out" / MLBOM_FILE).read_bytes()).hexdigest()
    )


def test_evaluate_fairness_and_robustness_numbers_are_the_reports(tree: Path) -> None:
    bom, report = load(tree)
    checks = report["checks"]
    main = metrics(bom, "model/model")
    ev = checks["evaluate"]["metrics"]
    (acc,) = [m for m in main if m["type"] == "accuracy" and m["slice"].startswith("evaluate:")]
    assert as_numbers(acc) == (ev["accuracy"], ev["accuracy_ci_low"], ev["accuracy_ci_high"])
    # accuracy recomputed from the saved predictions, independently of the report
    rows = (tree / "out" / "checks" / "evaluate" / "predictions.csv").read_text().splitlines()
    header = rows[0].split(",")
    t, p = header.index("label"), header.index("predicted")
    hits = [r.split(",")[t] == r.split(",")[p] for r in rows[1:]]
    assert float(acc["value"]) == pytest.approx(sum(hits) / len(hits)) and len(hits) == 64

    summary = [r for r in checks["fairness"]["metrics"]["summary"] if r["value"] is not None]
    gaps = [m for m in main if m["slice"].startswith("fairness:")]
    assert summary and len(gaps) == len(summary)
    for m, r in zip(gaps, summary, strict=True):
        assert m["type"] == r["measure"] and r["attribute"] in m["slice"]
        assert as_numbers(m) == (r["value"], *r["ci"])

    attacks = checks["robustness"]["metrics"]["attacks"]
    base = [m for m in main if m["slice"].startswith("robustness:")]
    assert [as_numbers(m) for m in base] == [
        (r["accuracy"], r["ci_low"], r["ci_high"]) for r in attacks if r["model"] == "base"
    ]
    assert {m["type"] for m in base} == {"accuracy", "robust_accuracy"}
    # smoothed rows and certified accuracy belong to the variant the check smoothed
    private = metrics(bom, "model/private")
    smoothed = [m for m in private if m["type"] in ("accuracy", "robust_accuracy")]
    assert [as_numbers(m) for m in smoothed] == [
        (r["accuracy"], r["ci_low"], r["ci_high"]) for r in attacks if r["model"] == "smoothed"
    ]
    certified = [float(m["value"]) for m in private if m["type"] == "certified_accuracy"]
    cert_rows = checks["robustness"]["metrics"]["certification"]
    assert certified == [r["certified"] / r["n"] for r in cert_rows] and len(certified) >= 2


def test_privacy_epsilon_and_leakage_are_the_ledgers_and_reports(tree: Path) -> None:
    bom, report = load(tree)
    private = metrics(bom, "model/private")
    ledger = json.loads((tree / "dp" / "ledger.json").read_text())
    (eps,) = [m for m in private if m["type"] == "epsilon"]
    assert float(eps["value"]) == ledger["epsilon"] and "ledger" in eps["slice"]
    (row,) = report["checks"]["privacy_private"]["metrics"]["attacks"]
    by_type = {m["type"]: m for m in private}
    assert as_numbers(by_type["membership_inference_auc"]) == (row["auc"], *row["auc_ci"])
    for key in ("tpr_at_fpr_0.001", "tpr_at_fpr_0.01"):
        assert as_numbers(by_type[key]) == (row[key], *row[f"{key}_ci"])
    assert float(by_type["empirical_epsilon_lower_bound"]["value"]) == row["eps_lower"]
    # the primary model ran no privacy check: none of its numbers
    assert not [m for m in metrics(bom, "model/model") if m["type"] == "epsilon"]


def test_datasets_and_considerations(tree: Path) -> None:
    bom, report = load(tree)
    data = {c["name"]: c for c in bom["components"] if c["type"] == "data"}
    assert set(data) == {"demo:test", "demo:train"}
    digest = report["data"]["manifest_digest"].removeprefix("sha256:")
    assert data["demo:test"]["hashes"][0]["content"] == digest
    # the manifest digest recomputed from data-manifest.json (raigate.data.Manifest.digest)
    manifest = json.loads((tree / "out" / "data-manifest.json").read_text())
    body = {k: manifest[k] for k in ("count", "files", "extra")}
    text = json.dumps(body, sort_keys=True, indent=2) + "\n"
    assert hashlib.sha256(text.encode()).hexdigest() == digest
    members = report["checks"]["privacy_private"]["data"]["members_manifest_digest"]
    assert data["demo:train"]["hashes"][0]["content"] == members.removeprefix("sha256:")
    attributes = sorted(k for k in report["data"]["counts"] if k != "label")
    assert data["demo:test"]["data"][0]["sensitiveData"] == [
        f"group attribute: {a}" for a in attributes
    ]
    assert "gender" in attributes
    card = component(bom, "model/model")["modelCard"]
    refs = [d.get("ref") for d in card["modelParameters"]["datasets"]]
    assert data["demo:test"]["bom-ref"] in refs and data["demo:train"]["bom-ref"] not in refs
    private_refs = [d.get("ref") for d in component(bom, "model/private")["modelCard"][
        "modelParameters"]["datasets"]]  # fmt: skip
    assert data["demo:train"]["bom-ref"] in private_refs
    cons = card["considerations"]
    assert cons["useCases"] == ["Gender classification demo for the raigate tests"]
    assert "Out of scope: Any decision about a person" in cons["technicalLimitations"]
    assert any("synthetic" in t for t in cons["technicalLimitations"])
    fairness_ids = {
        f["id"] for f in report["checks"]["fairness"]["findings"] if f["severity"] != "pass"
    }
    named = {e["name"].split(" (")[0] for e in cons.get("ethicalConsiderations", [])}
    assert named == fairness_ids
    model = component(bom, "model/model")
    assert model["licenses"] == [{"license": {"id": "Apache-2.0"}}]
    assert model["authors"] == [{"name": "raigate maintainers"}]


def test_verify_covers_the_bom(tree: Path, tmp_path: Path) -> None:
    import shutil

    work = tmp_path / "copy"
    shutil.copytree(tree, work)
    pub = str(work / "keys" / "raigate.pub")
    assert runner.invoke(app, ["verify", str(work / "out"), "--key", pub]).exit_code == 0
    path = work / "out" / MLBOM_FILE
    path.write_text(path.read_text().replace('"1.6"', '"1.5"', 1))
    res = runner.invoke(app, ["verify", str(work / "out"), "--key", pub])
    assert res.exit_code == 1 and f"{MLBOM_FILE}: contents changed" in res.output
