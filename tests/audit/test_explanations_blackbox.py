"""The explanations check on a black-box model: the black-box twin (a QueryNet around the
same trained network) gets the forward-only methods by default, the very numbers the
white-box model gets with those methods, a skipped randomization test that says why, and a
one-line ConfigError for a gradient method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import raigate
from raigate.audit import explanations
from raigate.commands.explain import print_explanations
from raigate.errors import ConfigError
from raigate.models.base import Capabilities, Model
from raigate.models.blackbox import QueryNet

pytestmark = pytest.mark.usefixtures("one_thread")

CHEAP = {
    "occlusion_window": 8,
    "occlusion_stride": 8,
    "patch_size": 8,
    "kernelshap_samples": 48,
    "curve_steps": 5,
    "infidelity_perturbations": 4,
    "sensitivity_samples": 2,
    "sensitivity_perturbations": 2,
    "grid_samples": 2,
    "progress": False,
}


@pytest.fixture(scope="module")
def demo() -> raigate.Dataset:
    return raigate.load_data("demo:test", limit=60)


@pytest.fixture(scope="module")
def twin(trained: Model) -> Model:
    """The trained small_cnn as a served predictor: numpy in, logits out, no gradients."""
    net = trained.net

    def predict(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(a)).numpy()

    return Model(
        QueryNet(predict, name="served small_cnn"),
        class_names=trained.class_names,
        input_shape=trained.input_shape,
        mean=0.5,
        std=0.5,
        spec="served:small_cnn",
        capabilities=Capabilities(gradients=False),
    )


@pytest.fixture(scope="module")
def black_box_result(twin: Model, demo: raigate.Dataset, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("bb")
    params = explanations.ExplainParams(n_samples=8, **CHEAP)
    return explanations.run(twin, demo, params, out_dir=out)


def test_black_box_defaults_run_and_record_the_mode(
    black_box_result: raigate.CheckResult, twin: Model
) -> None:
    result = black_box_result
    assert result.mode == "black-box" and result.model.mode == "black-box"  # type: ignore[attr-defined]
    assert twin.net.queries > 0
    assert result.params["methods"] == list(explanations.BLACK_BOX_METHODS)
    assert [r["status"] for r in result.metrics["methods"]] == ["ran"] * 3
    faith = result.table("faithfulness")
    assert faith["method"].tolist() == ["occlusion", "feature-ablation", "kernelshap"]
    assert (
        faith[["deletion_auc", "insertion_auc", "infidelity", "sensitivity_max"]]
        .notna()
        .all()
        .all()
    )
    assert result.params["methods_settings"]["kernelshap"] == {
        "baseline": "black", "patch_size": 8, "n_samples": 48, "seed": 0,
    }  # fmt: skip
    # the randomization test needs the weights: skipped, and the skip is a visible warning
    assert result.metrics["sanity"] == []
    assert "black-box (queries only)" in result.params["sanity_note"]
    skipped = [f for f in result.findings if f.id == "explanations.sanity"]
    assert len(skipped) == 1 and skipped[0].severity == "warn"
    assert "untested" in skipped[0].message and "served:small_cnn" in skipped[0].message
    assert result.verdict != "fail"
    assert "sanity_cascade.png" not in result.artifacts
    assert "explanations_grid.png" in result.artifacts


def test_black_box_numbers_equal_the_white_box_model_with_the_same_methods(
    black_box_result: raigate.CheckResult, trained: Model, demo: raigate.Dataset
) -> None:
    params = explanations.ExplainParams(
        methods=list(explanations.BLACK_BOX_METHODS), n_samples=8, sanity_layers=2,
        sanity_samples=2, **CHEAP,
    )  # fmt: skip
    white = explanations.run(trained, demo, params)
    assert white.mode == "white-box" and len(white.table("sanity")) == 3 * 2
    cols = ["deletion_auc", "insertion_auc", "random_deletion_auc", "infidelity",
            "sensitivity_max"]  # fmt: skip
    bb = black_box_result.table("faithfulness")[cols].to_numpy()
    wb = white.table("faithfulness")[cols].to_numpy()
    np.testing.assert_allclose(bb, wb, rtol=1e-5, atol=1e-7)


def test_a_gradient_method_on_a_black_box_model_is_a_one_line_config_error(
    twin: Model, demo: raigate.Dataset
) -> None:
    params = explanations.ExplainParams(methods=["occlusion", "integrated-gradients", "gradcam"])
    for call in (explanations.run, explanations.validate):
        with pytest.raises(ConfigError) as info:
            call(twin, demo, params)
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith("--methods integrated-gradients, gradcam: need input gradients")
        assert "served:small_cnn is black-box (queries only)" in message
        assert message.endswith(
            "methods that work black-box: occlusion, feature-ablation, kernelshap"
        )


def test_white_box_defaults_are_unchanged(trained: Model) -> None:
    params = explanations.ExplainParams()
    assert params.methods is None
    assert explanations.requested_methods(trained, params) == list(explanations.DEFAULT_METHODS)


def test_the_cli_printout_says_why_sanity_did_not_run(
    black_box_result: raigate.CheckResult, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    print_explanations(black_box_result)
    text = capsys.readouterr().out
    assert (
        "black-box model (queries only): forward-pass methods occlusion, feature-ablation, "
        "kernelshap" in text
    )
    assert "sanity: cascading randomization test not run: served:small_cnn is black-box" in text
    assert "[WARN] cascading randomization test not run" in text
