"""``raigate robustness`` and ``raigate harden smoothing`` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from raigate.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small batches: one intra-op thread avoids oversubscription on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def invoke(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args), catch_exceptions=False)
    return res.exit_code, res.output


def assert_user_error(code: int, out: str, *needles: str) -> None:
    assert code == 2, out
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if ln.startswith("raigate: error:")]
    assert len(lines) == 1, out
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("harden")
    code, text = invoke(
        "harden", "smoothing", "--model", "raigate.zoo:small_cnn", "--data", "demo:train",
        "--limit", "320", "--sigma", "0.25", "--epochs", "2", "--lr", "0.003",
        "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    assert code == 0, text
    assert "with Gaussian noise sigma=0.25 for 2 epoch(s) on 320 images" in text
    assert f"--smoothing-model {out / 'model.json'} --data demo:train" in text
    return out / "model.json"


def test_robustness_end_to_end_on_the_hardened_model(hardened: Path, tmp_path: Path) -> None:
    code, text = invoke(
        "robustness", "--model", str(hardened), "--data", "demo:test", "--sample", "32",
        "--eps", "4/255", "--norm", "linf,l2", "--pgd-steps", "2", "--smoothing-sigma", "0.25",
        "--eot-samples", "2", "--predict-n", "16", "--certify-n", "100", "--certify-n0", "10",
        "--certify-max-samples", "16", "--device", "cpu", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, text
    assert "attacks: about" in text
    assert "certify: 16 images x (10 selection + 100 estimation noise draws) = 1,760" in text
    assert "smoothed vs base (sigma=0.25; smoothed attacked with EOT m=2" in text
    assert "certified accuracy (CERTIFY, sigma=0.25, n0=10, n=100, alpha=0.001" in text
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["check"] == "robustness"
    rows = doc["metrics"]["attacks"]
    assert {(r["model"], r["attack"], r["norm"]) for r in rows} >= {
        ("base", "fgsm", "linf"), ("base", "pgd", "l2"), ("smoothed", "pgd", "linf"),
    }  # fmt: skip
    assert all(r["n"] == 32 for r in rows)
    assert doc["params"]["eps"] == [4 / 255] and doc["params"]["norms"] == ["linf", "l2"]
    assert {"abstain_rate", "average_certified_radius", "certification"} <= set(doc["metrics"])
    assert (tmp_path / "certification.csv").is_file()


def test_smoothing_model_defends_with_the_variant_and_attacks_the_original(
    hardened: Path, tmp_path: Path
) -> None:
    """Base rows attack --model; smoothed rows are exactly those of the variant smoothed on
    its own (same seed, same noise), so only the undefended side changes."""
    common = [
        "--data", "demo:test", "--sample", "24", "--eps", "4/255", "--pgd-steps", "2",
        "--smoothing-sigma", "0.25", "--eot-samples", "2", "--predict-n", "8", "--no-certify",
        "--device", "cpu",
    ]  # fmt: skip
    code, text = invoke(
        "robustness", "--model", "raigate.zoo:small_cnn", "--mean", "0.5,0.5,0.5",
        "--std", "0.5,0.5,0.5", "--smoothing-model", str(hardened), *common,
        "--out", str(tmp_path / "variant"),
    )  # fmt: skip
    assert code == 0, text
    assert f"smoothed of {hardened} vs base (sigma=0.25" in text
    code, text = invoke(
        "robustness", "--model", str(hardened), *common, "--out", str(tmp_path / "self")
    )
    assert code == 0, text
    variant = json.loads((tmp_path / "variant" / "result.json").read_text())
    alone = json.loads((tmp_path / "self" / "result.json").read_text())
    hardened_digest = alone["model"]["digest"]
    assert variant["model"]["digest"] != hardened_digest  # base rows: the untrained original
    (ref,) = variant["metrics"]["smoothing_model"]
    assert ref["digest"] == hardened_digest and ref["same_as_audited"] is False
    assert alone["metrics"]["smoothing_model"][0]["same_as_audited"] is True

    def rows(doc: dict, model: str) -> list[tuple]:
        return [
            (r["attack"], r["norm"], r["eps"], r["correct"])
            for r in doc["metrics"]["attacks"]
            if r["model"] == model
        ]

    assert rows(variant, "smoothed") == rows(alone, "smoothed")
    assert "f = the variant" in variant["params"]["definitions"]["smoothed_model"]


def test_smoothing_model_must_match_classes(hardened: Path, tmp_path: Path) -> None:
    label_map = tmp_path / "map.json"
    label_map.write_text('{"a": "female", "b": "male"}')
    code, out = invoke(
        "robustness", "--model", "raigate.zoo:small_cnn", "--class-names", "a,b,c",
        "--data", "demo:test", "--limit", "4", "--label-map", str(label_map),
        "--smoothing-sigma", "0.25", "--smoothing-model", str(hardened), "--out", str(tmp_path),
    )  # fmt: skip
    assert_user_error(code, out, "smoothing model", "differ from the audited model's")
    code, out = invoke(
        "robustness", "--model", "raigate.zoo:small_cnn", "--data", "demo:test", "--limit", "4",
        "--smoothing-model", str(hardened), "--out", str(tmp_path),
    )  # fmt: skip
    assert_user_error(code, out, "--smoothing-model needs --smoothing-sigma")


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--eps=1/255,-1/255"], ["--eps values must be >= 0, got '-1/255'"]),
        (["--eps", "a/b"], ["--eps: 'a/b' is not a number or a fraction like 8/255"]),
        (["--eps", "4/0"], ["--eps: '4/0' divides by zero"]),
        (["--norm", "lnf"], ["--norm must be linf or l2", "'lnf'"]),
        (
            ["--smoothing-sigma", "0.25", "--certify-n0", "200", "--certify-n", "100"],
            ["--certify-n0 (200) must not exceed --certify-n (100)"],
        ),
        (["--smoothing-sigma", "0"], ["--smoothing-sigma", "greater than 0"]),
        (["--attacks", "fgsm,cw"], ["--attacks", "unknown attack 'cw'"]),
        (["--attacks", "art:SquareAtack"], ["unknown ART evasion attack", "SquareAttack"]),
        (["--attacks", "art:SquareAttack", "--attack-params", "{bad"], ["--attack-params"]),
        (["--alpha", "0.9"], ["--alpha"]),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str], needles: list[str], tmp_path: Path
) -> None:
    code, out = invoke(
        "robustness", "--model", "raigate.zoo:small_cnn", "--data", "demo:test", "--limit", "4",
        "--out", str(tmp_path), *args,
    )  # fmt: skip
    assert_user_error(code, out, *needles)
    assert not (tmp_path / "result.json").exists()


def test_harden_bad_inputs(tmp_path: Path) -> None:
    base = ["harden", "smoothing", "--model", "raigate.zoo:small_cnn", "--data", "demo:train"]
    code, out = invoke(*base, "--limit", "4", "--sigma", "-0.5", "--out", str(tmp_path))
    assert_user_error(code, out, "--sigma must be > 0")
    code, out = invoke(
        *base, "--limit", "4", "--sigma", "0.5", "--epochs", "0", "--out", str(tmp_path)
    )
    assert_user_error(code, out, "--epochs must be >= 1")
