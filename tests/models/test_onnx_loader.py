"""``onnx:FILE`` and ``pyfn:`` models: the interface read from the graph, outputs detected,
layouts and fixed batches, white-box results identical to the source torch model, black-box
results identical to onnxruntime's, and one-line errors for bad files.

ONNX files are exported from the trained demo ``small_cnn`` (``torch.onnx.export``) or
written with ``onnx.helper``; every number is compared with the source model or with
onnxruntime called directly.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import raigate
from cli_helpers import assert_user_error, invoke
from raigate.errors import ConfigError, ModelLoadError, SpecError

pytestmark = pytest.mark.usefixtures("one_thread")


def export(
    module: torch.nn.Module,
    path: Path,
    *,
    shape: tuple[int, ...] = (3, 32, 32),
    dynamic: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """``torch.onnx.export`` (the fast TorchScript exporter) with a dynamic batch axis."""
    x = torch.rand(1 if not dynamic else 2, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (x,), str(path), dynamo=False, input_names=["images"],
            output_names=["scores"],
            dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}} if dynamic else None,
        )  # fmt: skip
    if metadata:
        proto = onnx.load(str(path))
        for k, v in metadata.items():
            proto.metadata_props.add(key=k, value=v)
        onnx.save(proto, str(path))
    return path


class _Normalized(torch.nn.Module):
    """The trained demo model's net with its normalization, as a team would export it."""

    def __init__(self, model: Any, softmax: bool = False, nhwc: bool = False) -> None:
        super().__init__()
        self.model, self.softmax, self.nhwc = model, softmax, nhwc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        out = self.model.net((x - 0.5) / 0.5)
        return out.softmax(1) if self.softmax else out


def evaluate(model: Any, data: Any) -> Any:
    from raigate.audit import evaluate as ev

    return ev.run(model, data, ev.EvaluateParams(progress=False))


@pytest.fixture(scope="module")
def data() -> Any:
    return raigate.load_data("demo:test", limit=64)


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def test_black_box_matches_onnxruntime_and_reads_metadata(
    trained: Any, data: Any, tmp_path: Path
) -> None:
    names = list(trained.class_names)
    path = export(_Normalized(trained), tmp_path / "m.onnx",
                  metadata={"class_names": ",".join(names)})  # fmt: skip
    model = raigate.load_model(f"onnx:{path}", mode="black-box")
    assert model.mode == "black-box" and not model.capabilities.gradients
    assert model.class_names == tuple(names) and model.input_shape == (3, 32, 32)
    assert model.details["output"] == {"name": "scores", "kind": "logits", "detected": True}
    x = torch.rand(5, 3, 32, 32)
    direct = _ort(path, x.numpy())
    assert np.allclose(model.logits(x).numpy(), direct, atol=1e-6)
    # the digest pins the weights: the same for the same initializers in any mode
    again = raigate.load_model(str(path), mode="black-box")
    assert again.digest == model.digest and model.files[0]["sha256"]
    result = evaluate(model, data)
    assert result.mode == "black-box"
    torch_acc = evaluate(trained, data).metric("accuracy")
    assert result.metric("accuracy") == torch_acc


def test_probability_outputs_are_detected_and_logged(trained: Any, tmp_path: Path) -> None:
    path = export(_Normalized(trained, softmax=True), tmp_path / "p.onnx")
    model = raigate.load_model(f"onnx:{path}", class_names=["f", "m"], mode="black-box")
    assert model.details["output"]["kind"] == "probs"
    x = torch.rand(3, 3, 32, 32)
    expected = torch.log_softmax(trained.logits(x), 1)
    assert torch.allclose(model.logits(x), expected, atol=1e-5)
    declared = raigate.load_model(str(path), class_names=["f", "m"], outputs="logits",
                                  mode="black-box")  # fmt: skip
    assert declared.details["output"] == {"name": "scores", "kind": "logits", "detected": False}


def test_nhwc_and_fixed_batch_of_one(trained: Any, tmp_path: Path) -> None:
    path = export(_Normalized(trained, nhwc=True), tmp_path / "nhwc.onnx", shape=(32, 32, 3),
                  dynamic=False)  # fmt: skip
    model = raigate.load_model(f"onnx:{path}", class_names=["f", "m"], mode="black-box")
    assert model.preprocess.layout == "nhwc" and model.input_shape == (3, 32, 32)
    assert model.details["static_batch"] == 1
    x = torch.rand(7, 3, 32, 32)  # looped one image at a time
    assert torch.allclose(model.logits(x), trained.logits(x), atol=1e-4)
    assert "NHWC 32x32x3" in model.pipeline


def _graph_file(path: Path, nodes: list[Any], inp: Any, out: Any, inits: list[Any]) -> Path:
    graph = helper.make_graph(nodes, "g", [inp], [out], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    return path


def test_bad_files_exit_2_with_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf at all" * 10)
    assert_user_error(*invoke("models", "inspect", f"onnx:{junk}", "--class-names", "a,b"),
                      "junk.onnx", "not an ONNX model")  # fmt: skip
    # a rank-2 input: a tabular model, not an image classifier
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 2], np.ones(8, np.float32).tolist())
    flat = _graph_file(
        tmp_path / "flat.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"])],
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2]), [w],
    )  # fmt: skip
    assert_user_error(*invoke("models", "inspect", str(flat), "--class-names", "a,b"),
                      "flat.onnx", "rank 2")  # fmt: skip
    missing = tmp_path / "none.onnx"
    assert_user_error(*invoke("models", "inspect", f"onnx:{missing}"), "not found")
    with pytest.raises(SpecError, match="applies to onnx"):
        raigate.load_model("raigate.zoo:small_cnn", random_init=True, class_names=["a", "b"],
                           input_size=(3, 32, 32), mode="black-box")  # fmt: skip
    with pytest.raises(ConfigError, match="--mode"):
        raigate.load_model(str(flat), class_names=["a", "b"], mode="grey-box")


