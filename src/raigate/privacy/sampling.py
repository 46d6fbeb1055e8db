"""Training data for DP-SGD: examples held as tensors, Poisson batches, and augmentation.

* :class:`TensorSet` holds the (resized) training images once in memory, so the many
  epochs DP-SGD needs do not decode every JPEG again, and hands whole batches to the
  DataLoader (``__getitems__``) instead of stacking them one by one.
* :class:`PoissonBatches` draws each logical batch by including every example
  independently with probability ``q`` (Poisson sampling, the sampling the privacy
  accountants assume). It draws exactly as Opacus' ``UniformWithReplacementSampler`` does
  (one ``torch.rand(n)`` per step from the given generator), but always yields empty
  batches too and works on one shard of a distributed run, so every process takes the same
  number of steps (Opacus' distributed sampler skips empty local batches, which would leave
  the processes out of step).
* :func:`crop_flip` is the augmentation of De et al. 2022 (random crop after 4-pixel
  reflection padding, random horizontal flip), batched and seeded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from raigate import progress as _progress
from raigate.data.base import Dataset

__all__ = ["PoissonBatches", "TensorSet", "crop_flip", "load_tensors"]


def load_tensors(data: Dataset, *, progress: bool = True) -> tuple[Tensor, Tensor]:
    """All images ``[N, C, H, W]`` (float32 in [0, 1]) and labels ``[N]`` of ``data``."""
    n = len(data)
    if n == 0:
        return torch.empty(0, *data.shape), torch.empty(0, dtype=torch.long)
    xs = torch.empty((n, *data.shape), dtype=torch.float32)
    ys = torch.empty(n, dtype=torch.long)
    batches = data.loader(256)
    for x, y, idx in _progress.track(batches, "load training data", "batches", show=progress):
        xs[idx] = x
        ys[idx] = y
    return xs, ys


class TensorSet(torch.utils.data.Dataset):
    """Images and labels (and, optionally, per-example weights) as tensors; a DataLoader
    fetches a whole batch in one indexing."""

    def __init__(self, x: Tensor, y: Tensor, w: Tensor | None = None) -> None:
        self.x, self.y, self.w = x, y, w

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        return (self.x[i], self.y[i]) if self.w is None else (self.x[i], self.y[i], self.w[i])

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, ...]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        if self.w is None:
            return self.x[idx], self.y[idx]
        return self.x[idx], self.y[idx], self.w[idx]


def keep_batch(batch: Any) -> Any:
    """Collate function for :class:`TensorSet`: the batch is already collated."""
    return batch


class PoissonBatches(torch.utils.data.Sampler[list[int]]):
    """``steps`` Poisson batches over ``indices``: each index joins each batch with
    probability ``sample_rate``, independently (empty batches are yielded, not skipped)."""

    def __init__(
        self,
        indices: Tensor,
        *,
        sample_rate: float,
        steps: int,
        generator: torch.Generator | None,
    ) -> None:
        self.indices = indices
        self.sample_rate = float(sample_rate)
        self.steps = int(steps)
        self.generator = generator
        self.num_samples = len(indices)  # read by Opacus' BatchSplittingSampler

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            mask = torch.rand(self.num_samples, generator=self.generator) < self.sample_rate
            yield self.indices[mask.nonzero(as_tuple=False).reshape(-1)].tolist()


def shard(n: int, rank: int, world_size: int, seed: int) -> Tensor:
    """This process's share of ``range(n)`` in a distributed run: a seeded permutation
    split round-robin (as Opacus' distributed sampler does), so shards are disjoint."""
    if world_size == 1:
        return torch.arange(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[rank:n:world_size]


def crop_flip(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random crop of each image after ``pad``-pixel reflection padding, then a random
    horizontal flip (probability 1/2): the CIFAR augmentation of De et al. 2022."""
    n, c, h, w = x.shape
    if n == 0:
        return x
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (oy[:, None] + torch.arange(h)).to(x.device)  # [n, h]
    cols = ox[:, None] + torch.arange(w)  # [n, w]
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(x.device)
    b = torch.arange(n, device=x.device)[:, None, None, None]
    ch = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[b, ch, rows[:, None, :, None], cols[:, None, None, :]]
