"""``raigate privacy train`` and ``raigate privacy audit`` through the CLI, and the bad
inputs that must exit 2 with one clear line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raigate.cli import app
from raigate.privacy.ledger import Ledger

TRAIN = [
    "privacy",
    "train",
    "--model",
    "raigate.zoo:small_cnn",
    "--data",
    "demo:train",
    "--limit",
    "96",
    "--epochs",
    "1",
    "--batch-size",
    "16",
    "--accountant",
    "rdp",
    "--device",
    "cpu",
]


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def test_train_then_audit(tmp_path: Path) -> None:
    out = tmp_path / "dp"
    spec = tmp_path / "bn_cnn.json"  # a BatchNorm CNN without weights: replaced by GroupNorm
    spec.write_text(json.dumps({"factory": "raigate.zoo:small_cnn", "kwargs": {"norm": "batch"}}))
    args = [a if a != "raigate.zoo:small_cnn" else str(spec) for a in TRAIN]
    res = invoke(
        *args,
        "--epsilon",
        "3",
        "--delta",
        "1e-4",
        "--eval-data",
        "demo:test",
        "--baseline",
        "--canaries",
        "16",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    text = res.output  # type: ignore[attr-defined]
    assert "batchnorm: features.1 (BatchNorm2d) replaced by GroupNorm" in text
    assert "spent epsilon" in text and "canary audit: epsilon >=" in text
    ledger = Ledger.load(out)
    assert ledger.epsilon <= 3.0 and ledger.canaries == 16 and ledger.batchnorm == "groupnorm"
    result = json.loads((out / "result.json").read_text())
    assert {"accuracy_dp", "accuracy_baseline", "cost_pp", "canary_eps_lower"} <= set(
        result["metrics"]
    )
    assert result["metrics"]["per_class"][0].keys() >= {"class", "accuracy_dp", "cost_pp"}
    # the non-private twin is saved, reloads to the accuracy reported, and is not the DP model
    from raigate import load_data, load_model
    from raigate.audit import evaluate

    assert "non-private baseline: " in text and str(out / "baseline" / "model.json") in text
    base = load_model(str(out / "baseline" / "model.json"))
    ev = evaluate.run(base, load_data("demo:test"), evaluate.EvaluateParams(progress=False))
    assert ev.metric("accuracy") == pytest.approx(result["metrics"]["accuracy_baseline"])
    assert base.digest != load_model(str(out / "model.json")).digest
    audit = invoke(
        "privacy",
        "audit",
        "--model",
        str(out / "model.json"),
        "--members",
        "demo:train",
        "--members-limit",
        "96",
        "--non-members",
        "demo:test",
        "--limit",
        "96",
        "--ledger",
        str(out / "ledger.json"),
        "--attacks",
        "loss",
        "--out",
        str(tmp_path / "audit"),
        "--device",
        "cpu",
    )
    assert audit.exit_code == 0, audit.output  # type: ignore[attr-defined]
    assert "[PASS] empirical epsilon lower bound" in audit.output  # type: ignore[attr-defined]


def test_interrupted_run_resumes_from_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "dp"
    first = invoke(
        *TRAIN,
        "--epsilon",
        "3",
        "--delta",
        "1e-4",
        "--checkpoint-every",
        "2",
        "--stop-after-steps",
        "3",
        "--out",
        str(out),
    )
    assert first.exit_code == 0, first.output  # type: ignore[attr-defined]
    assert "continue with --resume" in first.output  # type: ignore[attr-defined]
    assert Ledger.load(out).steps == 2 and not Ledger.load(out).complete
    again = invoke(*TRAIN, "--epsilon", "3", "--delta", "1e-4", "--out", str(out))
    assert again.exit_code == 2 and "holds an unfinished DP run" in again.output  # type: ignore[attr-defined]
    done = invoke(
        *TRAIN, "--epsilon", "3", "--delta", "1e-4", "--checkpoint-every", "2", "--resume", str(out)
    )
    assert done.exit_code == 0, done.output  # type: ignore[attr-defined]
    assert Ledger.load(out).complete and Ledger.load(out).steps == 6


UNFIXABLE = '''
import torch
from torch import nn


class RunningCenter(nn.Module):
    """Subtracts a running mean it updates from every training batch."""

    def __init__(self, channels):
        super().__init__()
        self.register_buffer("running_center", torch.zeros(channels))

    def forward(self, x):
        if self.training:
            self.running_center.mul_(0.9).add_(0.1 * x.mean((0, 2, 3)).detach())
        return x - self.running_center.view(1, -1, 1, 1)


def net(num_classes=2):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), RunningCenter(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
'''


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--epsilon", "0"], "raigate: error: --epsilon must be positive, got 0.0"),
        (["--delta", "0.5"], "raigate: error: --delta 0.5 must lie in (0, 1/N) = (0, 0.0104)"),
        (["--batch-size", "500"], "--batch-size 500 exceeds the 96 training examples"),
        (["--secure-mode"], "--secure-mode needs the package 'torchcsprng'"),
        (["--model", "hf:/nowhere"], "DP training rebuilds the network, so --model must be"),
        (
            ["--grad-sample-mode", "bk", "--augmult", "2"],
            "--augmult needs --grad-sample-mode fast or hooks (bk clips each row)",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, extra: list[str], message: str) -> None:
    res = invoke(*TRAIN, *extra, "--out", str(tmp_path))
    assert res.exit_code == 2, res.output  # type: ignore[attr-defined]
    assert message in res.output and "Traceback" not in res.output  # type: ignore[attr-defined]
    assert not (tmp_path / "ledger.json").exists()


def test_unfixable_layer_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "raigate_test_unfixable.py").write_text(textwrap.dedent(UNFIXABLE))
    monkeypatch.chdir(tmp_path)
    args = [a if a != "raigate.zoo:small_cnn" else "raigate_test_unfixable:net" for a in TRAIN]
    res = invoke(*args, "--out", str(tmp_path / "out"))
    assert res.exit_code == 2, res.output  # type: ignore[attr-defined]
    assert (
        "layer 1 (RunningCenter) updates buffer 1.running_center from the batch in training mode"
        in res.output  # type: ignore[attr-defined]
    )
