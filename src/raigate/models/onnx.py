"""The artifacts teams ship: ``onnx:FILE`` models and ``pyfn:pkg.mod:predict`` predictors.

**ONNX** (``onnx:model.onnx`` or any ``*.onnx`` path). The graph's one input and first output
name the interface; its shape gives the input size, the batch (fixed or dynamic) and the
layout (NCHW or NHWC; ``--preprocess layout=...`` when the graph cannot tell). Class names
come from the model's ``metadata_props`` (``class_names``/``classes``/``labels``: a JSON
list or comma-separated) or ``--class-names``. Outputs are probabilities or logits: declared
by ``--outputs``, else detected (rows in [0,1] summing to 1 on random inputs are
probabilities). Every check then takes log-probabilities either way.

White-box when possible (``--mode auto``, the default): the graph is converted to torch
(:mod:`raigate.models.onnx_torch`) and the converted module is checked against
onnxruntime on random inputs at load time. Within
:data:`~raigate.models.onnx_torch.TOLERANCE` every check runs as for a torch model,
gradients included, on the converted module (onnxruntime has no input gradients).
Otherwise (an op the converter does not know, or a larger difference) the model is audited
**black-box** through onnxruntime, and every result says so (``mode: black-box``).
``--mode white-box`` makes either a one-line error (exit 2); ``--mode black-box`` skips the
conversion.

The digest is over the graph's initializers (name, dtype, shape, bytes), the same whichever
mode runs, so it pins the weights; ``files`` pins the file.

**Served models** (``pyfn:pkg.mod:predict``): a Python function that takes a uint8 RGB
NHWC batch and returns probabilities (``--outputs logits`` if it returns logits), e.g. the
user's client for an HTTP endpoint. It is foreign code, so it runs only with
``--trust-code``; it is always black-box. Its images are quantized to uint8 (as a served
model receives them) after the geometry of ``--preprocess``; the predictor does its own
normalization, so value options (mean/std, channel order, scale, layout) are refused. The
digest is over the predictor's source file: the model behind it is not pinned, and the
report says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from raigate._io import sha256_file
from raigate.errors import ConfigError, ModelLoadError, SpecError
from raigate.models._common import (
    existing_file,
    file_record,
    names_from_data,
    one_line,
    require_class_names,
    require_input_size,
    same_or_conflict,
)
from raigate.models.base import Capabilities, Model, detect_capabilities, state_digest
from raigate.models.blackbox import PROB_FLOOR, QueryNet, looks_like_probabilities
from raigate.models.loaders import ExportedNet, _check_output_width
from raigate.models.preprocess import Preprocess
from raigate.models.specs import ModelOptions

__all__ = [
    "MODES",
    "access_line",
    "export_onnx",
    "load_onnx",
    "load_pyfn",
    "onnx_providers",
    "read_class_names",
]

MODES = ("auto", "white-box", "black-box")
_CLASS_KEYS = ("class_names", "classes", "labels")
_FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # onnx.TensorProto codes


def onnx_providers() -> list[str]:
    """onnxruntime execution providers: CUDA first when this build and machine have it."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


