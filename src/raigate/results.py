"""THE result schema every check fills: ``Finding`` and ``CheckResult`` (``result.json``).

Schema version "1"::

    {"schema_version": "1", "check": NAME, "params": {...},
     "metrics": {NAME: number or [record, ...]},
     "findings": [{"id", "severity": "pass"|"warn"|"fail", "metric", "value",
                   "threshold", "message"}],
     "artifacts": [relative paths], "seed": int, "environment": {...},
     "model": {"spec", "digest", "random_init", "warnings"},
     "data": {"spec", "manifest_digest", "synthetic", "warnings"},
     "timing_s": float, "created_at": ISO-8601,
     "verdict_scope": null or what the verdict covers (e.g. robustness not gated)}

``model.warnings`` and ``data.warnings`` are ``warn`` findings about the inputs (a 0-255
normalization, a ``--limit`` that misses classes; see :mod:`raigate.sanity`); every one of
them is also among ``findings``.

Serialization is deterministic (sorted keys, NaN/inf as null, numpy scalars as Python
numbers) so the same run gives the same bytes except ``created_at`` and ``timing_s``.
Tables are lists of flat records; ``CheckResult.table(name)`` hands one back as a DataFrame.
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from raigate._io import write_atomic
from raigate.errors import DataError

SCHEMA_VERSION = "1"
Severity = Literal["pass", "warn", "fail"]
_SEVERITY_RANK = {"pass": 0, "warn": 1, "fail": 2}

Record = dict[str, Any]
MetricValue = float | int | None | list[Record]


def to_jsonable(value: Any) -> Any:
    """Turn numpy/torch scalars, arrays, tuples and non-finite floats into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return to_jsonable(value.tolist())
    if hasattr(value, "item"):
        return to_jsonable(value.item())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def dumps(obj: Any) -> str:
    """Deterministic JSON text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(to_jsonable(obj), sort_keys=True, indent=2, allow_nan=False) + "\n"


class Finding(BaseModel):
    """One gate: a measured value against a threshold, in words a compliance reader follows."""

    model_config = ConfigDict(extra="forbid")

    id: str
    severity: Severity
    metric: str
    value: float | None
    threshold: float | None
    message: str


RANDOM_INIT_MARK = " (RANDOM INIT)"
"""Appended wherever a randomly initialised model's spec is shown to a person."""


class ModelRef(BaseModel):
    """Which model was audited: the spec the user gave and the sha256 of its weights;
    ``random_init``: built without trained weights (``--random-init``), an untrained network."""

    model_config = ConfigDict(extra="allow")

    spec: str
    digest: str
    random_init: bool = False
    warnings: list[Finding] = Field(
        default_factory=list, description="likely input mistakes (raigate.sanity), e.g. 0-255 stats"
    )

    @classmethod
    def of(cls, model: Any) -> ModelRef:
        """The reference every check records for a ``raigate.Model``."""
        return cls(
            spec=model.spec,
            digest=model.digest,
            random_init=bool(getattr(model, "random_init", False)),
            mode=getattr(model, "mode", "white-box"),
            class_names=list(model.class_names),
            input_shape=list(model.input_shape),
            warnings=list(getattr(model, "warnings", [])),
        )


