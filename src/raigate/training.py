"""A small, honest training loop shared by the demo and the hardening recipes.

It trains the *bare* network (``model.net``) on pixels in [0, 1] through the adapter's
normalization, so the trained weights drop back into the same ``Model`` spec.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from raigate import progress as _progress
from raigate.data.base import Dataset

Augment = Callable[[Tensor, torch.Generator], Tensor]
Objective = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``objective(logits, labels, positions) -> scalar loss``; ``positions`` are the batch's
sample indices in the training data (so a loss can look up a sample's weight or group)."""
Sampler = Callable[[int], Sequence[int]]
"""``sampler(epoch) -> positions``: the samples (repeats allowed) one epoch visits, in order."""


def cross_entropy(logits: Tensor, labels: Tensor, positions: Tensor) -> Tensor:
    """The default objective: mean cross-entropy over the batch."""
    return F.cross_entropy(logits, labels)


@dataclass(frozen=True)
class FitReport:
    """Per-epoch mean training loss and accuracy (on the augmented batches)."""

    losses: list[float]
    accuracies: list[float]
    seconds: float


def fit(
    net: nn.Module,
    data: Dataset,
    *,
    normalize: nn.Module | None = None,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
    augment: Augment | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    objective: Objective = cross_entropy,
    sampler: Sampler | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> FitReport:
    """Train ``net`` with Adam on ``objective`` (default: cross-entropy); ``augment(x,
    generator)`` runs per batch on pixels (e.g. Gaussian noise for randomized smoothing);
    ``sampler`` replaces the seeded shuffle of each epoch (e.g. group-balanced resampling);
    ``on_epoch(epoch)`` runs after each epoch (e.g. to record Group DRO's weights). Seeded
    end to end."""
    import time

    torch.manual_seed(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    net.to(device).train()
    norm = normalize.to(device) if normalize is not None else nn.Identity()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    accs: list[float] = []
    start = time.perf_counter()
    # epochs outside, batches inside: in a log the epochs count, a long epoch's batches beat
    for epoch in _progress.track(range(epochs), "train", "epochs", show=progress):
        total = correct = 0
        loss_sum = 0.0
        batches = (
            data.loader(batch_size, shuffle=True, seed=seed + epoch)
            if sampler is None
            else DataLoader(data, batch_size=batch_size, sampler=list(sampler(epoch)))
        )
        desc = f"epoch {epoch + 1}/{epochs}"
        for x, y, idx in _progress.track(batches, desc, "batches", show=progress):
            x, y = x.to(device), y.to(device)
            if augment is not None:
                x = augment(x, gen)
            logits = net(norm(x))
            loss = objective(logits, y, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
        losses.append(loss_sum / max(total, 1))
        accs.append(correct / max(total, 1))
        if on_epoch is not None:
            on_epoch(epoch)
    net.eval()
    return FitReport(losses=losses, accuracies=accs, seconds=time.perf_counter() - start)