class _LogOf(nn.Module):
    """A converted graph that outputs probabilities, returning their log (floored)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).clamp_min(PROB_FLOOR).log()


def _read_proto(p: Path) -> Any:
    import onnx

    try:
        proto = onnx.load(str(p))
    except Exception as e:  # protobuf DecodeError, external data missing, ...
        raise ModelLoadError(
            f"{p} is not an ONNX model ({one_line(e)}); export one with torch.onnx.export"
        ) from e
    if not proto.graph.node:
        raise ModelLoadError(f"{p} is not an ONNX model (no graph nodes)")
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ModelLoadError(f"{p} is not a valid ONNX model: {one_line(e)}") from e
    return proto


def read_class_names(proto: Any) -> tuple[str, ...] | None:
    """Class names from ``metadata_props`` (JSON list or comma-separated), else None."""
    props = {p.key: p.value for p in proto.metadata_props}
    for key in _CLASS_KEYS:
        raw = props.get(key)
        if raw is None:
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = [v.strip() for v in raw.split(",")]
        if isinstance(value, dict):  # {"0": "cat", ...} as id2label
            value = [value[k] for k in sorted(value, key=lambda k: int(k))]
        if isinstance(value, list) and value:
            return tuple(str(v) for v in value)
    return None


def _dims(value_info: Any) -> list[int | None]:
    t = value_info.type.tensor_type
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def _interface(proto: Any, p: Path) -> tuple[Any, Any]:
    init = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    if len(inputs) != 1:
        raise ModelLoadError(
            f"{p}: the graph takes {len(inputs)} inputs "
            f"({', '.join(i.name for i in inputs) or 'none'}); raigate audits classifiers "
            "with exactly one image-batch input"
        )
    if not proto.graph.output:
        raise ModelLoadError(f"{p}: the graph has no output")
    return inputs[0], proto.graph.output[0]


def _layout(dims: list[int | None], pre: Preprocess, p: Path) -> str:
    if "layout" in pre.model_fields_set:
        return pre.layout
    first, last = dims[1], dims[3]
    if first in (1, 3) and last not in (1, 3):
        return "nchw"
    if last in (1, 3) and first not in (1, 3):
        return "nhwc"
    if first in (1, 3):
        return "nchw"
    raise ModelLoadError(
        f"{p}: cannot tell NCHW from NHWC from the input shape {dims}; pass "
        "--preprocess layout=nchw or layout=nhwc"
    )


def _session(p: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = max(1, torch.get_num_threads())
    # Idle worker threads would spin and steal the cores torch needs between queries (an
    # attack's update step, the next batch's decoding): measured 1.4x slower interleaved.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(p), sess_options=so, providers=onnx_providers())
    except Exception as e:
        raise ModelLoadError(f"onnxruntime cannot run {p}: {one_line(e)}") from e


def _run(session: Any, name: str, dtype: Any) -> Callable[[np.ndarray], np.ndarray]:
    def predict(a: np.ndarray) -> np.ndarray:
        out = session.run(None, {name: a.astype(dtype, copy=False)})[0]
        return np.asarray(out, dtype=np.float32)

    return predict


def _initializer_digest(proto: Any) -> str:
    from onnx import numpy_helper

    tensors = []
    for init in proto.graph.initializer:
        arr = np.ascontiguousarray(numpy_helper.to_array(init))
        try:
            t = torch.from_numpy(arr.copy())
        except TypeError:  # a dtype torch lacks (bfloat16 as ml_dtypes, ...): its bytes
            t = torch.from_numpy(arr.view(np.uint8).copy())
        tensors.append((init.name, t))
    return state_digest(tensors)


def _parameter_count(proto: Any) -> int:
    """Float initializer elements other than BatchNorm running statistics: what
    ``nn.Module.parameters()`` would count for the same network."""
    stats = set()
    for node in proto.graph.node:
        if node.op_type == "BatchNormalization" and len(node.input) >= 5:
            stats.update(node.input[3:5])
    total = 0
    for init in proto.graph.initializer:
        if init.data_type in _FLOAT_TYPES and init.name not in stats:
            total += int(np.prod(init.dims)) if init.dims else 1
    return total


def _outputs_kind(
    declared: str | None, predict: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...]
) -> tuple[str, bool]:
    """(``logits``|``probs``, detected?) from the option or from random inputs."""
    if declared in ("logits", "probs"):
        return declared, False
    if declared not in (None, "auto"):
        raise ConfigError(f"--outputs must be auto, logits or probs, got {declared!r}")
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn((4, *shape), generator=gen).numpy()
    return ("probs" if looks_like_probabilities(predict(probe)) else "logits"), True


def load_onnx(spec: str, target: str, options: ModelOptions) -> Model:
    """``onnx:FILE``: onnxruntime for inference, converted to torch when exact enough."""
    p = existing_file(target, "ONNX file")
    mode = options.mode or "auto"
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    proto = _read_proto(p)
    inp, out = _interface(proto, p)
    dims = _dims(inp)
    if len(dims) != 4:
        raise ModelLoadError(
            f"{p}: input {inp.name!r} has rank {len(dims)} (shape {dims}); raigate audits image "
            "classifiers whose input is a 4-D batch, NCHW or NHWC"
        )
    elem = inp.type.tensor_type.elem_type
    if elem not in _FLOAT_TYPES:
        raise ModelLoadError(
            f"{p}: input {inp.name!r} has ONNX element type {elem}; raigate feeds float "
            "images (float32, float16 or double)"
        )
    pre = options.preprocess or Preprocess()
    layout = _layout(dims, pre, p)
    pre = pre.model_copy(update={"layout": layout})
    chw_dims = dims[1:] if layout == "nchw" else [dims[3], dims[1], dims[2]]
    if all(isinstance(d, int) and d > 0 for d in chw_dims):
        shape = tuple(int(d) for d in chw_dims)  # type: ignore[arg-type]
        same_or_conflict("input size", shape, options.input_size, str(p))
    else:
        shape = require_input_size(spec, options)
        if isinstance(chw_dims[0], int) and chw_dims[0] != shape[0]:
            raise ModelLoadError(f"{p}: the graph takes {chw_dims[0]} channels, not {shape[0]}")
    stored = read_class_names(proto)
    if stored is not None:
        same_or_conflict("class names", stored, options.class_names, str(p))
    names = stored or require_class_names(spec, options)
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None

    session = _session(p)
    dtype = _FLOAT_TYPES[elem]
    run = _run(session, inp.name, dtype)
    net_shape = shape if layout == "nchw" else (shape[1], shape[2], shape[0])
    probe_net = QueryNet(run, outputs="logits", static_batch=batch, name=str(p))
    _check_output_width(
        probe_net, shape, len(names), spec, names_from_data=names_from_data(options),
        preprocess=pre, fix="pass matching --class-names",
    )  # fmt: skip
    outputs, detected = _outputs_kind(
        options.outputs, lambda a: probe_net(torch.from_numpy(a)).numpy(), net_shape
    )
    details: dict[str, Any] = {
        "format": "onnx",
        "input": {"name": inp.name, "shape": dims, "layout": layout},
        "output": {"name": out.name, "kind": outputs, "detected": detected},
        "static_batch": batch,
        "parameters": _parameter_count(proto),
        "providers": list(session.get_providers()),
        "opset": [f"{o.domain or 'ai.onnx'}:{o.version}" for o in proto.opset_import],
    }

    net: nn.Module | None = None
    reason = "--mode black-box"
    if mode != "black-box":
        from raigate.models import onnx_torch

        try:
            module = onnx_torch.convert(proto)
            module.eval()
            diff = onnx_torch.max_logit_difference(
                module, session, net_shape, samples=8, seed=0, layout=layout.upper()
            )
        except onnx_torch.UnsupportedOnnxOp as e:
            if mode == "white-box":
                raise
            reason = one_line(e).split(": ", 1)[-1]
            details["conversion"] = {"converted": False, "reason": reason}
        else:
            ok = math.isfinite(diff) and diff <= onnx_torch.TOLERANCE
            details["conversion"] = {
                "converted": True,
                "max_abs_difference": diff,
                "tolerance": onnx_torch.TOLERANCE,
                "within_tolerance": ok,
            }
            if ok:
                # a fixed batch runs in chunks of that size, as a fixed-batch torch.export does
                net = module if batch is None else ExportedNet(module, batch)
                if outputs == "probs":
                    net = _LogOf(net)
            elif mode == "white-box":
                raise ModelLoadError(
                    f"{p}: the torch conversion differs from onnxruntime by {diff:.3g} "
                    f"(tolerance {onnx_torch.TOLERANCE:g}); audit it with --mode black-box"
                )
            else:
                reason = (
                    f"the torch conversion differs from onnxruntime by {diff:.3g} "
                    f"(> {onnx_torch.TOLERANCE:g})"
                )
    if net is None:
        details["black_box_reason"] = reason
        net = QueryNet(run, outputs=outputs, static_batch=batch, name=str(p))  # type: ignore[arg-type]
        caps = Capabilities(gradients=False)
    else:
        caps = detect_capabilities(net)
    return Model(
        net, class_names=names, input_shape=shape, mean=options.mean, std=options.std,
        spec=spec, digest=_initializer_digest(proto), files=[file_record(p)],
        capabilities=caps, source="onnx", preprocess=pre, details=details,
    )  # fmt: skip


# -- served models ---------------------------------------------------------------------------
def load_pyfn(spec: str, target: str, options: ModelOptions) -> Model:
    """``pyfn:pkg.mod:predict``: uint8 RGB NHWC in, probabilities (or logits) out."""
    import inspect
    import sys

    from raigate.models.factories import import_factory
    from raigate.models.specs import _FACTORY_RE

    if not _FACTORY_RE.match(target):
        raise SpecError(f"model spec {spec!r}: give the predictor as pyfn:pkg.module:function")
    if not options.trust_code:
        raise SpecError(
            f"model spec {spec!r} runs the Python function {target}; rerun with --trust-code "
            "(plan: trust_code = true) if you trust that code"
        )
    pre = options.preprocess or Preprocess()
    value_keys = {"channel_order", "value_scale", "layout"} & pre.model_fields_set
    if value_keys or options.mean or options.std:
        given = sorted(value_keys) + [k for k in ("mean", "std") if getattr(options, k)]
        raise ConfigError(
            f"model spec {spec!r}: a pyfn predictor receives uint8 RGB NHWC images and does "
            f"its own normalization; drop {', '.join(given)}"
        )
    if options.mode == "white-box":
        raise ConfigError(f"model spec {spec!r} is a served predictor: it is always black-box")
    names = require_class_names(spec, options)
    shape = require_input_size(spec, options)
    # the user named this code and passed --trust-code: imported as `python -m` would
    fn = import_factory(target, trust_code=True)
    module = sys.modules.get(fn.__module__, None)

    def predict(a: np.ndarray) -> np.ndarray:
        u8 = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        return np.asarray(fn(np.ascontiguousarray(u8)), dtype=np.float32)

    probe = QueryNet(predict, outputs="logits", name=target)
    _check_output_width(
        probe, shape, len(names), spec, names_from_data=names_from_data(options),
        fix="pass matching --class-names",
    )  # fmt: skip
    outputs, detected = _outputs_kind(
        options.outputs, lambda a: probe(torch.from_numpy(a)).numpy(), shape
    )
    source = inspect.getsourcefile(module or fn)
    files = [file_record(source)] if source and Path(source).is_file() else []
    if files:
        digest = "sha256:" + sha256_file(source)  # type: ignore[arg-type]
        digest_of = "the predictor's source file; the model behind it is not pinned"
    else:  # defined outside a readable .py file: only its name can be pinned
        digest = "sha256:" + hashlib.sha256(target.encode("utf-8")).hexdigest()
        digest_of = "the predictor's name only (no source file); nothing behind it is pinned"
    details = {
        "format": "pyfn",
        "predictor": target,
        "input": "uint8 RGB NHWC (pixels quantized to 1/255 after resize/crop)",
        "output": {"kind": outputs, "detected": detected},
        "digest_of": digest_of,
    }
    return Model(
        QueryNet(predict, outputs=outputs, name=target),  # type: ignore[arg-type]
        class_names=names, input_shape=shape, spec=spec, digest=digest, files=files,
        capabilities=Capabilities(gradients=False), source="pyfn", preprocess=pre,
        details=details,
    )  # fmt: skip


def access_line(model: Model) -> str | None:
    """One line on how an ONNX or served model is audited, or None for torch models."""
    details = getattr(model, "details", {}) or {}
    fmt = details.get("format")
    if fmt not in ("onnx", "pyfn"):
        return None
    conv = details.get("conversion") or {}
    if model.mode == "white-box":
        return (
            f"{fmt} model {model.spec}: white-box (converted to torch; largest output "
            f"difference vs onnxruntime {conv['max_abs_difference']:.2g} on random inputs, "
            f"tolerance {conv['tolerance']:g})"
        )
    why = details.get("black_box_reason") or "a served predictor"
    if fmt == "onnx" and "max_abs_difference" in conv:
        why = f"{why}; largest output difference {conv['max_abs_difference']:.2g}"
    return f"{fmt} model {model.spec}: black-box, queries only ({why})"


def export_onnx(
    net: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    class_names: list[str] | tuple[str, ...] | None = None,
    dynamic_batch: bool = True,
) -> Path:
    """Export ``net`` (eval mode) to ONNX as raigate reads it back: one input ``images``,
    one output ``logits``, a dynamic batch axis, and ``class_names`` in ``metadata_props``.

    The TorchScript-based exporter (``dynamo=False``) is used: fast, and what most
    deployed files were written with. For tests, benchmarks and experiments that need the
    artifact a team would ship from a torch model.
    """
    import warnings

    import onnx

    p = Path(path)
    x = torch.rand(2 if dynamic_batch else 1, *input_shape)
    axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice
        torch.onnx.export(
            net.eval(), (x,), str(p), dynamo=False, input_names=["images"],
            output_names=["logits"], dynamic_axes=axes,
        )  # fmt: skip
    if class_names is not None:
        proto = onnx.load(str(p))
        proto.metadata_props.add(key="class_names", value=json.dumps(list(class_names)))
        onnx.save(proto, str(p))
    return p
