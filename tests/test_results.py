"""The result schema: deterministic JSON, atomic writes, clear errors on bad files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from raigate import CheckResult, DataError, DataRef, Finding, ModelRef
from raigate._io import write_atomic
from raigate.results import dumps


def _result(**kw: object) -> CheckResult:
    base = dict(
        check="evaluate",
        params={"b": 1, "a": 2},
        metrics={
            "accuracy": np.float32(0.5),
            "n": np.int64(4),
            "bad": float("nan"),
            "per_class": [{"class": "x", "n": 2, "accuracy": 0.5}],
        },
        findings=[
            Finding(
                id="g", severity="warn", metric="accuracy", value=0.5, threshold=0.6, message="m"
            )
        ],
        model=ModelRef(spec="m", digest="sha256:00"),
        data=DataRef(spec="d", manifest_digest="sha256:11", synthetic=True),
        seed=3,
        created_at="2026-01-01T00:00:00+00:00",
    )
    base.update(kw)
    return CheckResult(**base)  # type: ignore[arg-type]


def test_json_is_deterministic_sorted_and_json_safe() -> None:
    a, b = _result().to_json(), _result().to_json()
    assert a == b
    doc = json.loads(a)
    assert list(doc) == sorted(doc)
    assert doc["schema_version"] == "1"
    assert doc["metrics"]["bad"] is None  # NaN is not valid JSON
    assert doc["metrics"]["n"] == 4 and isinstance(doc["metrics"]["n"], int)
    assert math.isclose(doc["metrics"]["accuracy"], 0.5)
    for key in (
        "check",
        "params",
        "metrics",
        "findings",
        "artifacts",
        "seed",
        "environment",
        "model",
        "data",
        "timing_s",
    ):
        assert key in doc


def test_verdict_is_worst_severity_and_tables_read_back(tmp_path) -> None:
    r = _result()
    assert r.verdict == "warn"
    assert _result(findings=[]).verdict == "pass"
    path = r.write(tmp_path)
    back = CheckResult.load(path)
    assert back.to_json() == r.to_json()
    assert back.table("per_class")["accuracy"].tolist() == [0.5]
    assert back.metric("accuracy") == 0.5
    with pytest.raises(KeyError, match="per_class"):
        back.metric("per_class")


def test_load_rejects_non_results_with_file_name(tmp_path) -> None:
    p = tmp_path / "result.json"
    p.write_text('{"check": 1}')
    with pytest.raises(DataError, match=r"result\.json"):
        CheckResult.load(p)
    with pytest.raises(DataError, match="no such result file"):
        CheckResult.load(tmp_path / "missing.json")


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch) -> None:
    target = tmp_path / "report.json"
    write_atomic(target, "old")

    def boom(*_a: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temp file left


def test_dumps_handles_nested_numpy() -> None:
    assert dumps({"b": np.arange(3), "a": (np.float64(1.5), None)}) == (
        '{\n  "a": [\n    1.5,\n    null\n  ],\n  "b": [\n    0,\n    1,\n    2\n  ]\n}\n'
    )
