"""Sampler honesty: a sampler the accountant cannot charge is refused with one line, a
weighted sampler's true per-example rate is computed, and the ledger's realized-rate test
catches a sampler that draws at another rate than the one charged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from opacus.data_loader import DPDataLoader
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from raigate.errors import ConfigError, RaigateError
from raigate.privacy import check_loader
from raigate.privacy.ledger import Ledger
from raigate.privacy.sampler import realized_rate, sampler_finding, weighted_max_rate
from raigate.privacy.sampling import PoissonBatches
from raigate.privacy.train import PrivateTraining

N, B = 96, 16  # the tiny setup of conftest.py: 96 demo images, batch 16, q = 1/6, 6 steps


def _two_sided_binomial_p(k: int, n: int, q: float) -> float:
    """Exact two-sided binomial p-value, summed from the pmf (as R's binom.test defines it)."""
    log_pmf = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
        + i * math.log(q) + (n - i) * math.log1p(-q)
        for i in range(n + 1)
    ]  # fmt: skip
    bar = log_pmf[k] + 1e-7 * abs(log_pmf[k])  # relative tolerance, as scipy uses
    return min(1.0, sum(math.exp(v) for v in log_pmf if v <= bar))


# -- refusals --------------------------------------------------------------------------------
def test_weighted_sampler_is_refused_with_one_line(dp_runner) -> None:  # type: ignore[no-untyped-def]
    wrs = WeightedRandomSampler(torch.ones(N), num_samples=N, replacement=True)
    with pytest.raises(ConfigError) as err:
        dp_runner(sampler=wrs)
    msg = str(err.value)
    assert "\n" not in msg
    assert "WeightedRandomSampler" in msg and "--balance" in msg
    assert f"q = {B}/{N}" in msg


@pytest.mark.parametrize(
    "sampler",
    [
        RandomSampler(range(N)),
        DataLoader(TensorDataset(torch.zeros(N)), batch_size=B, shuffle=True),
        PoissonBatches(torch.arange(N), sample_rate=B / N, steps=6, generator=None),
        "poisson",
    ],
    ids=["random", "shuffled-loader", "user-poisson-batches", "not-a-sampler"],
)
def test_user_supplied_sampler_is_refused(sampler: object, dp_runner) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"sampler") as err:
        dp_runner(sampler=sampler)
    assert "\n" not in str(err.value) and "sampler=None" in str(err.value)


def test_opacus_uniform_sampler_at_another_rate_is_refused(dp_runner) -> None:  # type: ignore[no-untyped-def]
    wrong_rate = UniformWithReplacementSampler(num_samples=N, sample_rate=0.25)
    with pytest.raises(ConfigError, match=r"rate 0\.25.*q = 16/96 = 0\.166667"):
        dp_runner(sampler=wrong_rate)
    wrong_n = UniformWithReplacementSampler(num_samples=1000, sample_rate=B / N)
    with pytest.raises(ConfigError, match=r"from 1000 examples, not the dataset's 96"):
        dp_runner(sampler=wrong_n)


def test_opacus_uniform_sampler_at_the_right_rate_is_the_same_run(
    tiny_dp: PrivateTraining,
    dp_runner,  # type: ignore[no-untyped-def]
) -> None:
    loader = DPDataLoader(TensorDataset(torch.zeros(N)), sample_rate=B / N)
    run = dp_runner(sampler=loader)
    rec, ref = run.ledger.sampler, tiny_dp.ledger.sampler
    assert rec is not None and ref is not None
    assert rec.source.startswith("opacus.utils.uniform_sampler.UniformWithReplacementSampler")
    assert run.ledger.history == tiny_dp.ledger.history
    assert rec.examples_drawn == ref.examples_drawn  # drawn by raigate's seeded sampler


# -- a weighted sampler's true rate ----------------------------------------------------------
def test_weighted_sampler_rate_opacus_813() -> None:
    """opacus#813: N = 100,000, batch 16, WeightedRandomSampler(num_samples=128)."""
    n = 100_000
    wrs = WeightedRandomSampler(torch.ones(n), num_samples=128, replacement=True)
    loader = DataLoader(TensorDataset(torch.zeros(n)), batch_size=16, sampler=wrs)
    rep = check_loader(loader, dataset_size=n, expected_batch_size=16)
    assert not rep.ok and rep.kind == "weighted" and "\n" not in rep.message
    assert rep.accountant_rate == 16 / n
    # Opacus would charge 1/len(loader) = 1/8 and resample at it: read from Opacus itself
    assert rep.opacus_rate == DPDataLoader.from_data_loader(loader).sample_rate == 1 / 8
    assert rep.opacus_rate / rep.accountant_rate == pytest.approx(781.25)
    # equal weights: each example's rate 1 - (1 - 1/N)^16 is q to first order
    assert rep.max_rate == pytest.approx(1 - (1 - 1 / n) ** 16, rel=1e-12)
    assert rep.max_rate == pytest.approx(16 / n, rel=1e-3)


