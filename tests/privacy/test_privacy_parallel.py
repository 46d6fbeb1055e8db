"""The membership audit spread over processes (raigate.parallel): model outputs, reference
models and their pool scores shared out over two gloo ranks give the single process's
metrics and the same reference networks bit for bit (DP-SGD ones too); rank 0 alone writes
the reference folder; and a resumed run rebuilds the reference networks from their progress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import raigate
from dist_helpers import in_processes, same_arrays
from raigate import parallel
from raigate.audit import privacy
from raigate.models.base import Normalize
from raigate.models.weights import save_safetensors
from raigate.parallel import Arrays
from raigate.privacy.reference import Pool, ReferenceRecipe, build_pool, train_reference
from raigate.training import fit
from raigate.zoo import small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")

# 30 members (batches of 8, the last one short), 32 non-members (the audited data), a pool
# of about 110 examples, four reference models: each rank of two trains two of them
PARAMS = {
    "members": "demo:train", "members_limit": 30,
    "task": "age", "attacks": ["loss", "lira_online", "lira_offline", "rmia"],
    "population": "demo:train", "population_sample": 64, "reference_models": 4,
    "reference_epochs": 2, "batch_size": 8, "seed": 3, "progress": False,
}  # fmt: skip


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN fit on the 30 members (the recipe of tests/privacy/test_lira.py)."""
    members = raigate.load_data("demo:train", limit=30, task="age")
    torch.manual_seed(0)
    net = small_cnn(num_classes=len(members.class_names))
    fit(net, members, normalize=Normalize([0.5] * 3, [0.5] * 3), epochs=10, lr=3e-3,
        batch_size=16, progress=False)  # fmt: skip
    return save_safetensors(net, tmp_path_factory.mktemp("par") / "w.safetensors")


def _model(weights: Path) -> raigate.Model:
    data = raigate.load_data("demo:test", limit=32, task="age")
    return raigate.load_model("raigate.zoo:small_cnn", weights=weights, data=data,
                              mean=[0.5] * 3, std=[0.5] * 3)  # fmt: skip


def audit(weights: str, out: str, reuse: str = "") -> Arrays:
    """The privacy check in this process (alone or one rank), training reference models or
    reusing the folder ``reuse``; its metrics and reference run as JSON, less what differs
    between runs (timings, the out folder)."""
    rank = parallel.current().rank
    data = raigate.load_data("demo:test", limit=32, task="age")
    params = privacy.PrivacyParams(**PARAMS, reference=reuse or None)
    result = privacy.run(_model(Path(weights)), data, params, out_dir=Path(out) / f"rank{rank}")
    run: dict[str, Any] = dict(result.params["reference_run"])
    run.pop("directory")
    run.pop("cpu_seconds_per_reference_model")
    return {
        "metrics": np.asarray(json.dumps(result.metrics, sort_keys=True)),
        "reference_run": np.asarray(json.dumps(run, sort_keys=True)),
        "artifacts": np.asarray(result.artifacts),
    }


def _models(manifest: Path) -> list[tuple[str, str, int]]:
    doc = json.loads(manifest.read_text())
    return [(m["file"], m["sha256"], m["seed"]) for m in doc["models"]]


