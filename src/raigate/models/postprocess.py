"""Post-processed models: a base model plus a rule that turns its logits into labels using
the samples' sensitive attributes (``raigate harden fairness --method threshold``).

Such a model is a :class:`~raigate.models.base.Model` whose ``postprocess`` is set: an object
with ``needs_attributes`` (attribute columns) and ``predict(logits, attributes) -> class
indices``, where ``attributes`` holds the batch's rows indexed by their positions in the
data. The accuracy and fairness checks predict through it (given each sample's attributes);
checks that need a function of the image alone (attacks, explanations, membership
inference) refuse it and ask for the base model (:func:`~raigate.models.base.require_plain`).

On disk it is a JSON spec (``load_model("fair/model.json")``)::

    {"version": 1,
     "base": {"spec": "../demo-model.json", "digest": "sha256:...", ...},
     "postprocess": {"kind": "group-thresholds", "file": "thresholds.json",
                     "sha256": "sha256:..."}}

Paths are relative to the spec's folder. Loading rebuilds the base with the stored options,
checks its digest (the rule was fit for that exact function) and the rule file's sha256, and
reads the rule as plain JSON numbers through a small explicit registry (``POSTPROCESSORS``);
nothing is unpickled. The variant's digest covers the base's digest and the rule.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor

from raigate._io import sha256_file, write_atomic
from raigate.errors import ConfigError, ModelLoadError
from raigate.models._common import file_record, same_or_conflict
from raigate.models.base import Model
from raigate.results import dumps

__all__ = [
    "POSTPROCESSORS",
    "Postprocess",
    "PostprocessedSpecFile",
    "base_reference",
    "load_postprocessed",
    "postprocessed_digest",
    "require_attributes",
    "write_postprocessed_spec",
]


class Postprocess(Protocol):
    """A rule from logits and the samples' attributes to model class indices."""

    kind: str

    @property
    def needs_attributes(self) -> tuple[str, ...]: ...

    def predict(self, logits: Tensor, attributes: pd.DataFrame) -> np.ndarray: ...

    def to_dict(self) -> dict[str, Any]: ...

    def describe(self) -> dict[str, Any]: ...


def _group_thresholds(path: Path) -> Postprocess:
    from raigate.defenses.thresholds import GroupThresholds

    return GroupThresholds.read(path)


POSTPROCESSORS: dict[str, Callable[[Path], Postprocess]] = {
    "group-thresholds": _group_thresholds,
}
"""Readers of the rule file by ``postprocess.kind``."""


class BaseRef(BaseModel):
    """The base model's ``load_model`` arguments, paths relative to the spec's folder."""

    model_config = ConfigDict(extra="forbid")

    spec: str
    digest: str
    weights: str | None = None
    class_names: list[str] | None = None
    input_size: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    preprocess: dict[str, Any] | None = None
    outputs: str | None = None
    mode: str | None = None


class RuleRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    file: str
    sha256: str


class PostprocessedSpecFile(BaseModel):
    """A post-processed model spec (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    base: BaseRef
    postprocess: RuleRef


# -- writing -------------------------------------------------------------------------------
_FILE_KINDS = {"json": "", "torchscript": "", "export": "", "onnx": "onnx:", "hf": "hf:"}


def _relative(path: str | os.PathLike[str], folder: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), folder.resolve())).as_posix()


def base_reference(model: Model, folder: Path) -> BaseRef:
    """How to load ``model`` again from ``folder``: its spec (a file named relative to the
    folder), weights, classes, input size, normalization and deployed preprocessing."""
    from raigate.errors import SpecError
    from raigate.models.specs import parse_model_spec

    why = (
        "it was built in Python (wrap), not loaded from a spec" if model.source == "module" else ""
    )
    if model.random_init:
        why = "a randomly initialised network cannot be rebuilt identically"
    try:
        kind, target = parse_model_spec(model.spec)
    except SpecError:
        why = why or f"its spec {model.spec!r} cannot be loaded again"
    if why:
        raise ConfigError(
            f"the post-processed variant names its base model, to be loaded again: {why}; save "
            "the model (weights + raigate model spec, or ONNX) and give that"
        )
    spec = _FILE_KINDS[kind] + _relative(target, folder) if kind in _FILE_KINDS else model.spec
    weights = None
    if model.source == "factory" and model.files:
        weights = _relative(model.files[0]["path"], folder)
    identity = model.normalize.is_identity
    output = model.details.get("output")
    return BaseRef(
        spec=spec,
        digest=model.digest,
        weights=weights,
        class_names=list(model.class_names),
        input_size=list(model.input_shape),
        mean=None if identity else model.normalize.mean.flatten().tolist(),
        std=None if identity else model.normalize.std.flatten().tolist(),
        preprocess=None if model.preprocess.is_default else model.preprocess.as_dict(),
        outputs=output.get("kind") if isinstance(output, dict) else None,
        mode=model.mode if kind == "onnx" else None,
    )


def write_postprocessed_spec(path: str | os.PathLike[str], base: Model, rule: Postprocess) -> Path:
    """Write ``rule`` as ``<spec stem>-<kind>.json`` beside ``path`` and the spec at ``path``
    naming ``base``; ``load_model(path)`` returns the post-processed model."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    rule_file = write_atomic(
        target.with_name(f"{target.stem}-{rule.kind}.json"), dumps(rule.to_dict())
    )
    doc = PostprocessedSpecFile(
        base=base_reference(base, target.parent),
        postprocess=RuleRef(
            kind=rule.kind, file=rule_file.name, sha256="sha256:" + sha256_file(rule_file)
        ),
    )
    return write_atomic(target, dumps(doc.model_dump(exclude_none=True)))


