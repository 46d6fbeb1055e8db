"""The settings of a DP-SGD run (:class:`DPParams`) and what it produced (:class:`PrivateTraining`).

Kept apart from :mod:`raigate.privacy.train` so the modules of the run (setup, loop,
checkpoint, artifacts) can name them without importing the entry point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raigate.errors import ConfigError
from raigate.models.base import Model
from raigate.privacy.canaries import CanaryAudit, CanaryPlan
from raigate.privacy.grad_sample import GradSampleMode
from raigate.privacy.ledger import Accountant, Ledger
from raigate.privacy.preflight import Problem
from raigate.values import Seed

__all__ = ["DPParams", "PrivateTraining"]


class DPParams(BaseModel):
    """Every knob of a DP-SGD run (defaults: a small-model recipe; see docs/privacy.md)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epsilon: float = Field(2.0, description="target epsilon for the whole run")
    delta: float = Field(1e-5, description="target delta; must be below 1/N")
    epochs: float = Field(10.0, gt=0, description="expected passes over the data")
    batch_size: int = Field(256, gt=0, description="expected logical batch size q * N")
    physical_batch_size: int | None = Field(
        None, gt=0, description="most examples per forward/backward (default min(256, batch))"
    )
    max_grad_norm: float = Field(1.0, gt=0, description="per-example clipping norm C")
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.5, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by adam)")
    weight_decay: float = Field(0.0, ge=0)
    accountant: Accountant = "prv"
    augmult: int = Field(0, ge=0, le=64, description="augmented copies per example per step")
    canaries: int = Field(0, ge=0, description="mislabelled canaries for the one-run audit")
    batchnorm: Literal["auto", "fold", "groupnorm"] = "auto"
    grad_sample_mode: GradSampleMode = "auto"
    secure_mode: bool = False
    checkpoint_every: int | None = Field(None, gt=0, description="steps between checkpoints")
    baseline: bool = Field(False, description="also train without DP on the same steps")
    baseline_lr: float | None = Field(None, gt=0, description="lr of the baseline (default lr)")
    balance: str | None = Field(
        None,
        description="attribute (race, race+gender) whose groups get equal total weight, by "
        "group-weighted clipping (see raigate.privacy.balance)",
    )
    balance_noise: float = Field(
        20.0, gt=0, description="std of the Gaussian noise on the group counts --balance uses"
    )
    seed: Seed = 0
    device: str = "cpu"
    progress: bool = True
    stop_after_steps: int | None = Field(
        None, gt=0, description="stop (as if killed) after this many steps; resume later"
    )

    @classmethod
    def build(cls, **kwargs: Any) -> DPParams:
        """Validate keyword arguments into params; a bad value is a one-line ConfigError."""
        try:
            return cls(**kwargs)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = ".".join(str(x) for x in err["loc"]) or "(params)"
            raise ConfigError(f"--{name.replace('_', '-')}: {err['msg']}") from None


@dataclass
class PrivateTraining:
    """Everything one DP-SGD run produced (see :func:`run_private_training`)."""

    model: Model
    ledger: Ledger
    out_dir: Path | None
    changes: list[str]
    warnings: list[Problem]
    canaries: CanaryAudit | None
    losses: list[float]
    seconds: float
    stopped_early: bool
    rank: int = 0
    world_size: int = 1
    weights_in_sync: bool | None = None
    fold_max_abs_diff: float | None = None
    baseline: Model | None = None
    baseline_losses: list[float] = field(default_factory=list)
    spec_path: Path | None = None
    canary_plan: CanaryPlan | None = None