def test_wrong_width_names_the_fix(trained: Any, tmp_path: Path) -> None:
    path = export(_Normalized(trained), tmp_path / "m.onnx")
    expected = r"outputs 2 logits but 3 class names were given; pass matching --class-names$"
    with pytest.raises(ModelLoadError, match=expected):
        raigate.load_model(f"onnx:{path}", class_names=["a", "b", "c"], mode="black-box")


# -- served models (pyfn:) ---------------------------------------------------------------------
PREDICTOR = '''
import numpy as np
import onnxruntime as ort

_s = ort.InferenceSession({path!r}, providers=["CPUExecutionProvider"])
calls = []


def predict(batch):
    """A served model's client: uint8 RGB NHWC in, probabilities out."""
    assert batch.dtype == np.uint8 and batch.shape[-1] == 3
    calls.append(len(batch))
    x = batch.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    z = _s.run(None, {{"images": x}})[0]
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
'''


def test_pyfn_needs_trust_and_is_black_box(trained: Any, data: Any, cwd: Path) -> None:
    path = export(_Normalized(trained), cwd / "served.onnx")
    (cwd / "client.py").write_text(PREDICTOR.format(path=str(path)))
    code, out = invoke("models", "inspect", "pyfn:client:predict", "--class-names", "f,m",
                       "--input-size", "3,32,32")  # fmt: skip
    assert_user_error(code, out, "--trust-code", "client:predict")
    code, out = invoke("models", "inspect", "pyfn:client:predict", "--class-names", "f,m",
                       "--input-size", "3,32,32", "--trust-code")  # fmt: skip
    assert code == 0, out
    assert "mode         black-box" in out and "uint8 RGB NHWC" in out
    model = raigate.load_model("pyfn:client:predict", data=data, trust_code=True)
    assert model.details["output"]["kind"] == "probs"
    x = torch.rand(6, 3, 32, 32)
    q = torch.round(x * 255) / 255  # what the predictor receives
    assert torch.allclose(model.logits(x), torch.log_softmax(trained.logits(q), 1), atol=1e-5)
    with pytest.raises(ConfigError, match="own normalization"):
        raigate.load_model("pyfn:client:predict", data=data, trust_code=True, mean=[0.5])
    result = evaluate(model, data)
    assert result.mode == "black-box"
    assert result.metric("accuracy") == pytest.approx(
        evaluate(trained, data).metric("accuracy"), abs=2 / len(data)
    )  # uint8 quantization may flip a borderline image or two


# -- white-box: the torch conversion ----------------------------------------------------------
def test_white_box_equals_the_source_model(trained: Any, data: Any, tmp_path: Path) -> None:
    """The issue's bar: identical clean accuracy and identical FGSM accuracy."""
    from raigate.audit import robustness

    path = export(_Normalized(trained), tmp_path / "m.onnx")
    model = raigate.load_model(f"onnx:{path}", data=data)  # auto: converts, checks, white-box
    assert model.mode == "white-box" and model.capabilities.gradients
    conv = model.details["conversion"]
    assert conv["converted"] and conv["max_abs_difference"] <= conv["tolerance"]
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    model.logits(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    params = robustness.RobustnessParams(attacks=["fgsm"], eps=[2 / 255, 8 / 255], certify=False,
                                         large_eps_check=False, progress=False)  # fmt: skip
    ours = robustness.run(model, data, params)
    theirs = robustness.run(trained, data, params)
    assert ours.mode == "white-box"
    acc = {(r["attack"], r["eps"]): r["accuracy"] for r in ours.metrics["attacks"]}
    ref = {(r["attack"], r["eps"]): r["accuracy"] for r in theirs.metrics["attacks"]}
    assert acc == ref
    assert evaluate(model, data).metric("accuracy") == evaluate(trained, data).metric("accuracy")


def _with_unsupported_op(src: Path, dst: Path) -> Path:
    """The exported graph with its logits passed through LpNormalization (onnxruntime runs it,
    raigate's converter does not know it)."""
    proto = onnx.load(str(src))
    out = proto.graph.output[0]
    inner = out.name + "_raw"
    for node in proto.graph.node:
        node.output[:] = [inner if o == out.name else o for o in node.output]
    proto.graph.node.append(helper.make_node("LpNormalization", [inner], [out.name], axis=1))
    onnx.save(proto, str(dst))
    return dst


def test_unsupported_op_white_box_exits_2_auto_falls_back(
    trained: Any, data: Any, tmp_path: Path
) -> None:
    path = _with_unsupported_op(export(_Normalized(trained), tmp_path / "m.onnx"),
                                tmp_path / "lp.onnx")  # fmt: skip
    code, out = invoke("models", "inspect", f"onnx:{path}", "--class-names", "f,m",
                       "--mode", "white-box")  # fmt: skip
    assert_user_error(code, out, "LpNormalization", "--mode black-box")
    code, out = invoke("models", "inspect", f"onnx:{path}", "--class-names", "f,m")
    assert code == 0, out
    assert "black-box, queries only (ONNX graph uses ops raigate cannot convert" in out
    assert "mode         black-box" in out
    model = raigate.load_model(f"onnx:{path}", data=data)
    assert model.mode == "black-box"
    assert not model.details["conversion"]["converted"]