def test_two_ranks_give_the_single_process_audit(weights: Path, tmp_path: Path) -> None:
    one = audit(str(weights), str(tmp_path / "one"))
    ranks = in_processes(audit, str(weights), str(tmp_path / "two"), tmp=tmp_path / "ipc")
    metrics = json.loads(str(one["metrics"]))
    assert {r["attack"] for r in metrics["attacks"]} == set(PARAMS["attacks"])
    assert metrics["reference_models"] == 4 and metrics["n_members"] == 30
    for r in ranks:  # every rank aggregates the same gathered arrays
        assert str(r["metrics"]) == str(one["metrics"])
        assert str(r["reference_run"]) == str(one["reference_run"])
        assert r["artifacts"].tolist() == one["artifacts"].tolist()
    # the same four networks, byte for byte, whichever rank trained them; rank 0 wrote
    # every file of the bundle (figure, weights, manifest) and rank 1 none
    alone, rank0 = tmp_path / "one" / "rank0", tmp_path / "two" / "rank0"
    assert _models(rank0 / "reference" / "reference.json") == _models(
        alone / "reference" / "reference.json"
    )
    for name in one["artifacts"].tolist():
        assert (rank0 / name).is_file(), name
    for f in (alone / "reference").glob("ref_*.safetensors"):
        assert (rank0 / "reference" / f.name).read_bytes() == f.read_bytes()
    rank1 = tmp_path / "two" / "rank1"
    assert not rank1.exists() or not any(rank1.rglob("*"))
    # the saved models reused on two ranks, their pool passes shared out: the same scores
    reused = in_processes(audit, str(weights), str(tmp_path / "three"),
                          str(alone / "reference"), tmp=tmp_path / "ipc3")  # fmt: skip
    for r in reused:
        assert str(r["metrics"]) == str(one["metrics"])
        assert json.loads(str(r["reference_run"]))["reused"] is True


def _pool(model: raigate.Model) -> Pool:
    return build_pool(
        model,
        raigate.load_data("demo:train", limit=30, task="age"),
        raigate.load_data("demo:test", limit=32, task="age"),
        raigate.load_data("demo:train", sample=64, seed=3, task="age"),
    )


DP = {"epsilon": 4.0, "delta": 1e-4, "epochs": 1, "batch_size": 16, "accountant": "rdp",
      "lr": 0.1}  # fmt: skip


def dp_reference(weights: str) -> Arrays:
    """Two DP-SGD reference models (alone or one each on two ranks): their digests, ledgers
    and pool outputs."""
    model = _model(Path(weights))
    refs = train_reference(model, _pool(model), k=2, recipe=ReferenceRecipe(dp=DP), seed=3,
                           progress=False)  # fmt: skip
    assert refs.outputs is not None
    return {
        "sha256": np.asarray([m["sha256"] for m in refs.manifest["models"]]),
        "epsilon": np.asarray([led.epsilon for led in refs.ledgers]),
        "phi": refs.outputs[0],
    }


def test_dp_reference_models_train_alone_on_their_rank(weights: Path, tmp_path: Path) -> None:
    """Under torchrun each rank trains its own DP model as a one-process run (no DPDDP
    across ranks busy with other models): the same networks as one process trains."""
    one = dp_reference(str(weights))
    assert len(set(one["sha256"].tolist())) == 2 and (one["epsilon"] <= 4.0).all()
    for r in in_processes(dp_reference, str(weights), tmp=tmp_path):
        assert same_arrays(r, one)


def test_resumed_training_rebuilds_the_networks_from_progress(
    weights: Path, tmp_path: Path
) -> None:
    model = _model(weights)
    pool = _pool(model)
    kw = {"k": 2, "recipe": ReferenceRecipe(epochs=1), "seed": 3, "progress": False}
    with parallel.run_scope(tmp_path / ".progress", "run"), parallel.check_scope("privacy"):
        first = train_reference(model, pool, **kw)  # type: ignore[arg-type]
    with parallel.run_scope(tmp_path / ".progress", "run"), parallel.check_scope("privacy") as sc:
        again = train_reference(model, pool, **kw)  # type: ignore[arg-type]
    assert sc is not None and sc.reused == {"reference_models": 2}  # nothing retrained
    assert first.outputs is not None and again.outputs is not None
    assert np.array_equal(first.outputs[0], again.outputs[0])
    x = model.transform(pool.x[:16])
    with torch.no_grad():
        for a, b in zip(first.nets, again.nets, strict=True):
            assert a is not b and torch.equal(a(x), b(x))  # rebuilt from the saved bytes
