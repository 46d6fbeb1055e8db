"""ONNX classifiers as torch modules, so they can be audited white-box.

:func:`convert` turns an ``onnx.ModelProto`` into an :class:`OnnxModule`: the graph's float
initializers become ``nn.Parameter`` s (BatchNorm running statistics, other initializers and
``Constant`` nodes become buffers) under their ONNX names, which exporters take from the
torch state dict, so ``state_dict()``, digests and parameter randomization see them as in
the source network; ``forward`` interprets the nodes in graph order (ONNX stores them
topologically sorted) with torch functional ops, so autograd gives input gradients and
white-box attacks, Captum and smoothing run on the model exactly as on a torch network.
Shape arithmetic (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``, as exporters write
for a dynamic batch) runs eagerly on small int64 tensors.

Why not onnx2torch: it imports torchvision at package import (for ``nms``/``roi_align``),
and torchvision cannot be installed beside raigate's CPU torch. This is a small interpreter
instead, covering :data:`SUPPORTED_OPS`: everything ``torch.onnx.export`` writes for CNN and
small ViT classifiers (both the TorchScript exporter, opsets 11 to 20, and ``dynamo=True``)
plus what common exported classifiers use. Nodes the first graph output does not depend on
are dropped first (an ``ArgMax`` label output, say); any remaining op outside the set, any
node of another domain (``com.microsoft`` ...), or an attribute value not implemented
raises :class:`UnsupportedOnnxOp`, one line naming them all, and the model can still be
audited black-box through onnxruntime.

A conversion is trusted only after it has been compared with onnxruntime:
:func:`max_logit_difference` runs both on the same random inputs and returns the largest
absolute output difference, to be held against :data:`TOLERANCE`.

>>> import onnx, torch
>>> from onnx import TensorProto, helper
>>> graph = helper.make_graph(
...     [helper.make_node("Relu", ["x"], ["y"])], "relu",
...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
... )
>>> net = convert(helper.make_model(graph))
>>> net(torch.tensor([[-1.0, 0.5, 2.0]]))
tensor([[0.0000, 0.5000, 2.0000]])
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial, reduce
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx
import onnx.inliner
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from raigate.errors import ModelLoadError

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "SUPPORTED_OPS",
    "TOLERANCE",
    "OnnxModule",
    "UnsupportedOnnxOp",
    "convert",
    "max_logit_difference",
]

TOLERANCE = 1e-3
"""Largest absolute output (logit) difference between a converted module and onnxruntime,
as :func:`max_logit_difference` measures it, at which a conversion is accepted.

Both run float32 arithmetic in a different order (onnxruntime fuses and reorders
convolutions, GEMMs and reductions), so a faithful conversion differs by rounding only.
Measured with inputs N(0, 1), 8 samples: every ``raigate.zoo`` net (random weights,
BatchNorm statistics estimated on random images) exported by the TorchScript exporter with
and without BatchNorm folding and by ``dynamo=True``: 3.7e-8 (small_cnn) to 5.7e-6
(ResNet-56), logits up to 8; the published trained ResNet-20/56 (akamaster) and Captum's
CIFAR net: at most 5.7e-6, and at most 2.1e-5 on 500 real CIFAR-10 test images with logits
up to 35, with identical predictions on every image. 1e-3 is fifty times the largest of
these and still far below what a wrong op (a missed transpose, a padding mode, a softmax
axis) does to logits. Rounding grows with the logits (about 5e-7 of the largest |logit|):
a ResNet-56 with uncalibrated BatchNorm and logits of 2.4e4 differs by 1.2e-2, so a model
with logits above about 1e3 would need a relative bound.
"""


class UnsupportedOnnxOp(ModelLoadError):
    """The graph uses ops (or attribute values) :func:`convert` does not implement.

    ``problems`` lists them, sorted, each once (``"TopK"``, ``"com.microsoft.FusedConv"``,
    ``"Conv auto_pad='FOO'"``)."""

    def __init__(self, problems: Counter[str]) -> None:
        self.problems = tuple(sorted(problems))
        listed = ", ".join(
            f"{p} ({n} node{'s' if n > 1 else ''})" for p, n in sorted(problems.items())
        )
        super().__init__(
            f"ONNX graph uses ops raigate cannot convert to torch: {listed}; "
            "audit it black-box (--mode black-box)"
        )


# -- dtypes and attributes -----------------------------------------------------------------
_DTYPES: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT8: torch.int8,
    TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64,
    TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}


def _tensor(proto: TensorProto) -> Tensor:
    """An ONNX tensor as a torch tensor (bfloat16 goes through float32: numpy has none)."""
    if proto.data_type not in _DTYPES:
        name = TensorProto.DataType.Name(proto.data_type)
        raise UnsupportedOnnxOp(Counter({f"{name} tensor {proto.name!r}": 1}))
    array = numpy_helper.to_array(proto)
    if proto.data_type == TensorProto.BFLOAT16:
        return torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(array, copy=True))


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, TensorProto):
            value = _tensor(value)
        elif isinstance(value, list):
            value = [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]
        out[attr.name] = value
    return out


def _opt(xs: Sequence[Tensor | None], i: int) -> Tensor | None:
    return xs[i] if i < len(xs) else None


def _ints(t: Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


_Op = Callable[[list[Any], dict[str, Any]], Any]
"""An op: (inputs, None for an omitted optional one; attributes) -> output(s)."""


# -- convolution and pooling ---------------------------------------------------------------
def _pads(a: dict[str, Any], size: Sequence[int], kernel: Sequence[int]) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial axis, from ``pads`` or ``auto_pad`` (ONNX Conv spec:
    SAME keeps ``ceil(in / stride)`` outputs, the odd pixel going to the end for UPPER)."""
    nd = len(kernel)
    strides = a.get("strides") or [1] * nd
    dilations = a.get("dilations") or [1] * nd
    mode = a.get("auto_pad", "NOTSET")
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for n, k, s, d in zip(size, kernel, strides, dilations, strict=True):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            small = total // 2
            pads.append((small, total - small) if mode == "SAME_UPPER" else (total - small, small))
        return pads
    flat = a.get("pads") if mode == "NOTSET" else None
    flat = flat or [0] * (2 * nd)
    return list(zip(flat[:nd], flat[nd:], strict=True))


