"""Run a function in two gloo processes on CPU, as ``torchrun --nproc-per-node 2`` would:
the environment torchrun sets, then :func:`raigate.parallel.start`. Forked, so the workers
inherit the imported libraries (a few seconds instead of importing torch again)."""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from raigate.parallel import Arrays, pack, unpack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int, size: int, port: int, out: str, fn: Callable[..., Arrays], args: Any
) -> None:
    import torch.distributed as dist

    from raigate import parallel

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    parallel.start("cpu")
    try:
        result = fn(*args)
        Path(out, f"rank{rank}.npz").write_bytes(pack(result or {}))
    finally:
        dist.destroy_process_group()


def in_processes(fn: Callable[..., Arrays], *args: Any, tmp: Path, size: int = 2) -> list[Arrays]:
    """``fn(*args)`` on every rank of a ``size``-process world; each rank's returned arrays."""
    tmp.mkdir(parents=True, exist_ok=True)
    mp.start_processes(
        _worker,
        args=(size, free_port(), str(tmp), fn, args),
        nprocs=size,
        join=True,
        start_method="fork",
    )
    return [unpack(Path(tmp, f"rank{r}.npz").read_bytes()) for r in range(size)]


def same_arrays(a: Arrays, b: Arrays) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