def test_weighted_sampler_rate_class_balancing_opacus_600() -> None:
    """opacus#600's class balancing: counts 40,000 / 10,000 / 10,000, weights 1/count,
    batch 256. A minority example's rate is 1 - (1 - 1/30,000)^256, twice q = 256/60,000."""
    counts = [40_000, 10_000, 10_000]
    w = torch.cat([torch.full((c,), 1.0 / c) for c in counts])
    wrs = WeightedRandomSampler(w, num_samples=len(w), replacement=True)
    rep = check_loader(
        DataLoader(TensorDataset(torch.zeros(len(w))), batch_size=256, sampler=wrs),
        dataset_size=60_000,
        expected_batch_size=256,
    )
    p_minority = (1 / 10_000) / 3  # each class carries a third of the total weight
    assert rep.max_rate == pytest.approx(1 - (1 - p_minority) ** 256, rel=1e-12)
    assert rep.max_rate / (256 / 60_000) == pytest.approx(1.9915, abs=1e-4)
    assert "1.992x the accountant's q" in rep.message and "--balance" in rep.message


def test_weighted_max_rate_matches_torch_weighted_sampler() -> None:
    """The closed form against torch's own sampler: 20,000 batches of 4 from 10 weights."""
    w = torch.tensor([8.0, 1, 1, 1, 1, 1, 1, 1, 1, 1])  # the heaviest: p = 8/17
    torch.manual_seed(0)
    draws = torch.tensor(list(WeightedRandomSampler(w, num_samples=80_000, replacement=True)))
    in_batch = (draws.reshape(20_000, 4) == 0).any(dim=1).double().mean().item()
    rate = weighted_max_rate(w, 4)
    assert rate == pytest.approx(1 - (9 / 17) ** 4, rel=1e-12)
    assert abs(in_batch - rate) < 5 * math.sqrt(rate * (1 - rate) / 20_000)


def test_check_loader_passes_opacus_poisson_and_refuses_shuffled() -> None:
    ds = TensorDataset(torch.zeros(1000))
    good = check_loader(
        DPDataLoader(ds, sample_rate=0.032), dataset_size=1000, expected_batch_size=32
    )
    assert good.ok and good.kind == "poisson" and good.max_rate == 0.032
    bad = check_loader(DataLoader(ds, batch_size=32, shuffle=True), dataset_size=1000,
                       expected_batch_size=32)  # fmt: skip
    assert not bad.ok and bad.kind == "shuffled" and "Poisson" in bad.message
    assert bad.opacus_rate == 1 / 32  # 1/len(loader) = 1/ceil(1000/32), not 32/1000


# -- the ledger's realized-rate test ---------------------------------------------------------
def test_ledger_records_the_sampler(tiny_dp: PrivateTraining) -> None:
    rec = tiny_dp.ledger.sampler
    assert rec is not None and rec.kind == "poisson" and rec.source == "raigate"
    assert rec.sampler_class == "raigate.privacy.sampling.PoissonBatches"
    # replay the seeded draws independently: stream 100 of seed 0, one rand(N) per step
    gen = torch.Generator().manual_seed(100)
    expected_drawn = sum(int((torch.rand(N, generator=gen) < B / N).sum()) for _ in range(6))
    assert rec.examples_drawn == expected_drawn
    assert (rec.steps, rec.trials, rec.expected) == (6, 6 * N, pytest.approx(6 * B))
    assert rec.p_value == pytest.approx(_two_sided_binomial_p(expected_drawn, 6 * N, B / N))
    assert rec.plausible and sampler_finding(rec).severity == "pass"
    assert tiny_dp.out_dir is not None and Ledger.load(tiny_dp.out_dir).sampler == rec


def test_old_ledger_without_sampler_still_loads(tiny_dp: PrivateTraining, tmp_path: Path) -> None:
    assert tiny_dp.out_dir is not None
    raw = json.loads((tiny_dp.out_dir / "ledger.json").read_text())
    del raw["sampler"]
    (tmp_path / "ledger.json").write_text(json.dumps(raw))
    old = Ledger.load(tmp_path)
    assert old.sampler is None and old.epsilon == tiny_dp.ledger.epsilon