def _torch_pad(pads: Sequence[tuple[int, int]]) -> list[int]:
    """ONNX (begin, end) per axis, first axis first -> F.pad's flat list, last axis first."""
    return [p for pair in reversed(pads) for p in pair]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _conv(xs: list[Any], a: dict[str, Any]) -> Tensor:
    x, w, b = xs[0], xs[1], _opt(xs, 2)
    nd = w.dim() - 2
    pads = _pads(a, x.shape[2:], w.shape[2:])
    padding = [p for p, _ in pads]
    if any(p != q for p, q in pads):
        x, padding = F.pad(x, _torch_pad(pads)), [0] * nd
    strides, dilations = a.get("strides") or [1] * nd, a.get("dilations") or [1] * nd
    return _CONV[nd](x, w, b, strides, padding, dilations, a.get("group", 1))


def _conv_transpose(xs: list[Any], a: dict[str, Any]) -> Tensor:
    # Full output (no padding), then ONNX's pads cropped from each end: the same arithmetic
    # as torch's symmetric ``padding``, and it also covers asymmetric pads.
    x, w, b = xs[0], xs[1], _opt(xs, 2)
    nd = w.dim() - 2
    strides, dilations = a.get("strides") or [1] * nd, a.get("dilations") or [1] * nd
    extra = a.get("output_padding") or [0] * nd
    y = _CONV_T[nd](x, w, b, strides, 0, extra, a.get("group", 1), dilations)
    for axis, (begin, end) in enumerate(_pads(a, x.shape[2:], w.shape[2:]), start=2):
        y = y.narrow(axis, begin, y.shape[axis] - begin - end)
    return y


def _pool_geometry(x: Tensor, a: dict[str, Any]) -> tuple[list[int], list[int], list[int], Any]:
    kernel = list(a["kernel_shape"])
    nd = len(kernel)
    pads = _pads(a, x.shape[2:], kernel)
    return kernel, a.get("strides") or [1] * nd, a.get("dilations") or [1] * nd, pads