class DataRef(BaseModel):
    """Which data was audited: its spec, manifest digest and whether it is synthetic."""

    model_config = ConfigDict(extra="allow")

    spec: str
    manifest_digest: str
    synthetic: bool = False
    warnings: list[Finding] = Field(
        default_factory=list, description="likely input mistakes, e.g. --limit missing classes"
    )

    @classmethod
    def of(cls, data: Any, n: int | None = None) -> DataRef:
        """The reference every check records for a ``raigate.Dataset`` (``n``: samples used)."""
        return cls(
            spec=data.spec,
            manifest_digest=data.manifest.digest,
            synthetic=data.synthetic,
            n=len(data) if n is None else n,
            task=data.task,
            warnings=list(getattr(data, "warnings", [])),
        )


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class _JsonDocument(BaseModel):
    """Deterministic JSON out, atomic write, schema-checked read: shared by ``CheckResult``
    (``result.json``) and ``AuditReport`` (``report.json``)."""

    _FILE_NAME: ClassVar[str] = "result.json"
    _KIND: ClassVar[str] = "raigate result"

    def to_json(self) -> str:
        """Deterministic JSON text of the whole document."""
        return dumps(self.model_dump(mode="python"))

    def write(self, out_dir: str | os.PathLike[str], name: str | None = None) -> Path:
        """Write ``out_dir/name`` (default: the document's usual file name) atomically."""
        return write_atomic(Path(out_dir) / (name or self._FILE_NAME), self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Read the document back; a file that does not fit the schema is a DataError."""
        p = Path(path)
        try:
            return cls.model_validate_json(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{p}: no such {cls._KIND.split()[-1]} file") from None
        except ValueError as exc:
            first = str(exc).splitlines()[0]
            raise DataError(f"{p}: not a {cls._KIND} (schema {SCHEMA_VERSION}): {first}") from None


class CheckResult(_JsonDocument):
    """The outcome of one check (evaluate, fairness, robustness, ...), JSON-safe and versioned."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal["1"] = SCHEMA_VERSION
    check: str
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, MetricValue] = Field(default_factory=dict)
    findings: list[Finding] = Field(default_factory=list)
    artifacts: list[str] = Field(default_factory=list)
    seed: int | None = None
    environment: dict[str, Any] = Field(default_factory=dict)
    model: ModelRef
    data: DataRef
    timing_s: float = 0.0
    created_at: str = Field(default_factory=_now)
    verdict_scope: str | None = Field(
        None,
        description="what the verdict covers when less than the check's name promises (e.g. "
        "robustness without a robustness gate: 'attack soundness checked; robustness not "
        "gated'); reports print it next to the verdict",
    )

    mode: Literal["white-box", "black-box"] | None = Field(
        None,
        description="how the check could reach the model: white-box (gradients) or black-box "
        "(queries only: attacks are score- or decision-based, explanations perturbation-based); "
        "taken from the model when not given",
    )

    @field_validator("params", "metrics", "environment", mode="before")
    @classmethod
    def _plain(cls, value: Any) -> Any:
        # numpy scalars would otherwise be coerced by the union's first member (4 -> 4.0)
        return to_jsonable(value)

    @model_validator(mode="after")
    def _mode_of_model(self) -> Self:
        if self.mode is None:
            mode = getattr(self.model, "mode", None)
            if mode in ("white-box", "black-box"):
                self.mode = mode
        return self

    @model_validator(mode="after")
    def _input_warnings(self) -> Self:
        # What the model and data carry (0-255 normalization, --limit missing classes) is a
        # finding of every check that used them: result.json, report.json and the report show
        # it beside the gates, and fail_on = "warn" stops CI on it.
        have = {f.id for f in self.findings}
        for w in (*self.model.warnings, *self.data.warnings):
            if w.id not in have:
                self.findings.append(w)
                have.add(w.id)
        return self

    @property
    def verdict(self) -> Severity:
        """The worst severity among the findings; ``pass`` when there are none."""
        worst = max((_SEVERITY_RANK[f.severity] for f in self.findings), default=0)
        return next(k for k, v in _SEVERITY_RANK.items() if v == worst)

    @property
    def verdict_label(self) -> str:
        """``PASS``, or with a scope ``PASS (attack soundness checked; robustness not gated)``:
        never a bare verdict for more than was checked."""
        v = self.verdict.upper()
        return f"{v} ({self.verdict_scope})" if self.verdict_scope else v

    def metric(self, name: str) -> float:
        """A scalar metric by name (KeyError names the ones that exist)."""
        value = self.metrics.get(name)
        if value is None or isinstance(value, list):
            raise KeyError(f"no scalar metric {name!r}; have {sorted(self.metrics)}")
        return float(value)

    def table(self, name: str) -> Any:
        """A table metric as a pandas DataFrame."""
        import pandas as pd

        value = self.metrics.get(name)
        if not isinstance(value, list):
            raise KeyError(f"no table {name!r}; have {sorted(self.metrics)}")
        return pd.DataFrame.from_records(value)


class AuditReport(_JsonDocument):
    """Everything one ``raigate audit`` run establishes, in one versioned document
    (``report.json``): the plan, the environment, the model digest (and those of the
    variants the plan names), the data manifest, every check's result (keyed by the plan's
    check table name; ``CheckResult.check`` says which check), the gates, the compliance
    mapping and the verdict.

    ``verdict`` is the worst severity over all gates; ``passed`` applies ``fail_on``
    (``fail``: only failures stop CI; ``warn``: warnings do too).
    """

    model_config = ConfigDict(extra="forbid")
    _FILE_NAME: ClassVar[str] = "report.json"
    _KIND: ClassVar[str] = "raigate audit report"

    schema_version: Literal["1"] = SCHEMA_VERSION
    report_type: Literal["raigate.audit"] = "raigate.audit"
    plan: dict[str, Any]
    environment: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    model: dict[str, Any]
    models: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="variants named in the plan's [models.NAME] tables"
    )
    data: dict[str, Any]
    checks: dict[str, CheckResult] = Field(default_factory=dict)
    gates: list[Record] = Field(default_factory=list)
    compliance: list[Record] = Field(default_factory=list)
    verdict: Severity = "pass"
    fail_on: Literal["warn", "fail"] = "fail"
    created_at: str = Field(default_factory=_now)

    @field_validator("plan", "environment", "model", "models", "data", mode="before")
    @classmethod
    def _plain(cls, value: Any) -> Any:
        return to_jsonable(value)

    @property
    def passed(self) -> bool:
        """True when no gate reaches the ``fail_on`` severity."""
        limit = _SEVERITY_RANK[self.fail_on]
        return all(_SEVERITY_RANK[g["severity"]] < limit for g in self.gates)
