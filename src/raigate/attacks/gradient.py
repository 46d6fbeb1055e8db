"""FGSM and PGD in native torch: batched on the model's device, no numpy round-trips.

Both attacks are untargeted: they maximize the cross-entropy of the true class and keep
every adversarial image inside the ε-ball around the clean one (L-inf: every pixel moves at
most ε; L2: the whole ``C x H x W`` perturbation has Euclidean length at most ε) and inside
the valid pixel box [0, 1]. ε is always in pixel units of the [0, 1] image the ``Model``
takes, never in normalized units, so ``8/255`` means what the literature means by it.

FGSM (Goodfellow, Shlens & Szegedy 2015; L2 variant "fast gradient method") follows ART's
``FastGradientMethod`` exactly: step ``ε·sign(∇)`` (L-inf) or ``ε·∇/‖∇‖₂`` (L2, a zero
gradient giving a zero step), clip to [0, 1], project onto the ε-ball. The tests check our
output against ART's on the same model and inputs.

PGD (Madry et al. 2018) starts at a uniformly random point of the ε-ball, takes ``steps``
signed (L-inf) or normalized (L2) gradient steps of size ``step_size`` (default
``2.5·ε/steps``, Madry et al.'s rule), projecting and clipping after each, and repeats from
``restarts`` random starts. Per sample it returns the worst point it saw: a misclassified
one if any, else the one of highest loss, over every iterate of every restart, the clean
image and the FGSM point. Counting the FGSM point makes PGD at least as strong as FGSM on
every input of a deterministic model, so "PGD accuracy > FGSM accuracy" cannot happen by
accident; :func:`pgd_search` also returns the best of PGD's own iterates, without the FGSM
point, which is what a gradient-masking check compares FGSM against.

>>> import torch
>>> from raigate import wrap
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
>>> model = wrap(net, class_names=["a", "b"], input_shape=(3, 4, 4))
>>> x, y = torch.rand(5, 3, 4, 4), torch.tensor([0, 1, 0, 1, 0])
>>> x_adv = pgd(model, x, y, eps=8 / 255, norm="linf", steps=5)
>>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6), bool(x_adv.min() >= 0)
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from raigate.errors import ConfigError
from raigate.models.base import Model

Norm = Literal["linf", "l2"]
NORMS: tuple[Norm, ...] = ("linf", "l2")

__all__ = [
    "NORMS",
    "Norm",
    "PGDResult",
    "check_norm",
    "default_step_size",
    "fgsm",
    "perturbation_norm",
    "pgd",
    "pgd_search",
    "project",
]


def check_norm(norm: str) -> Norm:
    """The norm name, or a ConfigError that lists the accepted ones."""
    if norm not in NORMS:
        raise ConfigError(f"--norm must be one of {', '.join(NORMS)}, got {norm!r}")
    return cast(Norm, norm)


def check_eps(eps: float) -> float:
    """``eps`` as a float, or a ConfigError when it is negative or not finite."""
    if not math.isfinite(eps) or eps < 0:
        raise ConfigError(f"--eps values must be finite and >= 0, got {eps}")
    return float(eps)


def default_step_size(eps: float, steps: int) -> float:
    """Madry et al. (2018)'s rule: ``2.5·ε/steps``, so a walk can cross the ball and back."""
    return 2.5 * eps / max(steps, 1)


def perturbation_norm(x_adv: Tensor, x: Tensor, norm: Norm) -> Tensor:
    """Per-sample size of ``x_adv - x`` in ``norm`` (L-inf: largest pixel change; L2:
    Euclidean length over all ``C·H·W`` values)."""
    d = (x_adv - x).flatten(1)
    return d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)


