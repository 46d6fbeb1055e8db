"""``raigate fairness`` through typer's CliRunner: the table, result.json, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cli_helpers import assert_user_error, invoke
from raigate.data import DEMO_DISPARITY


def trained_demo_net(cache: Path) -> torch.nn.Module:
    """small_cnn trained one epoch on demo:train; cached in the session's temp folder so
    tests/audit/test_fairness.py (which has the same helper) does not train it again."""
    import raigate
    from raigate.models.base import Normalize
    from raigate.training import fit
    from raigate.zoo import small_cnn

    path = cache / "fairness-demo-small_cnn-1epoch.pt"
    torch.manual_seed(0)
    net = small_cnn(num_classes=2)
    if path.is_file():
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    train = raigate.load_data("demo:train")
    fit(net, train, normalize=Normalize([0.5] * 3, [0.5] * 3), epochs=1, lr=2e-3, progress=False)
    torch.save(net.state_dict(), path)
    return net


@pytest.fixture(scope="module")
def demo_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained demo net saved as a raigate model spec (safetensors + JSON)."""
    from raigate.models.loaders import write_model_spec

    net = trained_demo_net(tmp_path_factory.getbasetemp())
    out = tmp_path_factory.mktemp("fair-model")
    weights = out / "m.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    return write_model_spec(
        out / "m.json",
        factory="raigate.zoo:small_cnn",
        kwargs={"num_classes": 2},
        weights=weights,
        class_names=["Male", "Female"],
        input_shape=[3, 32, 32],
        mean=[0.5] * 3,
        std=[0.5] * 3,
    )


def test_fairness_names_the_demo_disparity_and_fails_the_gate(
    demo_spec: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fair"
    code, text = invoke(
        "fairness", "--model", str(demo_spec), "--data", "demo:test", "--n-boot", "200",
        "--sensitive", "race", "--out", str(out),
    )  # fmt: skip
    assert code == 1, text
    weak = DEMO_DISPARITY["group"]
    assert f"[FAIL] race: accuracy of {weak} (" in text
    assert "raigate: error: fairness gate(s) failed: fairness.accuracy_difference[race]" in text
    assert f"wrote {out / 'result.json'}" in text
    result = json.loads((out / "result.json").read_text())
    assert result["check"] == "fairness" and result["params"]["n_boot"] == 200
    records = result["metrics"]["by_group"]
    for key in ("attribute", "group", "n", "accuracy", "accuracy_ci", "insufficient_data"):
        assert all(key in r for r in records)
    inter = [r for r in records if r["attribute"] == "race+gender"]
    assert len(inter) == 14 and {r["group"] for r in inter} >= {f"{weak}|Male", f"{weak}|Female"}
    for artifact in result["artifacts"]:
        assert (out / artifact).is_file()
    assert "heatmap_race_x_gender.png" in result["artifacts"]


def test_thresholds_file_can_turn_gates_off(demo_spec: Path, tmp_path: Path) -> None:
    th = tmp_path / "gates.toml"
    th.write_text(
        'accuracy_difference = "off"\nselection_rate_ratio = "off"\n'
        'equalized_odds_difference = "off"\n'
    )
    code, text = invoke(
        "fairness", "--model", str(demo_spec), "--data", "demo:test", "--sample", "600",
        "--n-boot", "100", "--no-plots", "--sensitive", "race", "--intersections", "none",
        "--thresholds", str(th), "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 0, text
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    assert result["findings"] == [] and result["params"]["intersections"] == []
    assert {r["attribute"] for r in result["metrics"]["by_group"]} == {"race"}


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--task", "skin"], ["unknown task 'skin'"]),
        (["--sensitive", "race,skin"], ["--sensitive: unknown column(s) ['skin']", "'age'"]),
        (["--intersections", "race+race"], ["--intersections", "two or more different"]),
        (["--n-boot", "10"], ["--n-boot"]),
        (["--min-group-size", "0"], ["--min-group-size"]),
        (["--thresholds", "missing.toml"], ["missing.toml", "not found"]),
        (["--class-names", "cat,dog"], ["no model class matches", "Male", "cat"]),
    ],
)
def test_bad_input_exits_2_with_one_line(
    extra: list[str], needles: list[str], tmp_path: Path
) -> None:
    code, text = invoke(
        "fairness", "--model", "raigate.zoo:small_cnn", "--random-init", "--input-size", "3,32,32",
        "--data", "demo:test", "--limit", "40", "--out", str(tmp_path / "o"), *extra,
    )  # fmt: skip
    assert_user_error(code, text, *needles)


def test_empty_split_exits_2(tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()
    (tmp_path / "fairface_label_val.csv").write_text("file,age,gender,race,service_test\n")
    code, text = invoke(
        "fairness", "--model", "raigate.zoo:small_cnn", "--random-init", "--input-size", "3,32,32",
        "--data", f"fairface:{tmp_path}:val", "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert_user_error(code, text, "fairface_label_val.csv", "no rows")
