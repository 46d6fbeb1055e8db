"""The audit plan: one TOML file naming the model, the data, the checks with their
parameters and the gate policy. ``raigate audit PLAN.toml`` runs it.

::

    seed = 0
    fail_on = "fail"              # or "warn": warnings stop CI too
    # trust_code = true           # let the plan (and the spec files it names) import a
                                  # factory outside raigate's own; only for plans you trust

    [model]
    spec = "demo-out/demo-model.json"   # any model spec; paths relative to this file
    # weights = "...", class_names = [...], input_size = [3, 32, 32], mean = [...], std = [...]
    # random_init = true          # a factory without weights, audited untrained on purpose

    [data]
    spec = "demo:test"            # any data spec
    # task = "gender", limit = 500 | sample = 500

    [checks.evaluate]
    min_accuracy = 0.9

    [card]                        # optional words for the model card
    intended_use = "..."

Each ``[checks.NAME]`` table is validated by that check's own ``Params`` class; an unknown
check or field is a ConfigError naming it, so a typo never silently drops a gate. A plan
without any check table is a ConfigError too: an audit that checks nothing must not pass.

One report can cover variants of the model too (a noise-trained copy for randomized
smoothing, a DP-SGD retrained copy), so their digests are signed with the rest::

    [models.private]              # a further model, same fields as [model]
    spec = "private/model.json"

    [checks.privacy_dp]           # a second instance of a check, on that model
    check = "privacy"             # which check (default: the table's name)
    model = "private"             # which model (default: [model])
    members = "demo:train"
    ledger = "private/ledger.json"

    [checks.robustness]
    smoothing_sigma = 0.12
    smoothing_model = "smoothed"  # smooth a [models.smoothed] variant; attacks also hit [model]

``check`` and ``model`` are the two keys a check table holds besides its check's parameters.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from raigate.errors import ConfigError
from raigate.values import Fraction, Listed, Seed


class ModelSection(BaseModel):
    """``[model]``: a model spec and the options the CLI would take."""

    model_config = ConfigDict(extra="forbid")

    spec: str = Field(description="any model spec (a spec file, hf:, onnx:, pkg.module:factory)")
    weights: str | None = Field(
        None, description="weights for a pkg.module:factory spec (.safetensors or .pt state dict)"
    )
    # lists also take the CLI's comma text: class_names = "cat,dog", mean = "0.5,0.5,0.5"
    class_names: Annotated[list[str], Listed] | None = Field(
        None, description="the model's classes in output order, where the spec lacks them"
    )
    input_size: Annotated[list[int], Listed] | None = Field(
        None, description="C,H,W the model takes, e.g. [3, 32, 32]"
    )
    mean: Annotated[list[Fraction], Listed] | None = Field(
        None, description="per-channel normalization mean on [0,1] pixels"
    )
    std: Annotated[list[Fraction], Listed] | None = Field(
        None, description="per-channel normalization std on [0,1] pixels"
    )
    random_init: bool = Field(
        False, description="a factory without weights is meant: audit an untrained network"
    )
    preprocess: str | dict[str, Any] | None = Field(
        None,
        description="the deployed preprocessing: a [model.preprocess] table with the keys of "
        "--preprocess (resize, resize_mode, interpolation, crop, channel_order, value_scale, "
        "layout), or the same key=value text",
    )
    outputs: Literal["auto", "logits", "probs"] | None = Field(
        None, description="onnx:/pyfn: models output logits or probs (default: detected)"
    )
    mode: Literal["auto", "white-box", "black-box"] | None = Field(
        None, description="onnx: models: white-box (torch conversion), black-box (queries only)"
    )

    @field_validator("preprocess")
    @classmethod
    def _preprocess(cls, v: Any) -> Any:
        if v is None:
            return None
        from raigate.models.preprocess import parse_preprocess

        try:
            return parse_preprocess(v).as_dict()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


class DataSection(BaseModel):
    """``[data]``: a data spec, its task and an optional bound on its size."""

    model_config = ConfigDict(extra="forbid")

    spec: str = Field(description="any data spec, e.g. demo:test or fairface:ROOT:val")
    task: str | None = Field(
        None, description="which label: FairFace gender|age|race, CIFAR-100 fine|coarse"
    )
    limit: int | None = Field(None, gt=0, description="use only the first N samples")
    sample: int | None = Field(
        None, gt=0, description="a seeded random N samples, stratified by label"
    )


class CardSection(BaseModel):
    """``[card]``: what the model card cannot infer from results."""

    model_config = ConfigDict(extra="forbid")

    intended_use: str | None = None
    out_of_scope_use: str | None = None
    training_data: str | None = None
    owners: str | None = None
    license: str | None = None


PRIMARY = "model"
"""The name a check table uses for the plan's ``[model]``."""

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class CheckInstance:
    """One ``[checks.NAME]`` table, resolved: which check runs, on which model, with what."""

    name: str  # the table's name: the folder under checks/ and the label in the report
    check: str  # the registered check (evaluate, fairness, ...)
    model: str  # PRIMARY or a key of [models]
    params: Any  # the check's validated Params

    def model_fields(self) -> dict[str, str]:
        """Params fields naming further plan models, by the keyword ``run`` takes them as
        (e.g. robustness ``smoothing_model`` -> ``smoothing_base``), with their values."""
        fields: dict[str, str] = getattr(type(self.params), "PLAN_MODEL_FIELDS", {})
        return {kw: getattr(self.params, f) for f, kw in fields.items() if getattr(self.params, f)}