class _DoubleRate(PoissonBatches):
    """A tampered sampler: reports rate q to every check but draws at 2q."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        for _ in range(self.steps):
            mask = torch.rand(self.num_samples, generator=self.generator) < 2 * self.sample_rate
            yield self.indices[mask.nonzero(as_tuple=False).reshape(-1)].tolist()


def test_realized_rate_check_fails_for_a_tampered_sampler(
    dp_runner,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import raigate.privacy.setup as setup_module

    monkeypatch.setattr(setup_module, "PoissonBatches", _DoubleRate)
    out = tmp_path / "run"
    with pytest.raises(RaigateError, match=r"received \d+ examples over 6 steps") as err:
        dp_runner(out)
    assert "\n" not in str(err.value) and "does not hold" in str(err.value)
    rec = Ledger.load(out).sampler  # the ledger on disk records the failed test
    assert rec is not None and not rec.plausible and rec.p_value < 1e-6
    assert rec.sampler_class.endswith("_DoubleRate")
    assert rec.examples_drawn > rec.expected + 5 * math.sqrt(rec.trials * (1 / 6) * (5 / 6))
    assert sampler_finding(rec).severity == "fail"
    assert not (out / "model.safetensors").exists()  # no model published under a false claim


def test_realized_rate_boundaries() -> None:
    """p just above and below the 1e-6 line, against the pmf sum."""
    n, q = 6000, 0.1  # mean 600, sd ~23.2
    for k, plausible in ((600, True), (650, True), (730, False), (480, False)):
        rec = realized_rate(drawn=k, dataset_size=1000, steps=6, sample_rate=q, sampler_class="x")
        assert rec.trials == n and rec.plausible is plausible
        assert rec.p_value == pytest.approx(_two_sided_binomial_p(k, n, q), rel=1e-6)


# -- the command line ------------------------------------------------------------------------
def test_cli_check_sampler_reports_the_weighted_rate(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from raigate.cli import app

    weights = tmp_path / "w.csv"  # opacus#600's classes, scaled down: 400 / 100 / 100
    weights.write_text("weight\n" + "\n".join(["0.0025"] * 400 + ["0.01"] * 200) + "\n")
    args = ["privacy", "check-sampler", "--weights", str(weights), "--batch-size", "32"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    rate = 1 - (1 - 0.01 / 3.0) ** 32  # total weight 400 x 0.0025 + 200 x 0.01 = 3
    assert f"({rate:.4g} for the heaviest, {rate / (32 / 600):.4g}x" in res.output
    bad = tmp_path / "bad.txt"
    bad.write_text("1\n-2\n")
    res = CliRunner().invoke(app, ["privacy", "check-sampler", "--weights", str(bad),
                                   "--batch-size", "4"])  # fmt: skip
    assert res.exit_code == 2 and "non-negative" in res.output and "Traceback" not in res.output


def test_resume_from_a_checkpoint_without_the_count_tests_the_resumed_steps(
    tiny_dp: PrivateTraining,
    dp_runner,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """A checkpoint written before the count existed: the test covers the steps run after
    the resume (and says so in ``steps``); the budget and weights are unchanged."""
    out = tmp_path / "run"
    dp_runner(out, stop_after_steps=3, checkpoint_every=3)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    del ckpt["drawn"]
    torch.save(ckpt, out / "checkpoint.pt")
    done = dp_runner(resume=out)
    rec, full = done.ledger.sampler, tiny_dp.ledger.sampler
    assert rec is not None and full is not None
    assert (rec.steps, rec.trials) == (3, 3 * N) and done.ledger.history == tiny_dp.ledger.history
    gen = torch.Generator().manual_seed(100)  # the same stream: steps 4-6 are its last 3 draws
    per_step = [int((torch.rand(N, generator=gen) < B / N).sum()) for _ in range(6)]
    assert rec.examples_drawn == sum(per_step[3:]) and full.examples_drawn == sum(per_step)


def test_weighted_without_replacement_is_a_lower_bound() -> None:
    w = torch.tensor([5.0] + [1.0] * 99)
    batches = BatchSampler(WeightedRandomSampler(w, 50, replacement=False), 10, False)
    rep = check_loader(batches, dataset_size=100, expected_batch_size=10)
    assert not rep.ok and rep.opacus_rate is None and "without replacement" in rep.message
    assert rep.max_rate == pytest.approx(1 - (1 - 5 / 104) ** 10) and "at least" in rep.message