def _loss_and_grad(model: Model, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Logits at ``x`` and the gradient of the summed cross-entropy w.r.t. ``x`` only.

    Summed, not averaged, so a sample's gradient does not depend on what else is in the
    batch; ``autograd.grad`` w.r.t. the input skips every weight gradient.
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = model.logits(xg)
        loss = F.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
    return logits.detach(), grad


def _direction(grad: Tensor, norm: Norm) -> Tensor:
    """The unit-norm ascent direction: ``sign(g)`` for L-inf, ``g/‖g‖₂`` per sample for L2.

    As in ART, a vanishing gradient gives a zero direction (L-inf: ``sign(0) = 0``; L2: the
    sample's gradient is divided by infinity instead of zero), never NaN.
    """
    if norm == "linf":
        return grad.sign()
    n = grad.flatten(1).norm(dim=1).view(-1, *([1] * (grad.dim() - 1)))
    return grad / torch.where(n > 0, n, torch.full_like(n, math.inf))


def project(x_adv: Tensor, x: Tensor, eps: float, norm: Norm) -> Tensor:
    """``x + Π(x_adv - x)``: the perturbation projected onto the ε-ball (L-inf: clamp each
    pixel; L2: rescale by ``min(1, ε/‖δ‖₂)``, ART's convention)."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
        scale = torch.where(n > 0, torch.clamp(eps / n, max=1.0), torch.zeros_like(n))
        delta = delta * scale
    return x + delta


def _fgsm_step(x: Tensor, grad: Tensor, eps: float, norm: Norm) -> Tensor:
    # ART's order: step, clip to the box, project onto the ball; the final clamp only
    # removes float rounding (x + (x_adv - x) can land one ulp outside [0, 1]).
    x_adv = (x + eps * _direction(grad, norm)).clamp(0.0, 1.0)
    return project(x_adv, x, eps, norm).clamp_(0.0, 1.0)


def fgsm(model: Model, x: Tensor, y: Tensor, *, eps: float, norm: Norm = "linf") -> Tensor:
    """One-step attack (FGSM for L-inf, FGM for L2) on a batch; ``y`` are model class
    indices of the true labels. Equals ART's ``FastGradientMethod(norm, eps)`` output."""
    norm = check_norm(norm)
    eps = check_eps(eps)
    if eps == 0:
        return x.detach().clone()
    _, grad = _loss_and_grad(model, x, y)
    return _fgsm_step(x.detach(), grad, eps, norm)


@dataclass(frozen=True)
class PGDResult:
    """``x_adv``: the worst point per sample over every candidate (clean image, FGSM point,
    any extra candidates, every PGD iterate); ``x_own``: the worst over the clean image and
    PGD's own iterates only (what a single-step vs iterative masking check needs)."""

    x_adv: Tensor
    x_own: Tensor


class _Worst:
    """Per-sample running worst case: misclassified beats correct, then higher loss wins."""

    def __init__(self, x: Tensor) -> None:
        b = x.shape[0]
        self.x = x.detach().clone()
        self.mis = torch.zeros(b, dtype=torch.bool, device=x.device)
        self.loss = torch.full((b,), -math.inf, device=x.device)

    def update(self, xc: Tensor, logits: Tensor, y: Tensor) -> None:
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        mis = logits.argmax(dim=1) != y
        better = (mis & ~self.mis) | ((mis == self.mis) & (loss > self.loss))
        self.x = torch.where(better.view(-1, *([1] * (xc.dim() - 1))), xc.detach(), self.x)
        self.mis = torch.where(better, mis, self.mis)
        self.loss = torch.where(better, loss, self.loss)


def _random_start(x: Tensor, eps: float, norm: Norm, gen: torch.Generator) -> Tensor:
    """A uniform point of the ε-ball around ``x``, clipped to [0, 1]."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        delta = (2 * u - 1) * eps
    else:
        # Uniform in the L2 ball: a Gaussian direction and radius ε·U^(1/d).
        g = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        flat = g.flatten(1)
        d = flat.shape[1]
        r = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype) ** (1.0 / d)
        delta = (flat / flat.norm(dim=1, keepdim=True) * (eps * r).unsqueeze(1)).view_as(x)
    return (x + delta).clamp(0.0, 1.0)


def pgd_search(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    include_fgsm: bool = True,
    candidates: Sequence[Tensor] = (),
    seed: int = 0,
) -> PGDResult:
    """PGD with the worst-case bookkeeping described in the module docstring.

    ``candidates`` are extra points already in the ball (e.g. the FGSM row's images, so a
    stochastic model is compared on the very points FGSM reported); with
    ``include_fgsm=True`` the FGSM point is computed here. ``seed`` fixes the random starts.
    """
    norm = check_norm(norm)
    eps = check_eps(eps)
    if steps < 1 or restarts < 1:
        raise ConfigError(f"--pgd-steps and --pgd-restarts must be >= 1, got {steps}, {restarts}")
    x = x.detach()
    if eps == 0:
        return PGDResult(x.clone(), x.clone())
    alpha = default_step_size(eps, steps) if step_size is None else float(step_size)
    if alpha <= 0:
        raise ConfigError(f"--pgd-step-size must be > 0, got {alpha}")
    worst, own = _Worst(x), _Worst(x)
    if include_fgsm:
        logits, grad = _loss_and_grad(model, x, y)
        extra = [_fgsm_step(x, grad, eps, norm), *candidates]
    else:
        with torch.no_grad():
            logits = model.logits(x)
        extra = list(candidates)
    worst.update(x, logits, y)  # the clean image is in every ball
    own.update(x, logits, y)
    with torch.no_grad():
        for c in extra:
            worst.update(c, model.logits(c), y)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    for _ in range(restarts):
        x_adv = _random_start(x, eps, norm, gen) if random_start else x.clone()
        for _ in range(steps):
            logits, grad = _loss_and_grad(model, x_adv, y)
            worst.update(x_adv, logits, y)
            own.update(x_adv, logits, y)
            x_adv = project(x_adv + alpha * _direction(grad, norm), x, eps, norm).clamp_(0, 1)
        with torch.no_grad():
            logits = model.logits(x_adv)
        worst.update(x_adv, logits, y)
        own.update(x_adv, logits, y)
    return PGDResult(x_adv=worst.x, x_own=own.x)


def pgd(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    include_fgsm: bool = True,
    seed: int = 0,
) -> Tensor:
    """Projected gradient descent, untargeted (Madry et al. 2018): the per-sample worst
    point over clean, FGSM (``include_fgsm``) and every iterate; see :func:`pgd_search`."""
    return pgd_search(
        model, x, y, eps=eps, norm=norm, steps=steps, step_size=step_size, restarts=restarts,
        random_start=random_start, include_fgsm=include_fgsm, seed=seed,
    ).x_adv  # fmt: skip