class AuditPlan(BaseModel):
    """A validated audit plan (see the module docstring for the TOML layout)."""

    model_config = ConfigDict(extra="forbid")

    seed: Seed = 0
    fail_on: Literal["warn", "fail"] = "fail"
    trust_code: bool = Field(
        False,
        description="import factories the plan or its spec files name outside raigate's own "
        "(like transformers' trust_remote_code); plans come from others, so off by default",
    )
    model: ModelSection
    models: dict[str, ModelSection] = Field(
        default_factory=dict, description="further models (variants) checks may name"
    )
    data: DataSection
    checks: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="at least one [checks.NAME] table; none is an error"
    )
    card: CardSection = Field(default_factory=CardSection)
    source: str | None = Field(None, description="the plan file, for messages and relative paths")

    @field_validator("models")
    @classmethod
    def _model_names(cls, v: dict[str, ModelSection]) -> dict[str, ModelSection]:
        for name in v:
            if name == PRIMARY or not _NAME.match(name):
                raise ValueError(
                    f"[models.{name}]: use letters, digits, _ . - (and not {PRIMARY!r}, "
                    "which names [model])"
                )
        return v

    def model_section(self, name: str) -> ModelSection:
        """``[model]`` for ``PRIMARY``, else ``[models.NAME]``."""
        return self.model if name == PRIMARY else self.models[name]

    def check_instances(self) -> list[CheckInstance]:
        """Every check table validated, in plan order (seed defaults to the plan's); an
        unknown check, model or field is a ConfigError naming the table and the field."""
        from raigate.audit import CHECKS

        where = self.source or "plan"
        if not self.checks:
            # an audit that checks nothing would pass: refuse it rather than sign an empty verdict
            raise ConfigError(
                f"{where}: the plan has no checks; add at least one [checks.NAME] table "
                f"(available: {', '.join(CHECKS)})"
            )
        known_models = [PRIMARY, *self.models]
        out: list[CheckInstance] = []
        for name, raw in self.checks.items():
            values = dict(raw or {})
            check = values.pop("check", name)
            model = values.pop("model", PRIMARY)
            if not _NAME.match(name):
                raise ConfigError(
                    f"{where}: [checks.{name}]: a check table's name becomes a folder; use "
                    "letters, digits, _ . -"
                )
            if not isinstance(check, str) or check not in CHECKS:
                what = f"[checks.{name}]" if check == name else f"checks.{name}.check {check!r}"
                hint = "" if check != name else '; or say which with check = "NAME"'
                raise ConfigError(
                    f"{where}: unknown check {what}; available: {', '.join(CHECKS)}{hint}"
                )
            if model not in known_models:
                raise ConfigError(
                    f"{where}: checks.{name}.model: {model!r} is not a model of this plan; "
                    f"declare [models.{model}] or use one of: {', '.join(known_models)}"
                )
            _, params_cls = CHECKS[check]
            _one_spelling(where, name, params_cls, values)
            if "seed" in params_cls.model_fields and "seed" not in values:
                values["seed"] = self.seed
            try:
                params = params_cls(**values)
            except ValidationError as exc:
                raise ConfigError(f"{where}: checks.{name}.{_first_error(exc)}") from None
            for field in getattr(params_cls, "PLAN_MODEL_FIELDS", {}):
                ref = getattr(params, field)
                if ref is not None and ref not in known_models:
                    raise ConfigError(
                        f"{where}: checks.{name}.{field}: {ref!r} is not a model of this plan; "
                        f"declare [models.{ref}] (have: {', '.join(known_models)})"
                    )
            out.append(CheckInstance(name=name, check=check, model=model, params=params))
        return out


