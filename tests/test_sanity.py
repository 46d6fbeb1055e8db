"""Warnings with their likely cause for runs that would otherwise be silently wrong: a 0-255
normalization, accuracy at chance, a --limit that misses classes. Each is printed by the CLI
as one ``raigate: warning:`` line and recorded as a ``warn`` finding in result/report.json."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import raigate
from raigate.audit import evaluate, fairness, robustness
from raigate.cli import app
from raigate.models.weights import save_safetensors
from raigate.results import CheckResult
from raigate.sanity import (
    CHANCE_MARGIN,
    SCALE_RATIO,
    SCALE_SAMPLES,
    RaigateWarning,
    chance_findings,
    input_scale_findings,
)
from raigate.zoo import small_cnn

runner = CliRunner()
BYTE_MEAN, BYTE_STD = [123.7, 116.3, 103.5], [58.4, 57.1, 57.4]  # ImageNet on 0-255 pixels
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def warning_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("raigate: warning: ")]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# -- 0-255 normalization ------------------------------------------------------------------------
def test_byte_scale_statistics_warn_with_the_fix() -> None:
    net = small_cnn(2)
    with pytest.warns(RaigateWarning, match="look like statistics of 0-255 pixels") as got:
        model = raigate.wrap(
            net, class_names=["a", "b"], input_shape=(3, 32, 32), mean=BYTE_MEAN, std=BYTE_STD
        )
    assert len(got) == 1
    (w,) = model.warnings
    assert w.id == "model.normalization_scale" and w.severity == "warn" and w.value == 123.7
    # the suggested values are the given ones over 255: ImageNet's own statistics
    fixed = [round(v / 255, 4) for v in BYTE_MEAN + BYTE_STD]
    assert fixed == [0.4851, 0.4561, 0.4059, 0.229, 0.2239, 0.2251]
    assert "--mean 0.4851,0.4561,0.4059 --std 0.229,0.2239,0.2251" in w.message
    assert model.describe()["warnings"][0]["id"] == "model.normalization_scale"


@pytest.mark.parametrize(
    ("mean", "std", "fires"),
    [
        (IMAGENET_MEAN, IMAGENET_STD, False),
        ([0.5], [0.5], False),
        (None, None, False),  # identity: mean 0, std 1
        ([0.5], [1.0], False),
        ([103.9, 116.8, 123.7], [1.0], True),  # Caffe-style: mean subtraction on 0-255 pixels
        ([0.0], [255.0], True),
    ],
)
def test_normalization_rule(mean: list[float] | None, std: list[float] | None, fires: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error" if not fires else "ignore", RaigateWarning)
        model = raigate.wrap(
            small_cnn(2), class_names=["a", "b"], input_shape=(3, 32, 32), mean=mean, std=std
        )
    assert bool(model.warnings) is fires


# -- accuracy at chance --------------------------------------------------------------------------
def test_chance_rule_by_hand() -> None:
    labels = np.arange(1000) % 10  # 10 balanced classes: chance 0.1, bar 0.1 + 0.1 * 0.9
    (f,) = chance_findings("evaluate", labels == 0, labels, 10)  # 100 of 1000 right
    # Wilson 95% upper bound at p=0.1, n=1000, z=1.959964: centre 0.101531, half 0.018621
    z, n, p = 1.959964, 1000, 0.1
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    assert f.value == pytest.approx(centre + half, abs=1e-6)
    assert f.value == pytest.approx(0.12015, abs=1e-4)
    assert f.threshold == pytest.approx(0.19) and CHANCE_MARGIN == 0.1
    assert f.message.startswith("accuracy 0.10 is at chance for 10 classes")
    assert "check --mean/--std, --class-names order and --label-map" in f.message
    # 20% right: the upper bound (about 0.226) clears 0.19, so no warning
    assert chance_findings("evaluate", labels < 2, labels, 10) == []
    # the same 10% on 50 samples cannot be told from 0.19 (upper bound about 0.21): no warning
    assert chance_findings("evaluate", labels[:50] == 0, labels[:50], 10) == []
    # one class present: no chance level to beat
    assert chance_findings("evaluate", labels == 0, np.zeros(1000, np.int64), 10) == []


def test_chance_is_the_majority_share_when_classes_are_unbalanced() -> None:
    labels = np.array([0] * 9000 + [1] * 1000)
    # always answering class 0 scores 0.90 = the majority share: at chance (bar 0.91; the
    # upper bound, about 0.9058, is below it at this n)
    (f,) = chance_findings("fairness", labels == 0, labels, 2)
    assert f.id == "fairness.chance_level" and f.threshold == pytest.approx(0.91)
    assert f.value == pytest.approx(0.9058, abs=1e-3) and "the majority-class share" in f.message
    right = np.ones(10000, dtype=bool)
    right[:300] = False  # 0.97 correct
    assert chance_findings("fairness", right, labels, 2) == []
    assert chance_findings("fairness", np.ones(10000, bool), labels, 2) == []  # perfect


@pytest.fixture(scope="module")
def demo_test() -> raigate.Dataset:
    return raigate.load_data("demo:test")


@pytest.fixture(scope="module")
def untrained() -> raigate.Model:
    torch.manual_seed(0)
    return raigate.wrap(small_cnn(2), class_names=["Male", "Female"], input_shape=(3, 32, 32))


def _run(check: str, model: raigate.Model, data: raigate.Dataset) -> CheckResult:
    if check == "evaluate":
        return evaluate.run(model, data, evaluate.EvaluateParams(progress=False))
    if check == "fairness":
        params = fairness.FairnessParams(
            sensitive=["race"], n_boot=100, plots=False, progress=False
        )
        return fairness.run(model, data, params)
    params = robustness.RobustnessParams(
        attacks=["fgsm"], eps=[1 / 255], large_eps_check=False, max_samples=1000, progress=False
    )
    return robustness.run(model, data, params)


@pytest.mark.parametrize("check", ["evaluate", "fairness", "robustness"])
def test_chance_warning_on_an_untrained_model_only(
    check: str, untrained: raigate.Model, trained: raigate.Model, demo_test: raigate.Dataset
) -> None:
    with pytest.warns(RaigateWarning, match="is at chance for 2 classes"):
        bad = _run(check, untrained, demo_test)
    ids = [f.id for f in bad.findings if f.severity == "warn"]
    assert f"{check}.chance_level" in ids and bad.verdict in ("warn", "fail")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RaigateWarning)
        good = _run(check, trained, demo_test)
    assert not any(f.id.endswith("chance_level") for f in good.findings)
    accuracy = good.metrics["clean_accuracy" if check == "robustness" else "accuracy"]
    assert accuracy > 0.6  # the trained model is far from chance: the rule has room to fire


# -- --limit on data sorted by class -----------------------------------------------------------
@pytest.fixture
def sorted_folder(tmp_path: Path) -> Path:
    """Three classes of four PNGs; the folder loader lists them class by class."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for cls in ("bird", "cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def test_limit_that_misses_classes_warns_and_sample_does_not(sorted_folder: Path) -> None:
    spec = f"folder:{sorted_folder}"
    with pytest.warns(RaigateWarning, match=r"--limit 6\) hold 2 of its 3 classes, missing dog"):
        part = raigate.load_data(spec, limit=6)
    assert sorted(set(part.labels.tolist())) == [0, 1]  # bird, cat: the first 6 of 12
    (w,) = part.warnings
    assert w.id == "data.limit_misses_classes" and (w.value, w.threshold) == (2.0, 3.0)
    assert "use --sample 6" in w.message
    with warnings.catch_warnings():
        warnings.simplefilter("error", RaigateWarning)
        assert raigate.load_data(spec, sample=6, seed=0).warnings == []
        assert raigate.load_data(spec, limit=9).warnings == []  # 9 reach the third class


