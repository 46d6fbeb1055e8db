"""raigate's ONNX -> torch converter against the exporting torch module and onnxruntime.

Zoo nets are exported with ``torch.onnx.export`` (the legacy exporter, one dynamo export)
and must give the source module's logits and input gradients; hand-written graphs cover
the op variants exporters rarely write, each compared with onnxruntime on random input.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from torch import nn

from raigate import zoo
from raigate.errors import ModelLoadError
from raigate.models import state_digest, wrap
from raigate.models.base import module_tensors
from raigate.models.onnx_torch import (
    SUPPORTED_OPS,
    TOLERANCE,
    UnsupportedOnnxOp,
    convert,
    max_logit_difference,
)
from raigate.models.weights import load_state_dict_file

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 32, 32)


# -- helpers -------------------------------------------------------------------------------
def export(
    net: nn.Module, *, dynamo: bool = False, fold: bool = True, **kw: Any
) -> onnx.ModelProto:
    """``net`` as ONNX with a dynamic batch axis, input ``x`` and (legacy) output ``y``."""
    x = torch.randn(2, *SHAPE)
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice, its tracer and constant-folding
        # remarks, and torch.export's pytree FutureWarning: noise about the exporters.
        for category in (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        if dynamo:
            batch = ({0: torch.export.Dim("batch")},)
            program = torch.onnx.export(
                net, (x,), dynamo=True, dynamic_shapes=batch, verbose=False, **kw
            )
            return program.model_proto
        f = io.BytesIO()
        torch.onnx.export(
            net, (x,), f, dynamo=False, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, do_constant_folding=fold, **kw,
        )  # fmt: skip
        return onnx.load_from_string(f.getvalue())


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@torch.no_grad()
def calibrated(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, BatchNorm affine parameters drawn at random (so no two initializers
    are equal and the exporter keeps each under its own name) and running statistics
    estimated on random images, so logits stay O(1) however deep the net."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    net.train()
    for _ in range(2):
        net(torch.randn(16, *SHAPE, generator=gen))
    return net.eval()


def graph_model(
    nodes: list[onnx.NodeProto],
    opset: int,
    *,
    inits: dict[str, np.ndarray] | None = None,
    shape: tuple[int, ...] | None = None,
    out_type: int = TensorProto.FLOAT,
    outputs: tuple[str, ...] = ("y",),
) -> onnx.ModelProto:
    """A model of ``nodes`` reading float input ``x`` of ``shape``, with initializers."""
    graph = helper.make_graph(
        nodes,
        "case",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(name, out_type, None) for name in outputs],
        [numpy_helper.from_array(np.asarray(v), name=k) for k, v in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


# -- exported zoo nets ---------------------------------------------------------------------
ZOO: dict[str, Callable[[], nn.Module]] = {
    "small_cnn": lambda: zoo.small_cnn(3),
    "small_cnn-batch": lambda: zoo.small_cnn(3, norm="batch"),
    "small_cnn-group": lambda: zoo.small_cnn(3, norm="group"),
    "captum_cifar_net": lambda: zoo.captum_cifar_net(3),
    "resnet20": lambda: zoo.resnet20(3),
    "resnet20-group": lambda: zoo.resnet20(3, norm="group"),
    "resnet32": lambda: zoo.resnet32(3),
    "resnet44": lambda: zoo.resnet44(3),
    "resnet56": lambda: zoo.resnet56(3),
}


def check_against_source(net: nn.Module, model: onnx.ModelProto) -> nn.Module:
    """Converted module == source (logits and input gradients, atol 1e-4), == onnxruntime
    within TOLERANCE with the same argmax, for batches of 1 and 5 (dynamic batch)."""
    conv = convert(model)
    for batch in (1, 5):
        x = torch.randn(batch, *SHAPE)
        xs, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ys, yc = net(xs), conv(xc)
        torch.testing.assert_close(yc, ys, atol=1e-4, rtol=0)
        weights = torch.randn_like(ys)
        (ys * weights).sum().backward()
        (yc * weights).sum().backward()
        torch.testing.assert_close(xc.grad, xs.grad, atol=1e-4, rtol=0)
        theirs = run_ort(model, x.numpy())
        assert np.abs(yc.detach().numpy() - theirs).max() <= TOLERANCE
        assert (yc.argmax(1).numpy() == theirs.argmax(1)).all()
    assert max_logit_difference(conv, session(model), SHAPE) <= TOLERANCE
    return conv


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_net_exported_legacy_matches_source_and_onnxruntime(name: str) -> None:
    torch.manual_seed(0)
    net = calibrated(ZOO[name]())
    # Without constant folding the graph keeps BatchNormalization nodes and the source's
    # own arithmetic, so input gradients agree to rounding; folding BN into the convs
    # changes float32 rounding, which can flip a ReLU at 1e-7 from zero and so change a
    # gradient entry (the function, and its gradient in float64, stay the same).
    model = export(net, fold=False)
    conv = check_against_source(net, model)
    ops = {node.op_type for node in model.graph.node}
    assert ops <= SUPPORTED_OPS
    if "batch" in name or (name.startswith("resnet") and "group" not in name):
        assert "BatchNormalization" in ops
    # Initializers keep the source's state-dict names (Constant nodes go to onnx_constants).
    source = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    ours = {k for k in conv.state_dict() if not k.startswith("onnx_constants.")}
    assert ours == source
    # ... and the source's order, so "top layer first" (reverse order) holds as in torch.
    assert [k for k, _ in conv.named_parameters()] == [k for k, _ in net.named_parameters()]


def test_folded_legacy_export_matches_onnxruntime() -> None:
    torch.manual_seed(0)
    net = calibrated(zoo.resnet20(3))
    model = export(net)  # BatchNorm folded into the convolutions by the exporter
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}
    conv = convert(model)
    x = torch.randn(4, *SHAPE)
    torch.testing.assert_close(conv(x), net(x), atol=1e-4, rtol=0)
    assert max_logit_difference(conv, session(model), SHAPE) <= TOLERANCE
    # Exporter-made names ("onnx::Conv_274") become valid module names.
    names = list(conv.state_dict())
    assert "linear.weight" in names and all(re.fullmatch(r"[\w.]+", k) for k in names)
    assert any(k.startswith("onnx__Conv_") for k in names)


def test_converted_module_works_as_a_raigate_model() -> None:
    torch.manual_seed(0)
    net = calibrated(zoo.small_cnn(3, norm="batch"))
    model = export(net)
    wrapped = wrap(convert(model), class_names=list("abc"), input_shape=SHAPE, mean=0.5, std=0.25)
    assert wrapped.capabilities.gradients and wrapped.mode == "white-box"
    pixels = torch.rand(3, *SHAPE, requires_grad=True)
    expected = net((pixels.detach() - 0.5) / 0.25)
    torch.testing.assert_close(wrapped.logits(pixels), expected, atol=1e-5, rtol=0)
    wrapped.logits(pixels)[:, 1].sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    # The digest pins the weights: the same file gives the same one, a changed weight not.
    assert wrap(convert(model), class_names=list("abc"), input_shape=SHAPE).digest == wrapped.digest
    with torch.no_grad():
        next(wrapped.net.parameters())[0, 0, 0, 0] += 1.0
    assert state_digest(module_tensors(wrapped.net)) != wrapped.digest


def test_initializers_listed_as_graph_inputs_are_not_inputs() -> None:
    # Exports for old runtimes list every initializer among the graph inputs too.
    torch.manual_seed(0)
    net = calibrated(zoo.captum_cifar_net(3))
    model = export(net, keep_initializers_as_inputs=True)
    assert len(model.graph.input) > 1
    conv = convert(model)
    assert conv.input_name == "x"
    assert max_logit_difference(conv, session(model), SHAPE) <= TOLERANCE


def test_trained_resnet_on_real_images(shared_data_dir: Path) -> None:
    """akamaster's CIFAR-10 ResNet-20 on 32 real test images: same logits and gradients as
    the source, onnxruntime's logits within TOLERANCE, the same predictions."""
    weights = shared_data_dir / "weights" / "akamaster_resnet20-12fca82f.th"
    images = sorted((shared_data_dir / "cifar10-test-jpg").glob("*/*.jpg"))[::313]
    if not weights.is_file() or len(images) < 32:
        pytest.skip("akamaster ResNet-20 weights or CIFAR-10 test images not present")
    net = zoo.resnet20()
    net.load_state_dict(load_state_dict_file(weights))
    net.eval()
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images[:32]])
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = ((pixels / 255 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    model = export(net, fold=False)
    conv = convert(model)
    xs, xc = (torch.from_numpy(x).requires_grad_(True) for _ in range(2))
    ys, yc = net(xs), conv(xc)
    torch.testing.assert_close(yc, ys, atol=1e-4, rtol=0)
    ys.logsumexp(1).sum().backward()
    yc.logsumexp(1).sum().backward()
    torch.testing.assert_close(xc.grad, xs.grad, atol=1e-4, rtol=0)
    theirs = run_ort(model, x)
    assert np.abs(yc.detach().numpy() - theirs).max() <= TOLERANCE
    assert (yc.argmax(1).numpy() == theirs.argmax(1)).all()
    assert np.abs(theirs).max() > 5  # a trained model's confident logits, not near-zero ones


def test_dynamo_export_of_small_cnn_matches_source() -> None:
    torch.manual_seed(0)
    net = calibrated(zoo.small_cnn(3))
    model = export(net, dynamo=True)
    assert "Reshape" in {node.op_type for node in model.graph.node}  # not Flatten
    check_against_source(net, model)


class LayerMix(nn.Module):
    """One of each layer kind common classifiers use, beyond the zoo's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.gnorm = nn.GroupNorm(2, 8)
        self.lnorm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F = nn.functional
        x = self.bn(self.conv(x))
        x = F.relu6(x) + F.hardswish(x) + F.hardsigmoid(x) + F.silu(x) + F.gelu(x) + F.elu(x)
        x = F.leaky_relu(x, 0.1) + torch.sigmoid(x) * torch.tanh(x) - x.pow(2).sqrt()
        x = self.gnorm(self.depthwise(x)) + self.inorm(x)
        x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
        x = F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
        x = F.adaptive_avg_pool2d(self.up(x), 1).view(x.size(0), -1)
        x = torch.cat(torch.chunk(self.lnorm(x), 2, dim=1)[::-1], 1)
        y = self.fc(F.dropout(x, 0.5, self.training))
        return F.log_softmax(y, 1) + F.softmax(y / 2, -1)


@pytest.mark.parametrize("opset", [11, 17])
def test_layer_mix_exported_at_old_and_new_opsets(opset: int) -> None:
    # opset 11: Squeeze/Unsqueeze/ReduceMean axes as attributes, Softmax coerced to 2-D;
    # opset 17: LayerNormalization and HardSwish as single nodes.
    torch.manual_seed(0)
    net = calibrated(LayerMix())
    check_against_source(net, export(net, fold=False, opset_version=opset))


class TinyViT(nn.Module):
    """Patch embedding, a class token and one transformer encoder layer."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], 1)
        return self.head(self.encoder(tokens)[:, 0])


def test_tiny_vit_exported_at_opset_17() -> None:
    # Attention: MatMul, Softmax, LayerNormalization, and the exporter's shape arithmetic
    # (Shape, Gather, Expand, Where, Mod, ConstantOfShape) for the dynamic batch.
    torch.manual_seed(0)
    net = TinyViT().eval()
    model = export(net, opset_version=17)
    assert {"MatMul", "Where", "Expand"} <= {node.op_type for node in model.graph.node}
    check_against_source(net, model)


# -- hand-written graphs for op variants ---------------------------------------------------
def node(op: str, inputs: list[str], outputs: list[str] | None = None, **attrs: Any) -> Any:
    return helper.make_node(op, inputs, outputs or ["y"], **attrs)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def scalar(value: float) -> np.ndarray:
    return np.array(value, dtype=np.float32)


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


@dataclass(frozen=True)
class Case:
    """A graph of ``nodes`` reading ``x`` of ``shape``, with initializers ``inits``."""

    nodes: list[Any]
    opset: int = 13
    shape: tuple[int, ...] = (2, 3, 7, 9)  # odd sizes: SAME padding has something to split
    inits: dict[str, np.ndarray] = field(default_factory=dict)

    def model(self) -> onnx.ModelProto:
        return graph_model(self.nodes, self.opset, inits=self.inits, shape=self.shape)


RNG = np.random.default_rng(0)
W_CONV, W_DEPTH, W_UP = randn(4, 3, 3, 3), randn(3, 1, 3, 3), randn(3, 2, 3, 3)
# Pooling: ceil_mode adds a window on H (8) and would add one starting in the end padding on
# W (11; kernel 2, stride 2, pad 1), which ONNX drops.
XP = (2, 3, 8, 11)
BIG = np.iinfo(np.int64).max
POOL = {"kernel_shape": [3, 3], "strides": [2, 2]}
ASYM = {"kernel_shape": [3, 3], "strides": [3, 3], "pads": [0, 1, 2, 2], "ceil_mode": 1}
PARAMS = {"s": f32(1, 2, 3), "b": f32(0, 1, -1)}

CASES: dict[str, Case] = {
    "clip-inputs": Case(
        [node("Clip", ["x", "lo", "hi"])], inits={"lo": scalar(-0.5), "hi": scalar(0.7)}
    ),
    "clip-max-only": Case([node("Clip", ["x", "", "hi"])], inits={"hi": scalar(0.2)}),
    "clip-attributes": Case([node("Clip", ["x"], min=-0.3, max=0.4)], opset=6),
    "pad-constant": Case(
        [node("Pad", ["x", "p", "v"])], inits={"p": i64(0, 1, 2, 0, 0, 0, 1, 3), "v": scalar(1.5)}
    ),
    "pad-reflect": Case(
        [node("Pad", ["x", "p"], mode="reflect")], inits={"p": i64(0, 0, 2, 3, 0, 0, 1, 4)}
    ),
    "pad-edge-crop": Case(
        [node("Pad", ["x", "p"], mode="edge")], inits={"p": i64(0, 0, -1, 2, 0, 0, 3, -2)}
    ),
    "pad-wrap-crop": Case(
        [node("Pad", ["x", "p"], mode="wrap")], 19, inits={"p": i64(0, 0, 2, -1, 0, 0, 3, 2)}
    ),
    "pad-axes": Case(
        [node("Pad", ["x", "p", "", "ax"], mode="reflect")],
        18,
        inits={"p": i64(1, 2, 2, 1), "ax": i64(-1, 2)},
    ),
    "pad-attributes": Case(
        [node("Pad", ["x"], mode="edge", pads=[0, 0, 1, 2, 0, 0, 2, 1])], opset=2
    ),
    "gemm-trans-alpha-beta": Case(
        [node("Gemm", ["x", "w", "c"], transA=1, transB=1, alpha=0.7, beta=-1.3)],
        shape=(6, 5),
        inits={"w": randn(4, 6), "c": f32(1, 2, 3, 4)},
    ),
    "gemm-no-c": Case(
        [node("Gemm", ["x", "w"], alpha=2.0)], shape=(5, 6), inits={"w": randn(6, 3)}
    ),
    "matmul-batched": Case([node("MatMul", ["x", "w"])], inits={"w": randn(9, 4)}),
    "reshape-zero-minus-one": Case([node("Reshape", ["x", "s"])], 14, inits={"s": i64(0, -1, 9)}),
    "reshape-allowzero": Case(
        [node("Reshape", ["x", "s"], allowzero=1)], 14, inits={"s": i64(2, 3, 63)}
    ),
    "flatten-axis-2": Case([node("Flatten", ["x"], axis=2)]),
    "flatten-axis-0": Case([node("Flatten", ["x"], axis=0)]),
    "squeeze-unsqueeze-attr": Case(
        [node("Unsqueeze", ["x"], ["u"], axes=[0, -1]), node("Squeeze", ["u"], axes=[0])], 11
    ),
    "squeeze-unsqueeze-input": Case(
        [node("Unsqueeze", ["x", "a"], ["u"]), node("Squeeze", ["u", "b"])],
        inits={"a": i64(4, 1), "b": i64(-2)},
    ),
    "squeeze-all": Case([node("Squeeze", ["x"])], shape=(1, 3, 1, 5)),
    "softmax-axis1-opset11": Case([node("Softmax", ["x"], axis=1)], 11),  # over C*H*W
    "softmax-axis1-opset13": Case([node("Softmax", ["x"], axis=1)]),  # over C
    "logsoftmax-default-opset11": Case([node("LogSoftmax", ["x"])], 11),
    "logsoftmax-axis-2": Case([node("LogSoftmax", ["x"], axis=-2)]),
    "slice-steps-negative": Case(
        [node("Slice", ["x", "s", "e", "a", "st"])],
        inits={"s": i64(-1, 1), "e": i64(-BIG, 8), "a": i64(2, 3), "st": i64(-2, 3)},
    ),
    "slice-clamped": Case(
        [node("Slice", ["x", "s", "e"])], shape=(5, 6), inits={"s": i64(-100, 1), "e": i64(BIG, -1)}
    ),
    "slice-attributes": Case([node("Slice", ["x"], starts=[1], ends=[-1], axes=[3])], opset=9),
    "avgpool-include-pad-ceil": Case(
        [node("AveragePool", ["x"], **POOL, pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)],
        shape=XP,
    ),
    "avgpool-exclude-pad-ceil": Case(
        [
            node(
                "AveragePool",
                ["x"],
                kernel_shape=[3, 2],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                ceil_mode=1,
            )
        ],
        shape=XP,
    ),
    "avgpool-asymmetric": Case(
        [node("AveragePool", ["x"], **POOL, pads=[0, 2, 1, 0], count_include_pad=1)], shape=XP
    ),
    "avgpool-asymmetric-ceil": Case([node("AveragePool", ["x"], **ASYM)], shape=XP),
    "avgpool-same-upper": Case(
        [node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER")],
        shape=XP,
    ),
    "maxpool-ceil": Case([node("MaxPool", ["x"], **POOL, ceil_mode=1)], shape=XP),
    "maxpool-ceil-pads-dilation": Case(
        [
            node(
                "MaxPool",
                ["x"],
                kernel_shape=[2, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                dilations=[2, 1],
                ceil_mode=1,
            )
        ],
        shape=XP,
    ),
    "maxpool-asymmetric-ceil": Case([node("MaxPool", ["x"], **ASYM)], shape=XP),
    "maxpool-same-lower": Case(
        [node("MaxPool", ["x"], kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_LOWER")],
        shape=XP,
    ),
    "global-pools": Case(
        [
            node("GlobalMaxPool", ["x"], ["m"]),
            node("GlobalAveragePool", ["x"], ["a"]),
            node("Sub", ["m", "a"]),
        ]
    ),
    "conv-same-upper-stride": Case(
        [node("Conv", ["x", "w"], auto_pad="SAME_UPPER", strides=[2, 2])], inits={"w": W_CONV}
    ),
    "conv-same-lower": Case(
        [node("Conv", ["x", "w"], auto_pad="SAME_LOWER", strides=[2, 3])], inits={"w": W_CONV}
    ),
    "conv-dilated": Case(
        [node("Conv", ["x", "w"], pads=[2, 1, 2, 1], dilations=[2, 1])], inits={"w": W_CONV}
    ),
    "conv-asymmetric-pads": Case(
        [node("Conv", ["x", "w", "b"], pads=[0, 2, 1, 0], strides=[1, 2])],
        inits={"w": W_CONV, "b": f32(1, 2, 3, 4)},
    ),
    "conv-depthwise-valid": Case(
        [node("Conv", ["x", "w"], group=3, auto_pad="VALID")], inits={"w": W_DEPTH}
    ),
    "convtranspose-pads-outpad": Case(
        [
            node(
                "ConvTranspose",
                ["x", "w"],
                strides=[2, 2],
                pads=[1, 0, 0, 1],
                output_padding=[1, 0],
            )
        ],
        inits={"w": W_UP},
    ),
    "batchnorm": Case(
        [node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)],
        15,
        inits={**PARAMS, "m": f32(0.1, 0.2, 0.3), "v": f32(0.5, 1, 2)},
    ),
    "instancenorm": Case([node("InstanceNormalization", ["x", "s", "b"])], inits=PARAMS),
    "groupnorm-per-group-18": Case(
        [node("GroupNormalization", ["x", "s", "b"], num_groups=2)],
        18,
        (2, 4, 5, 5),
        {"s": f32(1.5, 0.5), "b": f32(0.1, -0.2)},
    ),
    "groupnorm-per-channel-21": Case(
        [node("GroupNormalization", ["x", "s", "b"], num_groups=2)],
        21,
        (2, 4, 5, 5),
        {"s": f32(1, 2, 3, 4), "b": f32(0, 1, 2, 3)},
    ),
    "layernorm-axis": Case(
        [node("LayerNormalization", ["x", "s", "b"], axis=-2)],
        17,
        inits={"s": randn(7, 9), "b": randn(7, 9)},
    ),
    "layernorm-broadcast-scale": Case(
        [node("LayerNormalization", ["x", "s"], axis=2, epsilon=1e-3)], 17, inits={"s": randn(1, 9)}
    ),
    "lrn": Case([node("LRN", ["x"], size=3, alpha=1e-2, beta=0.75, bias=2.0)]),
    "activations": Case(
        [
            node("HardSigmoid", ["x"], ["h"], alpha=0.3, beta=0.4),
            node("LeakyRelu", ["h"], ["l"], alpha=0.2),
            node("Selu", ["l"], ["s"]),
            node("HardSwish", ["s"], ["w"]),
            node("Elu", ["w"], ["e"], alpha=0.5),
            node("Mul", ["e", "x"], ["m"]),
            node("Softplus", ["m"], ["p"]),
            node("Mish", ["p"], ["q"]),
            node("Erf", ["q"], ["r"]),
            node("PRelu", ["r", "slope"]),
        ],
        18,
        inits={"slope": randn(3, 1, 1)},
    ),
    "gelu-tanh": Case([node("Gelu", ["x"], approximate="tanh")], 20),
    "reduce-mean-attr": Case([node("ReduceMean", ["x"], axes=[1, -1], keepdims=0)]),
    "reduce-mean-input": Case([node("ReduceMean", ["x", "a"])], 18, inits={"a": i64(2, 3)}),
    "reduce-sum-all": Case([node("ReduceSum", ["x"], keepdims=0)]),
    "reduce-sum-noop": Case(
        [node("ReduceSum", ["x", "a"], noop_with_empty_axes=1)], inits={"a": i64()}
    ),
    "reduce-max-l2": Case(
        [
            node("ReduceMax", ["x"], ["m"], axes=[2]),
            node("ReduceL2", ["x"], ["n"], axes=[2]),
            node("Add", ["m", "n"]),
        ]
    ),
    "split-equal-opset18": Case(
        [
            node("Split", ["x"], ["a", "b", "c"], axis=3, num_outputs=3),
            node("Concat", ["c", "a", "b"], axis=3),
        ],
        18,
    ),
    "split-sizes": Case(
        [node("Split", ["x", "s"], ["a", "b"], axis=2), node("Concat", ["b", "a"], axis=2)],
        inits={"s": i64(2, 5)},
    ),
    "gather-negative-scalar": Case(
        [node("Gather", ["x", "i"], ["g"], axis=1), node("Gather", ["g", "j"], axis=-1)],
        inits={"i": np.array(-1, dtype=np.int64), "j": i64(0, -2, 3)},
    ),
    "shape-chain-dynamic": Case(
        [
            node("Shape", ["x"], ["s"]),
            node("Gather", ["s", "zero"], ["n"]),
            node("Unsqueeze", ["n", "axis0"], ["n1"]),
            node("Concat", ["n1", "rest"], ["t"], axis=0),
            node("Reshape", ["x", "t"]),
        ],
        inits={"zero": np.array(0, dtype=np.int64), "axis0": i64(0), "rest": i64(-1)},
    ),
    "shape-start-end": Case(
        [
            node("Shape", ["x"], ["s"], start=1, end=-1),
            node("Cast", ["s"], ["f"], to=TensorProto.FLOAT),
            node("Mul", ["x", "f"]),
        ],
        15,
        shape=(2, 3, 5),
    ),
    "expand-bidirectional": Case([node("Expand", ["x", "s"])], inits={"s": i64(3, 1, 1, 1, 1)}),
    "tile-transpose": Case(
        [node("Tile", ["x", "r"], ["t"]), node("Transpose", ["t"], perm=[0, 2, 3, 1])],
        inits={"r": i64(1, 2, 1, 3)},
    ),
    "where-compare": Case(
        [
            node("Greater", ["x", "z"], ["c"]),
            node("Neg", ["x"], ["n"]),
            node("Where", ["c", "x", "n"]),
        ],
        inits={"z": f32(0.2)},
    ),
    "constants-of-shape-range": Case(
        [
            node("Shape", ["x"], ["s"]),
            node("ConstantOfShape", ["s"], ["o"], value=numpy_helper.from_array(f32(2.5))),
            node("Constant", [], ["c"], value_floats=[float(v) for v in range(1, 10)]),
            node("Constant", [], ["st"], value_int=0),
            node("Constant", [], ["lim"], value_int=9),
            node("Constant", [], ["d"], value_int=1),
            node("Range", ["st", "lim", "d"], ["r"]),
            node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
            node("Mul", ["o", "c"], ["oc"]),
            node("Add", ["oc", "rf"], ["orf"]),
            node("Mul", ["orf", "x"]),
        ]
    ),
    "integer-arithmetic": Case(
        [
            node("Cast", ["x"], ["i"], to=TensorProto.INT64),
            node("Div", ["i", "three"], ["q"]),
            node("Mod", ["i", "three"], ["m"]),
            node("Mod", ["i", "three"], ["fm"], fmod=1),
            node("Add", ["q", "m"], ["s"]),
            node("Sub", ["s", "fm"], ["t"]),
            node("Cast", ["t"], to=TensorProto.FLOAT),
        ],
        shape=(4, 5),
        inits={"three": i64(3)},
    ),
    "einsum-max-pow": Case(
        [
            node("Einsum", ["x", "w"], ["e"], equation="bchw,cd->bdhw"),
            node("Max", ["e", "x0", "e"], ["m"]),
            node("Pow", ["m", "two"]),
        ],
        inits={"w": randn(3, 3), "x0": f32(0.1), "two": f32(2)},
    ),
    "identity-dropout": Case(
        [
            node("Identity", ["x"], ["i"]),
            node("Dropout", ["i", "ratio"], ["d", "mask"]),
            node("Exp", ["d"]),
        ],
        inits={"ratio": scalar(0.5)},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_op_variant_matches_onnxruntime(case: str) -> None:
    model = CASES[case].model()
    x = np.random.default_rng(1).standard_normal(CASES[case].shape).astype(np.float32)
    theirs = run_ort(model, x)
    ours = convert(model)(torch.from_numpy(x)).detach().numpy()
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def test_argmax_output_matches_onnxruntime() -> None:
    model = graph_model([node("ArgMax", ["x"], axis=1, keepdims=0)], 13, out_type=TensorProto.INT64)
    x = np.random.default_rng(2).standard_normal((6, 5)).astype(np.float32)
    assert (convert(model)(torch.from_numpy(x)).numpy() == run_ort(model, x)).all()


@pytest.mark.parametrize(
    "case",
    ["pad-reflect", "pad-edge-crop", "slice-steps-negative", "avgpool-asymmetric",
     "maxpool-ceil-pads-dilation", "conv-same-upper-stride", "convtranspose-pads-outpad",
     "layernorm-broadcast-scale", "gather-negative-scalar"],
)  # fmt: skip
def test_gradients_of_rewritten_ops_match_finite_differences(case: str) -> None:
    """The ops built from other torch ops (index maps, flips, crops, masks) differentiate
    like the function they compute (float64 gradcheck against finite differences)."""
    module = convert(CASES[case].model()).double()
    x = torch.randn(CASES[case].shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,), eps=1e-6, atol=1e-5)


# -- refusals ------------------------------------------------------------------------------
def test_unsupported_ops_are_named_on_one_line() -> None:
    nodes = [
        node("TopK", ["x", "k"], ["v", "i"], axis=-1),
        node("TopK", ["v", "k"], ["v2", "i2"], axis=-1),
        node("NonMaxSuppression", ["v2", "v2"], ["n"]),
        node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
        node("FusedConv", ["nf", "w"], ["y"], domain="com.microsoft"),
    ]
    model = graph_model(nodes, 13, inits={"k": i64(2), "w": W_CONV})
    with pytest.raises(UnsupportedOnnxOp) as caught:
        convert(model)
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        "ONNX graph uses ops raigate cannot convert to torch: NonMaxSuppression (1 node), "
        "TopK (2 nodes), com.microsoft.FusedConv (1 node); audit it black-box (--mode black-box)"
    )
    assert caught.value.problems == ("NonMaxSuppression", "TopK", "com.microsoft.FusedConv")
    assert isinstance(caught.value, ModelLoadError)
    assert "TopK" not in SUPPORTED_OPS


def test_unsupported_attribute_values_and_outputs_are_named() -> None:
    nodes = [
        node("ConvTranspose", ["x", "w"], ["c"], auto_pad="SAME_UPPER"),
        node("LRN", ["c"], ["n"], size=4),
        node("MaxPool", ["n"], ["m", "idx"], kernel_shape=[2, 2]),
        node("Cast", ["idx"], ["f"], to=TensorProto.FLOAT),
        node("Add", ["m", "f"]),
    ]
    with pytest.raises(
        UnsupportedOnnxOp,
        match=r"ConvTranspose auto_pad='SAME_UPPER' \(1 node\), LRN size=4 \(1 node\), "
        r"MaxPool output 2 \(1 node\);",
    ):
        convert(graph_model(nodes, 13, inits={"w": W_UP}))


def test_nodes_the_first_output_does_not_need_are_dropped() -> None:
    nodes = [node("Relu", ["x"]), node("TopK", ["x", "k"], ["v", "i"], axis=-1)]
    model = graph_model(nodes, 13, inits={"k": i64(2)}, outputs=("y", "v"))
    x = torch.randn(2, 5)
    torch.testing.assert_close(convert(model)(x), torch.relu(x))


def test_graph_needing_two_inputs_is_refused() -> None:
    graph = helper.make_graph(
        [node("Add", ["x", "z"])],
        "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("x", "z")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    with pytest.raises(ModelLoadError, match="needs 2 inputs"):
        convert(helper.make_model(graph))


# -- max_logit_difference ------------------------------------------------------------------
def test_max_logit_difference_measures_a_known_offset() -> None:
    torch.manual_seed(0)
    net = calibrated(zoo.small_cnn(3))
    model = export(net)
    conv = convert(model)
    assert max_logit_difference(conv, session(model), SHAPE) < 1e-5
    with torch.no_grad():
        conv.classifier.bias[1] += 0.25  # shifts logit 1 of every input by exactly 0.25
    assert max_logit_difference(conv, session(model), SHAPE) == pytest.approx(0.25, abs=1e-5)


def test_max_logit_difference_with_fixed_batch_and_nhwc_layout() -> None:
    torch.manual_seed(0)

    class ChannelsLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = calibrated(zoo.small_cnn(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.permute(0, 3, 1, 2))

    net = ChannelsLast().eval()
    x = torch.randn(1, 32, 32, 3)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (x,), f, dynamo=False, input_names=["x"])  # batch fixed at 1
    model = onnx.load_from_string(f.getvalue())
    conv = convert(model)
    assert max_logit_difference(conv, session(model), SHAPE, samples=3, layout="NHWC") < 1e-5
    torch.testing.assert_close(conv(x), net(x), atol=1e-5, rtol=0)
