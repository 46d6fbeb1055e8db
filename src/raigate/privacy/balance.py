"""Group balancing inside DP-SGD: group-weighted clipping, paid for in the ledger.

Why not simply reweight the loss? DP-SGD clips every example's gradient to norm ``C``
before summing, so a weight ``w_i`` on example ``i``'s loss scales its gradient and is
then undone by the clip (a clipped gradient has norm ``C`` whatever its weight), and a
weighted or group-dependent sampler changes the sample rate the accountant relies on
(opacus#813). What survives clipping is a weight applied *after* it:

    update = sum_i w_i * clip_C(g_i) + N(0, (sigma C)^2 I),   0 < w_i <= 1

Each example still moves the sum by at most ``w_i C <= C``, so the sensitivity, the noise
and the accountant of plain DP-SGD are unchanged. Weights above 1 would raise the
sensitivity, so balancing lowers the weight of the larger groups instead of raising the
smaller ones: ``w_g = min_h n_h / n_g``, the smallest group at 1. The cost is signal: the
noise stays ``sigma C`` while the summed gradient shrinks to about ``mean(w)`` of its size.

The group sizes ``n_g`` depend on the private data, so they are not used as they are:
they are released once through the Gaussian mechanism (L2 sensitivity 1 under add/remove
of one example; std ``count_noise``), and the weights are computed from the noisy counts.
That release is one more entry in the accountant's history, ``(count_noise, 1.0, 1)``, a
Gaussian mechanism without subsampling, composed with the training steps; the noise
multiplier of the steps is calibrated so that the whole history meets the target epsilon.
The list of groups (the attribute's categories) is treated as public, like the class
names.

>>> import numpy as np
>>> group_weights(np.array([100.0, 50.0, 200.0])).tolist()
[0.5, 1.0, 0.25]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "COUNT_FLOOR",
    "GroupBalance",
    "balance_groups",
    "group_weights",
    "noisy_counts",
    "weighted_clip_optimizer",
]

COUNT_FLOOR = 3.0
"""Noisy counts below ``COUNT_FLOOR * noise`` are raised to it. A group whose count is
within three noise standard deviations of zero has no trustworthy size; left as drawn, a
count near zero would give that group weight 1 and every other group almost nothing."""


def noisy_counts(sizes: np.ndarray, noise: float, generator: torch.Generator) -> np.ndarray:
    """Group sizes plus independent Gaussian noise of std ``noise`` (the Gaussian mechanism
    on a histogram: adding or removing one example moves one count by 1), floored at
    ``max(1, COUNT_FLOOR * noise)``. Post-processing (the floor, the weights) costs no
    privacy."""
    z = torch.randn(len(sizes), generator=generator, dtype=torch.float64).numpy()
    floor = max(1.0, COUNT_FLOOR * noise)
    return np.maximum(np.asarray(sizes, dtype=np.float64) + noise * z, floor)


def group_weights(counts: np.ndarray) -> np.ndarray:
    """``w_g = min_h n_h / n_g``: every group gets the same total weight (``min_h n_h``),
    and no weight exceeds 1, so the clipped sum keeps sensitivity ``C``."""
    counts = np.asarray(counts, dtype=np.float64)
    return counts.min() / counts


@dataclass(frozen=True)
class GroupBalance:
    """What ``--balance`` did, as recorded in the ledger (everything here is public:
    the group names by assumption, the counts after the Gaussian mechanism)."""

    attribute: str
    groups: list[str]
    noisy_counts: list[float]
    weights: list[float]
    count_noise: float

    @property
    def floored(self) -> list[str]:
        """Groups whose noisy count was raised to the floor (their size is mostly noise)."""
        floor = max(1.0, COUNT_FLOOR * self.count_noise)
        return [g for g, c in zip(self.groups, self.noisy_counts, strict=True) if c <= floor]

    @property
    def mean_weight(self) -> float:
        """The expected weight of one example under the noisy counts: the fraction of the
        clipped gradient's size that survives (the price in signal, against the same noise)."""
        c = np.asarray(self.noisy_counts)
        return float((c * np.asarray(self.weights)).sum() / c.sum())

    def as_dict(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute,
            "groups": list(self.groups),
            "noisy_counts": [float(c) for c in self.noisy_counts],
            "weights": [float(w) for w in self.weights],
            "count_noise": self.count_noise,
            "mean_weight": self.mean_weight,
            "floored": self.floored,
            "history_entry": [self.count_noise, 1.0, 1],
        }


def balance_groups(
    attribute: str,
    names: list[str],
    codes: np.ndarray,
    count_noise: float,
    generator: torch.Generator,
    *,
    released: list[float] | None = None,
) -> tuple[GroupBalance, Tensor]:
    """The balance record and every example's weight (``[N]`` float32) for group
    ``codes`` (indices into ``names``). ``released``: counts already released by this run
    (a resumed run reuses them: drawing new noise would be a second release)."""
    if released is not None:
        if len(released) != len(names):
            raise ValueError(f"{len(released)} released counts for {len(names)} groups")
        counts = np.asarray(released, dtype=np.float64)
    else:
        sizes = np.bincount(np.asarray(codes, dtype=np.int64), minlength=len(names))
        counts = noisy_counts(sizes, count_noise, generator)
    weights = group_weights(counts)
    per_example = torch.as_tensor(weights[np.asarray(codes, dtype=np.int64)], dtype=torch.float32)
    record = GroupBalance(
        attribute=attribute,
        groups=list(names),
        noisy_counts=[float(c) for c in counts],
        weights=[float(w) for w in weights],
        count_noise=float(count_noise),
    )
    return record, per_example


def weighted_clip_optimizer(base: type) -> type:
    """A subclass of Opacus' ``DPOptimizer`` (or ``DistributedDPOptimizer``) whose
    ``clip_and_accumulate`` multiplies each example's clip factor by ``sample_weights``
    (``[B]``, each in (0, 1]; ``None``: plain DP-SGD). The code is Opacus 1.6's, with the
    one product added, so noise, accounting and the step stay Opacus'."""
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    class WeightedClipOptimizer(base):  # type: ignore[misc, valid-type]
        sample_weights: Tensor | None = None

        def clip_and_accumulate(self) -> None:
            weights = self.sample_weights
            if weights is None:
                super().clip_and_accumulate()
                return
            samples = self.grad_samples
            if len(samples[0]) == 0:
                factor = torch.zeros((0,), device=samples[0].device)
            else:
                device = samples[0].device
                norms = torch.stack(
                    [g.reshape(len(g), -1).norm(2, dim=-1).to(device) for g in samples], dim=1
                ).norm(2, dim=1)
                if len(weights) != len(norms):
                    raise RuntimeError(
                        f"{len(weights)} sample weights for {len(norms)} per-sample gradients"
                    )
                factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
                factor = factor * weights.to(device, factor.dtype)
            for p in self.params:
                _check_processed_flag(p.grad_sample)
                grad_sample = self._get_flat_grad_sample(p).to(p.dtype)
                grad = torch.einsum("i,i...", factor.to(grad_sample.device, p.dtype), grad_sample)
                if p.summed_grad is not None:
                    p.summed_grad += grad
                else:
                    p.summed_grad = grad
                _mark_as_processed(p.grad_sample)

    WeightedClipOptimizer.__name__ = f"WeightedClip{base.__name__}"
    WeightedClipOptimizer.__qualname__ = WeightedClipOptimizer.__name__
    return WeightedClipOptimizer
