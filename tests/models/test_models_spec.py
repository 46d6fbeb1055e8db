"""`raigate models spec`: writes a spec file that loads back to the same network, and
never leaves a spec behind that would not load."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

import raigate
from cli_helpers import assert_user_error, invoke
from raigate.zoo import small_cnn


def _weights(tmp: Path, norm: str = "none") -> Path:
    torch.manual_seed(3)
    net = small_cnn(num_classes=3, norm=norm)
    path = tmp / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    return path


def test_spec_loads_back_to_the_same_network(tmp_path: Path) -> None:
    w = _weights(tmp_path, norm="group")
    out = tmp_path / "model.json"
    code, output = invoke(
        "models", "spec", "raigate.zoo:small_cnn", "--weights", str(w),
        "--class-names", "a,b,c", "--input-size", "3,32,32", "--mean", "0.5,0.5,0.5",
        "--std", "0.25,0.25,0.25", "--kwargs", '{"norm": "group"}',
        "--preprocess", "resize=40,crop=32", "--out", str(out),
    )  # fmt: skip
    assert code == 0, output
    assert f"wrote {out}: raigate.zoo:small_cnn, 3 classes, input 3x32x32" in output
    doc = json.loads(out.read_text())
    assert doc["weights"] == "w.safetensors"  # beside the spec: relative, movable together
    assert doc["kwargs"] == {"norm": "group"}
    assert doc["preprocess"] == {"resize": [40, 40], "crop": [32, 32]}
    # independent: the factory built by hand with the same weights
    torch.manual_seed(0)
    net = small_cnn(num_classes=3, norm="group")
    from safetensors.torch import load_file

    net.load_state_dict(load_file(w))
    net.eval()
    model = raigate.load_model(str(out))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = net((x - 0.5) / 0.25)
    assert torch.allclose(model.logits(x), want, atol=1e-6)
    assert list(model.class_names) == ["a", "b", "c"] and tuple(model.input_shape) == (3, 32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "w.safetensors"]


def test_refusals_leave_nothing_behind(tmp_path: Path) -> None:
    w = _weights(tmp_path)
    out = tmp_path / "m.json"
    base = ["models", "spec", "raigate.zoo:small_cnn", "--weights", str(w), "--input-size",
            "3,32,32", "--out", str(out)]  # fmt: skip
    # weights for 3 classes, 2 class names: the load fails, no spec is kept
    assert_user_error(*invoke(*base, "--class-names", "a,b"), "do not fit")
    assert_user_error(*invoke(*base, "--class-names", "a,b,c", "--kwargs", "{norm"), "--kwargs")
    assert_user_error(*invoke(*base), "--class-names and --input-size")
    assert_user_error(
        *invoke("models", "spec", "onnx:m.onnx", "--out", str(out), "--class-names", "a"),
        "pkg.module:factory",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    assert invoke(*base, "--class-names", "a,b,c")[0] == 0
    assert_user_error(*invoke(*base, "--class-names", "a,b,c"), "--force")
    assert invoke(*base, "--class-names", "a,b,c", "--force")[0] == 0
