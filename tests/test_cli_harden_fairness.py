"""``raigate harden fairness`` through typer's CliRunner: the printed fit, the files it
writes, a black-box model (threshold runs on it, fine-tuning refuses it) and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import raigate
from cli_helpers import assert_user_error, invoke

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def spec(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from raigate.models.loaders import write_model_spec
    from raigate.models.weights import save_safetensors

    folder = tmp_path_factory.mktemp("model")
    weights = save_safetensors(trained.net, folder / "gender.safetensors")
    return write_model_spec(
        folder / "gender.json", factory="raigate.zoo:small_cnn", kwargs={"num_classes": 2},
        weights=weights, class_names=list(trained.class_names), input_shape=[3, 32, 32],
        mean=[0.5] * 3, std=[0.5] * 3,
    )  # fmt: skip


@pytest.fixture(scope="module")
def onnx_file(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from raigate.models.onnx import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "gender.onnx"
    return export_onnx(trained.net, path, class_names=list(trained.class_names))


def test_reweight_prints_the_groups_and_writes_a_reloadable_variant(
    spec: Path, tmp_path: Path
) -> None:
    code, out = invoke(
        "harden", "fairness", "--model", str(spec), "--data", "demo:train", "--sample", "300",
        "--attribute", "race", "--method", "reweight", "--epochs", "1",
        "--out", str(tmp_path / "fair"),
    )  # fmt: skip
    assert code == 0, out
    assert "fine-tuned" in out and "by reweight over race (7 groups) for 1 epoch(s)" in out
    assert "Southeast Asian" in out and "weight" in out
    record = json.loads((tmp_path / "fair" / "harden.json").read_text())
    totals = {g["group"]: g["total"] for g in record["groups"]}
    assert max(totals.values()) == pytest.approx(min(totals.values()))  # 300 / 7 each
    assert min(totals.values()) == pytest.approx(300 / 7)
    digest = next(line.split()[1] for line in out.splitlines() if line.startswith("digest"))
    assert raigate.load_model(str(tmp_path / "fair" / "model.json")).digest == digest


def test_threshold_post_processes_a_black_box_model(onnx_file: Path, tmp_path: Path) -> None:
    model = ["--model", f"onnx:{onnx_file}", "--mode", "black-box", "--mean", "0.5", "--std", "0.5"]
    code, out = invoke(
        "harden", "fairness", *model, "--data", "demo:train", "--sample", "400",
        "--attribute", "race", "--method", "threshold", "--constraint", "demographic_parity",
        "--out", str(tmp_path / "thr"),
    )  # fmt: skip
    assert code == 0, out
    assert "needs the sensitive attribute at prediction time" in out
    variant = raigate.load_model(str(tmp_path / "thr" / "model.json"))
    assert variant.mode == "black-box" and variant.postprocess.constraint == "demographic_parity"
    code, out = invoke(
        "fairness", "--model", str(tmp_path / "thr" / "model.json"), "--data", "demo:test",
        "--sample", "200", "--sensitive", "race", "--intersections", "none", "--n-boot", "200",
        "--no-plots", "--out", str(tmp_path / "audit"),
    )  # fmt: skip
    assert code in (0, 1), out
    result = json.loads((tmp_path / "audit" / "result.json").read_text())
    assert result["model"]["digest"] == variant.digest and result["mode"] == "black-box"
    code, out = invoke(
        "explain", "--model", str(tmp_path / "thr" / "model.json"), "--data", "demo:test",
        "--limit", "4", "--out", str(tmp_path / "ex"),
    )  # fmt: skip
    assert_user_error(code, out, "sensitive attribute(s) race", "audit the base model")

    code, out = invoke(
        "harden", "fairness", *model, "--data", "demo:train", "--limit", "32",
        "--attribute", "race", "--method", "reweight", "--out", str(tmp_path / "rw"),
    )  # fmt: skip
    assert_user_error(code, out, "black-box", "harden fairness --method reweight")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--attribute", "skin", "--method", "reweight"], ["unknown column(s) ['skin']", "race"]),
        (["--attribute", "race", "--method", "bogus"], ["--method must be one of"]),
        (
            ["--attribute", "race", "--method", "threshold", "--task", "age"],
            ["needs a binary task", "9 classes"],
        ),
        (
            ["--attribute", "race", "--method", "threshold", "--constraint", "parity"],
            ["--constraint must be one of"],
        ),
        (["--attribute", "race", "--method", "threshold"], ["cannot be rebuilt identically"]),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str], needles: list[str], tmp_path: Path
) -> None:
    model = ["--model", "raigate.zoo:small_cnn", "--random-init"]
    code, out = invoke(
        "harden", "fairness", *model, "--data", "demo:train", "--limit", "64", *args,
        "--out", str(tmp_path / "x"),
    )  # fmt: skip
    assert_user_error(code, out, *needles)
