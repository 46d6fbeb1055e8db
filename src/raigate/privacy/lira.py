"""Membership scores calibrated per example by reference models: LiRA and RMIA.

The loss attack flags an example whose loss is low; but some examples have a low loss on
every model (easy ones) and some a high loss even when trained on (atypical ones), so one
global threshold both misses members and accuses non-members. Both attacks here ask
instead how the audited model's output on *this* example compares with what models
trained with and without it output, learned from reference models trained with the same
recipe on random halves of a population (:mod:`raigate.privacy.reference`).

Inputs are arrays over ``K`` reference models, ``Q`` queries (the image and, with
augmented queries, its mirror) and ``N`` examples; ``in_mask[k, n]`` says whether
reference model ``k`` trained on example ``n``.

* **LiRA** (Carlini et al. 2022, "Membership Inference Attacks From First Principles"):
  the statistic is the scaled logit confidence ``phi = log(p_y / (1 - p_y))``, computed
  stably from logits as ``logit_y - logsumexp(other logits)``, near Gaussian across
  models. *Online*: fit a Gaussian to the IN models' ``phi`` and one to the OUT models'
  per example (and per query); the score is the log likelihood ratio of the audited
  model's ``phi`` under the two, averaged over queries. *Offline*: OUT models only; the
  score is the one-sided ``log Pr[Z <= phi]``, ``Z ~ N(mu_out, s_out^2)``, averaged over
  queries. With few models a per-example variance is noise, so, as the paper recommends
  below 64 models, one *global* variance is shared by all examples: the pooled variance
  around each example's mean (or, where every example has one model per side, the plain
  variance of all values, as the paper's code does).
* **RMIA** (Zarifzadeh et al., ICML 2024, "Low-Cost High-Power Membership Inference
  Attacks"): with ``p(x|theta)`` the probability of the true label (averaged over
  queries) and ``p(x)`` its mean over reference models, the likelihood ratio of ``x`` is
  ``p(x|theta) / p(x)``; the score is the fraction of population samples ``z`` whose
  ratio it beats by a factor ``gamma``: ``(p(x|theta)/p(x)) / (p(z|theta)/p(z)) >= gamma``.
  *Online*: ``p(x)`` is the mean over all reference models (half IN, half OUT).
  *Offline*: from OUT models only, ``p(x) = ((1 + a)/2) p_OUT(x) + (1 - a)/2``, the paper's
  linear approximation of the missing IN models (``a`` about 0.3 on CIFAR-10).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.stats import norm
from torch import Tensor

from raigate.errors import ConfigError

Variance = Literal["auto", "global", "per_example"]
GLOBAL_BELOW = 64
"""``auto`` variance: global below this many reference models (Carlini et al. 2022, Sec. VI)."""

__all__ = [
    "GLOBAL_BELOW",
    "lira_offline_scores",
    "lira_online_scores",
    "rmia_scores",
    "scaled_logit",
]


def scaled_logit(logits: Tensor, labels: Tensor) -> Tensor:
    """``log(p_y / (1 - p_y))`` per row, as ``logit_y - logsumexp(logits of the other
    classes)``: exact where ``1 - p_y`` underflows in float32 (a memorized example)."""
    z = logits.double()
    y = labels.long().view(-1, 1)
    own = z.gather(1, y).squeeze(1)
    others = z.scatter(1, y, float("-inf"))
    return own - torch.logsumexp(others, dim=1)


def _mean_std(
    values: np.ndarray, mask: np.ndarray, *, global_var: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example (and per-query) mean of ``values[K, Q, N]`` over the models in
    ``mask[K, N]``, and the standard deviation: per example, or one pooled value per query."""
    m = mask[:, None, :].astype(np.float64)
    count = m.sum(0)  # [Q, N] (the same for every query)
    if (count == 0).any():
        raise ConfigError("every example needs at least one IN and one OUT reference model")
    mean = (values * m).sum(0) / count
    resid2 = ((values - mean) ** 2) * m
    if not global_var:
        if (count < 2).any():
            raise ConfigError(
                "a per-example variance needs two IN and two OUT reference models per example: "
                "train at least 4 (--reference-models) or use --lira-variance global"
            )
        std = np.sqrt(resid2.sum(0) / (count - 1))
        return mean, np.maximum(std, 1e-6)
    dof = (count - 1).sum(1)  # [Q]
    pooled = np.sqrt(resid2.sum((0, 2)) / np.maximum(dof, 1))
    # one model per side: no within-example spread to pool; the spread of all values
    plain = np.array([values[:, q][mask].std() for q in range(values.shape[1])])
    std = np.where(dof > 0, pooled, plain)
    return mean, np.broadcast_to(np.maximum(std, 1e-6)[:, None], mean.shape)


