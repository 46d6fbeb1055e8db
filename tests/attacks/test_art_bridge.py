"""``art:NAME`` through the one bridge: ART's attacks on our Model, errors in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from raigate import ConfigError, wrap
from raigate.attacks import (
    fgsm,
    is_black_box,
    parse_attack_params,
    perturbation_norm,
    resolve_art_attack,
    run_art_attack,
    takes_eps,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


SHAPE = (3, 8, 8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 3))
    return wrap(net, class_names=list("abc"), input_shape=SHAPE, mean=0.5, std=0.25)


def test_art_fast_gradient_method_through_the_bridge_equals_native(model) -> None:
    x, y = torch.rand(20, *SHAPE), torch.randint(0, 3, (20,))
    for norm, eps in (("linf", 4 / 255), ("l2", 0.3)):
        via_art = run_art_attack(model, "art:FastGradientMethod", x, y, eps=eps, norm=norm)
        np.testing.assert_allclose(
            via_art.numpy(), fgsm(model, x, y, eps=eps, norm=norm).numpy(), atol=1e-6, rtol=0
        )


def test_black_box_square_attack_keeps_its_budget(model) -> None:
    x = torch.rand(12, *SHAPE)
    with torch.no_grad():
        y = model.logits(x).argmax(1)
    x_adv = run_art_attack(
        model, "art:SquareAttack", x, y, params={"max_iter": 30, "nb_restarts": 1}, eps=0.1
    )
    assert is_black_box("art:SquareAttack") and not is_black_box("art:ProjectedGradientDescent")
    assert float(perturbation_norm(x_adv, x, "linf").max()) <= 0.1 + 1e-6
    with torch.no_grad():
        fooled = int((model.logits(x_adv).argmax(1) != y).sum())
    assert fooled > 0  # the query-only attack does find adversarial examples here


def test_unknown_attack_and_bad_params_are_one_line_config_errors(model) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown ART evasion attack 'SquareAtack'.*SquareAttack"
    ):
        resolve_art_attack("art:SquareAtack")
    with pytest.raises(ConfigError, match="--attack-params is not valid JSON"):
        parse_attack_params("{max_iter: 3}")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        parse_attack_params("[1, 2]")
    x, y = torch.rand(2, *SHAPE), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match=r"art:SquareAttack rejected --attack-params"):
        run_art_attack(model, "art:SquareAttack", x, y, params={"no_such_arg": 1}, eps=0.1)
    assert takes_eps("art:SquareAttack") and not takes_eps("art:DeepFool")
