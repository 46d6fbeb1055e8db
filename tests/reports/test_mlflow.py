"""`raigate audit --mlflow-uri`: one MLflow run per audit, read back with MlflowClient and
compared with the bundle's own report.json (read here, not through raigate).

A real signed audit of an untrained small_cnn on 32 demo images (evaluate + fairness, whose
gate ids hold brackets MLflow refuses) into a local `file:` store; never a network store.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import assert_user_error, invoke

pytestmark = pytest.mark.usefixtures("one_thread")

PLAN = """seed = 3
[model]
spec = "raigate.zoo:small_cnn"
random_init = true
[data]
spec = "demo:test"
limit = 32
[checks.evaluate]
min_accuracy = 0.0
[checks.fairness]
"""
LOGGED = re.compile(r"^mlflow: logged run ([0-9a-f]{32}) to (\S+) \(experiment raigate\)$", re.M)


def key(name: str) -> str:
    """MLflow's portable key alphabet: letters, digits, ``_ . -``; others become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("_")


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The audit, its report.json and the run id it printed."""
    tmp = tmp_path_factory.mktemp("mlflow")
    (tmp / "plan.toml").write_text(PLAN)
    assert invoke("keys", "generate", "--out", str(tmp / "keys"))[0] == 0
    had_env = "MLFLOW_ALLOW_FILE_STORE" in os.environ
    uri = f"file:{tmp / 'mlruns'}"
    code, out = invoke(
        "audit", str(tmp / "plan.toml"), "--out", str(tmp / "out"),
        "--key", str(tmp / "keys" / "raigate.key"), "--mlflow-uri", uri,
    )  # fmt: skip
    assert code == 0, out
    assert ("MLFLOW_ALLOW_FILE_STORE" in os.environ) == had_env  # opted in for the call only
    match = LOGGED.search(out)
    assert match and match.group(2) == uri, out
    report = json.loads((tmp / "out" / "report.json").read_text())
    return {"tmp": tmp, "uri": uri, "run_id": match.group(1), "report": report}


@pytest.fixture
def client(logged: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 gates its file store
    return MlflowClient(tracking_uri=logged["uri"])


def test_metrics_params_and_gate_tags_match_report_json(logged: dict[str, Any], client: Any):
    report, run = logged["report"], client.get_run(logged["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "raigate"
    expected = {
        key(f"{table}.{name}"): float(value)
        for table, result in report["checks"].items()
        for name, value in result["metrics"].items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    expected |= {
        key(f"gate.{g['id']}"): g["value"] for g in report["gates"] if g["value"] is not None
    }
    assert run.data.metrics == expected
    assert (
        run.data.metrics["evaluate.accuracy"] == report["checks"]["evaluate"]["metrics"]["accuracy"]
    )
    assert "gate.evaluate.min_accuracy" in run.data.metrics  # the gate's measured value

    gate_tags = {k: v for k, v in run.data.tags.items() if k.startswith("gate.")}
    assert gate_tags == {key(f"gate.{g['id']}"): g["severity"] for g in report["gates"]}
    assert len(gate_tags) == len(report["gates"]) > 2
    assert run.data.tags["gate.fairness.accuracy_difference_race_gender"] == next(
        g["severity"]
        for g in report["gates"]
        if g["id"] == "fairness.accuracy_difference[race+gender]"
    )
    assert run.data.tags["raigate.verdict"] == report["verdict"]
    assert run.data.tags["raigate.signed"] == "true"
    assert run.data.tags["raigate.passed"] == "true"

    params = run.data.params
    assert params["seed"] == str(report["seed"]) == "3"
    assert params["model.digest"] == report["model"]["digest"]
    assert params["data.spec"] == "demo:test"
    assert params["data.manifest_digest"] == report["data"]["manifest_digest"]
    assert (params["fail_on"], params["verdict"]) == (report["fail_on"], report["verdict"])


def test_artifacts_are_the_signed_bundle(logged: dict[str, Any], client: Any, tmp_path: Path):
    run_id = logged["run_id"]
    top = {f.path for f in client.list_artifacts(run_id)}
    assert {"report.json", "report.html", "attestation.dsse.json", "checks"} <= top
    assert {f.path for f in client.list_artifacts(run_id, "checks/evaluate")} >= {
        "checks/evaluate/result.json"
    }
    got = Path(client.download_artifacts(run_id, "", str(tmp_path)))
    bundle = logged["tmp"] / "out"
    for name in ("report.json", "attestation.dsse.json", "checks/fairness/result.json"):
        assert (got / name).read_bytes() == (bundle / name).read_bytes()
    # what MLflow holds still verifies offline against the public key
    code, out = invoke("verify", str(got), "--key", str(logged["tmp"] / "keys" / "raigate.pub"))
    assert code == 0, out


def test_log_audit_python_api_and_a_refusing_store(logged: dict[str, Any], client: Any):
    from raigate.errors import ConfigError
    from raigate.reports.mlflow_log import log_audit
    from raigate.results import AuditReport

    bundle = logged["tmp"] / "out"
    report = AuditReport.load(bundle / "report.json")
    run_id = log_audit(report, bundle, logged["uri"], experiment="again", run_name="from-python")
    run = client.get_run(run_id)
    assert run.info.run_name == "from-python"
    assert client.get_experiment(run.info.experiment_id).name == "again"
    assert run.data.metrics == client.get_run(logged["run_id"]).data.metrics
    with pytest.raises(ConfigError, match=r"^--mlflow-uri nosuch://x: logging to MLflow failed"):
        log_audit(report, bundle, "nosuch://x")


def test_missing_mlflow_exits_2_before_the_audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    (tmp_path / "plan.toml").write_text(PLAN)
    code, out = invoke(
        "audit", str(tmp_path / "plan.toml"), "--out", str(tmp_path / "out"),
        "--mlflow-uri", f"file:{tmp_path / 'mlruns'}",
    )  # fmt: skip
    assert_user_error(code, out, "--mlflow-uri needs the package 'mlflow-skinny'",
                      "pip install 'raigate[mlflow]'")  # fmt: skip
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlruns").exists()


def test_nproc_passes_the_uri_to_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Under --nproc the launcher audits nothing itself: the workers get --mlflow-uri, and
    rank 0 among them logs."""
    import raigate.parallel

    seen: list[list[str]] = []
    monkeypatch.setattr(raigate.parallel, "launch", lambda n, argv: (seen.append(argv), (0, ""))[1])
    (tmp_path / "plan.toml").write_text(PLAN)
    code, out = invoke(
        "audit", str(tmp_path / "plan.toml"), "--out", str(tmp_path / "out"), "--nproc", "2",
        "--mlflow-uri", "file:/somewhere/mlruns",
    )  # fmt: skip
    assert code == 0, out
    assert seen[0][seen[0].index("--mlflow-uri") + 1] == "file:/somewhere/mlruns"
    assert "mlflow: logged" not in out


def test_unusable_store_exits_2_before_the_audit(tmp_path: Path):
    (tmp_path / "plan.toml").write_text(PLAN)
    code, out = invoke(
        "audit", str(tmp_path / "plan.toml"), "--out", str(tmp_path / "out"),
        "--mlflow-uri", "nosuch://host/x",
    )  # fmt: skip
    assert_user_error(code, out, "--mlflow-uri nosuch://host/x: MLflow cannot use this tracking")
    assert not (tmp_path / "out").exists()
