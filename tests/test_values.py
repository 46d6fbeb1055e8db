"""Numbers as users spell them: the CLI and audit plans accept the same forms ("8/255"), and
every bad value is a one-line user error (exit 2), never an internal error (exit 3)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from raigate.audit import CHECKS
from raigate.cli import app
from raigate.config import ModelSection, load_plan
from raigate.errors import ConfigError
from raigate.privacy.train import DPParams
from raigate.values import Fraction, parse_fraction

runner = CliRunner()


@pytest.mark.parametrize(
    ("text", "value"), [("8/255", 8 / 255), (" 0.25 ", 0.25), ("1e-3", 0.001), (2, 2.0)]
)
def test_parse_fraction_accepts_numbers_and_fractions(text: str | int, value: float) -> None:
    assert parse_fraction(text) == value


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("4/0", "divides by zero"),
        ("abc", "not a number or a fraction"),
        ("1/2/3", "not a number or a fraction"),
        ("nan", "not a finite number"),
        ("-inf", "not a finite number"),
        (float("nan"), "not a finite number"),
        (True, "not a number"),
    ],
)
def test_parse_fraction_refuses_what_cannot_be_a_setting(text: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_fraction(text)  # type: ignore[arg-type]


def test_fraction_field_takes_the_cli_forms() -> None:
    class P(BaseModel):
        eps: list[Fraction]

    assert P(eps=["1/255", 0.5, 1]).eps == [1 / 255, 0.5, 1.0]
    with pytest.raises(ValidationError, match="divides by zero"):
        P(eps=["4/0"])


def _float_fields(cls: type[BaseModel]) -> list[str]:
    return [f for f, info in cls.model_fields.items() if "float" in str(info.annotation)]


@pytest.mark.parametrize(
    "cls",
    [cls for _, cls in CHECKS.values()] + [ModelSection, DPParams],
    ids=lambda c: c.__name__,
)
def test_no_float_parameter_takes_nan_or_infinity(cls: type[BaseModel]) -> None:
    required = {"members": "demo:train", "spec": "raigate.zoo:small_cnn"}
    base = {k: v for k, v in required.items() if k in cls.model_fields}
    fields = _float_fields(cls)
    assert fields, cls
    for field in fields:
        list_field = "list" in str(cls.model_fields[field].annotation)
        for bad in (math.nan, math.inf, "nan"):
            with pytest.raises(ValidationError):
                cls(**base, **{field: [bad] if list_field else bad})


# -- the command line -------------------------------------------------------------------------
MODEL = ["--model", "raigate.zoo:small_cnn", "--random-init", "--data", "demo:test", "--limit", "8"]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["robustness", "--eps", "4/0"], ["--eps", "'4/0' divides by zero"]),
        (["robustness", "--eps", "abc"], ["--eps", "'abc' is not a number"]),
        (["robustness", "--eps", "nan"], ["--eps", "not a finite number"]),
        (["robustness", "--eps", "-1"], ["--eps", ">= 0"]),
        (["robustness", "--radii", "1/0"], ["--radii", "divides by zero"]),
        (["robustness", "--smoothing-sigma", "nan"], ["--smoothing-sigma", "finite"]),
        (["robustness", "--smoothing-sigma", "-0.5"], ["--smoothing-sigma", "greater than 0"]),
        (["evaluate", "--min-accuracy", "2"], ["--min-accuracy", "less than or equal to 1"]),
        (["evaluate", "--min-accuracy", "nan"], ["--min-accuracy", "finite"]),
        (["evaluate", "--batch-size", "0"], ["--batch-size", "greater than 0"]),
        (["evaluate", "--mean", "4/0"], ["--mean", "divides by zero"]),
        (["evaluate", "--std", "nan"], ["--std", "not a finite number"]),
        (["evaluate", "--std", "-1"], ["--std", "positive"]),
    ],
)
def test_bad_cli_values_exit_2_with_one_line(
    tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    out = tmp_path / "out"
    res = runner.invoke(app, [args[0], *MODEL, "--out", str(out), *args[1:]])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("raigate: error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not out.exists()  # refused before anything was written


def test_out_naming_a_file_is_a_user_error(tmp_path: Path) -> None:
    in_the_way = tmp_path / "result"
    in_the_way.write_text("not a folder")
    res = runner.invoke(app, ["evaluate", *MODEL, "--out", str(in_the_way)])
    assert res.exit_code == 2, res.output
    assert f"{in_the_way}: a file is in the way" in res.output
    assert in_the_way.read_text() == "not a folder"


# -- audit plans take the same forms -------------------------------------------------------
def _plan(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(
        '[model]\nspec = "raigate.zoo:small_cnn"\nmean = ["1/2"]\nstd = ["1/4"]\n'
        f'[data]\nspec = "demo:test"\n{body}'
    )
    return path


def test_plan_values_accept_fractions_like_the_cli(tmp_path: Path) -> None:
    plan = load_plan(
        _plan(
            tmp_path,
            '[checks.robustness]\neps = ["1/255", "2/255", 0.5]\nsmoothing_sigma = "64/255"\n'
            'certify_radii = ["0", "1/4"]\n'
            '[checks.explanations]\nsensitivity_radius = "2/255"\n',
        )
    )
    assert plan.model.mean == [0.5] and plan.model.std == [0.25]
    rob, expl = (inst.params for inst in plan.check_instances())
    assert rob.eps == [1 / 255, 2 / 255, 0.5]
    assert rob.smoothing_sigma == 64 / 255 and rob.certify_radii == [0.0, 0.25]
    assert expl.sensitivity_radius == 2 / 255


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[checks.robustness]\neps = ["4/0"]\n', "checks.robustness.eps.0: '4/0' divides by zero"),
        ("[checks.robustness]\neps = [nan]\n", "checks.robustness.eps.0: nan is not a finite"),
        ('[checks.robustness]\neps = ["-1/255"]\n', "checks.robustness.eps: values must be"),
        ('[checks.evaluate]\nmin_accuracy = "high"\n', "checks.evaluate.min_accuracy"),
    ],
)
def test_bad_plan_values_name_the_field(tmp_path: Path, body: str, needle: str) -> None:
    path = _plan(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_plan(path)
    assert str(err.value).startswith(f"{path}: ") and needle in str(err.value), err.value
    res = runner.invoke(app, ["audit", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and needle in res.output, res.output


def test_bad_model_section_value_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(
        '[model]\nspec = "raigate.zoo:small_cnn"\nmean = ["4/0"]\n[data]\nspec = "demo"\n'
        "[checks.evaluate]\n"
    )
    with pytest.raises(ConfigError, match=r"model\.mean\.0: '4/0' divides by zero"):
        load_plan(path)
