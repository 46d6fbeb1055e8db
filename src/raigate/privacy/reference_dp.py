"""Reference models trained with DP-SGD, repeating the audited model's private recipe.

LiRA and RMIA compare the audited model with reference models trained "like it" with and
without each example. When the audited model was trained with DP-SGD, a reference model
trained without clipping and noise memorizes far more than the audited one, so the IN/OUT
distributions the attacks fit describe another algorithm and the attacks are mis-calibrated.
A DP recipe (:attr:`ReferenceRecipe.dp <raigate.privacy.reference.ReferenceRecipe>`) makes
every reference model a run of :func:`~raigate.privacy.train.run_private_training` on its
part of the pool, with the audited run's :class:`~raigate.privacy.params.DPParams` (the
fields in :data:`DP_RECIPE_FIELDS`) and a per-model seed.

:func:`dp_recipe_from` reads those fields from a ``raigate privacy train`` output folder
(``result.json``'s ``params``, checked against ``ledger.json``). The reference models keep
the audited run's expected batch size, epochs and target epsilon; when a reference training
set differs in size from the audited one (``N_ref`` against the ledger's ``dataset_size``),
the sample rate ``q = batch_size / N_ref``, the step count ``ceil(epochs / q)`` and the noise
multiplier are recalibrated for it, exactly as ``raigate privacy train`` would have on a set
of that size. With ``--reference-fraction`` chosen so that the sets are the same size, they
are the audited run's q, T and sigma.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from torch import Tensor, nn

from raigate.data.base import Dataset
from raigate.errors import ConfigError, DataError
from raigate.models.base import Model

__all__ = [
    "DP_RECIPE_FIELDS",
    "PoolPart",
    "check_dp_recipe",
    "dp_recipe_from",
    "ledger_summary",
    "train_dp_model",
]

DP_RECIPE_FIELDS: tuple[str, ...] = (
    "epsilon",
    "delta",
    "epochs",
    "batch_size",
    "physical_batch_size",
    "max_grad_norm",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "accountant",
    "augmult",
    "batchnorm",
    "grad_sample_mode",
)
"""The :class:`~raigate.privacy.params.DPParams` fields a DP reference recipe repeats. Not
repeated: ``seed`` (one per reference model), ``canaries`` (the audit's targets are real
examples), ``baseline``, checkpointing, ``device`` and ``progress`` (how the run is carried
out, not what it computes); ``balance`` is refused (the pool has no group attributes)."""


def check_dp_recipe(dp: dict[str, Any]) -> dict[str, Any]:
    """``dp`` validated as DPParams (one line naming the bad field otherwise) and completed
    with DPParams' defaults, so the manifest states every field; only
    :data:`DP_RECIPE_FIELDS` are allowed, and ``batchnorm`` may also be ``none``."""
    from raigate.privacy.params import DPParams

    unknown = sorted(set(dp) - set(DP_RECIPE_FIELDS))
    if unknown:
        raise ConfigError(
            f"DP reference recipe: unknown field(s) {', '.join(unknown)}; allowed: "
            + ", ".join(DP_RECIPE_FIELDS)
        )
    bn = dp.get("batchnorm", "auto")
    try:
        params = DPParams(**{**dp, "batchnorm": "auto" if bn == "none" else bn})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(
            f"DP reference recipe: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
        ) from None
    return {**{k: getattr(params, k) for k in DP_RECIPE_FIELDS}, "batchnorm": bn}


def dp_recipe_from(directory: str | Path) -> dict[str, Any]:
    """The DP recipe of a ``raigate privacy train`` output folder: its ``result.json``
    ``params`` restricted to :data:`DP_RECIPE_FIELDS`, with ``batchnorm`` the change the run
    made (``ledger.json``: ``fold``, ``groupnorm`` or ``none``, never ``auto``, since a
    reference model starts from a bare network). The ledger must be complete and agree with
    the params; a run that balanced groups is refused."""
    from raigate.privacy.ledger import Ledger
    from raigate.privacy.params import DPParams
    from raigate.results import CheckResult

    d = Path(directory)
    where = f"--reference-recipe-from {d}"
    if not d.is_dir():
        raise ConfigError(f"{where}: no such folder (give a `raigate privacy train --out` folder)")
    for name in ("result.json", "ledger.json"):
        if not (d / name).is_file():
            raise ConfigError(f"{where}: no {name} there (not a `raigate privacy train` folder)")
    try:
        result = CheckResult.load(d / "result.json")
        ledger = Ledger.load(d / "ledger.json")
    except DataError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if result.check != "privacy_train":
        raise ConfigError(f"{where}: result.json is a {result.check!r} result, not privacy_train")
    try:
        params = DPParams(**{k: v for k, v in result.params.items() if k != "progress"})
    except ValidationError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{where}: result.json params are not DP-SGD params: {first}") from None
    if params.balance:
        raise ConfigError(
            f"{where}: the run balanced groups (--balance {params.balance}); reference models "
            "cannot repeat group-weighted clipping on the audit's pool, which has no attributes"
        )
    if not ledger.complete:
        raise ConfigError(f"{where}: ledger.json describes an unfinished run; finish it first")
    pairs = {
        "epsilon": (params.epsilon, ledger.target_epsilon),
        "delta": (params.delta, ledger.delta),
        "epochs": (params.epochs, ledger.epochs),
        "batch_size": (params.batch_size, ledger.batch_size),
        "max_grad_norm": (params.max_grad_norm, ledger.max_grad_norm),
        "accountant": (params.accountant, ledger.accountant),
        "augmult": (params.augmult, ledger.augmult),
    }
    for name, (p, led) in pairs.items():
        if p != led:
            raise ConfigError(
                f"{where}: result.json says {name} {p} but ledger.json {led}; the folder mixes runs"
            )
    dp = {k: getattr(params, k) for k in DP_RECIPE_FIELDS}
    dp["batchnorm"] = ledger.batchnorm
    return check_dp_recipe(dp)


class PoolPart(Dataset):
    """Some pool examples as a :class:`Dataset` (pixels the model takes, labels in its class
    order), so DP-SGD trains a reference model through the same code as ``privacy train``.
    The manifest names the pool tensors' sha256 and the positions taken."""

    def __init__(self, x: Tensor, y: Tensor, class_names: tuple[str, ...], name: str) -> None:
        super().__init__(
            spec=f"reference-pool:{name}",
            labels=y.numpy(),
            class_names=class_names,
            native_size=(int(x.shape[-2]), int(x.shape[-1])),
            channels=int(x.shape[1]),
        )
        self._x = x
        h = hashlib.sha256(x.numpy().tobytes())
        h.update(y.numpy().astype(np.int64).tobytes())
        self._digest = h.hexdigest()

    def _read(self, row: int, size: tuple[int, int] | None) -> Tensor:
        from raigate.data.base import resize_tensor

        x = self._x[row]
        return x if size is None else resize_tensor(x, size)

    def _manifest_files(self, rows: np.ndarray) -> list[dict[str, Any]]:
        return []

    def _manifest_extra(self) -> dict[str, Any]:
        return {"tensors_sha256": self._digest}


