"""No code from data files, through the CLI: ``--trust-code`` and the plan's ``trust_code``,
``--random-init`` and how a random-init model is named in every output, and the message
when class names taken from the data do not fit the model."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from cli_helpers import assert_user_error, invoke

DATA = ["--data", "demo:test", "--limit", "16"]


def user_module(folder: Path, marker: Path) -> str:
    """The user's own factory in the working directory; importing it writes ``marker``."""
    name = f"clitrust_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
        "from raigate.zoo import small_cnn as build\n"
    )
    return f"{name}:build"


def test_spec_file_naming_os_system_never_runs(cwd: Path) -> None:
    pwned = cwd / "PWNED"
    spec = cwd / "model.json"
    spec.write_text(json.dumps({"factory": "os:system", "kwargs": {"command": f"touch {pwned}"}}))
    code, out = invoke("evaluate", "--model", str(spec), *DATA, "--out", str(cwd / "o"))
    assert_user_error(code, out, str(spec), "'os:system'", "--trust-code")
    (cwd / "plan.toml").write_text(
        '[model]\nspec = "model.json"\n[data]\nspec = "demo:test"\nlimit = 16\n[checks.evaluate]\n'
    )
    code, out = invoke("audit", str(cwd / "plan.toml"), "--out", str(cwd / "bundle"))
    assert_user_error(code, out, "model.json", "'os:system'", "--trust-code")
    assert not pwned.exists()


def _commands(spec: str, out: str) -> dict[str, list[str]]:
    """Every command that loads a model spec, with ``spec`` where the spec goes."""
    model = ["--model", spec, *DATA, "--out", out]
    base = ["--model", "raigate.zoo:small_cnn", "--random-init", *DATA]
    return {
        "models inspect": ["models", "inspect", spec],
        "evaluate": ["evaluate", *model],
        "fairness": ["fairness", *model],
        "explain": ["explain", *model],
        "robustness": ["robustness", *model],
        "robustness --smoothing-model": [
            "robustness", *base, "--smoothing-sigma", "0.25", "--smoothing-model", spec,
            "--out", out,
        ],
        "harden smoothing": ["harden", "smoothing", *model, "--sigma", "0.25"],
        "privacy audit": [
            "privacy", "audit", "--model", spec, "--members", "demo:train",
            "--non-members", "demo:test", "--limit", "16", "--out", out,
        ],
        "privacy train": [
            "privacy", "train", "--model", spec, "--data", "demo:train", "--out", out,
        ],
    }  # fmt: skip


@pytest.mark.parametrize("command", list(_commands("S", "O")))
def test_every_command_refuses_then_trusts(
    cwd: Path, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = cwd / "imported.txt"
    spec = cwd / "model.json"
    spec.write_text(json.dumps({"factory": user_module(cwd, marker)}))
    args = _commands(str(spec), str(cwd / "o"))[command]
    code, out = invoke(*args)
    assert_user_error(code, out, str(spec), "--trust-code")
    assert not marker.exists()
    # With --trust-code the flag reaches load_model (stopped there: the run itself is not
    # what this test is about).
    import raigate.models
    from raigate.errors import ConfigError

    seen: list[bool] = []
    real = raigate.models.load_model

    def spy(s: str, **kw: object) -> object:
        if s != str(spec):
            return real(s, **kw)  # type: ignore[arg-type]
        seen.append(bool(kw.get("trust_code")))
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(raigate.models, "load_model", spy)
    code, out = invoke(*args, "--trust-code")
    assert_user_error(code, out, "stopped by the test")
    assert seen == [True]


def test_plan_factory_runs_only_with_trust_and_random_init_is_named(cwd: Path) -> None:
    marker = cwd / "imported.txt"
    factory = user_module(cwd, marker)
    plan = cwd / "plan.toml"
    body = (
        f'[model]\nspec = "{factory}"\n[data]\nspec = "demo:test"\nlimit = 16\n[checks.evaluate]\n'
    )
    plan.write_text(body)
    code, out = invoke("audit", str(plan), "--out", str(cwd / "b0"))
    assert_user_error(code, out, f"plan.toml names factory '{factory}'", "--trust-code")
    assert not marker.exists()  # refused before its import
    code, out = invoke("audit", str(plan), "--out", str(cwd / "b1"), "--trust-code")
    assert_user_error(code, out, "names no weights", "random_init = true")
    plan.write_text(
        "trust_code = true\n" + body.replace("\n[data]", "\nrandom_init = true\n[data]")
    )
    code, out = invoke("audit", str(plan), "--out", str(cwd / "b2"))
    assert code == 0, out
    assert marker.exists()
    assert f"audit: model {factory} (RANDOM INIT) (" in out
    bundle = cwd / "b2"
    report = json.loads((bundle / "report.json").read_text())
    assert report["model"]["random_init"] is True
    result = json.loads((bundle / "checks" / "evaluate" / "result.json").read_text())
    assert result["model"]["random_init"] is True and result["model"]["spec"] == factory
    assert f"{factory} (RANDOM INIT)" in (bundle / "report.html").read_text()
    card = (bundle / "model-card.md").read_text()
    assert f"# Model card: `{factory} (RANDOM INIT)`" in card


def test_factory_named_on_the_command_line_needs_no_trust(cwd: Path) -> None:
    factory = user_module(cwd, cwd / "imported.txt")
    args = ["models", "inspect", factory, "--class-names", "a,b", "--input-size", "3,32,32"]
    code, out = invoke(*args)
    assert_user_error(code, out, "names no weights", "--random-init")
    code, out = invoke(*args, "--random-init", "--json")
    assert code == 0, out
    assert json.loads(out[out.index("{") :])["random_init"] is True
    code, out = invoke(*args, "--random-init")
    assert code == 0 and f"model        {factory} (RANDOM INIT)  (factory)" in out
    assert "raigate: warning: model" in out and "randomly initialised" in out


def test_inferred_class_names_that_do_not_fit_say_so(cwd: Path) -> None:
    spec = cwd / "ten.json"
    spec.write_text(json.dumps({"factory": "raigate.zoo:small_cnn", "kwargs": {"num_classes": 10}}))
    code, out = invoke(
        "evaluate", "--model", str(spec), *DATA, "--random-init", "--out", str(cwd / "o")
    )
    assert_user_error(
        code, out, "outputs 10 logits but the data has 2 labels (class names taken from the data)",
        "--class-names", "--label-map",
    )  # fmt: skip
    assert not (cwd / "o" / "result.json").exists()