def _native_pads(pads: Sequence[tuple[int, int]], kernel: Sequence[int]) -> bool:
    """torch's pooling pads symmetrically, by at most half a kernel."""
    return all(p == q and p <= k // 2 for (p, q), k in zip(pads, kernel, strict=True))


def _crop_pooled(y: Tensor, x: Tensor, a: dict[str, Any]) -> Tensor:
    """Pooled explicitly padded input, cut to ONNX's output size: with ``ceil_mode`` a last
    window starting in the end padding is dropped (onnxruntime does so, as does torch with
    its own padding), which pooling the padded input would keep."""
    kernel, strides, dilations, pads = _pool_geometry(x, a)
    for axis, (n, k, s, d, (begin, end)) in enumerate(
        zip(x.shape[2:], kernel, strides, dilations, pads, strict=True), start=2
    ):
        span = n + begin + end - (k - 1) * d - 1
        size = (-(-span // s) if a.get("ceil_mode", 0) else span // s) + 1
        if a.get("ceil_mode", 0) and (size - 1) * s >= n + begin:
            size -= 1
        y = y.narrow(axis, 0, size)
    return y


def _max_pool(xs: list[Any], a: dict[str, Any]) -> Tensor:
    x = xs[0]
    kernel, strides, dilations, pads = _pool_geometry(x, a)
    ceil = bool(a.get("ceil_mode", 0))
    pool = partial(_MAX_POOL[len(kernel)], kernel_size=kernel, stride=strides, dilation=dilations)
    if _native_pads(pads, kernel):
        return pool(x, padding=[p for p, _ in pads], ceil_mode=ceil)
    y = pool(F.pad(x, _torch_pad(pads), value=-math.inf), padding=0, ceil_mode=ceil)
    return _crop_pooled(y, x, a)


def _avg_pool(xs: list[Any], a: dict[str, Any]) -> Tensor:
    x = xs[0]
    kernel, strides, _, pads = _pool_geometry(x, a)
    ceil, include = bool(a.get("ceil_mode", 0)), bool(a.get("count_include_pad", 0))
    pool = partial(_AVG_POOL[len(kernel)], kernel_size=kernel, stride=strides, ceil_mode=ceil)
    if _native_pads(pads, kernel):
        return pool(x, padding=[p for p, _ in pads], count_include_pad=include)
    # Padding torch cannot do: pool the zero-padded input and divide by the pooled mask of
    # the cells that count (the input, plus the padding when count_include_pad).
    flat = _torch_pad(pads)
    mask = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    mask = F.pad(mask, flat, value=float(include))
    y = pool(F.pad(x, flat), padding=0) / pool(mask, padding=0)
    return _crop_pooled(y, x, a)


def _global(reduce_fn: Callable[..., Tensor]) -> _Op:
    return lambda xs, a: reduce_fn(xs[0], dim=tuple(range(2, xs[0].dim())), keepdim=True)


# -- normalization -------------------------------------------------------------------------
def _batch_norm(xs: list[Any], a: dict[str, Any]) -> Tensor:
    # Running statistics computed by other nodes may carry a gradient, which torch's kernel
    # refuses (and nobody needs).
    x, scale, bias, mean, var = xs[:5]
    return F.batch_norm(
        x, mean.detach(), var.detach(), scale, bias, False, 0.0, a.get("epsilon", 1e-5)
    )


def _layer_norm(xs: list[Any], a: dict[str, Any]) -> Tensor:
    x, scale, bias = xs[0], xs[1], _opt(xs, 2)
    shape = x.shape[_axis(a.get("axis", -1), x.dim()) :]
    eps = a.get("epsilon", 1e-5)
    if scale.shape == shape and (bias is None or bias.shape == shape):
        return F.layer_norm(x, shape, scale, bias, eps)
    y = F.layer_norm(x, shape, None, None, eps) * scale
    return y if bias is None else y + bias


def _group_norm(xs: list[Any], a: dict[str, Any]) -> Tensor:
    x, scale, bias = xs
    groups, channels = a["num_groups"], x.shape[1]
    if scale.numel() != channels:  # opset 18: one scale and bias per group, not per channel
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    return F.group_norm(x, groups, scale, bias, a.get("epsilon", 1e-5))


def _lrn(xs: list[Any], a: dict[str, Any]) -> Tensor:
    alpha, beta, k = a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)
    return F.local_response_norm(xs[0], a["size"], alpha, beta, k)


def _softmax(fn: Callable[..., Tensor]) -> _Op:
    def run(xs: list[Any], a: dict[str, Any]) -> Tensor:
        x = xs[0]
        if a["_opset"] >= 13:
            return fn(x, dim=a.get("axis", -1))
        # Before opset 13 the input is coerced to 2-D at ``axis`` (default 1) first.
        axis = _axis(a.get("axis", 1), x.dim())
        return fn(x.reshape(math.prod(x.shape[:axis]), -1), dim=1).reshape(x.shape)

    return run


# -- shapes and indexing -------------------------------------------------------------------
def _reshape(xs: list[Any], a: dict[str, Any]) -> Tensor:
    x, shape = xs[0], _ints(xs[1])
    if not a.get("allowzero", 0):  # 0 copies the input's size on that axis
        shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return x.reshape(shape)


def _flatten(xs: list[Any], a: dict[str, Any]) -> Tensor:
    x = xs[0]
    axis = _axis(a.get("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _axes(xs: list[Any], a: dict[str, Any]) -> list[int]:
    """Axes from the attribute (older opsets) or the second input (newer ones)."""
    return list(a["axes"]) if "axes" in a else _ints(_opt(xs, 1))


def _squeeze(xs: list[Any], a: dict[str, Any]) -> Tensor:
    axes = _axes(xs, a)
    return xs[0].squeeze(tuple(axes)) if axes else xs[0].squeeze()


def _unsqueeze(xs: list[Any], a: dict[str, Any]) -> Tensor:
    x, axes = xs[0], _axes(xs, a)
    for axis in sorted(_axis(v, x.dim() + len(axes)) for v in axes):
        x = x.unsqueeze(axis)
    return x


def _slice(xs: list[Any], a: dict[str, Any]) -> Tensor:
    x = xs[0]
    if "starts" in a:  # opset < 10: attributes
        starts, ends = a["starts"], a["ends"]
        axes, steps = a.get("axes") or list(range(len(starts))), [1] * len(starts)
    else:
        starts, ends = _ints(xs[1]), _ints(xs[2])
        axes = _ints(_opt(xs, 3)) or list(range(len(starts)))
        steps = _ints(_opt(xs, 4)) or [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis, n = _axis(axis, x.dim()), x.shape[_axis(axis, x.dim())]
        start, end = start + n if start < 0 else start, end + n if end < 0 else end
        if step > 0:
            index[axis] = slice(min(max(start, 0), n), min(max(end, 0), n), step)
            continue
        # torch has no negative steps: slice the flipped axis instead (i -> n - 1 - i).
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
        x = x.flip(axis)
        index[axis] = slice(n - 1 - start, n - 1 - end, -step)
    return x[tuple(index)]


def _gather(xs: list[Any], a: dict[str, Any]) -> Tensor:
    x, idx = xs
    axis = _axis(a.get("axis", 0), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).long()
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))


def _split(xs: list[Any], a: dict[str, Any]) -> tuple[Tensor, ...]:
    x, axis = xs[0], a.get("axis", 0)
    sizes = list(a["split"]) if "split" in a else _ints(_opt(xs, 1))
    if not sizes:  # equal parts, the last one smaller (opset 18)
        sizes = math.ceil(x.shape[axis] / a.get("num_outputs", a["_outputs"]))
    return tuple(torch.split(x, sizes, dim=axis))


def _pad(xs: list[Any], a: dict[str, Any]) -> Tensor:
    x, mode = xs[0], a.get("mode", "constant")
    flat = list(a["pads"]) if "pads" in a else _ints(xs[1])
    value = a.get("value", 0.0) if "pads" in a else _opt(xs, 2)
    value = value.item() if isinstance(value, Tensor) else (value or 0)
    axes = [_axis(v, x.dim()) for v in _ints(_opt(xs, 3))] or list(range(x.dim()))
    half = len(flat) // 2
    pads = [(0, 0)] * x.dim()
    for axis, begin, end in zip(axes, flat[:half], flat[half:], strict=True):
        pads[axis] = (begin, end)
    if mode == "constant":
        return F.pad(x, _torch_pad(pads), value=value)  # negative pads crop
    # Negative pads crop first, then the rest pads the cropped tensor (as onnxruntime does),
    # reflect / edge / wrap on any axis by gathering through the padded index map.
    for axis, (begin, end) in enumerate(pads):
        x = x.narrow(axis, max(-begin, 0), x.shape[axis] - max(-begin, 0) - max(-end, 0))
    pads = [(max(begin, 0), max(end, 0)) for begin, end in pads]
    for axis, (begin, end) in enumerate(pads):
        if begin or end:
            n = x.shape[axis]
            i = torch.arange(-begin, n + end, device=x.device)
            if mode == "edge":
                i = i.clamp(0, n - 1)
            elif mode == "wrap":
                i = i % n
            else:
                period = max(2 * (n - 1), 1)
                i = i % period
                i = torch.where(i >= n, period - i, i)
            x = x.index_select(axis, i)
    return x


def _expand(xs: list[Any], a: dict[str, Any]) -> Tensor:
    return xs[0].expand(torch.broadcast_shapes(xs[0].shape, tuple(_ints(xs[1]))))


def _shape(xs: list[Any], a: dict[str, Any]) -> Tensor:
    x = xs[0]
    dims = list(x.shape)[a.get("start", 0) : a.get("end", x.dim())]
    return torch.tensor(dims, dtype=torch.int64, device=x.device)


def _constant_of_shape(xs: list[Any], a: dict[str, Any]) -> Tensor:
    value = a.get("value", torch.zeros(1))
    return torch.full(_ints(xs[0]), value.item(), dtype=value.dtype, device=xs[0].device)


def _reduction(fn: Callable[..., Tensor]) -> _Op:
    def run(xs: list[Any], a: dict[str, Any]) -> Tensor:
        x, axes = xs[0], _axes(xs, a)
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, dim=tuple(axes), keepdim=bool(a.get("keepdims", 1)))

    return run


def _arg(fn: Callable[..., Tensor]) -> _Op:
    return lambda xs, a: fn(xs[0], dim=a.get("axis", 0), keepdim=bool(a.get("keepdims", 1)))


# -- elementwise ---------------------------------------------------------------------------
def _div(xs: list[Any], a: dict[str, Any]) -> Tensor:
    x, y = xs
    if x.is_floating_point() or y.is_floating_point():
        return x / y
    return torch.div(x, y, rounding_mode="trunc")  # C integer division, as onnxruntime


def _gemm(xs: list[Any], a: dict[str, Any]) -> Tensor:
    x, w, c = xs[0], xs[1], _opt(xs, 2)
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    trans_a, trans_b = a.get("transA", 0), a.get("transB", 0)
    if alpha == 1.0 and beta == 1.0 and trans_b and not trans_a:
        return F.linear(x, w, c)  # the exporters' nn.Linear: same kernel as the source
    y = (x.t() if trans_a else x) @ (w.t() if trans_b else w)
    y = y if alpha == 1.0 else alpha * y
    return y if c is None else y + (c if beta == 1.0 else beta * c)


def _clip(xs: list[Any], a: dict[str, Any]) -> Tensor:
    low = a["min"] if "min" in a else _opt(xs, 1)
    high = a["max"] if "max" in a else _opt(xs, 2)
    return torch.clamp(xs[0], low, high)


def _unary(fn: Callable[[Tensor], Tensor]) -> _Op:
    return lambda xs, a: fn(xs[0])


def _binary(
    fn: Callable[[Tensor, Tensor], Tensor],
) -> _Op:
    return lambda xs, a: fn(xs[0], xs[1])


def _variadic(
    fn: Callable[[Tensor, Tensor], Tensor],
) -> _Op:
    return lambda xs, a: reduce(fn, xs)


_SELU = (1.67326319217681884765625, 1.05070102214813232421875)  # ONNX Selu defaults

_OPS: dict[str, _Op] = {
    # linear algebra and convolution
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _binary(torch.matmul),
    "Einsum": lambda xs, a: torch.einsum(a["equation"], *xs),
    # elementwise arithmetic (torch broadcasts like ONNX: numpy rules)
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _div,
    "Pow": lambda xs, a: torch.pow(xs[0], xs[1]).to(xs[0].dtype),
    "Mod": lambda xs, a: (torch.fmod if a.get("fmod", 0) else torch.remainder)(xs[0], xs[1]),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "Mean": lambda xs, a: reduce(torch.add, xs) / len(xs),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Sqrt": _unary(torch.sqrt),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "Round": _unary(torch.round),  # half to even in both
    "Sign": _unary(torch.sign),
    "Erf": _unary(torch.erf),
    "Sin": _unary(torch.sin),
    "Cos": _unary(torch.cos),
    # comparisons and logic (shape arithmetic, masks)
    "Equal": _binary(torch.eq),
    "Less": _binary(torch.lt),
    "LessOrEqual": _binary(torch.le),
    "Greater": _binary(torch.gt),
    "GreaterOrEqual": _binary(torch.ge),
    "Not": _unary(torch.logical_not),
    "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or),
    "Xor": _binary(torch.logical_xor),
    "Where": lambda xs, a: torch.where(xs[0].bool(), xs[1], xs[2]),
    # activations
    "Relu": _unary(F.relu),
    "LeakyRelu": lambda xs, a: F.leaky_relu(xs[0], a.get("alpha", 0.01)),
    "PRelu": lambda xs, a: torch.where(xs[0] < 0, xs[0] * xs[1], xs[0]),
    "Elu": lambda xs, a: F.elu(xs[0], a.get("alpha", 1.0)),
    "Celu": lambda xs, a: F.celu(xs[0], a.get("alpha", 1.0)),
    "Selu": lambda xs, a: a.get("gamma", _SELU[1]) * F.elu(xs[0], a.get("alpha", _SELU[0])),
    "ThresholdedRelu": lambda xs, a: torch.where(xs[0] > a.get("alpha", 1.0), xs[0], 0.0),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Softplus": _unary(F.softplus),
    "Softsign": _unary(F.softsign),
    "Mish": _unary(F.mish),
    "Gelu": lambda xs, a: F.gelu(xs[0], approximate=a.get("approximate", "none")),
    "HardSigmoid": lambda xs, a: (a.get("alpha", 0.2) * xs[0] + a.get("beta", 0.5)).clamp(0, 1),
    "HardSwish": _unary(F.hardswish),
    "Clip": _clip,
    "Softmax": _softmax(F.softmax),
    "LogSoftmax": _softmax(F.log_softmax),
    # normalization (inference: running statistics)
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": lambda xs, a: F.instance_norm(
        xs[0], weight=xs[1], bias=xs[2], eps=a.get("epsilon", 1e-5)
    ),
    "LayerNormalization": _layer_norm,
    "GroupNormalization": _group_norm,
    "LRN": _lrn,
    # pooling and reductions
    "MaxPool": _max_pool,
    "AveragePool": _avg_pool,
    "GlobalAveragePool": _global(torch.mean),
    "GlobalMaxPool": _global(torch.amax),
    "ReduceMean": _reduction(torch.mean),
    "ReduceSum": _reduction(torch.sum),
    "ReduceMax": _reduction(torch.amax),
    "ReduceMin": _reduction(torch.amin),
    "ReduceL2": _reduction(lambda x, dim, keepdim: torch.linalg.vector_norm(x, 2, dim, keepdim)),
    "ArgMax": _arg(torch.argmax),
    "ArgMin": _arg(torch.argmin),
    # shapes, indexing, types
    "Identity": _unary(lambda x: x),
    "Dropout": lambda xs, a: (xs[0], torch.ones_like(xs[0], dtype=torch.bool)),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda xs, a: xs[0].permute(a.get("perm") or list(range(xs[0].dim()))[::-1]),
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": lambda xs, a: torch.cat(list(xs), dim=a["axis"]),
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "Pad": _pad,
    "Expand": _expand,
    "Tile": lambda xs, a: xs[0].repeat(_ints(xs[1])),
    "Shape": _shape,
    "Size": lambda xs, a: torch.tensor(xs[0].numel(), dtype=torch.int64, device=xs[0].device),
    "ConstantOfShape": _constant_of_shape,
    "Range": lambda xs, a: torch.arange(
        xs[0].item(), xs[1].item(), xs[2].item(), dtype=xs[0].dtype, device=xs[0].device
    ),
    "Cast": lambda xs, a: xs[0].to(_DTYPES[a["to"]]),
    "CastLike": lambda xs, a: xs[0].to(xs[1].dtype),
}

SUPPORTED_OPS: frozenset[str] = frozenset(_OPS) | {"Constant"}
"""ONNX op types (default domain) :func:`convert` implements; ``Constant`` nodes are folded
into buffers when converting."""

_MULTI_OUTPUT = frozenset({"Split", "Dropout"})
"""Ops whose every output is computed; of the others only the first output is (MaxPool's
Indices, BatchNormalization's training statistics ... are refused when a node uses them)."""

_AUTO_PAD = frozenset({"NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"})


def _all_ones(v: Any) -> bool:
    return all(int(d) == 1 for d in (v or []))


_ATTRIBUTE_CHECKS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "Conv": {"auto_pad": lambda v: v in _AUTO_PAD},
    "ConvTranspose": {"auto_pad": lambda v: v in ("NOTSET", "VALID"), "output_shape": bool},
    "MaxPool": {"auto_pad": lambda v: v in _AUTO_PAD},
    "AveragePool": {"auto_pad": lambda v: v in _AUTO_PAD, "dilations": _all_ones},
    "BatchNormalization": {"training_mode": lambda v: v == 0, "spatial": lambda v: v == 1},
    "Pad": {"mode": lambda v: v in ("constant", "reflect", "edge", "wrap")},
    "Cast": {"to": lambda v: v in _DTYPES},
    "Gelu": {"approximate": lambda v: v in ("none", "tanh")},
    # torch centres an even window one channel lower than ONNX does.
    "LRN": {"size": lambda v: v % 2 == 1},
    "ArgMax": {"select_last_index": lambda v: v == 0},
    "ArgMin": {"select_last_index": lambda v: v == 0},
    "Constant": {
        name: lambda v: False for name in ("sparse_value", "value_string", "value_strings")
    },
}
"""Per op, attributes whose value must pass the check (absent attributes are not checked);
``output_shape`` of ConvTranspose is refused whenever present."""


