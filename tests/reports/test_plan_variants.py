"""One signed report over a model and its variants: ``[models.NAME]`` tables, check tables
that run a check on a variant (``check = ...``, ``model = ...``), robustness smoothing a
variant, and every variant's weights among the signed subjects."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import raigate
from raigate.cli import app
from raigate.config import load_plan
from raigate.models.loaders import write_model_spec
from raigate.zoo import small_cnn

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_twin(folder: Path) -> Path:
    """A second small_cnn with other weights, saved as safetensors + model spec."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(11)
    net = small_cnn(num_classes=2)
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, folder / "model.safetensors"
    )
    return write_model_spec(
        folder / "model.json",
        factory="raigate.zoo:small_cnn",
        kwargs={"num_classes": 2},
        weights=folder / "model.safetensors",
        class_names=["Male", "Female"],  # demo:test's order
        input_shape=[3, 32, 32],
        mean=[0.5] * 3,
        std=[0.5] * 3,
    )


PLAN = """
seed = 3
[model]
spec = "raigate.zoo:small_cnn"
random_init = true
[models.twin]
spec = "twin/model.json"
[data]
spec = "demo:test"
limit = 48
[checks.evaluate]
min_accuracy = 0.0
[checks.evaluate_twin]
check = "evaluate"
model = "twin"
min_accuracy = 0.0
[checks.robustness]
eps = [0.0156862745]
pgd_steps = 1
large_eps_check = false
smoothing_sigma = 0.25
smoothing_model = "twin"
eot_samples = 1
predict_n = 4
certify_n = 20
certify_n0 = 5
certify_max_samples = 4
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("variants")
    twin = make_twin(tmp / "twin")
    (tmp / "plan.toml").write_text(PLAN)
    assert runner.invoke(app, ["keys", "generate", "--out", str(tmp / "keys")]).exit_code == 0
    res = runner.invoke(
        app,
        ["audit", str(tmp / "plan.toml"), "--out", str(tmp / "out"),
         "--key", str(tmp / "keys" / "raigate.key")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "audit: variant twin:" in res.output
    assert "evaluate_twin (evaluate) on twin" in res.output
    return tmp / "out", twin, tmp / "keys" / "raigate.pub"


def test_checks_run_on_the_model_they_name(bundle: tuple[Path, Path, Path]) -> None:
    out, twin_spec, _ = bundle
    report = json.loads((out / "report.json").read_text())
    twin = raigate.load_model(str(twin_spec))
    data = raigate.load_data("demo:test", limit=48)
    torch.manual_seed(3)
    primary = raigate.load_model("raigate.zoo:small_cnn", data=data, random_init=True)
    assert twin.digest != primary.digest
    assert report["models"]["twin"]["digest"] == twin.digest
    assert report["model"]["digest"] == primary.digest
    checks = report["checks"]
    assert checks["evaluate"]["model"]["digest"] == primary.digest
    assert checks["evaluate_twin"]["check"] == "evaluate"
    assert checks["evaluate_twin"]["model"]["digest"] == twin.digest
    # the variant's accuracy is what evaluating it directly gives
    direct = raigate.audit.evaluate.run(
        twin, data, raigate.audit.evaluate.EvaluateParams(progress=False)
    )
    assert checks["evaluate_twin"]["metrics"]["accuracy"] == direct.metric("accuracy")
    # robustness attacks the primary and smooths the twin
    rob = checks["robustness"]
    assert rob["model"]["digest"] == primary.digest
    (ref,) = rob["metrics"]["smoothing_model"]
    assert ref["digest"] == twin.digest and ref["same_as_audited"] is False
    assert rob["params"]["smoothing_model"] == "twin"
    # gates and compliance are per check table and know which check it was
    twin_gates = [g for g in report["gates"] if g["check"] == "evaluate_twin"]
    assert [g["check_type"] for g in twin_gates] == ["evaluate"]
    clauses = {r["clause"] for r in report["compliance"] if r["check"] == "evaluate_twin"}
    assert "EU AI Act Art. 15" in clauses
    assert 'name="evaluate_twin"' in (out / "junit.xml").read_text()
    page = (out / "report.html").read_text()
    assert "variant <strong>twin</strong>" in page and "Accuracy · evaluate_twin" in page
    # the at-a-glance table: one line per check table with its model and key numbers
    glance = page[page.index('id="glance"') : page.index("<h2>Gates</h2>")]
    acc = checks["evaluate_twin"]["metrics"]["accuracy"]
    assert '<span class="muted">(evaluate_twin on twin)</span>' in glance
    assert f"accuracy {acc:.3f} (95% CI" in glance
    assert "model + twin (smoothed)" in glance
    smoothed = [r for r in rob["metrics"]["smoothed_vs_base"] if r["attack"] == "pgd"][-1]
    assert (
        f"{smoothed['base_accuracy']:.3f} undefended, {smoothed['smoothed_accuracy']:.3f} with "
        "randomized smoothing" in glance
    )
    assert "Variant `twin` audited alongside" in (out / "model-card.md").read_text()


def test_variant_weights_are_signed_and_tampering_is_named(
    bundle: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    out, twin_spec, pub = bundle
    envelope = json.loads((out / "attestation.dsse.json").read_text())
    stmt = json.loads(base64.b64decode(envelope["payload"]))
    weights = (twin_spec.parent / "model.safetensors").resolve()
    subjects = {s["name"]: s["digest"]["sha256"] for s in stmt["subject"]}
    # named relative to the plan's folder, which the predicate places relative to the bundle
    name = "model:twin/model.safetensors"
    assert stmt["predicate"]["plan_dir"] == ".."
    assert (out / ".." / name[len("model:") :]).resolve() == weights
    assert subjects[name] == hashlib.sha256(weights.read_bytes()).hexdigest()
    report = json.loads((out / "report.json").read_text())
    assert stmt["predicate"]["variant_digests"] == {"twin": report["models"]["twin"]["digest"]}

    saved = tmp_path / "saved.safetensors"
    shutil.copy(weights, saved)
    try:
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0x01
        weights.write_bytes(bytes(data))
        res = runner.invoke(app, ["verify", str(out), "--key", str(pub)])
        assert res.exit_code == 1 and "model.safetensors" in res.output, res.output
    finally:
        shutil.copy(saved, weights)
    res = runner.invoke(app, ["verify", str(out), "--key", str(pub)])
    assert res.exit_code == 0, res.output
    assert f"variant twin signed: {report['models']['twin']['digest']}" in res.output


@pytest.mark.parametrize(
    "extra,needle",
    [
        ('[checks.ev2]\ncheck = "evaluate"\nmodel = "nope"\n', "checks.ev2.model: 'nope' is not"),
        ('[checks.ev2]\ncheck = "bias"\n', "unknown check checks.ev2.check 'bias'"),
        ('[models.model]\nspec = "raigate.zoo:small_cnn"\n', "models.model"),
        ('[models."a b"]\nspec = "raigate.zoo:small_cnn"\n', "use letters, digits"),
        (
            '[checks.robustness]\nsmoothing_sigma = 0.25\nsmoothing_model = "ghost"\n',
            "checks.robustness.smoothing_model: 'ghost' is not a model of this plan",
        ),
        ('[checks.robustness]\nsmoothing_model = "twin"\n', "needs --smoothing-sigma"),
    ],
)
def test_bad_variant_plans_exit_2_naming_the_field(extra: str, needle: str, tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[model]\nspec = "raigate.zoo:small_cnn"\nrandom_init = true\n[data]\nspec = "demo:test"\n'
        f"[checks.evaluate]\n{extra}"
    )
    res = runner.invoke(app, ["audit", str(plan), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o" / "report.json").exists()


def test_paths_in_check_tables_are_relative_to_the_plan(tmp_path: Path) -> None:
    folder = tmp_path / "plans"
    folder.mkdir()
    plan = folder / "plan.toml"
    plan.write_text(
        '[model]\nspec = "raigate.zoo:small_cnn"\nrandom_init = true\n'
        '[models.dp]\nspec = "dp/model.json"\n'
        '[data]\nspec = "demo:test"\n'
        '[checks.privacy_dp]\ncheck = "privacy"\nmodel = "dp"\nmembers = "folder:train"\n'
        'ledger = "dp/ledger.json"\n'
    )
    loaded = load_plan(plan)
    base = folder.resolve()
    table = loaded.checks["privacy_dp"]
    assert table["ledger"] == (base / "dp" / "ledger.json").as_posix()
    assert table["members"] == f"folder:{(base / 'train').as_posix()}"
    assert loaded.models["dp"].spec == (base / "dp" / "model.json").as_posix()
    (inst,) = loaded.check_instances()
    assert (inst.name, inst.check, inst.model) == ("privacy_dp", "privacy", "dp")