def _one_spelling(where: str, table: str, params_cls: type, values: dict[str, Any]) -> None:
    """A key a plan may spell two ways (the field's name and its CLI option's, e.g. ``norms``
    and ``norm``) given both ways is a ConfigError, not pydantic's "extra input"."""
    for field_name, field in params_cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            given = [k for k in alias.choices if isinstance(k, str) and k in values]
            if len(given) > 1:
                raise ConfigError(
                    f"{where}: checks.{table}: {' and '.join(given)} are one key "
                    f"({field_name}); give it once"
                )


def _first_error(exc: ValidationError) -> str:
    """``field.path: message (got VALUE)`` of a validation error's first problem."""
    err = exc.errors()[0]
    field = ".".join(str(part) for part in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    got = err.get("input")
    shown = f" (got {got!r})" if "input" in err and not isinstance(got, dict | list) else ""
    return f"{field}: {msg}{shown}" if field else f"{msg}{shown}"


def _relative(base: Path, path: str) -> str:
    return path if os.path.isabs(path) else (base / path).as_posix()


def _resolve_model(base: Path, spec: str) -> str:
    """Model paths in a plan are relative to the plan file; factories stay as they are."""
    for scheme in ("hf:", "onnx:"):
        if spec.startswith(scheme):
            return scheme + _relative(base, spec[len(scheme) :])
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
        raise ConfigError(f"{p}: {_first_error(exc)}") from None
    base = p.resolve().parent

    def model_paths(section: ModelSection) -> ModelSection:
        weights = section.weights
        return section.model_copy(
            update={
                "spec": _resolve_model(base, section.spec),
                "weights": _relative(base, weights) if weights else None,
            }
        )

    data = plan.data.model_copy(update={"spec": _resolve_data(base, plan.data.spec)})
    plan = plan.model_copy(
        update={
            "model": model_paths(plan.model),
            "models": {k: model_paths(v) for k, v in plan.models.items()},
            "data": data,
            "checks": {k: _check_paths(base, k, v) for k, v in plan.checks.items()},
        }
    )
    plan.check_instances()  # fail early on unknown checks, models or bad fields
    return plan


def _check_paths(base: Path, name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Resolve the fields a check's ``Params`` declares as paths (``PLAN_PATH_FIELDS``:
    ``"data"`` for data specs, ``"path"`` for files) relative to the plan file."""
    from raigate.audit import CHECKS

    raw = dict(raw or {})
    check = raw.get("check", name)
    entry = CHECKS.get(check) if isinstance(check, str) else None
    if entry is None:
        return raw
    kinds: dict[str, str] = getattr(entry[1], "PLAN_PATH_FIELDS", {})
    for field, kind in kinds.items():
        value = raw.get(field)
        if isinstance(value, str):
            raw[field] = _resolve_data(base, value) if kind == "data" else _relative(base, value)
    return raw
