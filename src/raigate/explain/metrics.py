"""Faithfulness and agreement metrics for attribution maps.

* **Deletion / insertion AUC** (Petsiuk et al. 2018, "RISE", section 4.1): pixels are
  ranked by the map's channel sum (most positive first). *Deletion* replaces the top
  ``k/steps`` of pixels by black (0) and records the softmax probability of the target
  class; a faithful map makes it fall fast (low AUC). *Insertion* starts from a blurred
  copy of the image and puts the original pixels back in the same order; a faithful map
  makes it rise fast (high AUC). AUC is the trapezoid area over the deleted/inserted
  fraction in [0, 1]. A random pixel order is the yardstick every method must beat.
* **Infidelity** (Yeh et al. 2019, via Captum): expected squared error between
  ``I . attribution`` and ``f(x) - f(x - I)`` on the target logit, for the paper's "square
  removal" perturbations ``I`` (a random square set to the baseline image), with Captum's
  ``normalize=True`` (the attribution is rescaled by the least-squares factor first), so
  methods with different units compare. Lower is better.
* **Max-sensitivity** (Yeh et al. 2019, via Captum): the largest relative change
  ``||Phi(x + d) - Phi(x)|| / ||Phi(x)||`` (Frobenius) over uniform perturbations in an
  L-infinity ball of ``radius``. Lower is more stable.
* **Spearman rank correlation** between two maps of the same image (absolute channel
  sums, average ranks for ties): the randomization test and method agreement use it.

>>> import torch
>>> spearman_rows(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 30.0, 20.0]]))
tensor([0.5000])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from raigate.explain.methods import gaussian_blur, seeded
from raigate.models.base import Model

__all__ = [
    "auc",
    "deletion_insertion",
    "group_mean_maps",
    "importance",
    "infidelity_scores",
    "perturbation_curve",
    "sensitivity_scores",
    "spearman_rows",
    "square_removal",
]


def importance(attr: Tensor) -> Tensor:
    """Per-pixel importance ``[B, H, W]``: the channel sum of the attributions (signed)."""
    return attr.sum(dim=1)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values, method="average", axis=1)


def spearman_rows(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation between matching rows of ``a`` and ``b`` (flattened).

    Ties get average ranks. A row that is constant carries no ranking: its correlation with
    a non-constant row is 0, and two constant rows count as identical (1).
    """
    x = a.detach().flatten(1).double().cpu().numpy()
    y = b.detach().flatten(1).double().cpu().numpy()
    rx = _average_ranks(x)
    ry = _average_ranks(y)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    nx = np.sqrt((rx * rx).sum(axis=1))
    ny = np.sqrt((ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=1) / (nx * ny)
    const_x, const_y = nx == 0, ny == 0
    rho = np.where(const_x & const_y, 1.0, np.where(const_x | const_y, 0.0, rho))
    return torch.from_numpy(np.clip(rho, -1.0, 1.0)).float()


@torch.no_grad()
def _target_probability(model: Model, x: Tensor, target: Tensor) -> Tensor:
    return model.logits(x).softmax(dim=1).gather(1, target.view(-1, 1)).squeeze(1)


def pixel_ranks(scores: Tensor) -> Tensor:
    """Rank of every pixel ``[B, H*W]`` (0 = most important), ties broken by position."""
    flat = scores.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


@torch.no_grad()
def perturbation_curve(
    model: Model,
    start: Tensor,
    end: Tensor,
    scores: Tensor,
    target: Tensor,
    *,
    steps: int,
    batch_size: int,
) -> Tensor:
    """Target-class probability ``[B, steps + 1]`` as pixels switch from ``start`` to ``end``
    in order of decreasing ``scores`` ``[B, H, W]``: at step ``k`` the top
    ``round(k / steps * H * W)`` pixels (all channels) come from ``end``."""
    b, _, h, w = start.shape
    ranks = pixel_ranks(scores).view(b, 1, h, w)
    cuts = torch.round(torch.arange(steps + 1, dtype=torch.float64) / steps * (h * w)).long()
    cuts = cuts.to(start.device)
    total = b * (steps + 1)  # row r is sample r // (steps + 1) at step r % (steps + 1)
    out = torch.empty(total)
    for lo in range(0, total, max(1, batch_size)):
        hi = min(lo + max(1, batch_size), total)
        r = torch.arange(lo, hi, device=start.device)
        idx = r // (steps + 1)
        mask = ranks[idx] < cuts[r % (steps + 1)].view(-1, 1, 1, 1)
        x = torch.where(mask, end[idx], start[idx])
        out[lo:hi] = _target_probability(model, x, target[idx]).cpu()
    return out.view(b, steps + 1)


def auc(curve: Tensor) -> Tensor:
    """Trapezoid area under ``[B, steps + 1]`` curves over the fraction axis [0, 1]."""
    steps = curve.shape[1] - 1
    return torch.trapezoid(curve, dx=1.0 / steps, dim=1)


def deletion_insertion(
    model: Model,
    x: Tensor,
    scores: Tensor,
    target: Tensor,
    *,
    steps: int = 20,
    blur_sigma: float,
    batch_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Per-sample deletion and insertion AUCs ``([B], [B])`` for pixel ``scores``
    (RISE's protocol: delete to black, insert into a blurred copy)."""
    black = torch.zeros_like(x)
    blurred = gaussian_blur(x, blur_sigma)
    deletion = perturbation_curve(
        model, x, black, scores, target, steps=steps, batch_size=batch_size
    )
    insertion = perturbation_curve(
        model, blurred, x, scores, target, steps=steps, batch_size=batch_size
    )
    return auc(deletion), auc(insertion)


def square_removal(
    size: int, baseline: Callable[[Tensor], Tensor]
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """Yeh et al. 2019's "square removal" perturbation for Captum's ``infidelity``: in every
    row one ``size`` x ``size`` square at a uniformly random position (global torch RNG) is
    replaced by ``baseline(x)``; returns ``(I, x - I)`` with ``I = (x - baseline) * mask``."""

    def perturb(inputs: Tensor) -> tuple[Tensor, Tensor]:
        b, _, h, w = inputs.shape
        s = max(1, min(size, h, w))
        top = torch.randint(0, h - s + 1, (b, 1, 1)).to(inputs.device)
        left = torch.randint(0, w - s + 1, (b, 1, 1)).to(inputs.device)
        rows = torch.arange(h, device=inputs.device).view(1, h, 1)
        cols = torch.arange(w, device=inputs.device).view(1, 1, w)
        inside = (rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)
        removed = (inputs - baseline(inputs)) * inside.unsqueeze(1).to(inputs.dtype)
        return removed, inputs - removed

    return perturb


def infidelity_scores(
    model: Model,
    x: Tensor,
    attr: Tensor,
    target: Tensor,
    *,
    perturb: Callable[[Tensor], tuple[Tensor, Tensor]],
    n_perturb: int,
    batch_size: int,
    seed: int,
) -> Tensor:
    """Captum's ``infidelity`` per sample ``[B]`` for ``perturb`` (e.g. :func:`square_removal`),
    target logit, ``normalize=True``, the perturbations drawn under ``seed``."""
    from captum.metrics import infidelity

    b = x.shape[0]
    per_batch = max(b, min(b * n_perturb, max(batch_size, b)))
    with seeded(seed, x.device):
        scores = infidelity(
            model,
            perturb,
            x,
            attr,
            target=target,
            n_perturb_samples=n_perturb,
            max_examples_per_batch=per_batch,
            normalize=True,
        )
    return scores.detach().reshape(-1).cpu()


def sensitivity_scores(
    explain: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    *,
    radius: float,
    n_perturb: int,
    batch_size: int,
    seed: int,
) -> Tensor:
    """Captum's ``sensitivity_max`` per sample ``[B]`` for ``explain(x, target)``:
    uniform perturbations in the L-infinity ball of ``radius``, Frobenius norm."""
    from captum.metrics import sensitivity_max

    def explanation(inputs: Any, target: Tensor) -> Any:
        # Captum passes a 1-tuple of tensors and iterates over what comes back
        tensor = inputs[0] if isinstance(inputs, tuple) else inputs
        with torch.enable_grad():
            maps = explain(tensor, target)
        return (maps,) if isinstance(inputs, tuple) else maps

    b = x.shape[0]
    per_batch = max(b, min(b * n_perturb, max(batch_size, b)))
    with seeded(seed, x.device):
        scores = sensitivity_max(
            explanation,
            x,
            perturb_radius=radius,
            n_perturb_samples=n_perturb,
            max_examples_per_batch=per_batch,
            target=target,
        )
    return scores.detach().reshape(-1).cpu()


def group_mean_maps(
    maps: Tensor, attributes: pd.DataFrame, columns: list[str]
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], Tensor]]:
    """Mean attribution map per attribute value, and its distance to the overall mean.

    ``maps`` ``[N, H, W]`` are absolute importances; each is divided by its sum first so
    every image weighs the same. ``tv_distance`` is the total-variation distance
    ``0.5 * sum |m_group - m_all|`` between the group's mean map and the mean over all
    images (0: the same regions, 1: disjoint). Returns the records and the mean maps keyed
    by ``(column, value)`` (``("all", "all")`` for the overall mean).
    """
    flat = maps.flatten(1).double()
    totals = flat.sum(dim=1, keepdim=True)
    uniform = torch.full_like(flat, 1.0 / flat.shape[1])
    norm = torch.where(totals > 0, flat / totals.clamp_min(1e-300), uniform)
    overall = norm.mean(dim=0)
    shape = maps.shape[1:]
    means: dict[tuple[str, str], Tensor] = {("all", "all"): overall.view(shape).float()}
    records: list[dict[str, Any]] = []
    for col in columns:
        series = attributes[col]
        if isinstance(series.dtype, pd.CategoricalDtype):
            values = [str(v) for v in series.cat.categories]
        else:
            values = sorted(series.dropna().astype(str).unique())
        keys = series.astype(str).to_numpy()
        for value in values:
            members = np.flatnonzero(keys == value)
            if members.size == 0:
                records.append({"attribute": col, "value": value, "n": 0, "tv_distance": None})
                continue
            mean = norm[torch.from_numpy(members)].mean(dim=0)
            tv = 0.5 * float((mean - overall).abs().sum())
            means[(col, value)] = mean.view(shape).float()
            records.append(
                {"attribute": col, "value": value, "n": int(members.size), "tv_distance": tv}
            )
    return records, means
