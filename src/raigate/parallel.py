"""One audit over several processes and machines (``torchrun``), and resumable long checks.

The per-image work of a check (predictions, attacks, PREDICT and CERTIFY, attributions,
membership scores, reference models) is cut into **fixed batches**: batch ``b`` holds
positions ``b·B .. (b+1)·B - 1`` whatever the number of processes, and rank ``r`` of ``N``
computes the batches with ``b % N == r``. Every batch starts from RNG states derived from
``(seed, stage, b)`` only, never from the rank or from the batches computed before it, and
the global RNGs are put back afterwards. So one batch gives the same bits on any rank, the
ranks' results gathered in batch order equal the single-process run's, and report.json
does not depend on ``N``. Every rank then aggregates the same gathered arrays (cheap);
only rank 0 writes files.

Results travel between ranks as ``.npz`` bytes inside ``uint8`` tensors
(``torch.distributed.all_gather``): never pickles, which the object collectives would use.

**Progress.** Each finished batch is also written, atomically, to
``OUT/.progress/CHECK/STAGE/bNNNNNN.npz`` with a sha256 of its arrays and the fingerprint of
the run (plan, models, data). A run killed at any point and restarted with ``--resume``
loads the batches that are there and computes the rest, so it redoes at most the batch each
rank was in when it died. A progress file that does not check out is a :class:`DataError`
(exit 2) naming it, never silently used; one from a different plan, model or data too.
A finished audit removes ``.progress`` before it writes the bundle.

>>> import numpy as np
>>> out = map_positions(5, 2, lambda pos: {"twice": 2 * pos}, stage="demo", seed=0)
>>> out["twice"].tolist()
[0, 2, 4, 6, 8]
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import os
import random
import shutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from raigate import progress as _progress
from raigate._io import write_atomic
from raigate.errors import DataError
from raigate.reports.bundle import PROGRESS  # the bundle's layout owns the folder's name

if TYPE_CHECKING:
    from raigate.data.base import Dataset

__all__ = [
    "PROGRESS",
    "Arrays",
    "World",
    "batch_seed",
    "check_scope",
    "current",
    "item_seed",
    "launch",
    "launch_args",
    "map_batches",
    "map_positions",
    "pack",
    "remove_progress",
    "run_scope",
    "start",
    "unpack",
]


Arrays = dict[str, np.ndarray]


# -- the process group ----------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size``, ``local_rank`` on its machine
    (its GPU), the torch.distributed ``backend`` (None when alone) and every rank's device."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    devices: tuple[str, ...] = ("cpu",)

    @property
    def main(self) -> bool:
        """Rank 0: the one that prints, writes the bundle and signs it."""
        return self.rank == 0

    def owns(self, batch: int) -> bool:
        return batch % self.size == self.rank

    def describe(self) -> dict[str, Any]:
        """What the report records about the run (``environment.distributed``)."""
        return {
            "world_size": self.size,
            "backend": self.backend or "none",
            "devices": list(self.devices),
        }

    def all_gather_bytes(self, payload: bytes) -> list[bytes]:
        """Every rank's ``payload``, in rank order (every rank must call it)."""
        if self.size == 1:
            return [payload]
        import torch.distributed as dist

        dev = (
            torch.device("cuda", torch.cuda.current_device())
            if self.backend == "nccl"
            else torch.device("cpu")
        )
        size = torch.tensor([len(payload)], dtype=torch.int64, device=dev)
        sizes = [torch.zeros_like(size) for _ in range(self.size)]
        dist.all_gather(sizes, size)
        longest = max(int(s.item()) for s in sizes)
        buf = torch.zeros(max(longest, 1), dtype=torch.uint8, device=dev)
        if payload:
            buf[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(dev)
        bufs = [torch.empty_like(buf) for _ in range(self.size)]
        dist.all_gather(bufs, buf)
        lengths = [int(s.item()) for s in sizes]
        return [b[:k].cpu().numpy().tobytes() for b, k in zip(bufs, lengths, strict=True)]

    def all_gather_text(self, text: str) -> list[str]:
        return [b.decode("utf-8") for b in self.all_gather_bytes(text.encode("utf-8"))]

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()


_ALONE = World()
_WORLD: World = _ALONE


def current() -> World:
    """The world this process runs in (a single process unless :func:`start` joined one)."""
    return _WORLD


def start(device: str = "cpu") -> tuple[World, str]:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) and return the world and the device
    this rank computes on: ``cuda:LOCAL_RANK`` when ``device`` is a GPU, so each local rank
    takes its own. Alone (no ``WORLD_SIZE`` or 1) it returns a one-process world."""
    global _WORLD
    import torch.distributed as dist

    joined = dist.is_available() and dist.is_initialized()  # e.g. by the caller, by hand
    size = dist.get_world_size() if joined else int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        _WORLD = replace(_ALONE, devices=(device,))
        return _WORLD, device
    _die_with_launcher()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        have = torch.cuda.device_count()
        if local >= have:
            from raigate.errors import ConfigError

            raise ConfigError(
                f"local rank {local} has no GPU of its own: this machine has {have} CUDA "
                f"device(s); run at most {have} processes per machine (--nproc, "
                "--nproc-per-node), or --device cpu"
            )
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not joined:
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    world = World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=local,
        backend=str(dist.get_backend()),
    )
    devices = tuple(world.all_gather_text(device))
    _WORLD = replace(world, devices=devices)
    return _WORLD, device


def _die_with_launcher() -> None:
    """Under ``raigate audit --nproc``: end this worker when the launcher ends. torchrun
    starts each worker in a session of its own, so a launcher killed with SIGKILL (or a
    closed terminal) would leave the workers computing, and writing, on their own (Linux:
    ``PR_SET_PDEATHSIG``; elsewhere torchrun's own signal handling is all there is)."""
    import sys

    launcher = os.environ.get(_LAUNCHER_PID)
    if not launcher or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != int(launcher):  # it died before the line above
        os._exit(137)


_LAUNCHER_PID = "RAIGATE_LAUNCHER_PID"


def launch(nproc: int, argv: list[str], *, threads: int | None = None) -> tuple[int, str]:
    """Run ``raigate ARGV`` in ``nproc`` local processes with torchrun (its own code path,
    ``torchrun --standalone --nproc-per-node N -m raigate ARGV``) and return the exit code
    and the error message of the run: rank 0's when it failed, else the first failing
    rank's, which the workers leave in a scratch folder (torchrun itself only reports that
    some worker failed). Each worker gets ``threads`` intra-op threads (default: the
    machine's cores divided among the processes)."""
    import json
    import logging
    import tempfile

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from raigate.cli_common import LAUNCH_STATUS

    per = threads or max(1, (os.cpu_count() or 1) // nproc)
    with tempfile.TemporaryDirectory(prefix="raigate-launch-") as status:
        env = {
            LAUNCH_STATUS: status,
            "OMP_NUM_THREADS": str(per),
            _LAUNCHER_PID: str(os.getpid()),  # the workers' parent: they end with it
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        quiet = logging.getLogger("torch.distributed")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # the workers speak for themselves
        try:
            run(parse_args(launch_args(nproc, argv)))
        except ChildFailedError:
            pass
        finally:
            quiet.setLevel(level)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        found = {}
        for path in Path(status).glob("rank*.json"):
            with contextlib.suppress(ValueError, OSError):
                found[int(path.stem[4:])] = json.loads(path.read_text())
    first = found.get(0)
    if first is not None and first.get("code"):
        return int(first["code"]), ""  # rank 0 printed its own message
    for rank in sorted(found):
        if found[rank].get("code"):
            return int(found[rank]["code"]), str(found[rank].get("message", ""))
    if len(found) < nproc:
        missing = sorted(set(range(nproc)) - set(found))
        return 3, (
            f"worker process(es) {missing} of {nproc} died without a result (killed, or out "
            "of memory); see the output above"
        )
    return 0, ""


def launch_args(nproc: int, argv: list[str]) -> list[str]:
    """torchrun's arguments for ``raigate ARGV`` in ``nproc`` processes on this machine."""
    return ["--standalone", f"--nproc-per-node={nproc}", "-m", "raigate", *argv]


# -- seeds ----------------------------------------------------------------------------------
def item_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed for one item (an image, a batch, a reference model) of a run seeded
    ``seed``: a hash of the seed and the item's keys, the same on every rank."""
    text = "/".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def batch_seed(seed: int, stage: str, batch: int) -> int:
    """The seed batch ``batch`` of ``stage`` starts its global RNGs from."""
    return item_seed(seed, "batch", stage, batch)


@contextlib.contextmanager
def _seeded(value: int) -> Iterator[None]:
    """Seed torch (CPU and CUDA), numpy's and Python's global RNGs with ``value`` and put
    their states back afterwards, so what runs inside depends on ``value`` alone and what
    runs after does not depend on how many batches ran here."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    saved = (
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if cuda else None,
        np.random.get_state(),
        random.getstate(),
    )
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        if cuda and saved[1] is not None:
            torch.cuda.set_rng_state_all(saved[1])
        np.random.set_state(saved[2])
        random.setstate(saved[3])


# -- arrays as bytes, never pickles ---------------------------------------------------------
def pack(arrays: Arrays) -> bytes:
    """``arrays`` as ``.npz`` bytes. Object arrays are refused: they would need pickle."""
    for name, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(f"{name}: object arrays cannot be exchanged without pickle")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def unpack(payload: bytes) -> Arrays:
    """The arrays of :func:`pack`'s bytes (``allow_pickle=False``)."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _digest(arrays: Arrays) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# -- the run and the check a batch belongs to -----------------------------------------------
@dataclass
class _Scope:
    progress: Path | None = None  # OUT/.progress; None: no progress kept (library calls)
    fingerprint: str = ""
    check: str = ""
    stages: set[str] = field(default_factory=set)  # in the order every rank runs them
    reused: dict[str, int] = field(default_factory=dict)  # stage -> batches loaded


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("raigate", default=None)


@contextlib.contextmanager
def run_scope(progress: Path | None, fingerprint: str) -> Iterator[None]:
    """Keep per-batch progress under ``progress`` (``OUT/.progress``) for this run, whose
    plan, models and data hash to ``fingerprint``."""
    token = _SCOPE.set(_Scope(progress=progress, fingerprint=fingerprint))
    try:
        yield
    finally:
        _SCOPE.reset(token)


@contextlib.contextmanager
def check_scope(name: str) -> Iterator[_Scope | None]:
    """The batches inside belong to check ``name`` (its folder under ``.progress``)."""
    outer = _SCOPE.get()
    if outer is None:
        yield None
        return
    inner = _Scope(progress=outer.progress, fingerprint=outer.fingerprint, check=name)
    token = _SCOPE.set(inner)
    try:
        yield inner
    finally:
        _SCOPE.reset(token)


def remove_progress(out: Path) -> None:
    """Remove ``OUT/.progress`` (a finished run's, or a run started without --resume)."""
    folder = out / PROGRESS
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)


class _Store:
    """The finished batches of one stage of one check, one atomic file each."""

    def __init__(self, scope: _Scope, stage: str) -> None:
        assert scope.progress is not None
        base, k = stage, 1
        while stage in scope.stages:  # a second loop of one check gets its own files
            k += 1
            stage = f"{base}-{k}"
        scope.stages.add(stage)
        self.folder = scope.progress / (scope.check or "_") / stage
        self.fingerprint = scope.fingerprint

    def path(self, batch: int) -> Path:
        return self.folder / f"b{batch:06d}.npz"

    def load(self, batch: int, positions: np.ndarray) -> Arrays | None:
        path = self.path(batch)
        if not path.is_file():
            return None
        redo = f"delete {path} to redo its batch, or run without --resume to start over"
        try:
            arrays = unpack(path.read_bytes())
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"{path}: corrupt progress file ({exc}); {redo}") from None
        meta = {k: arrays.pop(k, None) for k in ("__sha256__", "__run__", "__positions__")}
        if any(v is None for v in meta.values()) or str(meta["__sha256__"]) != _digest(arrays):
            raise DataError(f"{path}: corrupt progress file (checksum mismatch); {redo}")
        if str(meta["__run__"]) != self.fingerprint:
            raise DataError(
                f"{path}: progress of a different run (the plan, a model or the data "
                f"changed since); run without --resume to start over"
            )
        if not np.array_equal(meta["__positions__"], positions):
            raise DataError(f"{path}: progress for other samples than this batch; {redo}")
        return arrays

    def save(self, batch: int, positions: np.ndarray, arrays: Arrays) -> None:
        payload = {
            **arrays,
            "__sha256__": np.asarray(_digest(arrays)),
            "__run__": np.asarray(self.fingerprint),
            "__positions__": positions,
        }
        write_atomic(self.path(batch), pack(payload))


# -- the sharded loop -----------------------------------------------------------------------
def _batches(n: int, batch_size: int) -> list[np.ndarray]:
    return [np.arange(s, min(s + batch_size, n), dtype=np.int64) for s in range(0, n, batch_size)]


def _gather(world: World, mine: dict[int, Arrays], n_batches: int) -> list[Arrays]:
    """Every batch's arrays, in batch order, on every rank."""
    if world.size == 1:
        return [mine[b] for b in range(n_batches)]
    flat = {f"{b}/{k}": v for b, arrays in mine.items() for k, v in arrays.items()}
    flat["__batches__"] = np.asarray(sorted(mine), dtype=np.int64)
    merged: dict[int, Arrays] = {}
    for payload in world.all_gather_bytes(pack(flat)):
        arrays = unpack(payload)
        for b in arrays.pop("__batches__").tolist():
            merged[int(b)] = {}
        for key, v in arrays.items():
            b, name = key.split("/", 1)
            merged[int(b)][name] = v
    return [merged[b] for b in range(n_batches)]


def _concat(parts: list[Arrays]) -> Arrays:
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


def _run(
    n: int,
    batch_size: int,
    compute: Callable[[list[tuple[int, np.ndarray]]], Iterator[tuple[int, Arrays]]],
    *,
    stage: str,
    desc: str,
    unit: str,
    progress: bool,
) -> Arrays:
    world = current()
    scope = _SCOPE.get()
    store = _Store(scope, stage) if scope is not None and scope.progress is not None else None
    batches = _batches(n, max(1, int(batch_size)))
    mine: dict[int, Arrays] = {}
    todo: list[tuple[int, np.ndarray]] = []
    for b, pos in enumerate(batches):
        if not world.owns(b):
            continue
        done = store.load(b, pos) if store is not None else None
        if done is not None:
            mine[b] = done
        else:
            todo.append((b, pos))
    if store is not None and scope is not None and len(mine):
        scope.reused[stage] = len(mine)
    # closed however the loop ends: an open bar would nest every later one under it
    with _progress.bar(sum(len(p) for _, p in todo), desc, unit, show=progress) as bar:
        for b, arrays in compute(todo):
            pos = batches[b]
            mine[b] = arrays
            if store is not None:
                store.save(b, pos, arrays)
            bar.update(len(pos))
    return _concat(_gather(world, mine, len(batches)))


def map_positions(
    n: int,
    batch_size: int,
    fn: Callable[[np.ndarray], Arrays],
    *,
    stage: str,
    seed: int,
    desc: str = "",
    unit: str = "items",
    progress: bool = False,
) -> Arrays:
    """``fn(positions)`` on every fixed batch of ``0..n-1`` that this rank owns, each from
    RNGs seeded by ``(seed, stage, batch)``; returns every batch's arrays concatenated in
    position order, on every rank. ``fn`` returns arrays whose first axis follows
    ``positions`` (numbers, bools or strings: no objects)."""

    def compute(todo: list[tuple[int, np.ndarray]]) -> Iterator[tuple[int, Arrays]]:
        for b, pos in todo:
            with _seeded(batch_seed(seed, stage, b)):
                yield b, fn(pos)

    return _run(n, batch_size, compute, stage=stage, desc=desc, unit=unit, progress=progress)


def map_batches(
    data: Dataset,
    batch_size: int,
    fn: Callable[[torch.Tensor, torch.Tensor, np.ndarray], Arrays],
    *,
    stage: str,
    seed: int,
    workers: int = 0,
    desc: str = "",
    unit: str = "items",
    progress: bool = False,
) -> Arrays:
    """:func:`map_positions` over a dataset: ``fn(x, y, positions)`` on this rank's batches
    of ``data``, loaded (with ``workers``) from one loader over the batches still to do."""

    def compute(todo: list[tuple[int, np.ndarray]]) -> Iterator[tuple[int, Arrays]]:
        if not todo:
            return
        # every batch but the dataset's last is full, and the last sorts last: one loader
        # over the concatenated positions yields exactly these batches, in this order
        view = data.subset(np.concatenate([pos for _, pos in todo]))
        loader = view.loader(max(1, int(batch_size)), num_workers=workers)
        for (b, pos), (x, y, _) in zip(todo, loader, strict=True):
            with _seeded(batch_seed(seed, stage, b)):
                yield b, fn(x, y, pos)

    return _run(
        len(data), batch_size, compute, stage=stage, desc=desc, unit=unit, progress=progress
    )