# -- the module ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Node:
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    free: tuple[str, ...]  # values no later node reads: dropped after this one runs


class OnnxModule(nn.Module):
    """An ONNX graph interpreted with torch ops; build it with :func:`convert`.

    ``forward(x)`` takes the graph's one input and returns its first output. Float
    initializers are parameters, except BatchNorm running statistics, and the rest buffers,
    named after the ONNX initializers (a name that is not a valid module path, such as
    ``onnx::Conv_12``, has its odd characters replaced, and ``Constant`` node values live
    under ``onnx_constants``); ``input_name`` and ``output_name`` are the graph's names, for
    onnxruntime."""

    def __init__(
        self,
        nodes: Sequence[_Node],
        *,
        input_name: str,
        output_name: str,
        initializers: dict[str, Tensor],
        constants: dict[str, Tensor],
        statistics: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__()
        self.input_name, self.output_name = input_name, output_name
        self._nodes = tuple(nodes)
        self._keys: dict[str, str] = {}
        if constants:  # Constant nodes: buffers, so the digest covers them too
            self.onnx_constants = nn.Module()
            for name, value in constants.items():
                key = _register(self.onnx_constants, name, value, False)
                self._keys[name] = f"onnx_constants.{key}"
        for name, value in initializers.items():
            parameter = value.is_floating_point() and name not in statistics
            self._keys[name] = _register(self, name, value, parameter)

    def forward(self, x: Tensor) -> Tensor:
        state = dict(self.named_parameters(remove_duplicate=False))
        state.update(self.named_buffers(remove_duplicate=False))
        env: dict[str, Any] = {name: state[key] for name, key in self._keys.items()}
        env[self.input_name] = x
        for node in self._nodes:
            inputs = [env[name] if name else None for name in node.inputs]
            out = _OPS[node.op](inputs, node.attrs)
            outs = out if isinstance(out, tuple) else (out,)
            for name, value in zip(node.outputs, outs, strict=False):
                if name:
                    env[name] = value
            for name in node.free:
                env.pop(name, None)
        return env[self.output_name]

    def extra_repr(self) -> str:
        ops = Counter(node.op for node in self._nodes)
        listed = ", ".join(f"{op}: {n}" for op, n in sorted(ops.items()))
        return f"{self.input_name!r} -> {self.output_name!r}, {len(self._nodes)} nodes ({listed})"


_RESERVED = frozenset(dir(nn.Module()))


def _register(root: nn.Module, name: str, value: Tensor, parameter: bool) -> str:
    """Put a tensor at its dotted ONNX name (``layer1.0.conv1.weight``), creating the parent
    modules, so state-dict keys match the exporting torch module's; a name that is no valid
    module path or is taken goes at the top, sanitized and made unique. Returns its key."""
    parts = name.split(".")
    if all(re.fullmatch(r"\w+", p) for p in parts):
        module, i = root, 0
        while i < len(parts) - 1 and parts[i] in module._modules:
            module, i = module._modules[parts[i]], i + 1
        rest = parts[i:]
        if not hasattr(module, rest[0]) and not any(p in _RESERVED for p in rest[1:]):
            for part in rest[:-1]:
                module.add_module(part, nn.Module())
                module = module._modules[part]
            _attach(module, rest[-1], value, parameter)
            return name
    key = re.sub(r"\W", "_", name).strip("_") or "tensor"
    while hasattr(root, key):
        key += "_"
    _attach(root, key, value, parameter)
    return key


def _attach(module: nn.Module, name: str, value: Tensor, parameter: bool) -> None:
    if parameter:
        module.register_parameter(name, nn.Parameter(value))
    else:
        module.register_buffer(name, value)


# -- conversion ----------------------------------------------------------------------------
def _live_nodes(graph: onnx.GraphProto, output: str) -> list[onnx.NodeProto]:
    """The nodes the output depends on, in graph order."""
    needed, live = {output}, []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            live.append(node)
            needed.update(name for name in node.input if name)
    return live[::-1]


def _problems(nodes: Sequence[onnx.NodeProto], used: set[str]) -> Counter[str]:
    problems: Counter[str] = Counter()
    for node in nodes:
        if node.domain not in ("", "ai.onnx"):
            problems[f"{node.domain}.{node.op_type}"] += 1
            continue
        if node.op_type not in SUPPORTED_OPS:
            problems[node.op_type] += 1
            continue
        for attr in node.attribute:
            check = _ATTRIBUTE_CHECKS.get(node.op_type, {}).get(attr.name)
            value = helper.get_attribute_value(attr)
            value = value.decode("utf-8") if isinstance(value, bytes) else value
            if check is not None and not check(value):
                text = repr(value)
                text = text if len(text) <= 40 and "\n" not in text else type(value).__name__
                problems[f"{node.op_type} {attr.name}={text}"] += 1
        if node.op_type not in _MULTI_OUTPUT:
            for i, name in enumerate(node.output[1:], start=2):
                if name in used:
                    problems[f"{node.op_type} output {i}"] += 1
    return problems


def convert(model: onnx.ModelProto) -> OnnxModule:
    """An ONNX classifier as an :class:`OnnxModule` in eval mode.

    Raises :class:`UnsupportedOnnxOp` for ops or attribute values it does not implement and
    :class:`~raigate.errors.ModelLoadError` for a graph without exactly one input it needs.
    """
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    graph = model.graph
    if not graph.output:
        raise ModelLoadError(f"ONNX graph {graph.name!r} has no output")
    output = graph.output[0].name
    nodes = _live_nodes(graph, output)
    used = {name for node in nodes for name in node.input} | {output}
    problems = _problems(nodes, used)
    if problems:
        raise UnsupportedOnnxOp(problems)

    # In order of first use, so reverse registration order is top layer first, as in torch.
    order = {
        name: i for i, name in reversed(list(enumerate(n for node in nodes for n in node.input)))
    }
    protos = sorted(
        (t for t in graph.initializer if t.name in used), key=lambda t: order.get(t.name, -1)
    )
    initializers = {t.name: _tensor(t) for t in protos}
    inputs = [v.name for v in graph.input if v.name in used and v.name not in initializers]
    if len(inputs) != 1:
        found = ", ".join(inputs) or "none"
        raise ModelLoadError(
            f"ONNX graph {graph.name!r} needs {len(inputs)} inputs ({found}); raigate feeds "
            "a classifier exactly one image tensor"
        )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    constants: dict[str, Tensor] = {}
    plan: list[_Node] = []
    for node in nodes:
        attrs = _attributes(node)
        if node.op_type == "Constant":
            constants[node.output[0]] = _constant(attrs)
            continue
        attrs.update(_opset=opset, _outputs=len(node.output))
        plan.append(_Node(node.op_type, tuple(node.input), tuple(node.output), attrs, ()))
    module = OnnxModule(
        _with_frees(plan, keep={output}),
        input_name=inputs[0],
        output_name=output,
        initializers=initializers,
        constants=constants,
        # BatchNorm running statistics are buffers, as in torch.
        statistics=frozenset(
            name for n in nodes if n.op_type == "BatchNormalization" for name in n.input[3:5]
        ),
    )
    return module.eval()


def _constant(attrs: dict[str, Any]) -> Tensor:
    (kind, value), *_ = attrs.items()
    if kind == "value":
        return value
    dtype = torch.float32 if kind.startswith("value_float") else torch.int64
    return torch.tensor(value, dtype=dtype)


def _with_frees(plan: Sequence[_Node], keep: set[str]) -> list[_Node]:
    """Mark, on each node, the values read for the last time there (freed in eval runs)."""
    last: dict[str, int] = {}
    for i, node in enumerate(plan):
        for name in node.inputs:
            last[name] = i
    out = []
    for i, node in enumerate(plan):
        free = tuple(n for n in dict.fromkeys(node.inputs) if n and last[n] == i and n not in keep)
        out.append(_Node(node.op, node.inputs, node.outputs, node.attrs, free))
    return out


# -- checking a conversion -----------------------------------------------------------------
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
}


