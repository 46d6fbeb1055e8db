"""Reference models trained with DP-SGD (raigate.privacy.reference_dp): each meets its target
epsilon by its own ledger (recomputed here with Opacus' accountant), the manifest records the
recipe, saved models reload to the same functions (BatchNorm folded), and
``--reference-recipe-from`` reads a ``raigate privacy train`` folder or refuses it in one line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import raigate
from raigate.cli import app
from raigate.errors import ConfigError
from raigate.models.weights import save_safetensors
from raigate.privacy.ledger import epsilon_for
from raigate.privacy.reference import (
    ReferenceRecipe,
    build_pool,
    load_reference,
    train_reference,
)
from raigate.privacy.reference_dp import DP_RECIPE_FIELDS, dp_recipe_from
from raigate.privacy.train import DPParams, run_private_training
from raigate.zoo import small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["--epsilon", "3", "--delta", "1e-4", "--epochs", "1", "--batch-size", "16",
         "--accountant", "rdp", "--lr", "0.5", "--device", "cpu"]  # fmt: skip
AUDIT = ["--members", "demo:train", "--members-limit", "32", "--non-members", "demo:test",
         "--limit", "32", "--attacks", "loss,lira_offline,rmia", "--population", "demo:train",
         "--population-sample", "64", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished ``raigate privacy train`` folder: 96 demo images, 6 DP-SGD steps."""
    out = tmp_path_factory.mktemp("dp_run") / "run"
    args = ["privacy", "train", "--model", "raigate.zoo:small_cnn", "--data", "demo:train",
            "--limit", "96", *TRAIN, "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return out


def _one_error_line(res: object) -> str:
    assert res.exit_code == 2, res.output  # type: ignore[attr-defined]
    lines = [ln for ln in res.output.splitlines() if ln.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("raigate: error:"), lines
    return lines[0]


def test_recipe_from_a_train_folder_is_its_params_with_the_ledgers_batchnorm(
    run_dir: Path, tmp_path: Path
) -> None:
    params = json.loads((run_dir / "result.json").read_text())["params"]
    ledger = json.loads((run_dir / "ledger.json").read_text())
    dp = dp_recipe_from(run_dir)
    assert set(dp) == set(DP_RECIPE_FIELDS)
    assert {k: v for k, v in dp.items() if k != "batchnorm"} == {
        k: params[k] for k in DP_RECIPE_FIELDS if k != "batchnorm"
    }
    assert params["batchnorm"] == "auto" and dp["batchnorm"] == ledger["batchnorm"] == "none"

    # folders that are not a finished, consistent DP run: one line each
    with pytest.raises(ConfigError, match="no such folder"):
        dp_recipe_from(tmp_path / "missing")
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    (bad / "ledger.json").unlink()
    with pytest.raises(ConfigError, match=r"no ledger\.json"):
        dp_recipe_from(bad)
    shutil.copy(run_dir / "ledger.json", bad / "ledger.json")
    doc = json.loads((run_dir / "result.json").read_text())
    doc["params"]["epsilon"] = 5.0
    (bad / "result.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"result\.json says epsilon 5\.0 but ledger\.json 3\.0"):
        dp_recipe_from(bad)
    (bad / "result.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a raigate result"):
        dp_recipe_from(bad)
    with pytest.raises(ConfigError, match="unknown field"):
        ReferenceRecipe(dp={**dp, "canaries": 4})


def test_cli_trains_dp_reference_models_and_reuses_them(run_dir: Path, tmp_path: Path) -> None:
    model = ["privacy", "audit", "--model", str(run_dir / "model.json"), *AUDIT]
    res = CliRunner().invoke(app, [*model, "--reference-models", "2", "--reference-recipe-from",
                                   str(run_dir), "--out", str(tmp_path / "a")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "reference models trained with DP-SGD (recipe of" in res.output
    manifest = json.loads((tmp_path / "a" / "reference" / "reference.json").read_text())
    assert manifest["recipe"]["dp"] == dp_recipe_from(run_dir)
    for entry in manifest["models"]:
        led = entry["ledger"]
        n = len(entry["in_pool"])
        # the run's batch size and epochs, q and the step count recomputed for this set size
        assert led["dataset_size"] == n and led["sample_rate"] == pytest.approx(16 / n)
        assert led["steps"] == math.ceil(1 / (16 / n) - 1e-9)
        assert led["epsilon"] <= led["target_epsilon"] == 3.0
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    info = result["params"]["reference_run"]
    assert info["recipe_from"] == str(run_dir) and info["dp"]["epsilon_max"] <= 3.0

    again = CliRunner().invoke(app, [*model, "--reference", str(tmp_path / "a" / "reference"),
                                     "--reference-recipe-from", str(run_dir),
                                     "--out", str(tmp_path / "b")])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert "reused from" in again.output
    rows_b = json.loads((tmp_path / "b" / "result.json").read_text())["metrics"]["attacks"]
    assert rows_b == result["metrics"]["attacks"]

    bad = CliRunner().invoke(app, [*model, "--reference-recipe-from", str(tmp_path / "a"),
                                   "--out", str(tmp_path / "c")])  # fmt: skip
    assert "no ledger.json" in _one_error_line(bad)
    folded = tmp_path / "folded"
    shutil.copytree(run_dir, folded)
    ledger = json.loads((folded / "ledger.json").read_text())
    (folded / "ledger.json").write_text(json.dumps({**ledger, "batchnorm": "fold"}))
    bad = CliRunner().invoke(app, [*model, "--reference-recipe-from", str(folded),
                                   "--out", str(tmp_path / "d")])  # fmt: skip
    assert "give --reference-init" in _one_error_line(bad)


def test_dp_reference_models_from_pretrained_weights_fold_batchnorm_and_meet_epsilon(
    tmp_path: Path,
) -> None:
    data = raigate.load_data("demo:train", limit=96)
    torch.manual_seed(0)
    init = save_safetensors(small_cnn(num_classes=2, norm="batch"), tmp_path / "init.safetensors")
    recipe = {"epsilon": 4.0, "delta": 1e-4, "epochs": 1, "batch_size": 16, "accountant": "rdp",
              "lr": 0.1, "batchnorm": "fold"}  # fmt: skip
    target = run_private_training(
        "raigate.zoo:small_cnn", data, DPParams(**recipe, progress=False),
        kwargs={"norm": "batch"}, weights=init, out_dir=tmp_path / "target",
    )  # fmt: skip
    model = target.model  # reloaded from its spec: private_net with BatchNorm folded
    pool = build_pool(
        model,
        data.subset(range(32)),
        raigate.load_data("demo:test", limit=32),
        raigate.load_data("demo:train", sample=64, seed=1),
    )
    refs = train_reference(
        model, pool, k=2, recipe=ReferenceRecipe(dp=recipe, init=str(init)), seed=3,
        out_dir=tmp_path / "ref", progress=False,
    )  # fmt: skip
    assert len(refs.ledgers) == 2
    for ledger, net, mask in zip(refs.ledgers, refs.nets, refs.in_mask, strict=True):
        assert ledger.batchnorm == "fold" and ledger.dataset_size == mask.sum()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
        # the spent epsilon, recomputed from the ledger's history by Opacus' RDP accountant
        eps = epsilon_for(ledger.history, ledger.delta, "rdp")
        assert eps == pytest.approx(ledger.epsilon) and eps <= 4.0
    seeds = [m["seed"] for m in refs.manifest["models"]]
    assert len(set(seeds)) == 2  # each model its own noise and Poisson batches

    again = load_reference(tmp_path / "ref", model, pool, dp=recipe)
    x = pool.x[:8]
    for a, b in zip(refs.nets, again.nets, strict=True):
        assert torch.allclose(a(model.transform(x)), b(model.transform(x)), atol=1e-6)
    with pytest.raises(ConfigError, match="not with the DP recipe asked for"):
        load_reference(tmp_path / "ref", model, pool, dp={**recipe, "epsilon": 2.0})
    manifest = json.loads((tmp_path / "ref" / "reference.json").read_text())
    assert manifest["recipe"]["dp"]["epsilon"] == 4.0 and manifest["recipe"]["init"] == str(init)


def test_plan_key_is_a_path_relative_to_the_plan(tmp_path: Path) -> None:
    from raigate.audit import privacy
    from raigate.config import load_plan

    path = tmp_path / "plan.toml"
    path.write_text(
        '[model]\nspec = "raigate.zoo:small_cnn"\n[data]\nspec = "demo:test"\n'
        '[checks.privacy]\nmembers = "demo:train"\nattacks = ["rmia"]\n'
        'population = "demo:train"\nreference_recipe_from = "dp-run"\n'
    )
    params = privacy.PrivacyParams(**load_plan(path).checks["privacy"])
    assert Path(params.reference_recipe_from or "") == tmp_path / "dp-run"
    with pytest.raises(ConfigError, match="dp-run: no such folder"):
        privacy.validate(
            raigate.load_model("raigate.zoo:small_cnn", data=raigate.load_data("demo:test",
                               limit=8), random_init=True),
            raigate.load_data("demo:test", limit=8),
            params.model_copy(update={"members_limit": 8, "population_sample": 8}),
        )  # fmt: skip
