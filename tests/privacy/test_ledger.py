"""The ledger's epsilon, recomputed from (sigma, q, steps) with Opacus' accountants."""

from __future__ import annotations

import json
import math

import pytest
import torch
from opacus import PrivacyEngine
from opacus.accountants import PRVAccountant, RDPAccountant

from raigate.models import load_model
from raigate.privacy.ledger import Ledger
from raigate.privacy.train import DPParams, PrivateTraining, _calibrate


def test_ledger_epsilon_recomputed_with_opacus_accountants(tiny_dp: PrivateTraining) -> None:
    led = tiny_dp.ledger
    assert led.complete and led.steps == led.planned_steps == math.ceil(1 / (16 / 96)) == 6
    assert led.sample_rate == 16 / 96  # batch_size / N, exactly
    assert led.history == [(led.noise_multiplier, led.sample_rate, 6)]
    rdp, prv = RDPAccountant(), PRVAccountant()
    rdp.history = prv.history = [(led.noise_multiplier, 16 / 96, 6)]
    assert led.epsilons["rdp"] == rdp.get_epsilon(delta=1e-4)
    assert abs(led.epsilons["prv"] - prv.get_epsilon(delta=1e-4, eps_error=0.01)) < 1e-12
    assert led.epsilon == led.epsilons["rdp"] <= led.target_epsilon == 3.0
    assert led.epsilon > 2.9  # calibrated to the target, not far below it (tolerance 0.01)


def test_ledger_file_round_trips_and_names_the_data(tiny_dp: PrivateTraining) -> None:
    assert tiny_dp.out_dir is not None
    raw = json.loads((tiny_dp.out_dir / "ledger.json").read_text())
    for key in (
        "epsilon",
        "delta",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "max_grad_norm",
        "accountant",
        "opacus_version",
        "poisson_sampling",
        "epsilons",
        "secure_mode",
        "dataset_size",
        "manifest_digest",
    ):
        assert key in raw
    assert raw["poisson_sampling"] is True and raw["dataset_size"] == 96
    assert Ledger.load(tiny_dp.out_dir) == tiny_dp.ledger


def test_saved_spec_reloads_the_trained_network(tiny_dp: PrivateTraining) -> None:
    assert tiny_dp.spec_path is not None
    model = load_model(str(tiny_dp.spec_path))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(x), tiny_dp.model.logits(x))
    assert model.digest == tiny_dp.model.digest


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sigma_matches_make_private_with_epsilon_when_batch_divides_n() -> None:
    """Where 1/len(loader) equals batch/N, Opacus' own entry point picks the same sigma."""
    n, batch, epochs = 1000, 50, 3
    data = torch.utils.data.TensorDataset(torch.zeros(n, 2), torch.zeros(n, dtype=torch.long))
    loader = torch.utils.data.DataLoader(data, batch_size=batch)
    engine = PrivacyEngine(accountant="rdp")
    module = torch.nn.Linear(2, 2)
    _, opt, _ = engine.make_private_with_epsilon(
        module=module,
        optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
        data_loader=loader,
        target_epsilon=2.0,
        target_delta=1e-5,
        epochs=epochs,
        max_grad_norm=1.0,
    )
    ours = _calibrate(DPParams(epsilon=2.0, delta=1e-5, accountant="rdp"), batch / n, 60)
    assert opt.noise_multiplier == ours
