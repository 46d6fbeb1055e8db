"""Native Square Attack against independent references: ART's SquareAttack on the same
model, the reference implementation's margin loss, p schedule and L2 bump (transcribed
here from github.com/max-andr/square-attack, attack.py and models.py, in numpy), and a
QueryNet's own query counter."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from raigate import ConfigError, wrap
from raigate.attacks import (
    margin_loss,
    p_selection,
    perturbation_norm,
    square_attack,
    to_art_classifier,
)
from raigate.attacks.square import _bump_rect
from raigate.models.base import Capabilities, Model
from raigate.models.blackbox import QueryNet

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SHAPE = (3, 8, 8)
D = int(np.prod(SHAPE))
BUDGET = 200
CASES = [("linf", 0.04), ("l2", 0.4)]


def _teacher_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform images labelled by a fixed random linear teacher (3 classes)."""
    x = torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))
    w = torch.randn(3, D, generator=torch.Generator().manual_seed(99))
    return x, ((x.flatten(1) - 0.5) @ w.T).argmax(1)


@pytest.fixture(scope="module")
def model() -> Model:
    """A tiny MLP trained on the teacher's labels (about 90% accurate), in a second."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, 3))
    x, y = _teacher_data(4000, 0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(300):
        i = torch.randint(0, len(x), (128,))
        loss = nn.functional.cross_entropy(net(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return wrap(net.eval(), class_names=list("abc"), input_shape=SHAPE)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return _teacher_data(64, 1)


def _black_box_twin(model: Model) -> tuple[Model, QueryNet]:
    def predict(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.logits(torch.from_numpy(a)).numpy()

    net = QueryNet(predict)
    twin = Model(
        net,
        class_names=model.class_names,
        input_shape=model.input_shape,
        capabilities=Capabilities(gradients=False),
    )
    return twin, net


@pytest.mark.parametrize("norm,eps", CASES)
def test_square_lowers_accuracy_inside_the_ball_and_the_budget(model, batch, norm, eps) -> None:
    x, y = batch
    res = square_attack(model, x, y, eps=eps, norm=norm, query_budget=BUDGET, seed=0)
    clean = model.predict(x) == y
    after = model.predict(res.x_adv) == y
    assert after.float().mean() < clean.float().mean() - 0.2  # it works on this model
    assert not (after & ~clean).any()  # never "repairs" a misclassified image
    assert float(perturbation_norm(res.x_adv, x, norm).max()) <= eps + 1e-6
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert torch.equal(res.success, ~after)
    assert torch.allclose(res.distance, perturbation_norm(res.x_adv, x, norm))
    # accounting: 1 query for an image misclassified already, the whole budget for one the
    # attack never fooled, and in between for one it fooled (it stops there)
    q = res.queries
    assert int(q.max()) <= BUDGET
    assert (q[~clean] == 1).all()
    assert (q[clean & after] == BUDGET).all()
    fooled = clean & ~after
    assert ((q[fooled] >= 2) & (q[fooled] < BUDGET)).all()
    assert res.mean_queries < BUDGET and res.max_queries == BUDGET


@pytest.mark.parametrize("norm,eps", CASES)
def test_queries_are_what_a_query_net_counts_and_it_needs_no_gradient(
    model, batch, norm, eps
) -> None:
    x, y = batch
    twin, net = _black_box_twin(model)
    assert twin.mode == "black-box"
    res = square_attack(twin, x, y, eps=eps, norm=norm, query_budget=BUDGET, seed=3)
    assert int(res.queries.sum()) == net.queries  # the predictor's own count
    white = square_attack(model, x, y, eps=eps, norm=norm, query_budget=BUDGET, seed=3)
    assert torch.equal(res.x_adv, white.x_adv) and torch.equal(res.queries, white.queries)


def test_same_seed_same_result_and_another_seed_differs(model, batch) -> None:
    x, y = batch
    a = square_attack(model, x, y, eps=0.04, query_budget=BUDGET, seed=7)
    b = square_attack(model, x, y, eps=0.04, query_budget=BUDGET, seed=7)
    c = square_attack(model, x, y, eps=0.04, query_budget=BUDGET, seed=8)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert not torch.equal(a.x_adv, c.x_adv)


# ART's L2 branch divides by 0 on these 8x8 images (its 5x5 bump grid has 1-pixel tiles,
# and its update divides by the window budget where the reference multiplies by it)
@pytest.mark.filterwarnings("ignore:.*encountered in divide:RuntimeWarning")
@pytest.mark.parametrize("norm,eps", CASES)
def test_not_weaker_than_arts_square_attack(model, batch, norm, eps) -> None:
    """Same model, eps, p_init and number of candidates (an initialization plus BUDGET - 2
    iterations; ART's max_iter = BUDGET - 2). ART evaluates three batches per iteration,
    so it spends about three times our queries for them (counted by a QueryNet twin). Its
    L2 variant departs from the reference (see above), so there it is a weaker reference."""
    from art.attacks.evasion import SquareAttack

    x, y = batch
    clean = model.predict(x) == y
    ours = square_attack(model, x, y, eps=eps, norm=norm, query_budget=BUDGET, seed=0)
    twin, net = _black_box_twin(model)
    np.random.seed(0)  # ART draws from numpy's and (L2) Python's global generators
    random.seed(0)
    art = SquareAttack(
        to_art_classifier(twin), norm=np.inf if norm == "linf" else 2, eps=eps,
        max_iter=BUDGET - 2, p_init=0.05 if norm == "linf" else 0.1, verbose=False,
    )  # fmt: skip
    x_art = torch.from_numpy(art.generate(x.numpy(), y=np.eye(3, dtype=np.float32)[y.numpy()]))
    ours_rate = float((model.predict(ours.x_adv) != y)[clean].float().mean())
    art_rate = float((model.predict(x_art) != y)[clean].float().mean())
    said = (
        f"{norm} eps={eps}: success on the {int(clean.sum())} correctly classified images, "
        f"raigate {ours_rate:.3f} with {int(ours.queries.sum())} queries, ART "
        f"{art_rate:.3f} with {net.queries} queries"
    )
    assert ours_rate >= art_rate - 0.1, said
    assert float(perturbation_norm(x_art, x, norm).max()) <= eps + 1e-5  # a fair reference
    assert net.queries > 2 * int(ours.queries.sum()), said


def test_margin_loss_equals_the_reference_formula() -> None:
    """models.py ``Model.loss``: correct-class logit minus every other, min over others;
    log_softmax shifts all logits of a row by one constant, so the margin is the same."""
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [5.0, 5.0, -1.0], [0.1, 0.2, 0.3]])
    y = torch.tensor([0, 0, 1, 2])
    one_hot = np.eye(3, dtype=bool)[y.numpy()]
    z = logits.double().numpy()
    diff = (z * one_hot).sum(1, keepdims=True) - z
    diff[one_hot] = np.inf
    reference = diff.min(1)
    np.testing.assert_allclose(margin_loss(logits, y).numpy(), reference, atol=1e-6)
    assert margin_loss(logits, y).tolist() == pytest.approx([1.0, -3.0, 0.0, 0.1], abs=1e-6)


def _reference_p_selection(p_init: float, it: int, n_iters: int) -> float:
    it = int(it / n_iters * 10000)
    if 10 < it <= 50:
        return p_init / 2
    if 50 < it <= 200:
        return p_init / 4
    if 200 < it <= 500:
        return p_init / 8
    if 500 < it <= 1000:
        return p_init / 16
    if 1000 < it <= 2000:
        return p_init / 32
    if 2000 < it <= 4000:
        return p_init / 64
    if 4000 < it <= 6000:
        return p_init / 128
    if 6000 < it <= 8000:
        return p_init / 256
    if 8000 < it <= 10000:
        return p_init / 512
    return p_init


def test_p_schedule_equals_the_reference() -> None:
    for n_iters in (200, 1000, 10_000):
        for it in range(n_iters):
            assert p_selection(0.05, it, n_iters) == _reference_p_selection(0.05, it, n_iters)
    assert p_selection(0.8, 1, 10_000) == 0.8 and p_selection(0.8, 11, 10_000) == 0.4
    assert p_selection(0.8, 9_999, 10_000) == 0.8 / 512


def _reference_bump_rect(x: int, y: int) -> np.ndarray:
    delta = np.zeros([x, y])
    x_c, y_c = x // 2 + 1, y // 2 + 1
    counter2 = [x_c - 1, y_c - 1]
    for counter in range(max(x_c, y_c)):
        delta[
            max(counter2[0], 0) : min(counter2[0] + (2 * counter + 1), x),
            max(0, counter2[1]) : min(counter2[1] + (2 * counter + 1), y),
        ] += 1.0 / (counter + 1) ** 2
        counter2[0] -= 1
        counter2[1] -= 1
    return delta / np.sqrt(np.sum(delta**2, keepdims=True))


def test_l2_bump_equals_the_reference() -> None:
    for a, b in ((1, 1), (2, 5), (3, 7), (5, 11), (6, 6), (22, 44)):
        np.testing.assert_allclose(_bump_rect(a, b).numpy(), _reference_bump_rect(a, b), atol=1e-6)


def test_zero_eps_and_bad_budgets(model, batch) -> None:
    x, y = batch
    res = square_attack(model, x, y, eps=0.0, query_budget=BUDGET)
    assert torch.equal(res.x_adv, x) and (res.queries == 1).all()
    assert torch.equal(res.success, model.predict(x) != y)
    with pytest.raises(ConfigError, match="--query-budget must be an integer >= 2"):
        square_attack(model, x, y, eps=0.1, query_budget=1)
    with pytest.raises(ConfigError, match="--norm must be one of linf, l2"):
        square_attack(model, x, y, eps=0.1, norm="l1")  # type: ignore[arg-type]
