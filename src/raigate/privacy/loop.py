"""The DP-SGD training loop, and its non-private twin for ``--baseline``.

Each logical batch is a Poisson sample (:class:`~raigate.privacy.sampling.PoissonBatches`),
split into physical batches by Opacus' ``BatchMemoryManager``; the DP optimizer clips each
example's gradient, adds the noise and charges the accountant once per logical step. The
loop counts the examples it receives, apart from what the sampler reports, for the
ledger's realized-rate test (:mod:`raigate.privacy.sampler`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raigate import progress as _progress
from raigate.privacy.checkpoint import Checkpointer, Progress
from raigate.privacy.grad_sample import average_augmentations
from raigate.privacy.params import DPParams
from raigate.privacy.sampling import PoissonBatches, TensorSet, crop_flip, keep_batch
from raigate.privacy.setup import Budget, Machinery, make_optimizer, rng

__all__ = ["train_baseline", "train_steps"]


def train_steps(
    net: nn.Module,
    normalize: nn.Module,
    x: Tensor,
    y: Tensor,
    w: Tensor | None,
    *,
    mach: Machinery,
    budget: Budget,
    params: DPParams,
    prog: Progress,
    checkpoint: Checkpointer,
    device: torch.device,
    progress: bool,
) -> None:
    """Run the steps from ``prog.done`` to the planned count (or ``stop_after_steps``),
    checkpointing every ``checkpoint_every`` steps (default: once per epoch, 1/q steps)."""
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    planned, optimizer = budget.planned, mach.optimizer
    every = params.checkpoint_every or max(1, round(1 / budget.q))
    mach.batches.steps = planned - prog.done
    loader = torch.utils.data.DataLoader(
        TensorSet(x, y, w), batch_sampler=mach.batches, collate_fn=keep_batch
    )
    with _progress.bar(planned, "DP-SGD steps", "steps", show=progress, initial=prog.done) as bar:
        loss_sum, loss_rows = 0.0, 0
        with BatchMemoryManager(
            data_loader=loader, max_physical_batch_size=budget.physical, optimizer=optimizer
        ) as physical_batches:
            for batch in physical_batches:
                if prog.done >= planned:
                    break
                prog.drawn += len(batch[1])  # what ran, counted apart from what the sampler claims
                if w is not None:
                    optimizer.sample_weights = batch[2].to(device)
                loss, rows = _gradients(net, normalize, batch, mach, params, device)
                loss_sum, loss_rows = loss_sum + loss * rows, loss_rows + rows
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if optimizer._is_last_step_skipped:
                    continue
                prog.done += 1
                bar.update(1)
                if mach.accountant.history[-1][1] != mach.batches.sample_rate:  # charged = drawn
                    raise RuntimeError("the accountant was charged a different sample rate")
                if prog.done % every == 0 or prog.done == planned:
                    prog.losses.append(loss_sum / max(loss_rows, 1))
                    loss_sum, loss_rows = 0.0, 0
                    checkpoint(prog, complete=prog.done == planned)
                stop = params.stop_after_steps
                if stop is not None and prog.done >= stop < planned:
                    prog.stopped = True  # as if killed here: what survives is the last checkpoint
                    break


def _gradients(
    net: nn.Module,
    normalize: nn.Module,
    batch: tuple[Tensor, ...],
    mach: Machinery,
    params: DPParams,
    device: torch.device,
) -> tuple[float, int]:
    """Per-example gradients of one physical batch (augmented copies averaged before
    clipping, De et al. 2022); returns (mean loss, rows). An empty Poisson batch still
    steps: its per-sample gradients are empty, so the step adds only noise."""
    xb, yb = batch[0].to(device), batch[1].to(device)
    if len(yb) == 0:
        for p in net.parameters():
            if p.requires_grad:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device)  # type: ignore[attr-defined]
        return 0.0, 0
    copies = max(params.augmult, 1)
    if params.augmult:
        xb = crop_flip(xb.repeat_interleave(copies, dim=0), mach.aug_gen)
        yb = yb.repeat_interleave(copies)
    inputs = normalize(xb)
    logits = mach.engine.forward(mach.forward, inputs) if mach.engine else mach.forward(inputs)
    loss = F.cross_entropy(logits, yb)
    loss.backward()
    average_augmentations([p for p in net.parameters() if p.requires_grad], copies)
    return float(loss.detach()), len(yb)


def train_baseline(
    net: nn.Module,
    normalize: nn.Module,
    x: Tensor,
    y: Tensor,
    q: float,
    steps: int,
    params: DPParams,
    device: torch.device,
    progress: bool,
    weights: Tensor | None = None,
) -> tuple[nn.Module, list[float]]:
    """The same network, data, Poisson batches, augmentation and step count, with neither
    clipping nor noise: what DP costs is the gap between the two. With ``--balance`` the
    loss carries the same group weights (a plain weighted loss: without clipping, a weight
    on the loss is a weight on the gradient)."""
    net.to(device).train()
    opt = make_optimizer(params, net, params.baseline_lr or params.lr)
    gen, aug = rng(params.seed, 100), rng(params.seed, 200)
    copies = max(params.augmult, 1)
    physical = params.physical_batch_size or min(256, params.batch_size)
    sampler = PoissonBatches(torch.arange(len(y)), sample_rate=q, steps=steps, generator=gen)
    losses: list[float] = []
    every = max(1, round(1 / q))
    loss_sum, rows = 0.0, 0
    steps_shown = _progress.track(sampler, "baseline steps", "steps", show=progress)
    for step, idx in enumerate(steps_shown, 1):
        opt.zero_grad(set_to_none=True)
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        for i in range(0, len(idx_t), physical):
            xb, yb = x[idx_t[i : i + physical]].to(device), y[idx_t[i : i + physical]].to(device)
            if params.augmult:
                xb = crop_flip(xb.repeat_interleave(copies, dim=0), aug)
                yb = yb.repeat_interleave(copies)
            per_row = F.cross_entropy(net(normalize(xb)), yb, reduction="none")
            if weights is not None:
                w = weights[idx_t[i : i + physical]].to(device)
                per_row = per_row * (w.repeat_interleave(copies) if params.augmult else w)
            loss = per_row.sum() / (len(idx_t) * copies)
            loss.backward()
            loss_sum += float(loss.detach()) * len(idx_t) * copies
            rows += len(yb)
        if len(idx_t):
            opt.step()
        if step % every == 0 or step == steps:
            losses.append(loss_sum / max(rows, 1))
            loss_sum, rows = 0.0, 0
    return net.eval(), losses