def postprocessed_digest(base_digest: str, rule: Postprocess) -> str:
    """The variant's digest: sha256 over the base's digest and the rule's canonical JSON."""
    body = dumps({"base": base_digest, "postprocess": rule.to_dict()})
    return "sha256:" + hashlib.sha256(body.encode("utf-8")).hexdigest()


# -- loading -------------------------------------------------------------------------------
def load_postprocessed(spec: str, path: Path, raw: dict[str, Any], options: Any) -> Model:
    """The model a post-processed spec file describes (called by the JSON loader)."""
    from raigate.models.specs import load_model, parse_model_spec

    try:
        doc = PostprocessedSpecFile.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise ModelLoadError(f"model spec {path}: field {field!r}: {err['msg']}") from None
    if options.weights is not None:
        raise ConfigError(f"{path} names its base model and weights; drop --weights")
    ref = doc.base
    for what, ours, given in (
        ("class names", ref.class_names, options.class_names),
        ("input size", ref.input_size, options.input_size),
        ("mean", ref.mean, options.mean),
        ("std", ref.std, options.std),
    ):
        same_or_conflict(what, ours, given, str(path))
    reader = POSTPROCESSORS.get(doc.postprocess.kind)
    if reader is None:
        raise ModelLoadError(
            f"model spec {path}: unknown postprocess kind {doc.postprocess.kind!r}; known: "
            f"{sorted(POSTPROCESSORS)}"
        )
    folder = path.parent
    kind, target = parse_model_spec(ref.spec)
    base_spec = _FILE_KINDS[kind] + str(folder / target) if kind in _FILE_KINDS else ref.spec
    base = load_model(
        base_spec,
        weights=folder / ref.weights if ref.weights else None,
        class_names=ref.class_names,
        input_size=ref.input_size,
        mean=ref.mean,
        std=ref.std,
        preprocess=ref.preprocess,
        outputs=ref.outputs,
        mode=ref.mode,
        trust_code=options.trust_code,
        spec_origin=str(path),
    )
    if base.digest != ref.digest:
        raise ModelLoadError(
            f"{path}: base model {base_spec} has digest {base.digest[:19]}… but the rule was fit "
            f"for {ref.digest[:19]}…; the base model changed since, refit it"
        )
    rule_path = folder / doc.postprocess.file
    if not rule_path.is_file():
        raise ModelLoadError(f"{path}: rule file {rule_path} not found")
    actual = "sha256:" + sha256_file(rule_path)
    if actual != doc.postprocess.sha256:
        raise ModelLoadError(
            f"{rule_path} does not match the sha256 in {path}; the rule changed since the spec "
            "was written"
        )
    rule = reader(rule_path)
    base.spec = spec
    base._digest = postprocessed_digest(base.digest, rule)
    base.files = [file_record(path), file_record(rule_path), *base.files]
    base.source = "postprocessed"
    base.postprocess = rule
    base.details = {
        **base.details,
        "base_model": {"spec": base_spec, "digest": ref.digest},
        "postprocess": rule.describe(),
    }
    return base


def require_attributes(model: Model, data: Any) -> None:
    """ConfigError when a post-processed model needs attribute columns ``data`` lacks."""
    post = getattr(model, "postprocess", None)
    if post is None:
        return
    have = [str(c) for c in data.attributes.columns]
    missing = [c for c in post.needs_attributes if c not in have]
    if missing:
        raise ConfigError(
            f"{model.display_name} predicts with the sensitive attribute(s) {missing}, which "
            f"{data.spec} lacks (it has {have}); audit it on data with those columns, or audit "
            "the base model"
        )
