"""The privacy check end to end: a deliberately overfit non-private model leaks membership,
and an empirical epsilon above a claimed epsilon is a failed gate."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import raigate
from raigate.audit import CHECKS, privacy
from raigate.errors import ConfigError
from raigate.models.base import Normalize
from raigate.training import fit
from raigate.zoo import small_cnn

# The demo's age task (9 bins read off a jittered disc size) is hard enough that a small CNN
# memorizes its 64 training images instead of generalizing: the setting where membership
# inference works.
TASK = "age"


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one thread is fastest, and spares a shared CPU (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def overfit(one_thread: None) -> raigate.Model:
    members = raigate.load_data("demo:train", limit=64, task=TASK)
    torch.manual_seed(0)
    net = small_cnn(num_classes=len(members.class_names))
    fit(
        net,
        members,
        normalize=Normalize([0.5] * 3, [0.5] * 3),
        epochs=40,
        lr=3e-3,
        batch_size=16,
        progress=False,
    )
    return raigate.wrap(
        net, class_names=members.class_names, input_shape=(3, 32, 32), mean=0.5, std=0.5
    )


def test_overfit_model_leaks_and_breaks_a_claimed_epsilon(overfit: raigate.Model) -> None:
    non_members = raigate.load_data("demo:test", limit=64, task=TASK)
    params = privacy.PrivacyParams(
        members="demo:train", members_limit=64, epsilon=0.5, max_auc=0.6, progress=False
    )
    result = privacy.run(overfit, non_members, params)
    table = result.table("attacks").set_index("attack")
    assert result.metrics["member_accuracy"] > result.metrics["non_member_accuracy"] + 0.4
    assert table.loc["loss", "auc"] > 0.85  # well above chance
    assert 0.0 <= table.loc["art_blackbox", "auc"] <= 1.0
    assert result.metrics["eps_lower"] > 0.5
    gates = {f.id: f for f in result.findings}
    assert gates["privacy.empirical_epsilon"].severity == "fail"
    assert "ABOVE the claimed epsilon 0.500" in gates["privacy.empirical_epsilon"].message
    assert gates["privacy.membership_auc"].severity == "fail"
    assert result.verdict == "fail"
    assert result.data.model_dump()["members_spec"] == "demo:train"


def test_without_a_claim_measurable_leakage_is_a_warning(overfit: raigate.Model) -> None:
    params = privacy.PrivacyParams(
        members="demo:train", members_limit=64, attacks=["loss"], progress=False
    )
    result = privacy.run(overfit, raigate.load_data("demo:test", limit=64, task=TASK), params)
    (gate,) = result.findings
    assert gate.severity == "warn" and "no DP claim" in gate.message


def test_members_and_non_members_must_differ(overfit: raigate.Model) -> None:
    data = raigate.load_data("demo:train", limit=64, task=TASK)
    with pytest.raises(ConfigError, match="are the same data"):
        privacy.run(overfit, data, privacy.PrivacyParams(members="demo:train", members_limit=64))


def test_registered_for_audit_plans() -> None:
    assert CHECKS["privacy"] == (privacy.run, privacy.PrivacyParams)
