"""The explanations check over two gloo processes gives the single process's metrics,
findings and figures: its per-image work runs on raigate.parallel's fixed batches, and no
random draw depends on the rank or on the batches computed before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import raigate
from dist_helpers import in_processes
from raigate import parallel
from raigate.audit import explanations
from raigate.models.base import Model
from raigate.parallel import Arrays
from raigate.zoo import small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")

# batch_size 2 over 5 images: batches {0,1} {2,3} {4}, so rank 0 computes two and rank 1
# one; max-sensitivity and the randomization test (3 images) span two batches, the second
# on rank 1. SmoothGrad, KernelSHAP and infidelity draw noise; IG brings its deltas.
PARAMS = explanations.ExplainParams(
    methods=["integrated-gradients", "smoothgrad", "kernelshap", "saliency"],
    n_samples=5,
    batch_size=2,
    n_steps=4,
    smoothgrad_samples=3,
    kernelshap_samples=8,
    patch_size=8,
    curve_steps=4,
    infidelity_perturbations=3,
    sensitivity_samples=3,
    sensitivity_perturbations=2,
    sanity_samples=3,
    sanity_layers=2,
    grid_samples=2,
    progress=False,
)


def audited(model: Model, data: raigate.Dataset, out: Path) -> Arrays:
    """Run the check and pack what must not depend on the number of processes: the
    metrics, the findings and the figures' bytes (timings and environment left out)."""
    world = parallel.current()
    folder = out / f"rank{world.rank}"  # each rank its own figures, compared below
    result = explanations.run(model, data, PARAMS, out_dir=folder)
    findings = [f.model_dump() for f in result.findings]
    return {
        "metrics": np.asarray(json.dumps(result.metrics, sort_keys=True)),
        "findings": np.asarray(json.dumps(findings, sort_keys=True)),
        "artifacts": np.asarray(result.artifacts),
        "rank": np.asarray(world.rank),
        "size": np.asarray(world.size),
        **{
            f"png:{name}": np.frombuffer((folder / name).read_bytes(), dtype=np.uint8)
            for name in result.artifacts
        },
    }


def test_two_processes_give_the_single_process_result(tmp_path: Path) -> None:
    data = raigate.load_data("demo:test", limit=24)
    torch.manual_seed(0)
    model = raigate.wrap(
        small_cnn(num_classes=2), class_names=data.class_names, input_shape=(3, 32, 32)
    )
    one = audited(model, data, tmp_path / "one")
    metrics = json.loads(str(one["metrics"]))
    assert metrics["n"] == 5 and len(metrics["ig_delta"]) == 5
    assert [r["n"] for r in metrics["sanity"]] == [3] * 8
    assert {r["sensitivity_n"] for r in metrics["faithfulness"]} == {3}
    assert "sanity_cascade.png" in one["artifacts"].tolist()

    ranks = in_processes(audited, model, data, tmp_path / "two", tmp=tmp_path / "ranks")
    assert [int(r["rank"]) for r in ranks] == [0, 1]
    for r in ranks:
        assert int(r["size"]) == 2
        assert str(r["metrics"]) == str(one["metrics"])  # every float, bit for bit
        assert str(r["findings"]) == str(one["findings"])
        assert r.keys() - {"rank", "size"} == one.keys() - {"rank", "size"}
        # rank 1 never computed image 0's randomization maps: it redid batch 0 for its
        # figure, and got the same pixels
        for key in one:
            if key.startswith("png:"):
                assert np.array_equal(r[key], one[key]), key


def test_random_order_of_an_image_does_not_depend_on_its_batch() -> None:
    from raigate.audit.explanations import _random_scores

    every = _random_scores(3, np.arange(6), (4, 5))
    alone = _random_scores(3, np.asarray([4]), (4, 5))
    assert torch.equal(every[4], alone[0])
    gen = torch.Generator().manual_seed(parallel.item_seed(3, "random-order", 4))
    assert torch.equal(alone[0], torch.rand(4, 5, generator=gen))
    assert not torch.equal(every[0], every[1])