def test_cli_limit_warning_is_one_line_and_a_finding(sorted_folder: Path, tmp_path: Path) -> None:
    weights = save_safetensors(small_cnn(3), tmp_path / "w.safetensors")
    out = tmp_path / "eval"
    args = ["evaluate", "--model", "raigate.zoo:small_cnn", "--weights", str(weights)]
    args += ["--class-names", "bird,cat,dog", "--input-size", "3,32,32"]
    res = runner.invoke(app, [*args, "--data", f"folder:{sorted_folder}", "--limit", "4"])
    assert res.exit_code == 2  # --out is required: nothing ran
    res = runner.invoke(
        app, [*args, "--data", f"folder:{sorted_folder}", "--limit", "4", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    lines = [ln for ln in warning_lines(res.output) if "--limit" in ln]
    assert len(lines) == 1 and "hold 1 of its 3 classes, missing cat, dog" in lines[0], res.output
    doc = json.loads((out / "result.json").read_text())
    found = [f for f in doc["findings"] if f["id"] == "data.limit_misses_classes"]
    assert len(found) == 1 and found[0]["severity"] == "warn"
    assert doc["data"]["warnings"][0]["id"] == "data.limit_misses_classes"


# -- through the CLI and the audit report ---------------------------------------------------------
def test_cli_prints_the_normalization_warning_once_and_records_it(tmp_path: Path) -> None:
    weights = save_safetensors(small_cnn(2), tmp_path / "w.safetensors")
    out = tmp_path / "eval"
    res = runner.invoke(
        app,
        [
            "evaluate", "--model", "raigate.zoo:small_cnn", "--weights", str(weights),
            "--class-names", "Male,Female", "--data", "demo:test", "--limit", "64",
            "--mean", ",".join(map(str, BYTE_MEAN)), "--std", ",".join(map(str, BYTE_STD)),
            "--out", str(out),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = [ln for ln in warning_lines(res.output) if "0-255" in ln]
    assert len(lines) == 1 and "divide both by 255" in lines[0]
    doc = json.loads((out / "result.json").read_text())
    (f,) = [f for f in doc["findings"] if f["id"] == "model.normalization_scale"]
    assert f["severity"] == "warn" and "--mean 123.7,116.3,103.5" in f["message"]


def test_audit_report_shows_input_warnings_as_gates(tmp_path: Path) -> None:
    weights = save_safetensors(small_cnn(2), tmp_path / "w.safetensors")
    plan = tmp_path / "plan.toml"
    plan.write_text(
        f'[model]\nspec = "raigate.zoo:small_cnn"\nweights = "{weights}"\n'
        'class_names = ["Male", "Female"]\ninput_size = [3, 32, 32]\n'
        f"mean = {BYTE_MEAN}\nstd = {BYTE_STD}\n"
        '[data]\nspec = "demo:test"\nlimit = 64\n'
        "[checks.evaluate]\nmin_accuracy = 0.0\n"
        '[checks.evaluate_again]\ncheck = "evaluate"\n'
    )
    out = tmp_path / "out"
    res = runner.invoke(app, ["audit", str(plan), "--out", str(out), "--fail-on", "warn"])
    assert res.exit_code == 1, res.output  # fail_on = warn: the warning stops CI
    assert len([ln for ln in warning_lines(res.output) if "0-255" in ln]) == 1
    report = json.loads((out / "report.json").read_text())
    gates = [(g["check"], g["id"], g["severity"]) for g in report["gates"]]
    assert ("evaluate", "model.normalization_scale", "warn") in gates
    assert ("evaluate_again", "model.normalization_scale", "warn") in gates
    assert report["verdict"] == "warn"
    assert report["model"]["warnings"][0]["id"] == "model.normalization_scale"
    assert "model.normalization_scale" in (out / "report.html").read_text()


# -- input scale unlike training (first BatchNorm's running variance) ----------------------------
def test_input_scale_ratio_matches_an_independent_computation(demo_test: raigate.Dataset) -> None:
    data = raigate.select(demo_test, sample=300, seed=0)
    bn = torch.nn.BatchNorm2d(3).eval()
    net = torch.nn.Sequential(bn, torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2))
    with torch.no_grad():
        bn.running_var.copy_(torch.tensor([0.01, 0.02, 0.04]))  # as if trained on other pixels
    std = 0.5  # the BatchNorm sees x / 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RaigateWarning)
        model = raigate.wrap(net, class_names=["Male", "Female"], input_shape=(3, 32, 32), std=std)
        (f,) = input_scale_findings("evaluate", model, data, batch_size=64)
    # independently: the same evenly spread images, per-channel pixel variance with numpy
    positions = np.unique(np.linspace(0, len(data) - 1, SCALE_SAMPLES).astype(np.int64))
    x = np.stack([data[int(i)][0].numpy() for i in positions]).astype(np.float64) / std
    var = x.transpose(1, 0, 2, 3).reshape(3, -1).var(axis=1, ddof=1)
    expected = float(np.median(var / (np.array([0.01, 0.02, 0.04]) + bn.eps)))
    assert f.id == "evaluate.input_scale" and f.value == pytest.approx(expected, rel=1e-6)
    assert expected > SCALE_RATIO and f.threshold == SCALE_RATIO
    assert "first BatchNorm layer (0)" in f.message and "check --mean/--std" in f.message
    with torch.no_grad():  # running statistics that match the images: no warning
        bn.running_var.copy_(torch.as_tensor(var, dtype=torch.float32))
    assert input_scale_findings("evaluate", model, data, batch_size=64) == []
    no_bn = raigate.wrap(small_cnn(2), class_names=["Male", "Female"], input_shape=(3, 32, 32))
    assert input_scale_findings("evaluate", no_bn, data) == []  # nothing to compare with


def test_forgotten_normalization_on_the_public_resnet20(shared_data_dir: Path) -> None:
    """The issue's case: without --mean/--std the public ResNet-20 scores 0.27, not 0.81,
    far above chance; only the BatchNorm input-scale rule catches it."""
    weights = shared_data_dir / "weights" / "akamaster_resnet20-12fca82f.th"
    folder = shared_data_dir / "cifar10-test-jpg"
    if not weights.is_file() or not folder.is_dir():
        pytest.skip("ResNet-20 weights or CIFAR-10 JPEGs absent")
    data = raigate.load_data(f"folder:{folder}", sample=300, seed=0)
    params = evaluate.EvaluateParams(progress=False)
    with pytest.warns(RaigateWarning, match=r"first BatchNorm layer \(bn1\) sees inputs with 0.0"):
        plain = raigate.load_model("raigate.zoo:resnet20", weights=weights, data=data)
        bad = evaluate.run(plain, data, params)
    (f,) = [f for f in bad.findings if f.id == "evaluate.input_scale"]
    assert f.value < 0.1 and bad.metric("accuracy") < 0.4
    assert not any(f.id == "evaluate.chance_level" for f in bad.findings)  # above chance
    with warnings.catch_warnings():
        warnings.simplefilter("error", RaigateWarning)
        right = raigate.load_model(
            "raigate.zoo:resnet20", weights=weights, data=data, mean=IMAGENET_MEAN, std=IMAGENET_STD
        )
        good = evaluate.run(right, data, params)
    assert good.metric("accuracy") > 0.7 and good.findings == []
