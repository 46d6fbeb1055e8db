"""The audit plan: one TOML file naming the model, the data, the checks with their
parameters and the gate policy. ``raigate audit PLAN.toml`` runs it.

::

    seed = 0
    fail_on = "fail"              # or "warn": warnings stop CI too

    [model]
    spec = "demo-out/demo-model.json"   # any model spec; paths relative to this file
    # weights = "...", class_names = [...], input_size = [3, 32, 32], mean = [...], std = [...]

    [data]
    spec = "demo:test"            # any data spec
    # task = "gender", limit = 500 | sample = 500

    [checks.evaluate]
    min_accuracy = 0.9

    [card]                        # optional words for the model card
    intended_use = "..."

Each ``[checks.NAME]`` table is validated by that check's own ``Params`` class; an unknown
check or field is a ConfigError naming it, so a typo never silently drops a gate.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raigate.errors import ConfigError


class ModelSection(BaseModel):
    """``[model]``: a model spec and the options the CLI would take."""

    model_config = ConfigDict(extra="forbid")

    spec: str
    weights: str | None = None
    class_names: list[str] | None = None
    input_size: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None


class DataSection(BaseModel):
    """``[data]``: a data spec, its task and an optional bound on its size."""

    model_config = ConfigDict(extra="forbid")

    spec: str
    task: str | None = None
    limit: int | None = Field(None, gt=0)
    sample: int | None = Field(None, gt=0)


class CardSection(BaseModel):
    """``[card]``: what the model card cannot infer from results."""

    model_config = ConfigDict(extra="forbid")

    intended_use: str | None = None
    out_of_scope_use: str | None = None
    training_data: str | None = None
    owners: str | None = None
    license: str | None = None


class AuditPlan(BaseModel):
    """A validated audit plan (see the module docstring for the TOML layout)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    fail_on: Literal["warn", "fail"] = "fail"
    model: ModelSection
    data: DataSection
    checks: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"evaluate": {}})
    card: CardSection = Field(default_factory=CardSection)
    source: str | None = Field(None, description="the plan file, for messages and relative paths")

    def check_params(self) -> dict[str, Any]:
        """Each check's validated ``Params`` object, in plan order (seed defaults to the plan's)."""
        from raigate.audit import CHECKS

        where = self.source or "plan"
        out: dict[str, Any] = {}
        if not self.checks:
            raise ConfigError(f"{where}: no [checks.NAME] tables; available: {', '.join(CHECKS)}")
        for name, raw in self.checks.items():
            if name not in CHECKS:
                raise ConfigError(
                    f"{where}: unknown check [checks.{name}]; available: {', '.join(CHECKS)}"
                )
            _, params_cls = CHECKS[name]
            values = dict(raw or {})
            if "seed" in params_cls.model_fields and "seed" not in values:
                values["seed"] = self.seed
            try:
                out[name] = params_cls(**values)
            except ValidationError as exc:
                err = exc.errors()[0]
                field = ".".join(str(p) for p in err["loc"])
                raise ConfigError(f"{where}: checks.{name}.{field}: {err['msg']}") from None
        return out


def _relative(base: Path, path: str) -> str:
    return path if os.path.isabs(path) else (base / path).as_posix()


def _resolve_model(base: Path, spec: str) -> str:
    """Model paths in a plan are relative to the plan file; factories stay as they are."""
    if spec.startswith("hf:"):
        return "hf:" + _relative(base, spec[3:])
    if ":" in spec and "/" not in spec and "\\" not in spec:
        return spec  # pkg.module:factory
    return _relative(base, spec)


def _resolve_data(base: Path, spec: str) -> str:
    """Data paths in a plan are relative to the plan file; ``demo`` has no path."""
    scheme, sep, rest = spec.partition(":")
    if sep and scheme in {"fairface", "cifar100", "folder", "csv"} and rest:
        return f"{scheme}:{_relative(base, rest)}"
    return spec


def load_plan(path: str | os.PathLike[str]) -> AuditPlan:
    """Read and validate a TOML plan; errors name the file and the field."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: audit plan not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a folder; pass the plan's .toml file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    try:
        plan = AuditPlan(**raw, source=str(p))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(part) for part in err["loc"])
        raise ConfigError(f"{p}: {field}: {err['msg']}") from None
    base = p.resolve().parent
    weights = plan.model.weights
    model = plan.model.model_copy(
        update={
            "spec": _resolve_model(base, plan.model.spec),
            "weights": _relative(base, weights) if weights else None,
        }
    )
    data = plan.data.model_copy(update={"spec": _resolve_data(base, plan.data.spec)})
    plan = plan.model_copy(update={"model": model, "data": data})
    plan.check_params()  # fail early on unknown checks or bad fields
    return plan
