"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): score-based random
search, untargeted, L-inf and L2, in native torch on forward passes only.

Why native and not ``art:SquareAttack``: the robustness check must attack models that only
answer queries (:class:`~raigate.models.blackbox.QueryNet`) under a per-image query budget
and say how many queries it spent. ART's version evaluates three batches per iteration (the
current point's prediction and loss again, then the candidate), counts nothing, and draws
one window for the whole batch in L-inf; this one follows the authors' reference
implementation (``attack.py`` of github.com/max-andr/square-attack) and spends exactly one
query per candidate:

* **loss**: the margin ``log p_y(x) - max_{k != y} log p_k(x)`` on the model's
  log-probabilities (``log_softmax`` of :meth:`Model.logits`, the same margin as on logits);
  a candidate replaces the current point when it lowers the margin.
* **schedule**: the fraction of pixels ``p`` changed per iteration starts at ``p_init`` and
  halves at 10, 50, 200, 500, 1,000, 2,000, 4,000, 6,000 and 8,000 ten-thousandths of the
  budget (the reference's piecewise-constant ``p_selection``); the square's side is
  ``s = round(sqrt(p·H·W))``.
* **L-inf**: start at vertical stripes, ``x ± ε`` per column and channel; each iteration
  every image gets its own ``s x s`` window whose pixels are all set to one ``±ε`` per
  channel, drawn again while it would not change the image; clip to [0, 1].
* **L2**: start at a 5 x 5 grid of pseudo-Gaussian bumps of random sign per channel,
  rescaled to ``‖δ‖₂ = ε``; each iteration moves the perturbation's mass from a second
  window into a first one, where a new bump of random sign per channel is added to the old
  content ("square + windows"), and rescales the whole perturbation back to ``ε``.

Queries per image: one for the clean image (an image already misclassified costs just
that), one for the initialization, then one per iteration while the image is still
classified correctly: at most ``query_budget``, and less for every image the attack fools
earlier. Draws come from a ``torch.Generator`` seeded with ``seed``, so the same call gives
the same result.

>>> import torch
>>> from raigate import wrap
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
>>> model = wrap(net, class_names=["a", "b", "c"], input_shape=(3, 8, 8))
>>> x = torch.rand(4, 3, 8, 8)
>>> res = square_attack(model, x, model.predict(x), eps=8 / 255, query_budget=50)
>>> bool(res.queries.max() <= 50), bool((res.x_adv - x).abs().max() <= 8 / 255 + 1e-6)
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from raigate.attacks.gradient import Norm, check_eps, check_norm, perturbation_norm, project
from raigate.attacks.query import QueryResult, check_budget
from raigate.errors import ConfigError
from raigate.models.base import Model

DEFAULT_P_INIT: dict[str, float] = {"linf": 0.05, "l2": 0.1}
"""The reference implementation's standard ``p`` (its ``--p`` help: L-inf 0.05, L2 0.1);
robust models need a larger one (the paper's appendix)."""

_BREAKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_MAX_REDRAWS = 1000  # L-inf: a sign draw leaves the window unchanged with probability <= 1/2

__all__ = ["DEFAULT_P_INIT", "margin_loss", "p_selection", "square_attack"]


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """The fraction of pixels changed at iteration ``it`` of ``n_iters``: ``p_init`` halved
    once per breakpoint passed (reference ``p_selection``, on ten-thousandths of the run)."""
    t = int(it / n_iters * 10000)
    halvings = sum(t > b for b in _BREAKPOINTS)
    return p_init / 2**halvings


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """``log p_y - max_{k != y} log p_k`` per sample: positive while ``y`` wins."""
    logp = logits.float().log_softmax(dim=1)
    true = logp.gather(1, y[:, None]).squeeze(1)
    other = logp.scatter(1, y[:, None], -math.inf).amax(dim=1)
    return true - other


def _signs(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    return torch.randint(0, 2, shape, generator=gen).float().mul_(2).sub_(1)


def _randint(high: int, n: int, gen: torch.Generator) -> Tensor:
    return torch.randint(0, high, (n,), generator=gen)


def _bump_rect(a: int, b: int) -> Tensor:
    """The reference's ``pseudo_gaussian_pert_rectangles``: nested rectangles around the
    centre, ring k weighted 1/(k+1)^2, unit L2 norm."""
    delta = torch.zeros(a, b)
    r, c = a // 2, b // 2
    for k in range(max(a // 2 + 1, b // 2 + 1)):
        delta[max(r, 0) : min(r + 2 * k + 1, a), max(c, 0) : min(c + 2 * k + 1, b)] += (
            1.0 / (k + 1) ** 2
        )
        r, c = r - 1, c - 1
    return delta / delta.norm().clamp_min(1e-12)


def _bump(s: int, gen: torch.Generator) -> Tensor:
    """The reference's ``meta_pseudo_gaussian_pert``: a positive bump over a negative one,
    unit norm, transposed with probability 1/2."""
    delta = torch.zeros(s, s)
    delta[: s // 2] = _bump_rect(s // 2, s)
    delta[s // 2 :] = -_bump_rect(s - s // 2, s)
    delta /= delta.norm().clamp_min(1e-12)
    if float(torch.rand(1, generator=gen)) > 0.5:
        delta = delta.t().contiguous()
    return delta


def _norm_per_image(d: Tensor) -> Tensor:
    return d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def _linf_init(x: Tensor, eps: float, gen: torch.Generator) -> Tensor:
    b, c, _, w = x.shape
    return (x + eps * _signs((b, c, 1, w), gen).to(x)).clamp(0.0, 1.0)


def _linf_step(x: Tensor, x_best: Tensor, eps: float, p: float, gen: torch.Generator) -> Tensor:
    m, c, h, w = x.shape
    s = min(max(round(math.sqrt(p * h * w)), 1), h - 1, w - 1)
    top, left = _randint(h - s, m, gen).to(x.device), _randint(w - s, m, gen).to(x.device)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows[None] >= top[:, None]) & (rows[None] < top[:, None] + s)
    in_cols = (cols[None] >= left[:, None]) & (cols[None] < left[:, None] + s)
    window = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # [m, 1, h, w]
    deltas = x_best - x
    todo = torch.ones(m, dtype=torch.bool, device=x.device)
    for _ in range(_MAX_REDRAWS):
        new = eps * _signs((m, c, 1, 1), gen).to(x)
        deltas = torch.where(window & todo.view(-1, 1, 1, 1), new, deltas)
        # the reference re-draws while no pixel of the window would change
        moved = (((x + deltas).clamp(0.0, 1.0) - x_best).abs() >= 1e-7) & window
        todo = ~moved.flatten(1).any(dim=1)
        if not bool(todo.any()):
            break
    return (x + deltas).clamp(0.0, 1.0)


def _l2_init(x: Tensor, eps: float, gen: torch.Generator) -> Tensor:
    b, c, h, w = x.shape
    s = max(min(h, w) // 5, 1)
    delta = torch.zeros_like(x)
    n_h, n_w = h // s, w // s
    top0, left0 = (h - s * n_h) // 2, (w - s * n_w) // 2
    for i in range(n_h):
        for j in range(n_w):
            t, left = top0 + i * s, left0 + j * s
            bump = _bump(s, gen).to(x).view(1, 1, s, s)
            delta[:, :, t : t + s, left : left + s] += bump * _signs((b, c, 1, 1), gen).to(x)
    return (x + delta / _norm_per_image(delta).clamp_min(1e-12) * eps).clamp(0.0, 1.0)


def _l2_step(x: Tensor, x_best: Tensor, eps: float, p: float, gen: torch.Generator) -> Tensor:
    m, c, h, w = x.shape
    s = max(round(math.sqrt(p * h * w)), 3)
    s += 1 - s % 2  # odd, so the bump has a centre
    s = max(min(s, h - 1, w - 1), 1)  # images smaller than the reference ever saw
    t1, l1 = int(_randint(h - s, 1, gen)), int(_randint(w - s, 1, gen))
    t2, l2 = int(_randint(h - s, 1, gen)), int(_randint(w - s, 1, gen))
    delta = x_best - x
    win1 = (slice(None), slice(None), slice(t1, t1 + s), slice(l1, l1 + s))
    win2 = (slice(None), slice(None), slice(t2, t2 + s), slice(l2, l2 + s))
    both = torch.zeros(1, 1, h, w, dtype=x.dtype, device=x.device)
    both[win1] = 1.0
    both[win2] = 1.0
    norm_win1 = delta[win1].pow(2).sum(dim=(2, 3), keepdim=True).sqrt()  # [m, c, 1, 1]
    norm_image = _norm_per_image(delta)
    norm_both = (delta * both).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
    new = _bump(s, gen).to(x).view(1, 1, s, s) * _signs((m, c, 1, 1), gen).to(x)
    new = new + delta[win1] / (1e-10 + norm_win1)
    # the mass of both windows plus what the image has left below eps, per channel
    budget = ((eps**2 - norm_image**2).clamp_min(0.0) / c + norm_both**2).sqrt()
    new = new / new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12) * budget
    delta = delta.clone()
    delta[win2] = 0.0
    delta[win1] = new
    return (x + delta / _norm_per_image(delta).clamp_min(1e-12) * eps).clamp(0.0, 1.0)


_INIT: dict[str, Callable[[Tensor, float, torch.Generator], Tensor]] = {
    "linf": _linf_init,
    "l2": _l2_init,
}
_STEP: dict[str, Callable[[Tensor, Tensor, float, float, torch.Generator], Tensor]] = {
    "linf": _linf_step,
    "l2": _l2_step,
}


class _Search:
    """The per-image state of the random search: best point, its margin, fooled, queries."""

    def __init__(self, model: Model, x: Tensor, y: Tensor, eps: float, norm: Norm) -> None:
        self.model, self.x, self.y, self.eps, self.norm = model, x, y, eps, norm
        margin, fooled = self.query(x, y)
        self.x_best = x.clone()
        self.margin = margin
        self.fooled = fooled
        self.queries = torch.ones(len(x), dtype=torch.int64, device=x.device)

    @torch.no_grad()
    def query(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model.logits(x)
        return margin_loss(logits, y), logits.argmax(dim=1) != y

    def offer(self, idx: Tensor, candidates: Tensor, *, always: bool = False) -> None:
        """Query ``candidates`` for images ``idx``; keep each that lowers the margin, fools
        the model, or (``always``, the initialization) unconditionally."""
        x0 = self.x[idx]
        candidates = project(candidates, x0, self.eps, self.norm).clamp_(0.0, 1.0)
        margin, fooled = self.query(candidates, self.y[idx])
        self.queries[idx] += 1
        keep = fooled | (margin < self.margin[idx])
        if always:
            keep = torch.ones_like(keep)
        self.x_best[idx] = torch.where(keep.view(-1, 1, 1, 1), candidates, self.x_best[idx])
        self.margin[idx] = torch.where(keep, margin, self.margin[idx])
        self.fooled[idx] = torch.where(keep, fooled, self.fooled[idx])

    def active(self) -> Tensor:
        return torch.nonzero(~self.fooled).squeeze(1)


def square_attack(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    query_budget: int = 1000,
    p_init: float | None = None,
    seed: int = 0,
) -> QueryResult:
    """Untargeted Square Attack on a batch (``y``: model class indices of the true labels),
    forward passes only; see the module docstring. ``p_init`` defaults to
    :data:`DEFAULT_P_INIT` for the norm."""
    norm = check_norm(norm)
    budget = check_budget(query_budget)
    eps = check_eps(eps)
    p_init = DEFAULT_P_INIT[norm] if p_init is None else float(p_init)
    if not 0 < p_init <= 1:
        raise ConfigError(f"square attack p_init must be in (0, 1], got {p_init}")
    _, _, h, w = x.shape
    if min(h, w) < 2:
        raise ConfigError(f"square attack needs images of at least 2x2 pixels, got {h}x{w}")
    x = x.detach()
    gen = torch.Generator().manual_seed(int(seed))
    search = _Search(model, x, y, float(eps), norm)
    idx = search.active()
    if eps > 0 and idx.numel():
        search.offer(idx, _INIT[norm](x[idx], eps, gen), always=True)
        for it in range(budget - 2):
            idx = search.active()
            if idx.numel() == 0:
                break
            p = p_selection(p_init, it, budget)
            search.offer(idx, _STEP[norm](x[idx], search.x_best[idx], eps, p, gen))
    distance = perturbation_norm(search.x_best, x, norm)
    return QueryResult(
        x_adv=search.x_best, queries=search.queries, success=search.fooled, distance=distance
    )
