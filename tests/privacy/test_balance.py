"""Group balancing inside DP-SGD (``--balance``): group-weighted clipping and its accounting."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus.optimizers import DPOptimizer
from scipy.optimize import brentq
from scipy.stats import norm
from typer.testing import CliRunner

from raigate.cli import app
from raigate.privacy.balance import (
    COUNT_FLOOR,
    balance_groups,
    group_weights,
    noisy_counts,
    weighted_clip_optimizer,
)
from raigate.privacy.grad_sample import FastGradSample
from raigate.privacy.ledger import Ledger, epsilon_for
from raigate.zoo import small_cnn


def _batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 3, (n,), generator=g)


def _step_grads(weights: torch.Tensor | None, noise: float, *, cls: type) -> list[torch.Tensor]:
    torch.manual_seed(0)
    net = small_cnn(num_classes=3, norm="group")
    x, y = _batch(len(weights) if weights is not None else 8)
    engine = FastGradSample(net)
    opt = cls(
        torch.optim.SGD(net.parameters(), lr=0.1),
        noise_multiplier=noise,
        max_grad_norm=0.05,
        expected_batch_size=8,
        generator=torch.Generator().manual_seed(11),
    )
    if weights is not None:
        opt.sample_weights = weights
    F.cross_entropy(engine.forward(net, x), y).backward()
    opt.pre_step()  # clip, weight, sum, noise, scale
    return [p.grad.clone() for p in net.parameters()]


def test_weighted_clipping_is_the_weighted_sum_of_clipped_per_example_gradients() -> None:
    weights = torch.tensor([1.0, 0.5, 0.25, 1.0, 0.1, 0.8, 0.3, 0.6])
    ours = _step_grads(weights, 0.0, cls=weighted_clip_optimizer(DPOptimizer))
    # The independent computation: one example at a time with autograd, clipped by hand.
    torch.manual_seed(0)
    net = small_cnn(num_classes=3, norm="group")
    x, y = _batch(8)
    expected = [torch.zeros_like(p) for p in net.parameters()]
    for i in range(8):
        grads = torch.autograd.grad(
            F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]), list(net.parameters())
        )
        total = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        scale = min(1.0, 0.05 / (total + 1e-6)) * float(weights[i])
        assert total * scale <= 0.05 * float(weights[i]) + 1e-9  # sensitivity w_i C <= C
        for e, g in zip(expected, grads, strict=True):
            e += scale * g / 8  # Opacus divides the sum by the expected batch size
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)


def test_without_weights_the_step_is_opacus_own_bit_for_bit() -> None:
    ours = _step_grads(None, 0.7, cls=weighted_clip_optimizer(DPOptimizer))
    theirs = _step_grads(None, 0.7, cls=DPOptimizer)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    ones = _step_grads(torch.ones(8), 0.7, cls=weighted_clip_optimizer(DPOptimizer))
    for a, b in zip(ones, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_group_weights_give_every_group_the_smallest_groups_total() -> None:
    counts = np.array([120.0, 30.0, 600.0, 45.0])
    w = group_weights(counts)
    assert w.max() == 1.0 and w.argmax() == 1
    np.testing.assert_allclose(w * counts, np.full(4, 30.0))  # equal totals: the closed form


def test_noisy_counts_have_the_stated_noise_and_floor() -> None:
    sizes = np.array([1000.0] * 2000 + [2.0])
    c = noisy_counts(sizes, 5.0, torch.Generator().manual_seed(0))
    assert abs(c[:-1].mean() - 1000.0) < 0.5 and abs(c[:-1].std() - 5.0) < 0.3
    assert c[-1] == COUNT_FLOOR * 5.0  # a size of 2 under noise 5 is mostly noise: floored
    codes = np.array([0] * 30 + [1])
    record, per_example = balance_groups("race", ["a", "b"], codes, 2.0, torch.Generator())
    assert record.floored == ["b"]  # one member under noise 2: its count rests on the floor 6
    assert record.noisy_counts[1] == 6.0 and record.weights[1] == 1.0
    assert per_example.shape == (31,) and float(per_example[-1]) == 1.0
    assert float(per_example[0]) == pytest.approx(6.0 / record.noisy_counts[0])


def _analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Balle & Wang (2018), Theorem 8: the exact (epsilon, delta) curve of the Gaussian
    mechanism with sensitivity 1 and noise std sigma."""

    def gap(eps: float) -> float:
        return (
            norm.cdf(0.5 / sigma - eps * sigma)
            - math.exp(eps) * norm.cdf(-0.5 / sigma - eps * sigma)
            - delta
        )

    return float(brentq(gap, 0.0, 50.0))


