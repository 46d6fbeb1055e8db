"""Checkpoints of a DP-SGD run, and resuming one.

A checkpoint holds the weights, the optimizer state, the accountant's history, the count
of examples drawn so far and every RNG state, written atomically together with the ledger
(so ``ledger.json`` always states the budget of the state a resume continues from).
Resuming checks that the settings and data are the same (:func:`same_run`), restores
everything, and replays a step lost after the last checkpoint with the same sample and
noise: the resumed run is bit-identical to an uninterrupted one, and nothing is counted
twice or reset. Checkpoints are read with ``torch.load(weights_only=True)``: no pickle.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from raigate._io import write_atomic
from raigate.errors import ConfigError, DataError
from raigate.privacy.distributed import gather
from raigate.privacy.ledger import Ledger

if TYPE_CHECKING:
    from raigate.privacy.setup import Machinery

CHECKPOINT_NAME = "checkpoint.pt"

__all__ = [
    "CHECKPOINT_NAME",
    "Checkpointer",
    "Progress",
    "config_key",
    "load_checkpoint",
    "same_run",
    "save_checkpoint",
    "start_or_resume",
]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: no checkpoint to resume; resume names the --out of a DP run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]
    except Exception as exc:
        raise DataError(f"{path}: not a readable raigate DP checkpoint ({exc})") from None


def same_run(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            raise ConfigError(
                f"{path} was written by a run with {key}={saved.get(key)!r}, this run has "
                f"{now.get(key)!r}: resume with the same settings and data, or start a new --out"
            )


def config_key(**items: Any) -> dict[str, Any]:
    """The settings a resume must share, as plain JSON values."""
    return json.loads(json.dumps(items, sort_keys=True, default=str))  # type: ignore[no-any-return]


@dataclass
class Progress:
    """How far the run is: steps done, examples the loop received since step
    ``counted_from`` (0, or the step an older checkpoint without the count resumed at),
    the loss per checkpoint interval, and whether it stopped early."""

    done: int = 0
    drawn: int = 0
    counted_from: int = 0
    losses: list[float] = field(default_factory=list)
    stopped: bool = False


def start_or_resume(
    *,
    net: nn.Module,
    mach: Machinery,
    key: dict[str, Any],
    resume_dir: Path | None,
    out: Path | None,
    rank: int,
) -> Progress:
    """Restore the run saved in ``resume_dir``, or start one; refuse to start over in a
    folder holding an unfinished run (that would spend the budget again)."""
    prog = Progress()
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    if resume_dir is not None:
        saved = load_checkpoint(resume_dir / CHECKPOINT_NAME)
        same_run(saved["config"], key, resume_dir / CHECKPOINT_NAME)
        net.load_state_dict(saved["net"])
        mach.optimizer.original_optimizer.load_state_dict(saved["optimizer"])
        mach.accountant.history = [tuple(h) for h in saved["history"]]
        prog.done = int(saved["step"])
        if "drawn" in saved:
            prog.drawn = int(saved["drawn"][rank])
        else:  # a checkpoint from before the count: test the steps run from here on
            prog.counted_from = prog.done
        if not mach.secure:
            mach.noise_gen.set_state(saved["rng"]["noise"])
            mach.sample_gen.set_state(saved["rng"]["sample"][rank])
        mach.aug_gen.set_state(saved["rng"]["augment"][rank])
    elif ckpt_path is not None and ckpt_path.is_file() and rank == 0:
        old = load_checkpoint(ckpt_path)
        if not old.get("complete", False):
            raise ConfigError(
                f"{out} holds an unfinished DP run ({old.get('step')} of "
                f"{old['config'].get('steps')} steps): continue it with --resume {out}, or "
                "choose another --out (starting over would spend the budget again)"
            )
    return prog


class Checkpointer:
    """Writes the checkpoint and the ledger together (rank 0; every rank must call it, as
    the per-rank RNG states and draw counts are gathered). ``ledger_for(progress,
    total_drawn)`` builds the ledger; the last one written is kept in ``last_ledger``."""

    def __init__(
        self,
        *,
        out: Path | None,
        key: dict[str, Any],
        net: nn.Module,
        mach: Machinery,
        rank: int,
        world: int,
        ledger_for: Callable[[Progress, int], Ledger],
    ) -> None:
        self.out, self.key, self.net, self.mach = out, key, net, mach
        self.rank, self.world, self.ledger_for = rank, world, ledger_for
        self.last_ledger: Ledger | None = None

    def __call__(self, prog: Progress, *, complete: bool) -> None:
        mach = self.mach
        samples = [mach.sample_gen.get_state() if not mach.secure else torch.empty(0)]
        augments = [mach.aug_gen.get_state()]
        counts = [torch.tensor(prog.drawn)]
        if self.world > 1:
            samples, augments = gather(samples[0]), gather(augments[0])
            counts = gather(counts[0])
        if self.rank != 0 or self.out is None:
            return
        save_checkpoint(
            self.out / CHECKPOINT_NAME,
            {
                "version": 1,
                "config": self.key,
                "step": prog.done,
                "complete": complete,
                "net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                "optimizer": mach.optimizer.original_optimizer.state_dict(),
                "history": [list(h) for h in mach.accountant.history],
                "drawn": [int(c) for c in counts],
                "rng": {
                    "noise": mach.noise_gen.get_state() if not mach.secure else torch.empty(0),
                    "sample": samples,
                    "augment": augments,
                },
            },
        )
        self.last_ledger = self.ledger_for(prog, sum(int(c) for c in counts))
        self.last_ledger.write(self.out)
