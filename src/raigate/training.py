"""A small, honest training loop shared by the demo and the hardening recipes.

It trains the *bare* network (``model.net``) on pixels in [0, 1] through the adapter's
normalization, so the trained weights drop back into the same ``Model`` spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from raigate.data.base import Dataset

Augment = Callable[[Tensor, torch.Generator], Tensor]


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
) -> FitReport:
    """Train ``net`` with Adam and cross-entropy; ``augment(x, generator)`` runs per batch
    on pixels (e.g. Gaussian noise for randomized smoothing). Seeded end to end."""
    import time

    torch.manual_seed(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    net.to(device).train()
    norm = normalize.to(device) if normalize is not None else nn.Identity()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    losses: list[float] = []
    accs: list[float] = []
    start = time.perf_counter()
    for epoch in range(epochs):
        total = correct = 0
        loss_sum = 0.0
        batches = data.loader(batch_size, shuffle=True, seed=seed + epoch)
        bar = tqdm(
            batches, desc=f"train epoch {epoch + 1}/{epochs}", leave=False, disable=not progress
        )
        for x, y, _ in bar:
            x, y = x.to(device), y.to(device)
            if augment is not None:
                x = augment(x, gen)
            logits = net(norm(x))
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
        losses.append(loss_sum / max(total, 1))
        accs.append(correct / max(total, 1))
    net.eval()
    return FitReport(losses=losses, accuracies=accs, seconds=time.perf_counter() - start)
