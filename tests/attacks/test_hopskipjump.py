"""HopSkipJump through ART under a counted budget: its count against a QueryNet's own, its
points re-checked on the model, its schedule against its definition, and the bridge's
gradient-free ART classifier for black-box models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from raigate import ConfigError, wrap
from raigate.attacks import (
    hop_skip_jump,
    hsj_schedule,
    perturbation_norm,
    run_art_attack,
    to_art_classifier,
)
from raigate.models.base import Capabilities, Model
from raigate.models.blackbox import QueryNet

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SHAPE = (3, 8, 8)
BUDGET = 300


@pytest.fixture(scope="module")
def model() -> Model:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 3))
    return wrap(net.eval(), class_names=list("abc"), input_shape=SHAPE, mean=0.5, std=0.25)


def _twin(model: Model) -> tuple[Model, QueryNet]:
    def predict(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.logits(torch.from_numpy(a)).numpy()

    net = QueryNet(predict)
    caps = Capabilities(gradients=False)
    return Model(net, class_names=model.class_names, input_shape=SHAPE, capabilities=caps), net


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_counted_queries_stay_in_budget_and_points_are_misclassified(model, norm) -> None:
    x = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(1))
    y = model.predict(x)
    y[0] = (y[0] + 1) % 3  # one image misclassified from the start
    twin, net = _twin(model)
    res = hop_skip_jump(twin, x, y, norm=norm, query_budget=BUDGET, seed=0)
    assert int(res.queries.sum()) == net.queries  # the predictor's own count
    assert int(res.queries.max()) <= BUDGET  # the oracle refuses more: no slack needed
    assert int(res.queries[0]) == 1 and float(res.distance[0]) == 0.0
    assert res.success.all()  # a decision boundary is always reachable on this model
    assert (model.predict(res.x_adv) != y).all()  # re-checked on the white-box model
    np.testing.assert_allclose(
        res.distance.numpy(), perturbation_norm(res.x_adv, x, norm).numpy(), rtol=1e-5
    )
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    # minimal perturbation: far below the distance to the start image it walked from
    assert float(res.distance[1:].max()) < float(perturbation_norm(x[1:2], x[2:3], norm)[0])


def test_seeded_and_numpy_state_restored(model) -> None:
    x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(2))
    y = model.predict(x)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = hop_skip_jump(model, x, y, norm="l2", query_budget=BUDGET, seed=5)
    assert np.array_equal(np.random.get_state()[1], before)
    b = hop_skip_jump(model, x, y, norm="l2", query_budget=BUDGET, seed=5)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)


@pytest.mark.parametrize("budget", [50, 300, 1000, 25_000])
def test_schedule_is_the_most_iterations_the_budget_could_pay_for(budget: int) -> None:
    """Each iteration costs at least ART's binary search (ceil(log2(1/theta)) queries,
    theta = 0.01/sqrt(d) for L2), its gradient estimate and one step query, after the clean
    image, the start point and ART's two predictions of them."""
    shape = (3, 32, 32)
    s = hsj_schedule(budget, shape, "l2")
    assert s["init_eval"] == min(max(budget // 40, 10), 100) <= s["max_eval"] <= 10_000
    search = math.ceil(math.log2(math.sqrt(3072) / 0.01))

    def cost(t: int) -> int:
        return min(int(s["init_eval"] * math.sqrt(t + 1)), s["max_eval"]) + 1 + search

    spent = 4 + sum(cost(t) for t in range(s["max_iter"]))
    assert spent <= budget or s["max_iter"] == 1
    assert spent + cost(s["max_iter"]) > budget


def test_black_box_models_get_a_gradient_free_art_classifier(model) -> None:
    from art.estimators.classification import BlackBoxClassifierNeuralNetwork

    twin, net = _twin(model)
    assert isinstance(to_art_classifier(twin), BlackBoxClassifierNeuralNetwork)
    x = torch.rand(6, *SHAPE, generator=torch.Generator().manual_seed(3))
    y = model.predict(x)
    x_adv = run_art_attack(
        twin, "art:SquareAttack", x, y, params={"max_iter": 20, "nb_restarts": 1}, eps=0.1
    )
    assert net.queries > 0 and float(perturbation_norm(x_adv, x, "linf").max()) <= 0.1 + 1e-6
    with pytest.raises(ConfigError, match=r"art:FastGradientMethod needs input gradients"):
        run_art_attack(twin, "art:FastGradientMethod", x, y, eps=0.1)
