"""One ONNX file through every command, black-box: evaluate, fairness, explain, robustness,
privacy audit and a sealed audit plan. Every result.json says ``mode: black-box``, its
numbers equal those of the torch model the file was exported from where the check is
forward-only, and the report shows the mode."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from cli_helpers import invoke

pytestmark = pytest.mark.usefixtures("one_thread")


class _Deployed(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.net((x - 0.5) / 0.5)


@pytest.fixture(scope="module")
def onnx_file(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import onnx

    path = tmp_path_factory.mktemp("onnx") / "gender.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Deployed(trained).eval(), (torch.rand(2, 3, 32, 32),), str(path), dynamo=False,
            input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        )  # fmt: skip
    proto = onnx.load(str(path))
    proto.metadata_props.add(key="class_names", value=json.dumps(list(trained.class_names)))
    onnx.save(proto, str(path))
    return path


def _result(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "result.json").read_text())


def test_every_command_runs_black_box(onnx_file: Path, trained: Any, tmp_path: Path) -> None:
    from raigate.audit import fairness

    model = ["--model", f"onnx:{onnx_file}", "--mode", "black-box"]
    data = ["--data", "demo:test", "--limit", "120"]
    code, out = invoke("evaluate", *model, *data, "--out", str(tmp_path / "ev"))
    assert code == 0, out
    assert "onnx model" in out and "black-box" in out
    assert _result(tmp_path / "ev")["mode"] == "black-box"

    code, out = invoke("fairness", *model, *data, "--out", str(tmp_path / "fair"))
    assert code in (0, 1), out
    fair = _result(tmp_path / "fair")
    assert fair["mode"] == "black-box"
    ref = fairness.run(trained, __import__("raigate").load_data("demo:test", limit=120),
                       fairness.FairnessParams(progress=False))  # fmt: skip
    assert fair["metrics"]["groups"] == json.loads(ref.model_dump_json())["metrics"]["groups"]

    code, out = invoke("explain", *model, *data[:2], "--limit", "4", "--kernelshap-samples",
                       "32", "--out", str(tmp_path / "ex"))  # fmt: skip
    assert code in (0, 1), out
    ex = _result(tmp_path / "ex")
    assert ex["mode"] == "black-box"
    assert set(ex["params"]["methods"]) == {"occlusion", "feature-ablation", "kernelshap"}

    code, out = invoke("robustness", *model, *data[:2], "--limit", "16", "--eps", "8/255",
                       "--query-budget", "50", "--out", str(tmp_path / "rob"))  # fmt: skip
    assert code == 0, out
    rob = _result(tmp_path / "rob")
    assert rob["mode"] == "black-box"
    assert {r["attack"] for r in rob["metrics"]["attacks"]} == {"clean", "square"}

    code, out = invoke("privacy", "audit", *model, "--members", "demo:train",
                       "--non-members", "demo:test", "--limit", "60", "--members-limit", "60",
                       "--attacks", "loss", "--out", str(tmp_path / "priv"))  # fmt: skip
    assert code == 0, out
    assert _result(tmp_path / "priv")["mode"] == "black-box"


def test_audit_plan_with_an_onnx_model_and_its_preprocessing(
    onnx_file: Path, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(
        f'[model]\nspec = "onnx:{onnx_file}"\nmode = "black-box"\n'
        '[model.preprocess]\nresize = 36\nresize_mode = "shorter"\ncrop = 32\n'
        '[data]\nspec = "demo:test"\nlimit = 40\n'
        '[checks.evaluate]\n[checks.robustness]\neps = ["8/255"]\nquery_budget = 20\n'
        "certify = false\n"
    )
    code, out = invoke("audit", str(plan), "--out", str(tmp_path / "bundle"))
    assert code in (0, 1), out
    assert "black-box" in out
    report = json.loads((tmp_path / "bundle" / "report.json").read_text())
    checks = report["checks"]
    assert {c["mode"] for c in checks.values()} == {"black-box"}
    html = (tmp_path / "bundle" / "report.html").read_text()
    assert "mode <strong>black-box</strong>" in html and "center crop 32x32" in html
    model = report["model"]
    assert model["mode"] == "black-box" and model["details"]["format"] == "onnx"
    assert model["preprocess"] == {"resize": [36, 36], "resize_mode": "shorter", "crop": [32, 32]}
    assert "center crop 32x32" in model["pipeline"]