@pytest.mark.parametrize("sigma", [2.0, 20.0])
def test_the_count_release_is_accounted_as_the_gaussian_mechanism(sigma: float) -> None:
    exact = _analytic_gaussian_epsilon(sigma, 1e-5)
    prv = epsilon_for([(sigma, 1.0, 1)], 1e-5, "prv")
    assert exact <= prv <= exact + 0.011  # PRV is an upper bound within eps_error = 0.01
    assert epsilon_for([(sigma, 1.0, 1)], 1e-5, "rdp") >= exact


def test_a_balanced_run_pays_for_its_counts_and_resumes_bit_identically(
    dp_runner,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    full = dp_runner(tmp_path / "full", balance="race", balance_noise=2.0)
    led = full.ledger
    assert led.history[0] == (2.0, 1.0, 1)  # the counts, released once before step 1
    assert len(led.history) == 2 and led.history[1][2] == 6
    assert led.epsilon <= 3.0
    # the steps alone spend less than the target: the counts took their share
    assert epsilon_for(led.history[1:], led.delta, "rdp") < led.epsilon
    assert epsilon_for(led.history, led.delta, "rdp") == pytest.approx(led.epsilon)
    plain = dp_runner(None)
    assert led.noise_multiplier > plain.ledger.noise_multiplier  # more noise for the same eps
    b = led.group_balance
    assert b is not None and b["attribute"] == "race" and "group_balance" in led.definitions
    counts, weights = np.array(b["noisy_counts"]), np.array(b["weights"])
    np.testing.assert_allclose(weights, counts.min() / counts)
    assert Ledger.load(tmp_path / "full") == led

    part = dp_runner(
        tmp_path / "part", balance="race", balance_noise=2.0, stop_after_steps=4, checkpoint_every=3
    )
    assert part.stopped_early
    done = dp_runner(resume=tmp_path / "part", balance="race", balance_noise=2.0)
    assert done.ledger.history == led.history and done.ledger.group_balance == b
    x, y = done.model.net.state_dict(), full.model.net.state_dict()
    assert all(torch.equal(x[k], y[k]) for k in x)
    unbalanced = plain.model.net.state_dict()
    assert not all(torch.equal(x[k], unbalanced[k]) for k in x)


def test_cli_balance_prints_the_weights_and_refuses_an_unknown_attribute(tmp_path: Path) -> None:
    runner = CliRunner()
    base = [
        "privacy", "train", "--model", "raigate.zoo:small_cnn", "--data", "demo:train",
        "--limit", "96", "--epsilon", "3", "--delta", "1e-4", "--epochs", "1",
        "--batch-size", "16", "--accountant", "rdp",
    ]  # fmt: skip
    bad = runner.invoke(app, [*base, "--balance", "shoe_size", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2, bad.output
    assert "--balance: unknown column(s) ['shoe_size']" in bad.output
    assert "Traceback" not in bad.output
    assert not (tmp_path / "b" / "ledger.json").exists()
    ok = runner.invoke(
        app, [*base, "--balance", "gender", "--balance-noise", "2", "--out", str(tmp_path / "o")]
    )
    assert ok.exit_code == 0, ok.output
    assert "balance over gender: clipped gradients weighted by group (" in ok.output
    ledger = json.loads((tmp_path / "o" / "ledger.json").read_text())
    assert ledger["history"][0] == [2.0, 1.0, 1]
    assert ledger["group_balance"]["groups"] == ["Female", "Male"]
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    assert result["params"]["balance"] == "gender"
    rows = result["metrics"]["balance_groups"]
    assert [r["weight"] for r in rows] == ledger["group_balance"]["weights"]
    assert result["metrics"]["balance_count_noise"] == 2.0
    assert "after releasing the gender group counts for --balance" in ok.output