def train_dp_model(
    net: nn.Module,
    model: Model,
    x: Tensor,
    y: Tensor,
    dp: dict[str, Any],
    *,
    seed: int,
    device: str,
    name: str,
) -> tuple[nn.Module, Any]:
    """Train ``net`` (the audited model's starting point) on ``(x, y)`` with DP-SGD at the
    recipe ``dp`` and ``seed``; returns the trained network (BatchNorm folded or replaced as
    the recipe says) and its :class:`~raigate.privacy.ledger.Ledger`. The run is this
    process's alone (:func:`raigate.privacy.distributed.alone`), whatever the world size."""
    from raigate.privacy.distributed import alone
    from raigate.privacy.params import DPParams
    from raigate.privacy.setup import norm_values
    from raigate.privacy.train import run_private_training

    mean, std = norm_values(model)
    fields = {**dp, "batchnorm": "auto" if dp.get("batchnorm") == "none" else dp["batchnorm"]}
    params = DPParams.build(**fields, seed=seed, device=device, progress=False)
    # alone: under torchrun each rank trains its own reference models (raigate.parallel), so
    # a model is one process's run, never a DPDDP run that waits for ranks busy elsewhere
    with warnings.catch_warnings(), alone():
        # Opacus' notices (secure RNG, full backward hooks) say nothing about this recipe
        warnings.simplefilter("ignore")
        run = run_private_training(
            net, PoolPart(x, y, model.class_names, name), params, mean=mean, std=std
        )
    return run.model.net, run.ledger


def ledger_summary(ledger: Any) -> dict[str, Any]:
    """What ``reference.json`` keeps of a reference model's ledger."""
    keys = ("epsilon", "target_epsilon", "delta", "accountant", "noise_multiplier",
            "sample_rate", "steps", "dataset_size", "batchnorm")  # fmt: skip
    return json.loads(json.dumps({k: getattr(ledger, k) for k in keys}))
