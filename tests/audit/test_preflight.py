"""Plans are validated completely before the first check runs: a mistake in the second
check table exits 2, naming the plan and the table, and the first check never runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from raigate.audit import CHECKS, VALIDATORS, evaluate
from raigate.cli import app
from raigate.config import load_plan
from raigate.errors import ConfigError
from raigate.models.weights import save_safetensors
from raigate.zoo import small_cnn

runner = CliRunner()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two classes of 8x8 PNGs and no attribute columns."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for cls in ("Male", "Female"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return save_safetensors(small_cnn(2), tmp_path / "w.safetensors")


def _plan(tmp_path: Path, weights: Path, data: str, second: str) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(
        f'[model]\nspec = "raigate.zoo:small_cnn"\nweights = "{weights}"\n'
        'class_names = ["Male", "Female"]\ninput_size = [3, 32, 32]\n'
        f'[data]\nspec = "{data}"\nlimit = 16\n'
        f"[checks.evaluate]\nmin_accuracy = 0.0\n{second.replace('WEIGHTS', str(weights))}"
    )
    return path


CASES = [
    # (data, second check table, what the message must say)
    ("folder", "[checks.fairness]\nn_boot = 100\n", "none of the default sensitive attributes"),
    ("demo:test", '[checks.fairness]\nsensitive = ["hair"]\n', "unknown column(s) ['hair']"),
    (
        "demo:test",
        '[checks.privacy]\nmembers = "fairface:no-such-root"\nattacks = ["loss"]\n',
        "no-such-root: FairFace root folder not found",
    ),
    (
        "demo:test",
        '[checks.privacy]\nmembers = "demo:train"\nledger = "missing/ledger.json"\n',
        "no such ledger",
    ),
    (
        "demo:test",
        '[checks.privacy]\nmembers = "demo:train"\nattacks = ["loss", "lira_online"]\n',
        "attack lira_online needs reference models",
    ),
    (
        "demo:test",
        '[checks.explanations]\nmethods = ["saliency", "lime"]\n',
        "unknown method 'lime'",
    ),
    ("demo:test", '[checks.explanations]\nlayer = "no_such_layer"\n', "no_such_layer"),
    (
        "demo:test",
        '[checks.privacy]\nmembers = "demo:train"\ntask = "race"\n',
        "no model class matches data label(s) ['East Asian'",
    ),
    (
        "demo:test",
        '[checks.robustness]\nattacks = ["fgsm", "art:NoSuchAttack"]\n',
        "unknown ART evasion attack 'NoSuchAttack'",
    ),
    (
        "demo:test",
        '[checks.robustness]\nsmoothing_sigma = 0.25\nsmoothing_model = "other"\n'
        '[models.other]\nspec = "raigate.zoo:small_cnn"\nweights = "WEIGHTS"\n'
        'class_names = ["Female", "Male"]\n',
        "classes ['Female', 'Male'] differ from the audited model's ['Male', 'Female']",
    ),
]


@pytest.mark.parametrize(("data", "second", "needle"), CASES)
def test_second_check_invalid_fails_before_the_first_runs(
    tmp_path: Path,
    folder: Path,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
    data: str,
    second: str,
    needle: str,
) -> None:
    ran: list[str] = []

    def spy(*args: object, **kwargs: object) -> object:
        ran.append("evaluate")
        return evaluate.run(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setitem(CHECKS, "evaluate", (spy, evaluate.EvaluateParams))
    plan = _plan(tmp_path, weights, f"folder:{folder}" if data == "folder" else data, second)
    out = tmp_path / "out"
    res = runner.invoke(app, ["audit", str(plan), "--out", str(out)])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("raigate: error:")]
    assert len(errors) == 1, res.output
    table = second.split("]")[0].removeprefix("[")
    assert errors[0].startswith(f"raigate: error: {plan}: {table}: "), errors[0]
    assert needle in errors[0], errors[0]
    assert ran == []  # the first check took no time
    assert "[1/2]" not in res.output
    assert not (out / "checks" / "evaluate").exists() and not (out / "report.json").exists()


def test_every_registered_check_has_a_preflight() -> None:
    assert set(VALIDATORS) == set(CHECKS)


def test_a_valid_plan_passes_preflight_and_runs(tmp_path: Path, weights: Path) -> None:
    plan = _plan(tmp_path, weights, "demo:test", '[checks.fairness]\nsensitive = ["gender"]\n')
    res = runner.invoke(app, ["audit", str(plan), "--out", str(tmp_path / "out")])
    assert res.exit_code in (0, 1), res.output  # ran: a verdict, not a user error
    assert "[1/2] evaluate" in res.output and "[2/2] fairness" in res.output


@pytest.mark.parametrize("checks", ["", "[checks]\n", "checks = {}\n"])
def test_a_plan_without_checks_is_a_configuration_error(tmp_path: Path, checks: str) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(f'{checks}[model]\nspec = "raigate.zoo:small_cnn"\n[data]\nspec = "demo"\n')
    with pytest.raises(ConfigError) as err:
        load_plan(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: the plan has no checks"), msg
    for name in CHECKS:
        assert name in msg
    res = runner.invoke(app, ["audit", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "the plan has no checks" in res.output, res.output
    assert not (tmp_path / "out").exists()
