"""Distributed DP-SGD (``torchrun``): the process group, gathering per-rank state, and the
check that every process ends with the same weights."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["alone", "gather", "start", "sum_over_ranks", "weights_in_sync"]

_ALONE: contextvars.ContextVar[bool] = contextvars.ContextVar("raigate_dp_alone", default=False)


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """DP-SGD runs started inside train in this process only, even in a torchrun world.
    For reference models (:mod:`raigate.privacy.reference`): each rank trains its own
    models, one at a time, so a run must not wait for the other ranks to join it."""
    token = _ALONE.set(True)
    try:
        yield
    finally:
        _ALONE.reset(token)


def start(device: str) -> tuple[int, int, bool]:
    """(rank, world size, whether we started the process group). torchrun sets WORLD_SIZE;
    the group is joined as every raigate command joins it (:func:`raigate.parallel.start`:
    gloo on CPU, NCCL with one GPU per local rank). Inside :func:`alone`: ``(0, 1,
    False)``, this process by itself."""
    import torch.distributed as dist

    from raigate import parallel

    if _ALONE.get():
        return 0, 1, False
    joined = dist.is_available() and dist.is_initialized()
    world, _ = parallel.start(device)
    return world.rank, world.size, world.size > 1 and not joined


def _flat_params(net: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1).float().cpu() for p in net.parameters()])


def weights_in_sync(net: nn.Module) -> bool:
    import torch.distributed as dist

    mine = _flat_params(net)
    ref = mine.clone()
    dist.broadcast(ref, 0)
    ok = torch.tensor([1 if torch.equal(mine, ref) else 0])
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def gather(t: Tensor) -> list[Tensor]:
    import torch.distributed as dist

    """Every rank's ``t``, in rank order (all ranks call it)."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, t)
    return out


def sum_over_ranks(count: int, world: int) -> int:
    """``count`` summed over all processes (all ranks call it; itself when alone)."""
    total = torch.tensor(count)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(total)
    return int(total)
