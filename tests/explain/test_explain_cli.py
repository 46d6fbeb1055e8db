"""``raigate explain`` through typer's CliRunner: output, files, exit codes 0/1/2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import assert_user_error, invoke

CHEAP = [
    "--n-samples", "4", "--sanity-samples", "2", "--sanity-layers", "2",
    "--sensitivity-samples", "2", "--n-steps", "8",
]  # fmt: skip


def test_explain_writes_result_and_figures(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = invoke(
        "explain", "--model", "raigate.zoo:small_cnn", "--data", "demo:test", "--limit", "40",
        "--random-init",
        "--methods", "saliency,gradcam,integrated-gradients", "--out", str(out), *CHEAP,
    )  # fmt: skip
    assert code == 0, text
    assert "explained 4 images (SYNTHETIC data)" in text
    assert "faithfulness" in text and "sanity" in text and "agreement" in text
    assert "Integrated Gradients completeness" in text
    result = json.loads((out / "result.json").read_text())
    assert result["check"] == "explanations"
    assert [r["method"] for r in result["metrics"]["faithfulness"]] == [
        "saliency",
        "gradcam",
        "integrated-gradients",
    ]
    assert result["params"]["n_steps"] == 8
    for name in result["artifacts"]:
        assert (out / name).is_file()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--methods", "saliency,lime"], ["--methods", "unknown method 'lime'", "saliency"]),
        (["--layer", "features.99"], ["--layer 'features.99' is not a module", "features.8"]),
        (["--n-samples", "0"], ["--n-samples", "greater than 0"]),
        (["--baseline", "gray"], ["--baseline", "'black', 'blur' or 'uniform'"]),
        (["--target", "truth"], ["--target", "'predicted' or 'label'"]),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    code, text = invoke(
        "explain", "--model", "raigate.zoo:small_cnn", "--data", "demo:test", "--limit", "8",
        "--random-init",
        "--out", str(tmp_path / "o"), *args,
    )  # fmt: skip
    assert_user_error(code, text, *needles)


def test_a_failed_sanity_gate_exits_1(tmp_path: Path) -> None:
    # a threshold no correlation can get below: every method "fails" the randomization test
    code, text = invoke(
        "explain", "--model", "raigate.zoo:small_cnn", "--data", "demo:test", "--limit", "8",
        "--random-init",
        "--methods", "saliency", "--max-sanity-spearman", "-1", "--out", str(tmp_path / "o"),
        *CHEAP,
    )  # fmt: skip
    assert code == 1, text
    assert "[FAIL] saliency: after re-initializing all 4 parameter layers" in text
    assert (tmp_path / "o" / "result.json").is_file()


def test_forward_only_methods_and_their_options(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = invoke(
        "explain", "--model", "raigate.zoo:small_cnn", "--data", "demo:test", "--limit", "20",
        "--random-init", "--methods", "feature-ablation,kernelshap", "--patch-size", "8",
        "--kernelshap-samples", "32", "--out", str(out), *CHEAP,
    )  # fmt: skip
    assert code in (0, 1), text
    result = json.loads((out / "result.json").read_text())
    assert result["mode"] == "white-box" and result["params"]["methods"] == [
        "feature-ablation",
        "kernelshap",
    ]
    assert result["params"]["methods_settings"]["kernelshap"] == {
        "baseline": "black", "patch_size": 8, "n_samples": 32, "seed": 0,
    }  # fmt: skip
    assert {r["method"] for r in result["metrics"]["sanity"]} == {"feature-ablation", "kernelshap"}
