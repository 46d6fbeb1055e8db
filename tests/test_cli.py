"""The CLI through typer's CliRunner: every command, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from cli_helpers import assert_user_error, invoke
from raigate import __version__


def test_version_and_help() -> None:
    code, out = invoke("--version")
    assert code == 0 and out.strip() == f"raigate {__version__}"
    code, out = invoke("--help")
    assert code == 0
    for cmd in ("models", "data", "evaluate", "demo"):
        assert cmd in out


def test_python_dash_m() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "raigate", "--version"], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0 and res.stdout.strip() == f"raigate {__version__}"


def test_models_inspect_prints_digest_and_capabilities(tmp_path: Path) -> None:
    from raigate.models.base import state_digest
    from raigate.zoo import small_cnn

    net = small_cnn(num_classes=3)
    w = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(w))
    code, out = invoke(
        "models",
        "inspect",
        "raigate.zoo:small_cnn",
        "--weights",
        str(w),
        "--class-names",
        "a,b,c",
        "--input-size",
        "3,32,32",
    )
    assert code == 0, out
    assert "classes      3: a, b, c" in out
    assert "input shape  3x32x32" in out
    assert f"parameters   {sum(p.numel() for p in net.parameters()):,}" in out
    assert "gradients=yes" in out
    assert state_digest(net.state_dict().items()) in out
    code, out = invoke(
        "models",
        "inspect",
        "raigate.zoo:small_cnn",
        "--weights",
        str(w),
        "--class-names",
        "a,b,c",
        "--input-size",
        "3,32,32",
        "--json",
    )
    assert json.loads(out)["class_names"] == ["a", "b", "c"]


def test_data_inspect_counts_per_attribute() -> None:
    code, out = invoke("data", "inspect", "demo:test", "--json")
    assert code == 0, out
    info = json.loads(out)
    assert info["synthetic"] is True
    assert sum(info["counts"]["race"].values()) == info["n"]
    assert len(info["counts"]["race"]) == 7 and len(info["counts"]["age"]) == 9
    code, out = invoke("data", "inspect", "demo:test", "--sample", "100")
    assert code == 0 and "samples   100" in out and "SYNTHETIC" in out and "by race:" in out


def test_evaluate_writes_result_and_gates(tmp_path: Path) -> None:
    out_dir = tmp_path / "eval"
    code, out = invoke(
        "evaluate",
        "--model",
        "raigate.zoo:small_cnn",
        "--random-init",
        "--data",
        "demo:test",
        "--limit",
        "64",
        "--out",
        str(out_dir),
    )
    assert code == 0, out
    doc = json.loads((out_dir / "result.json").read_text())
    assert doc["check"] == "evaluate" and doc["schema_version"] == "1"
    assert {"class", "n", "accuracy"} <= set(doc["metrics"]["per_class"][0])
    assert doc["data"]["synthetic"] is True and doc["metrics"]["n"] == 64
    assert doc["model"]["random_init"] is True  # no weights: said in the result and on stderr
    assert "raigate.zoo:small_cnn (RANDOM INIT): no weights" in out
    assert (out_dir / "predictions.csv").exists()
    code, out = invoke(
        "evaluate",
        "--model",
        "raigate.zoo:small_cnn",
        "--random-init",
        "--data",
        "demo:test",
        "--limit",
        "64",
        "--out",
        str(out_dir),
        "--min-accuracy",
        "1.0",
    )
    assert code == 1, out
    assert "[FAIL]" in out and "below the required 1.0000" in out


# -- one test per bad-input class: exit 2, one line naming the file or field --------------
def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    code, out = invoke("data", "inspect", f"fairface:{missing}")
    assert_user_error(code, out, str(missing))


def test_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()
    code, out = invoke("data", "inspect", f"fairface:{tmp_path}:val")
    assert_user_error(code, out, "fairface_label_val.csv")


def test_missing_csv_column(tmp_path: Path) -> None:
    f = tmp_path / "data.csv"
    f.write_text("path,group\na.png,x\n")
    code, out = invoke("data", "inspect", f"csv:{f}")
    assert_user_error(code, out, "label", "data.csv")


@pytest.mark.parametrize("workers", ["0", "1"])
def test_unreadable_image_names_the_file(tmp_path: Path, workers: str) -> None:
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    f = tmp_path / "data.csv"
    f.write_text("path,label\ngood.png,a\nbroken.png,b\n")
    code, out = invoke(
        "evaluate",
        "--model",
        "raigate.zoo:small_cnn",
        "--random-init",
        "--data",
        f"csv:{f}",
        "--input-size",
        "3,8,8",
        "--out",
        str(tmp_path / "o"),
        "--workers",
        workers,
    )
    assert_user_error(code, out, "broken.png")
    assert not (tmp_path / "o" / "result.json").exists()


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    sd = {"conv9.weight": torch.zeros(1), "linear.bias": torch.zeros(2)}
    w = tmp_path / "bad.safetensors"
    save_file(sd, str(w))
    code, out = invoke(
        "models",
        "inspect",
        "raigate.zoo:small_cnn",
        "--weights",
        str(w),
        "--class-names",
        "a,b",
        "--input-size",
        "3,32,32",
    )
    assert_user_error(code, out, "bad.safetensors", "conv9.weight")


@pytest.mark.parametrize(
    ("group", "spec", "needle"),
    [
        ("data", "imagenet:/x", "unknown data spec"),
        ("models", "model.tflite", "unknown model spec"),
    ],
)
def test_unknown_spec_scheme(group: str, spec: str, needle: str) -> None:
    code, out = invoke(group, "inspect", spec)
    assert_user_error(code, out, needle, spec)


def test_bad_option_value() -> None:
    code, out = invoke(
        "models",
        "inspect",
        "raigate.zoo:small_cnn",
        "--class-names",
        "a,b",
        "--input-size",
        "3,x,32",
    )
    assert_user_error(code, out, "--input-size")


def test_internal_error_exits_3_without_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr("raigate.data.load_data", boom)
    code, out = invoke("data", "inspect", "demo")
    assert code == 3 and "internal error: RuntimeError: kaboom" in out
    assert "Traceback" not in out
