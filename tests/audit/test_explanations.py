"""The explanations check end to end: its tables, figures and findings, skips, targets,
determinism, and one metric recomputed with Captum directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import raigate
from raigate.audit import CHECKS, explanations
from raigate.errors import ConfigError
from raigate.models.base import Model
from raigate.results import CheckResult
from raigate.zoo import small_cnn

CHEAP = {
    "n_steps": 8,
    "smoothgrad_samples": 4,
    "occlusion_window": 8,
    "occlusion_stride": 8,
    "curve_steps": 5,
    "infidelity_perturbations": 4,
    "sensitivity_samples": 2,
    "sensitivity_perturbations": 2,
    "sanity_samples": 2,
    "sanity_layers": 2,
    "grid_samples": 2,
    "progress": False,
}


@pytest.fixture(scope="module")
def demo() -> raigate.Dataset:
    return raigate.load_data("demo:test", limit=40)


@pytest.fixture(scope="module")
def cnn(demo: raigate.Dataset) -> Model:
    torch.manual_seed(0)
    return raigate.wrap(
        small_cnn(num_classes=2), class_names=demo.class_names, input_shape=(3, 32, 32)
    )


def test_registered_as_a_check() -> None:
    assert CHECKS["explanations"] == (explanations.run, explanations.ExplainParams)


def test_full_run_tables_figures_and_json(
    cnn: Model, demo: raigate.Dataset, tmp_path: Path
) -> None:
    params = explanations.ExplainParams(n_samples=4, **CHEAP)
    result = explanations.run(cnn, demo, params, out_dir=tmp_path)
    m = result.metrics
    assert m["n"] == 4
    assert [r["status"] for r in m["methods"]] == ["ran"] * 5
    faith = result.table("faithfulness")
    assert faith["method"].tolist() == list(explanations.DEFAULT_METHODS)
    for col in (
        "deletion_auc",
        "insertion_auc",
        "random_deletion_auc",
        "random_insertion_auc",
        "infidelity",
        "sensitivity_max",
    ):
        assert faith[col].notna().all(), col
    assert faith["random_deletion_auc"].nunique() == 1  # one random order for all methods
    assert (
        (
            (faith[["deletion_auc", "insertion_auc"]] >= 0)
            & (faith[["deletion_auc", "insertion_auc"]] <= 1)
        )
        .all()
        .all()
    )
    sanity = result.table("sanity")
    assert set(sanity.columns) >= {"method", "layer", "spearman", "passed"}
    assert len(sanity) == 5 * 2 and sanity["layer"].tolist()[:1] == ["classifier"]
    deltas = result.table("ig_delta")
    assert len(deltas) == 4 and set(deltas["method"]) == {"integrated-gradients"}
    # delta is the completeness gap against f(x) - f(baseline) computed by the check
    gap = deltas["attribution_sum"] - deltas["output_diff"] - deltas["delta"]
    assert gap.abs().max() < 1e-4
    assert len(result.table("agreement")) == 10
    groups = result.table("group_maps")
    assert set(groups["attribute"]) == {"race", "gender", "age"}
    assert groups.groupby("method")["n"].sum().eq(4 * 3).all()  # every image once per attribute
    assert result.artifacts == [
        "explanations_grid.png",
        "sanity_cascade.png",
        "group_maps_race.png",
        "group_maps_gender.png",
        "group_maps_age.png",
    ]
    for name in result.artifacts:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ids = {f.id for f in result.findings}
    assert "explanations.ig_delta" in ids
    assert {f"explanations.sanity.{n}" for n in explanations.DEFAULT_METHODS} <= ids
    path = result.write(tmp_path)
    again = CheckResult.load(path)
    assert again.check == "explanations" and again.params["methods_settings"]["gradcam"] == {
        "layer": "features.8",
        "relu": True,
        "upsample": "bilinear",
    }
    assert json.loads(path.read_text())["params"]["definitions"]["deletion_auc"].startswith(
        "Petsiuk"
    )


def test_infidelity_matches_captum_called_directly(cnn: Model, demo: raigate.Dataset) -> None:
    from captum.attr import Saliency
    from captum.metrics import infidelity

    from raigate.explain.metrics import square_removal

    params = explanations.ExplainParams(
        methods=["saliency"], n_samples=6, infidelity_square=5, **CHEAP
    )
    result = explanations.run(cnn, demo, params)
    chosen = explanations.explained_samples(demo, params)
    x = torch.stack([chosen[i][0] for i in range(6)])
    with torch.no_grad():
        target = cnn.logits(x).argmax(1)
    attr = Saliency(cnn).attribute(x.clone().requires_grad_(), target=target, abs=True)

    perturb = square_removal(5, torch.zeros_like)  # 5x5 squares set to black
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ref = infidelity(
            cnn, perturb, x, attr, target=target, n_perturb_samples=4,
            max_examples_per_batch=24, normalize=True,
        )  # fmt: skip
    got = result.table("faithfulness")["infidelity"].iloc[0]
    assert got == pytest.approx(float(ref.double().mean()), rel=1e-4)


def test_same_inputs_give_the_same_json(cnn: Model, demo: raigate.Dataset) -> None:
    params = explanations.ExplainParams(methods=["saliency", "smoothgrad"], n_samples=3, **CHEAP)
    a = explanations.run(cnn, demo, params).model_dump()
    b = explanations.run(cnn, demo, params).model_dump()
    for r in (a, b):
        r.pop("timing_s")
        r.pop("created_at")
    assert a == b


def test_gradcam_is_skipped_with_a_note_on_a_model_without_convolutions(
    demo: raigate.Dataset, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
    model = raigate.wrap(mlp, class_names=demo.class_names, input_shape=(3, 32, 32))
    params = explanations.ExplainParams(methods=["gradcam", "saliency"], n_samples=2, **CHEAP)
    result = explanations.run(model, demo, params, out_dir=tmp_path)
    status = {r["method"]: r for r in result.metrics["methods"]}
    assert status["gradcam"]["status"] == "skipped"
    assert "no Conv2d" in status["gradcam"]["note"]
    assert result.table("faithfulness")["method"].tolist() == ["saliency"]
    only = explanations.ExplainParams(methods=["gradcam"], n_samples=2, **CHEAP)
    with pytest.raises(ConfigError, match="none of the requested methods can run"):
        explanations.run(model, demo, only)


def test_gradcam_is_skipped_on_a_hugging_face_vit(demo: raigate.Dataset) -> None:
    transformers = pytest.importorskip("transformers")
    from raigate.models.hf import HFLogits

    config = transformers.ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=16, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    vit = transformers.ViTForImageClassification(config).eval()
    model = Model(HFLogits(vit), class_names=demo.class_names, input_shape=(3, 32, 32), source="hf")
    assert model.capabilities.conv  # the patch embedding is a Conv2d ...
    params = explanations.ExplainParams(methods=["gradcam", "saliency"], n_samples=2, **CHEAP)
    result = explanations.run(model, demo, params)
    gradcam = result.metrics["methods"][0]
    assert gradcam["status"] == "skipped"  # ... but not a feature map Grad-CAM can use
    assert "patch embedding" in gradcam["note"]
    assert "model.vit.embeddings.patch_embeddings.projection" in gradcam["note"]


def test_target_label_explains_the_true_class(cnn: Model, demo: raigate.Dataset) -> None:
    params = explanations.ExplainParams(
        methods=["integrated-gradients"], n_samples=6, target="label", **CHEAP
    )
    result = explanations.run(cnn, demo, params)
    deltas = result.table("ig_delta")
    assert (deltas["target_class"] == deltas["label"]).all()
    assert sorted(deltas["label"]) == sorted(
        demo.class_names[k] for k in raigate.select(demo, sample=6, seed=0).labels
    )


def test_unknown_method_is_a_config_error(cnn: Model, demo: raigate.Dataset) -> None:
    with pytest.raises(ConfigError, match="unknown method 'lime'"):
        explanations.run(cnn, demo, explanations.ExplainParams(methods=["lime"], **CHEAP))