def _global(variance: Variance, k: int) -> bool:
    return variance == "global" or (variance == "auto" and k < GLOBAL_BELOW)


def lira_online_scores(
    target_phi: np.ndarray,
    ref_phi: np.ndarray,
    in_mask: np.ndarray,
    *,
    variance: Variance = "auto",
) -> np.ndarray:
    """Online LiRA: mean over queries of ``log N(phi; mu_in, s_in) - log N(phi; mu_out,
    s_out)``. ``target_phi[Q, N]``, ``ref_phi[K, Q, N]``, ``in_mask[K, N]`` (bool)."""
    g = _global(variance, len(ref_phi))
    mu_in, s_in = _mean_std(ref_phi, in_mask, global_var=g)
    mu_out, s_out = _mean_std(ref_phi, ~in_mask, global_var=g)
    llr = norm.logpdf(target_phi, mu_in, s_in) - norm.logpdf(target_phi, mu_out, s_out)
    return llr.mean(0)


def lira_offline_scores(
    target_phi: np.ndarray,
    ref_phi: np.ndarray,
    in_mask: np.ndarray,
    *,
    variance: Variance = "auto",
) -> np.ndarray:
    """Offline LiRA: mean over queries of ``log Pr[Z <= phi]``, ``Z ~ N(mu_out, s_out^2)``
    fitted to the OUT models only (one-sided: only a confidence *above* the OUT models'
    points to membership)."""
    g = _global(variance, len(ref_phi))
    mu_out, s_out = _mean_std(ref_phi, ~in_mask, global_var=g)
    return norm.logcdf((target_phi - mu_out) / s_out).mean(0)


def _reference_p(ref_p: np.ndarray, in_mask: np.ndarray, mode: str, a: float) -> np.ndarray:
    """``p(x)`` per example from ``ref_p[K, N]``: the mean over all models (online), or the
    offline approximation from the OUT models."""
    if mode == "online":
        return ref_p.mean(0)
    out = ~in_mask
    p_out = (ref_p * out).sum(0) / np.maximum(out.sum(0), 1)
    return (1 + a) / 2 * p_out + (1 - a) / 2


def rmia_scores(
    target_p: np.ndarray,
    ref_p: np.ndarray,
    in_mask: np.ndarray,
    population: np.ndarray,
    *,
    mode: Literal["online", "offline"] = "online",
    a: float = 0.3,
    gamma: float = 1.0,
) -> np.ndarray:
    """RMIA for every example: ``target_p[N]`` and ``ref_p[K, N]`` are probabilities of the
    true label; ``population`` indexes the examples that serve as ``z``. An example is
    never compared with itself (it is not in ``population`` when it is a target)."""
    px = _reference_p(ref_p, in_mask, mode, a)
    ratio = target_p / np.maximum(px, 1e-300)
    rz = np.sort(ratio[population])
    # ratio_x / ratio_z >= gamma  <=>  ratio_z <= ratio_x / gamma
    below = np.searchsorted(rz, ratio / gamma, side="right")
    return below / len(rz)
