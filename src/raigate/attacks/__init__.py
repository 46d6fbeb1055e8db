"""Adversarial attacks on a raigate ``Model``: native torch FGSM and PGD (L-inf and L2),
the query-only Square Attack (native, score-based) and HopSkipJump (ART, decision-based)
under a counted per-image query budget, and any ART evasion attack by name through one
bridge.

All attacks work in pixel space [0, 1], untargeted, on true labels given as the model's
class indices; ε is in pixel units (L-inf per pixel, L2 over the whole image).

>>> import torch
>>> from raigate import wrap
>>> from raigate.attacks import fgsm
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
>>> model = wrap(net, class_names=["a", "b"], input_shape=(3, 4, 4))
>>> x = torch.rand(2, 3, 4, 4)
>>> x_adv = fgsm(model, x, torch.tensor([0, 1]), eps=0.1, norm="l2")
>>> bool((x_adv - x).flatten(1).norm(dim=1).max() <= 0.1 + 1e-6)
True
"""

from __future__ import annotations

from raigate.attacks.art_bridge import (
    BLACK_BOX_ATTACKS,
    art_attack_names,
    black_box_classifier,
    is_black_box,
    make_art_attack,
    parse_attack_params,
    resolve_art_attack,
    run_art_attack,
    takes_eps,
    to_art_classifier,
)
from raigate.attacks.gradient import (
    NORMS,
    Norm,
    PGDResult,
    check_norm,
    default_step_size,
    fgsm,
    perturbation_norm,
    pgd,
    pgd_search,
    project,
)
from raigate.attacks.hopskipjump import hop_skip_jump, hsj_schedule
from raigate.attacks.query import MIN_QUERY_BUDGET, QueryResult, check_budget
from raigate.attacks.square import DEFAULT_P_INIT, margin_loss, p_selection, square_attack

__all__ = [
    "BLACK_BOX_ATTACKS",
    "DEFAULT_P_INIT",
    "MIN_QUERY_BUDGET",
    "NORMS",
    "Norm",
    "PGDResult",
    "QueryResult",
    "art_attack_names",
    "black_box_classifier",
    "check_budget",
    "check_norm",
    "default_step_size",
    "fgsm",
    "hop_skip_jump",
    "hsj_schedule",
    "is_black_box",
    "make_art_attack",
    "margin_loss",
    "p_selection",
    "parse_attack_params",
    "perturbation_norm",
    "pgd",
    "pgd_search",
    "project",
    "resolve_art_attack",
    "run_art_attack",
    "square_attack",
    "takes_eps",
    "to_art_classifier",
]