@torch.no_grad()
def max_logit_difference(
    module: OnnxModule,
    session: onnxruntime.InferenceSession,
    input_shape: Sequence[int],
    *,
    samples: int = 8,
    seed: int = 0,
    layout: Literal["NCHW", "NHWC"] = "NCHW",
) -> float:
    """Largest absolute difference between the module's and onnxruntime's first output over
    ``samples`` random N(0, 1) inputs (the range of normalized images), seeded.

    ``input_shape`` is ``(C, H, W)``; ``layout`` is how the graph takes it. A graph with a
    fixed batch size is fed batches of that size. NaN or inf where the other side has a
    finite value counts as an infinite difference."""
    spec = next((i for i in session.get_inputs() if i.name == module.input_name), None)
    if spec is None:
        raise ModelLoadError(
            f"the onnxruntime session has no input {module.input_name!r}: it is not the "
            "session of the converted model"
        )
    dtype = _ORT_DTYPES.get(spec.type, np.float32)
    batch = spec.shape[0] if spec.shape and isinstance(spec.shape[0], int) else samples
    c, h, w = (int(v) for v in input_shape)
    shape = (batch, c, h, w) if layout == "NCHW" else (batch, h, w, c)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(math.ceil(samples / max(batch, 1))):
        x = rng.standard_normal(shape).astype(dtype)
        ours = module(torch.from_numpy(x)).double().numpy()
        (theirs,) = session.run([module.output_name], {module.input_name: x})
        theirs = np.asarray(theirs, dtype=np.float64)
        if ours.shape != theirs.shape:
            raise ModelLoadError(
                f"converted ONNX model returns shape {list(ours.shape)}, onnxruntime "
                f"{list(theirs.shape)}: audit it black-box (--mode black-box)"
            )
        same = (ours == theirs) | (np.isnan(ours) & np.isnan(theirs))
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.abs(ours - theirs))
        worst = max(worst, float(np.nan_to_num(diff, nan=math.inf).max(initial=0.0)))
    return worst
