"""The privacy check end to end: a deliberately overfit non-private model leaks membership,
and an empirical epsilon above a claimed epsilon is a failed gate."""

from __future__ import annotations

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


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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


def test_the_strongest_of_two_attacks_is_bounded_at_alpha_over_two(
    overfit: raigate.Model,
) -> None:
    """Bonferroni over attacks: each attack's bound and AUC interval are taken at alpha / 2,
    recomputed here from the attack's own scores with the library's primitives."""
    from raigate.privacy.mia import auc_interval, empirical_epsilon, model_outputs

    non_members = raigate.load_data("demo:test", limit=64, task=TASK)
    params = privacy.PrivacyParams(
        members="demo:train", members_limit=64, epsilon=0.5, max_auc=0.6, progress=False
    )
    result = privacy.run(overfit, non_members, params)
    assert result.metrics["alpha_per_attack"] == pytest.approx(0.025)
    members = raigate.load_data("demo:train", limit=64, task=TASK)
    mo = model_outputs(overfit, members, progress=False)
    no = model_outputs(overfit, non_members, progress=False)
    loss = result.table("attacks").set_index("attack").loc["loss"]
    alone = empirical_epsilon(-mo.loss, -no.loss, delta=1e-5, alpha=0.025, seed=0)
    assert loss["eps_lower"] == pytest.approx(alone["eps_lower"])
    # at alpha = 0.05 for one attack the bound is higher: the correction costs something
    single = empirical_epsilon(-mo.loss, -no.loss, delta=1e-5, alpha=0.05, seed=0)
    assert single["eps_lower"] >= alone["eps_lower"]
    gate = next(f for f in result.findings if f.id == "privacy.membership_auc")
    table = result.table("attacks").set_index("attack")
    named = table.loc["loss" if "attack loss," in gate.message else "art_blackbox"]
    # one-sided 0.025 on each side: the two-sided 95% Hanley-McNeil interval
    lo, hi = auc_interval(named["auc"], named["n_members"], named["n_non_members"], 0.05)
    assert f"[{lo:.4f}, {hi:.4f}]" in gate.message
    assert "jointly over 2 attacks" in gate.message


def test_auc_gate_three_levels_on_constructed_attacks() -> None:
    from raigate.privacy.mia import AttackResult, auc_interval

    def attack(auc: float, n: int) -> AttackResult:
        return AttackResult("x", auc, {}, {"eps_lower": 0.0}, n, n)

    lo, _ = auc_interval(0.75, 200, 200, 0.05)
    assert lo > 0.6  # so 0.75 at n=200 is beyond 0.6 with confidence
    assert privacy._auc_finding([attack(0.75, 200)], 0.6, 0.025, "").severity == "fail"
    assert privacy._auc_finding([attack(0.62, 200)], 0.6, 0.025, "").severity == "warn"
    assert privacy._auc_finding([attack(0.5, 5000)], 0.6, 0.025, "").severity == "pass"
    # a second, weaker attack never rescues a failing one
    two = [attack(0.5, 5000), attack(0.75, 200)]
    assert privacy._auc_finding(two, 0.6, 0.0125, "").severity == "fail"


def _black_box_twin(model: raigate.Model) -> raigate.Model:
    """The same network behind a numpy predictor: queries only, no gradients, no weights."""
    import numpy as np

    from raigate.models.base import Capabilities, Model
    from raigate.models.blackbox import QueryNet

    net = model.net

    def predict(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(a)).numpy()

    return Model(
        QueryNet(predict, name="served age model"),
        class_names=model.class_names,
        input_shape=model.input_shape,
        mean=0.5,
        std=0.5,
        spec="served:age",
        capabilities=Capabilities(gradients=False),
    )


def test_black_box_twin_gives_the_same_membership_scores(overfit: raigate.Model) -> None:
    import numpy as np

    from raigate.privacy.mia import model_outputs

    twin = _black_box_twin(overfit)
    non_members = raigate.load_data("demo:test", limit=64, task=TASK)
    members = raigate.load_data("demo:train", limit=64, task=TASK)
    white_out = model_outputs(overfit, members, progress=False)
    black_out = model_outputs(twin, members, progress=False)
    np.testing.assert_array_equal(black_out.probs, white_out.probs)  # the same forward function
    np.testing.assert_array_equal(black_out.loss, white_out.loss)

    params = privacy.PrivacyParams(
        members="demo:train", members_limit=64, epsilon=0.5, max_auc=0.6, progress=False
    )
    before = twin.net.queries
    white = privacy.run(overfit, non_members, params)
    black = privacy.run(twin, non_members, params)
    assert twin.net.queries - before == 64 + 64  # one forward query per example, nothing else
    assert white.mode == "white-box" and black.mode == "black-box"
    assert black.model.model_dump()["mode"] == "black-box"
    assert black.metrics["attacks"] == white.metrics["attacks"]  # AUCs, TPRs, epsilon bounds
    assert black.metrics["auc"] == white.metrics["auc"] > 0.85
    assert [f.model_dump() for f in black.findings] == [f.model_dump() for f in white.findings]
