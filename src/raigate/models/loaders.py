"""The built-in model loaders, one per spec kind: ``LOADERS[kind](spec, target, options)``.

==============  ====================================================================
kind            what it reads
==============  ====================================================================
``factory``     ``pkg.module:factory`` imported like user code (cwd, PYTHONPATH),
                plus ``--weights`` (safetensors or a weights-only ``.pt``)
``torchscript`` ``FILE.pt`` / ``.pth`` / ``.ts`` saved by ``torch.jit.save``
``export``      ``FILE.pt2`` saved by ``torch.export.save``
``hf``          ``hf:DIR``, a local Hugging Face image classifier (see ``raigate.models.hf``)
``json``        ``FILE.json``, a raigate model spec written by :func:`write_model_spec`, or a
                post-processed model (a base model + a rule reading the samples'
                attributes, :mod:`raigate.models.postprocess`)
``onnx``        ``onnx:FILE`` / ``FILE.onnx``, run by onnxruntime, white-box through a
                checked torch conversion when possible (``raigate.models.onnx``)
``pyfn``        ``pyfn:pkg.module:predict``, a served model's client, black-box, only
                with ``--trust-code``
==============  ====================================================================

Nothing here unpickles arbitrary objects: weights go through ``torch.load(weights_only=True)``
or safetensors, TorchScript through its own restricted loader, and ``.pt2`` archives are
loaded with ``torch.load`` forced to weights-only (see :func:`load_export`). A factory that a
JSON spec (or a plan) names runs only if it is raigate's own or trusted
(:mod:`raigate.models.factories`); a factory without weights only with ``random_init``.

>>> import tempfile, pathlib
>>> from raigate.models import load_model
>>> spec = pathlib.Path(tempfile.mkdtemp()) / "demo.json"
>>> _ = write_model_spec(spec, factory="raigate.zoo:small_cnn", class_names=["a", "b"],
...                      input_shape=(3, 32, 32))
>>> model = load_model(str(spec), random_init=True)  # no weights: an untrained network
>>> model.class_names, model.display_name  # doctest: +ELLIPSIS
(('a', 'b'), '... (RANDOM INIT)')
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import Tensor, nn

from raigate._io import sha256_file, write_atomic
from raigate.errors import ConfigError, ModelLoadError
from raigate.models._common import (
    existing_file,
    file_record,
    is_pt2,
    is_torchscript,
    names_from_data,
    one_line,
    require_class_names,
    require_input_size,
    same_or_conflict,
    zip_names,
)
from raigate.models.base import Capabilities, Model, module_tensors, state_digest
from raigate.models.factories import build_network, check_trust
from raigate.models.preprocess import Preprocess
from raigate.models.specs import _FACTORY_RE, ModelLoader, ModelOptions
from raigate.models.weights import apply_state_dict, load_state_dict_file

__all__ = [
    "LOADERS",
    "ModelSpecFile",
    "file_record",
    "load_export",
    "load_factory",
    "load_json",
    "load_torchscript",
    "write_model_spec",
]


# -- shared helpers ------------------------------------------------------------------------
def _check_output_width(
    net: nn.Module,
    input_size: Sequence[int],
    classes: int,
    spec: str,
    *,
    names_from_data: bool = False,
    preprocess: Preprocess | None = None,
    fix: str = "pass matching --class-names (or a factory num_classes that fits)",
) -> None:
    """One forward pass on zeros: a wrong head or input size fails here, not mid-audit.
    The zeros come in the layout the network takes (``preprocess.layout``); ``fix`` is the
    advice for too few or too many class names."""
    c, h, w = input_size
    nhwc = preprocess is not None and preprocess.layout == "nhwc"
    shape = [2, h, w, c] if nhwc else [2, c, h, w]
    try:
        with torch.no_grad():
            out = net(torch.zeros(shape))
    except Exception as e:
        raise ModelLoadError(
            f"model {spec!r} fails on an input of shape {shape}: {one_line(e)}; check --input-size"
        ) from e
    if not isinstance(out, Tensor):
        raise ModelLoadError(
            f"model {spec!r} returns a {type(out).__name__}, not a logits tensor; wrap it so "
            "forward() returns logits of shape [batch, classes]"
        )
    if out.ndim != 2 or out.shape[0] != 2:
        raise ModelLoadError(
            f"model {spec!r} returns shape {list(out.shape)} for a batch of 2; "
            "expected logits of shape [batch, classes]"
        )
    if out.shape[1] != classes and names_from_data:
        raise ModelLoadError(
            f"model {spec!r} outputs {out.shape[1]} logits but the data has {classes} labels "
            "(class names taken from the data): pass --class-names in the model's output order "
            "(and --label-map if the names differ from the data's)"
        )
    if out.shape[1] != classes:
        raise ModelLoadError(
            f"model {spec!r} outputs {out.shape[1]} logits but {classes} class names were given; "
            + fix
        )


def _require_weights(spec: str, weights: Path | None, options: ModelOptions) -> None:
    """A factory without weights is a randomly initialised network: auditing it by accident
    gives numbers (and a signature) about nothing, so it must be asked for by name."""
    if weights is None and not options.random_init:
        raise ModelLoadError(
            f"model spec {spec!r} builds a network but names no weights, so it would be "
            "randomly initialised: pass --weights FILE, or --random-init (plan: random_init = "
            "true; Python: random_init=True) to audit an untrained network on purpose"
        )


# -- factory -------------------------------------------------------------------------------
def _with_weights(net: nn.Module, weights: Path | None) -> list[dict[str, Any]]:
    if weights is None:
        return []
    apply_state_dict(net, load_state_dict_file(weights), source=weights)
    return [file_record(weights)]


def load_factory(spec: str, target: str, options: ModelOptions) -> Model:
    """``pkg.module:factory`` plus ``--weights``; ``num_classes`` goes to the factory when it
    takes one, so ``raigate.zoo:resnet20`` fits any number of class names. Named by the
    caller it is the caller's code; read from a plan (``spec_origin``) it follows the trust
    rules of :mod:`raigate.models.factories`."""
    check_trust(target, origin=options.spec_origin, trust_code=options.trust_code)
    names = require_class_names(spec, options)
    shape = require_input_size(spec, options)
    _require_weights(spec, options.weights, options)
    net = build_network(
        target, num_classes=len(names), origin=options.spec_origin, trust_code=options.trust_code
    )
    files = _with_weights(net, options.weights)
    net.eval()
    _check_output_width(
        net, shape, len(names), spec, names_from_data=names_from_data(options),
        preprocess=options.preprocess,
    )  # fmt: skip
    return Model(
        net, class_names=names, input_shape=shape, mean=options.mean, std=options.std,
        spec=spec, digest=state_digest(module_tensors(net)), files=files, source="factory",
        random_init=options.weights is None, preprocess=options.preprocess,
    )  # fmt: skip


# -- TorchScript ---------------------------------------------------------------------------
def load_torchscript(spec: str, target: str, options: ModelOptions) -> Model:
    """A ``torch.jit.save`` archive. TorchScript's loader only builds TorchScript types, so
    unlike ``torch.load`` without ``weights_only`` it cannot run arbitrary Python."""
    p = existing_file(target, "TorchScript file")
    names = require_class_names(spec, options)
    shape = require_input_size(spec, options)
    entries = zip_names(p)
    not_ts = (
        f"{p} is not a TorchScript archive; if it is a state dict, give the architecture as "
        f"pkg.module:factory --weights {p}"
    )
    if is_pt2(entries):
        raise ModelLoadError(f"{p} is a torch.export archive, not TorchScript; name it *.pt2")
    if not is_torchscript(entries):
        raise ModelLoadError(not_ts)
    try:
        net = torch.jit.load(str(p), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        raise ModelLoadError(f"{not_ts} ({one_line(e)})") from e
    net.eval()
    _check_output_width(
        net, shape, len(names), spec, names_from_data=names_from_data(options),
        preprocess=options.preprocess,
    )  # fmt: skip
    return Model(
        net, class_names=names, input_shape=shape, mean=options.mean, std=options.std,
        spec=spec, files=[file_record(p)], source="torchscript", preprocess=options.preprocess,
    )  # fmt: skip


# -- torch.export --------------------------------------------------------------------------
_FORCE_SAFE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_UNSAFE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def _weights_only_torch_load() -> Iterator[None]:
    """Force every ``torch.load`` inside to ``weights_only=True``.

    ``torch.export.load`` unpickles stored weights and constants with ``weights_only=False``;
    torch honours ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` even over an explicit False, so a
    malicious archive fails with an UnpicklingError instead of running its payload.
    """
    saved = {k: os.environ.get(k) for k in (_FORCE_SAFE, _FORCE_UNSAFE)}
    os.environ.pop(_FORCE_UNSAFE, None)  # torch refuses both being set
    os.environ[_FORCE_SAFE] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class ExportedNet(nn.Module):
    """An exported program as an ``nn.Module`` that tolerates ``train()``/``eval()`` and any
    batch size.

    Exported graphs are frozen in the mode they were traced in (``.eval()`` on them raises),
    so ``train()`` here only flips this wrapper's flag. A program exported with a fixed batch
    size is run in chunks of that size, the last one zero-padded, so attacks and smoothing
    can use their own batch sizes.
    """

    def __init__(self, program_module: nn.Module, static_batch: int | None) -> None:
        super().__init__()
        self.program = program_module
        self.static_batch = static_batch

    def train(self, mode: bool = True) -> ExportedNet:
        self.training = mode
        return self

    def forward(self, x: Tensor) -> Tensor:
        b = self.static_batch
        if b is None or x.shape[0] == b:
            return self.program(x)  # type: ignore[no-any-return]
        outs = []
        for chunk in x.split(b):
            n = chunk.shape[0]
            if n < b:
                pad = chunk.new_zeros((b - n, *chunk.shape[1:]))
                chunk = torch.cat([chunk, pad])
            outs.append(self.program(chunk)[:n])
        return torch.cat(outs)


def _export_input_shape(ep: Any) -> tuple[int | None, tuple[int, ...] | None]:
    """(static batch size or None, static C,H,W or None) of the program's one user input."""
    user_inputs = list(ep.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise ModelLoadError(
            f"the exported program takes {len(user_inputs)} inputs; raigate needs exactly one "
            "image batch"
        )
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0])
    val = node.meta.get("val")
    if val is None or val.ndim != 4:
        return None, None
    dims = [d if isinstance(d, int) else None for d in val.shape]
    chw = tuple(dims[1:]) if all(d is not None for d in dims[1:]) else None
    return dims[0], chw  # type: ignore[return-value]


def _export_capabilities(ep: Any) -> Capabilities:
    # The unlifted module keeps no layer types, so read the ops from the graph instead.
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    return Capabilities(
        batchnorm=any("batch_norm" in op for op in ops),
        conv=any("conv" in op for op in ops),
    )


def load_export(spec: str, target: str, options: ModelOptions) -> Model:
    """A ``torch.export.save`` archive (``.pt2``); the program is used as traced.

    Export in eval mode (``torch.export.export(net.eval(), (x,))``): the graph keeps the
    mode it was traced in and cannot be switched afterwards. Export with a dynamic batch
    dimension (``dynamic_shapes={"x": {0: torch.export.Dim("batch")}}``) for speed; a fixed
    batch also works, in chunks. The input size comes from the program when it is static.
    """
    p = existing_file(target, "torch.export file")
    names = require_class_names(spec, options)
    entries = zip_names(p)
    if is_torchscript(entries):
        raise ModelLoadError(f"{p} is a TorchScript archive, not torch.export; name it *.pt")
    if not is_pt2(entries):
        raise ModelLoadError(
            f"{p} is not a torch.export archive (torch.export.save); if it is a state dict, "
            f"give the architecture as pkg.module:factory --weights {p}"
        )
    if any("/constants/opaque_obj" in n for n in entries):
        # Opaque objects are restored with plain pickle.loads: arbitrary code, refuse.
        raise ModelLoadError(
            f"{p} contains pickled Python objects (opaque constants) and was not loaded; "
            "export a model whose constants are tensors only"
        )
    try:
        with _weights_only_torch_load():
            ep = torch.export.load(str(p))
    except pickle.UnpicklingError as e:
        raise ModelLoadError(
            f"{p} contains pickled code or objects and was not loaded; re-export a plain "
            "tensor-only program with torch.export.save"
        ) from e
    except Exception as e:
        raise ModelLoadError(f"cannot read torch.export archive {p}: {one_line(e)}") from e
    batch, chw = _export_input_shape(ep)
    if chw is not None:
        same_or_conflict("input size", chw, options.input_size, str(p))
        shape = chw
    else:
        shape = require_input_size(spec, options)
    net = ExportedNet(ep.module(), batch)
    _check_output_width(
        net, shape, len(names), spec, names_from_data=names_from_data(options),
        preprocess=options.preprocess,
    )  # fmt: skip
    return Model(
        net, class_names=names, input_shape=shape, mean=options.mean, std=options.std,
        spec=spec, files=[file_record(p)], capabilities=_export_capabilities(ep),
        source="export", preprocess=options.preprocess,
    )  # fmt: skip


# -- raigate model spec files (JSON) -------------------------------------------------------
class ModelSpecFile(BaseModel):
    """A reusable description of a trained model: architecture, weights and metadata.

    Trainers (the demo, DP-SGD) write one beside their weights so the model can be audited
    later with just ``FILE.json``; ``weights`` is relative to the JSON file's folder.
    """

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    factory: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None
    weights_sha256: str | None = None
    class_names: list[str] | None = None
    input_shape: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    preprocess: Preprocess | None = None

    @field_validator("input_shape")
    @classmethod
    def _chw(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) != 3 or min(v) <= 0):
            raise ValueError("must be three positive numbers C,H,W, e.g. [3, 32, 32]")
        return v

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, v: str) -> str:
        if not _FACTORY_RE.match(v):
            raise ValueError("must be of the form pkg.module:factory")
        return v


def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"model spec {p} is not valid JSON: {e}") from e


def _read_spec_file(p: Path, raw: Any) -> ModelSpecFile:
    try:
        return ModelSpecFile.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"])
        field = field.lstrip(".") or "(top level)"
        more = f" (+{e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
        raise ModelLoadError(f"model spec {p}: field {field!r}: {err['msg']}{more}") from e


def load_json(spec: str, target: str, options: ModelOptions) -> Model:
    """A raigate model spec file; options may repeat its values but never override them."""
    p = existing_file(target, "model spec file")
    raw = _read_json(p)
    if isinstance(raw, dict) and "postprocess" in raw:
        # a base model plus an attribute-dependent rule (raigate harden fairness --method
        # threshold): raigate.models.postprocess
        from raigate.models.postprocess import load_postprocessed

        return load_postprocessed(spec, p, raw, options)
    doc = _read_spec_file(p, raw)
    src = str(p)
    # The spec file is data: its factory runs only if built in or trusted, never imported first.
    check_trust(doc.factory, origin=src, trust_code=options.trust_code)
    same_or_conflict("class names", doc.class_names, options.class_names, src)
    same_or_conflict("input size", doc.input_shape, options.input_size, src)
    same_or_conflict("mean", doc.mean, options.mean, src)
    same_or_conflict("std", doc.std, options.std, src)
    preprocess = doc.preprocess
    given = options.preprocess
    if preprocess is not None and given is not None and given.as_dict() != preprocess.as_dict():
        raise ConfigError(
            f"--preprocess {given.as_dict()} differs from preprocess {preprocess.as_dict()} in "
            f"{src}; drop the option, or fix {src}"
        )
    preprocess = preprocess or given
    weights = (p.parent / doc.weights) if doc.weights else None
    if (
        weights is not None
        and options.weights is not None
        and weights.resolve() != Path(options.weights).resolve()
    ):
        raise ConfigError(
            f"--weights {options.weights} differs from the weights {weights} named in {src}"
        )
    weights = weights or options.weights
    names = tuple(doc.class_names) if doc.class_names else require_class_names(spec, options)
    shape = tuple(doc.input_shape) if doc.input_shape else require_input_size(spec, options)
    _require_weights(spec, weights, options)
    net = build_network(
        doc.factory, kwargs=doc.kwargs, num_classes=len(names), origin=src,
        trust_code=options.trust_code,
    )  # fmt: skip
    if weights is not None and doc.weights_sha256 is not None and weights.is_file():
        actual = sha256_file(weights)
        if actual != doc.weights_sha256.removeprefix("sha256:"):
            raise ModelLoadError(
                f"weights {weights} do not match weights_sha256 in {src} (file has {actual}); "
                "the weights changed since the spec was written"
            )
    files = [file_record(p), *_with_weights(net, weights)]
    net.eval()
    from_data = not doc.class_names and names_from_data(options)
    _check_output_width(
        net, shape, len(names), spec, names_from_data=from_data, preprocess=preprocess
    )
    return Model(
        net, class_names=names, input_shape=shape,
        mean=doc.mean if doc.mean is not None else options.mean,
        std=doc.std if doc.std is not None else options.std,
        spec=spec, digest=state_digest(module_tensors(net)), files=files, source="json",
        random_init=weights is None, preprocess=preprocess,
    )  # fmt: skip


def write_model_spec(
    path: str | os.PathLike[str],
    *,
    factory: str,
    kwargs: dict[str, Any] | None = None,
    weights: str | os.PathLike[str] | None = None,
    class_names: Sequence[str],
    input_shape: Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    preprocess: Preprocess | None = None,
) -> Path:
    """Write a model spec JSON (atomically) that ``load_model(path)`` turns back into the model
    (``preprocess``: the deployed pipeline, stored when it differs from the default).

    ``weights`` is stored relative to the spec's folder when it lies inside it (the pair can
    be moved together) and pinned by its sha256, so a swapped weights file is detected.
    """
    target = Path(path)
    rel: str | None = None
    digest: str | None = None
    if weights is not None:
        w = Path(weights)
        if not w.is_file():
            raise ModelLoadError(f"weights file {w} not found; save the weights before the spec")
        try:
            rel = w.resolve().relative_to(target.parent.resolve()).as_posix()
        except ValueError:
            rel = str(w.resolve())
        digest = "sha256:" + sha256_file(w)
    doc = ModelSpecFile(
        factory=factory,
        kwargs=dict(kwargs or {}),
        weights=rel,
        weights_sha256=digest,
        class_names=[str(c) for c in class_names],
        input_shape=[int(v) for v in input_shape],
        mean=[float(v) for v in mean] if mean is not None else None,
        std=[float(v) for v in std] if std is not None else None,
        preprocess=preprocess if preprocess is not None and not preprocess.is_default else None,
    )
    try:
        body = doc.model_dump(exclude_none=True, exclude={"preprocess"})
        if doc.preprocess is not None:
            body["preprocess"] = doc.preprocess.as_dict()
        text = json.dumps(body, indent=2, sort_keys=True) + "\n"
    except TypeError as e:
        raise ConfigError(f"model spec kwargs must be plain JSON values: {e}") from e
    return write_atomic(target, text)


def _load_onnx(spec: str, target: str, options: ModelOptions) -> Model:
    from raigate.models.onnx import load_onnx

    return load_onnx(spec, target, options)


def _load_pyfn(spec: str, target: str, options: ModelOptions) -> Model:
    from raigate.models.onnx import load_pyfn

    return load_pyfn(spec, target, options)


def _load_hf(spec: str, target: str, options: ModelOptions) -> Model:
    # Imported on use: raigate.models.hf imports nothing heavy itself, but keeping the
    # dispatch lazy means a broken transformers install only affects hf: specs.
    from raigate.models.hf import load_hf

    return load_hf(spec, target, options)


LOADERS: dict[str, ModelLoader] = {
    "factory": load_factory,
    "torchscript": load_torchscript,
    "export": load_export,
    "hf": _load_hf,
    "json": load_json,
    "onnx": _load_onnx,
    "pyfn": _load_pyfn,
}
"""Built-in loaders by spec kind; ``specs.register_model_loader`` adds or replaces one."""
