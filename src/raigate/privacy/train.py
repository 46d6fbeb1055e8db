"""DP-SGD retraining to a target epsilon, with a ledger, checkpoints and a canary audit.

The recipe, in the order the code runs it:

1. BatchNorm is folded (pretrained weights) or replaced by GroupNorm (from scratch), see
   :mod:`raigate.privacy.fold`; the changes are listed. Preflight checks
   (:mod:`raigate.privacy.preflight`) refuse a network or budget DP-SGD cannot honour
   before any budget is spent.
2. The sample rate is ``q = batch_size / N`` exactly and the step count is
   ``T = ceil(epochs / q)``; the noise multiplier is calibrated with Opacus'
   ``get_noise_multiplier`` for ``(q, T)`` under the chosen accountant, so the whole run
   never exceeds the target epsilon. (``PrivacyEngine.make_private_with_epsilon`` would
   use ``q = 1 / len(data_loader)``, which is ``1 / ceil(N / batch_size)``, not
   ``batch_size / N``, and ``int(epochs / q)`` steps; the calibration call is the same.)
3. Opacus' ``DPOptimizer`` clips each example's gradient to ``max_grad_norm``, adds
   Gaussian noise and feeds the accountant through its step hook, exactly as
   ``make_private`` wires it; logical batches are Poisson samples, split into physical
   batches by Opacus' ``BatchMemoryManager``. Per-sample gradients come from the fastest
   correct path (:mod:`raigate.privacy.grad_sample`).
4. A checkpoint (weights, optimizer state, accountant history, every RNG state) is written
   atomically; ``resume`` continues the same run and the same ledger: a step lost after
   the last checkpoint is replayed with the same sample and noise, so nothing is counted
   twice or reset, and the run stops at its planned step count.
5. The trained network is unwrapped (no hooks), saved as safetensors with a model spec any
   ``raigate`` command accepts, and ``ledger.json`` records the spent budget under both
   accountants. With canaries, the one-run audit of Steinke et al. 2023 reports an
   empirical lower bound next to the claimed epsilon.

>>> import raigate
>>> from raigate.privacy import train_private
>>> data = raigate.load_data("demo:train", limit=64)
>>> model, ledger = train_private("raigate.zoo:small_cnn", data, kwargs={"norm": "group"},
...     epsilon=8.0, delta=1e-3, epochs=0.25, batch_size=8, accountant="rdp", progress=False)
>>> ledger.steps, ledger.epsilon <= 8.0
(2, True)
"""

from __future__ import annotations

import copy
import functools
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor, nn
from tqdm.auto import tqdm

from raigate._io import write_atomic
from raigate.data.base import Dataset
from raigate.errors import ConfigError, DataError, MissingDependencyError
from raigate.models.base import Model, Normalize, require_white_box
from raigate.privacy.balance import (
    COUNT_FLOOR,
    GroupBalance,
    balance_groups,
    weighted_clip_optimizer,
)
from raigate.privacy.bookkeeping import BookKeeping, bookkeeping_optimizer
from raigate.privacy.canaries import CanaryAudit, CanaryPlan, audit_canaries, plan_canaries
from raigate.privacy.fold import BatchNormAction, batchnorm_layers, rebuild
from raigate.privacy.grad_sample import (
    FastGradSample,
    GradSampleMode,
    average_augmentations,
    resolve_mode,
)
from raigate.privacy.ledger import (
    BALANCE_DEFINITION,
    DEFINITIONS,
    Accountant,
    Ledger,
    epsilon_for,
    epsilons_for,
)
from raigate.privacy.preflight import (
    Problem,
    check_budget,
    check_network,
    check_sampling,
    check_unwrapped,
    raise_for_errors,
)
from raigate.privacy.sampling import (
    PoissonBatches,
    TensorSet,
    crop_flip,
    keep_batch,
    load_tensors,
    shard,
)
from raigate.values import Seed

CHECKPOINT_NAME = "checkpoint.pt"
WEIGHTS_NAME = "model.safetensors"
SPEC_NAME = "model.json"
SPEC_FACTORY = "raigate.privacy.fold:private_net"

RETRAIN = "DP-SGD retraining"
"""What a black-box model is refused for (see :func:`~raigate.models.base.require_white_box`)."""

__all__ = [
    "DPParams",
    "PrivateTraining",
    "run_private_training",
    "train_private",
]


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


# -- the network ------------------------------------------------------------------------------
@dataclass
class _Source:
    net: nn.Module
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    mean: list[float] | None
    std: list[float] | None
    base: str | None
    base_kwargs: dict[str, Any]
    pretrained: bool


def _norm_values(model: Model) -> tuple[list[float] | None, list[float] | None]:
    if not model.preprocess.is_default:
        raise ConfigError(
            f"model {model.spec} declares a deployed preprocessing ({model.pipeline}); DP-SGD "
            "retraining keeps mean/std only, so the private model would not match it: retrain "
            "from a spec without preprocess and apply it when auditing"
        )
    if model.normalize.is_identity:
        return None, None
    return (
        [float(v) for v in model.normalize.mean.flatten()],
        [float(v) for v in model.normalize.std.flatten()],
    )


def _source(
    model: str | Model | nn.Module,
    data: Dataset,
    *,
    kwargs: dict[str, Any] | None,
    weights: str | os.PathLike[str] | None,
    mean: list[float] | None,
    std: list[float] | None,
    factory: str | None,
    trust_code: bool = False,
) -> _Source:
    """Resolve what to train into a bare network plus what rebuilding it needs. A factory
    without weights is a legitimate random start here (DP-SGD trains it from scratch)."""
    from raigate.models import load_model
    from raigate.models.factories import build_network
    from raigate.models.loaders import ModelSpecFile
    from raigate.models.weights import apply_state_dict, load_state_dict_file

    if isinstance(model, nn.Module):  # a black-box Model or a bare QueryNet has no weights
        require_white_box(model, RETRAIN)
    shape = tuple(int(v) for v in data.shape)
    if isinstance(model, str):
        spec = model.strip()
        if spec.endswith(".json"):
            if kwargs:
                raise ConfigError("kwargs come from the model spec file; do not pass them too")
            loaded = load_model(
                spec, weights=weights, data=data, trust_code=trust_code, random_init=True
            )
            require_white_box(loaded, RETRAIN)
            doc = ModelSpecFile.model_validate_json(Path(spec).read_text(encoding="utf-8"))
            m, s = _norm_values(loaded)
            return _Source(
                net=copy.deepcopy(loaded.net),
                class_names=loaded.class_names,
                input_shape=loaded.input_shape,
                mean=m,
                std=s,
                base=doc.factory,
                base_kwargs=dict(doc.kwargs),
                pretrained=bool(doc.weights) or weights is not None,
            )
        if ":" not in spec or spec.startswith("hf:") or "/" in spec.split(":")[0]:
            raise ConfigError(
                f"DP training rebuilds the network, so --model must be pkg.module:factory "
                f"[--weights FILE] or a raigate model spec .json, not {spec!r}"
            )
        # Named by the caller (--model pkg.module:factory): the caller's own code.
        net = build_network(spec, kwargs=kwargs, num_classes=len(data.class_names))
        if weights is not None:
            apply_state_dict(net, load_state_dict_file(weights), source=weights)
        wrapped = Model(
            net, class_names=data.class_names, input_shape=shape, mean=mean, std=std
        )  # validates class names, shape and normalization
        m, s = _norm_values(wrapped)
        base_kwargs = {k: v for k, v in (kwargs or {}).items() if k != "num_classes"}
        return _Source(
            net,
            wrapped.class_names,
            wrapped.input_shape,
            m,
            s,
            spec,
            base_kwargs,
            weights is not None,
        )
    if isinstance(model, Model):
        m, s = _norm_values(model)
        base, base_kwargs = factory, dict(kwargs or {})
        if base is None and model.source == "factory":
            base = model.spec
        elif base is None and model.source == "json":
            doc = ModelSpecFile.model_validate_json(Path(model.spec).read_text(encoding="utf-8"))
            base, base_kwargs = doc.factory, dict(doc.kwargs)
        return _Source(
            copy.deepcopy(model.net),
            model.class_names,
            model.input_shape,
            m,
            s,
            base,
            base_kwargs,
            bool(model.files),
        )
    if isinstance(model, nn.Module):
        wrapped = Model(model, class_names=data.class_names, input_shape=shape, mean=mean, std=std)
        m, s = _norm_values(wrapped)
        return _Source(
            copy.deepcopy(model),
            wrapped.class_names,
            wrapped.input_shape,
            m,
            s,
            factory,
            dict(kwargs or {}),
            weights is not None,
        )
    raise ConfigError(f"cannot train a {type(model).__name__}; give a factory spec or a module")


# -- distributed -------------------------------------------------------------------------------
def _distributed(device: str) -> tuple[int, int, bool]:
    """(rank, world size, whether we started the process group). torchrun sets WORLD_SIZE."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size(), True


def _flat_params(net: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1).float().cpu() for p in net.parameters()])


def _weights_in_sync(net: nn.Module) -> bool:
    import torch.distributed as dist

    mine = _flat_params(net)
    ref = mine.clone()
    dist.broadcast(ref, 0)
    ok = torch.tensor([1 if torch.equal(mine, ref) else 0])
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


# -- checkpoints -------------------------------------------------------------------------------
def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, buf.getvalue())


def _load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: no checkpoint to resume; resume names the --out of a DP run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]
    except Exception as exc:
        raise DataError(f"{path}: not a readable raigate DP checkpoint ({exc})") from None


def _same_run(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            raise ConfigError(
                f"{path} was written by a run with {key}={saved.get(key)!r}, this run has "
                f"{now.get(key)!r}: resume with the same settings and data, or start a new --out"
            )


# -- the run ----------------------------------------------------------------------------------
def _rng(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + stream)


def _secure_generator() -> torch.Generator:
    try:
        import torchcsprng as csprng  # type: ignore[import-not-found]
    except ImportError as exc:
        raise MissingDependencyError("torchcsprng", "--secure-mode") from exc
    return csprng.create_random_device_generator("/dev/urandom")  # type: ignore[no-any-return]


def _batchnorm_action(src: _Source, choice: str) -> BatchNormAction:
    if not batchnorm_layers(src.net):
        return "none"
    if choice == "auto":
        return "fold" if src.pretrained else "groupnorm"
    return choice  # type: ignore[return-value]


def _make_optimizer(params: DPParams, net: nn.Module, lr: float) -> torch.optim.Optimizer:
    if params.optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=lr, weight_decay=params.weight_decay)
    return torch.optim.SGD(
        net.parameters(), lr=lr, momentum=params.momentum, weight_decay=params.weight_decay
    )


def _config_key(**items: Any) -> dict[str, Any]:
    return json.loads(json.dumps(items, sort_keys=True, default=str))  # type: ignore[no-any-return]


def run_private_training(
    model: str | Model | nn.Module,
    train_data: Dataset,
    params: DPParams | None = None,
    *,
    kwargs: dict[str, Any] | None = None,
    weights: str | os.PathLike[str] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    factory: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    trust_code: bool = False,
) -> PrivateTraining:
    """Retrain ``model`` on ``train_data`` with DP-SGD to ``params.epsilon`` (see the module
    docstring for the recipe). ``model`` is a factory spec (``pkg.module:factory`` with
    ``kwargs`` and optional ``weights``), a model spec ``.json``, a loaded :class:`Model`, or
    a bare module (pass ``factory`` so the saved spec can rebuild it). With ``out_dir``,
    writes ``model.safetensors``, ``model.json``, ``ledger.json``, ``checkpoint.pt`` and
    (with canaries) ``canaries.json`` there; ``resume`` continues the run saved in that
    folder. ``trust_code``: a ``.json`` spec may name a factory outside raigate's own."""
    params = params or DPParams()
    start = time.perf_counter()
    rank, world, started_group = _distributed(params.device)
    try:
        return _run(
            model,
            train_data,
            params,
            kwargs=kwargs,
            weights=weights,
            mean=mean,
            std=std,
            factory=factory,
            out_dir=out_dir,
            resume=resume,
            trust_code=trust_code,
            rank=rank,
            world=world,
            start=start,
        )
    finally:
        if started_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(
    model: str | Model | nn.Module,
    train_data: Dataset,
    params: DPParams,
    *,
    kwargs: dict[str, Any] | None,
    weights: str | os.PathLike[str] | None,
    mean: list[float] | None,
    std: list[float] | None,
    factory: str | None,
    out_dir: str | os.PathLike[str] | None,
    resume: str | os.PathLike[str] | None,
    trust_code: bool,
    rank: int,
    world: int,
    start: float,
) -> PrivateTraining:
    from opacus.version import __version__ as opacus_version

    from raigate.audit.evaluate import prepare
    from raigate.labels import data_to_model_index

    out = Path(out_dir) if out_dir is not None else None
    resume_dir = Path(resume) if resume is not None else None
    if out is None and resume_dir is not None:
        out = resume_dir
    progress = params.progress and rank == 0
    device = torch.device(params.device)
    torch.manual_seed(params.seed)  # initial weights of a factory built here
    src = _source(
        model, train_data, kwargs=kwargs, weights=weights, mean=mean, std=std, factory=factory,
        trust_code=trust_code,
    )  # fmt: skip
    if out is not None and src.base is None:
        raise ConfigError(
            "cannot write a model spec for a bare module: pass factory='pkg.module:factory' "
            "(and kwargs) so the trained weights can be rebuilt"
        )

    # 1. BatchNorm, then the network checks.
    action = _batchnorm_action(src, params.batchnorm)
    net, changes = rebuild(src.net.eval(), action)
    initial = copy.deepcopy(net)  # the baseline starts where DP-SGD starts
    normalize = Normalize(
        src.mean or [0.0] * src.input_shape[0], src.std or [1.0] * src.input_shape[0]
    )
    fold_diff: float | None = None
    if action == "fold":
        with torch.no_grad():
            probe = torch.rand(4, *src.input_shape, generator=_rng(params.seed, 99))
            fold_diff = float((src.net(normalize(probe)) - net(normalize(probe))).abs().max())
    problems = check_network(net, src.input_shape)
    raise_for_errors(problems)

    # 2. Data as tensors, canaries, the budget.
    data = prepare(Model(net, class_names=src.class_names, input_shape=src.input_shape), train_data)
    to_model = data_to_model_index(src.class_names, data.class_names)
    x_all, y_data = load_tensors(data, progress=progress)
    y_all = torch.as_tensor(to_model[y_data.numpy()], dtype=torch.long)
    plan: CanaryPlan | None = None
    keep = np.ones(len(y_all), dtype=bool)
    if params.canaries:
        plan = plan_canaries(y_all.numpy(), len(src.class_names), params.canaries, seed=params.seed)
        y_all = y_all.clone()
        y_all[torch.as_tensor(plan.positions)] = torch.as_tensor(plan.labels)
        keep[plan.positions[~plan.included]] = False
    x_train, y_train = x_all[torch.as_tensor(keep)], y_all[torch.as_tensor(keep)]
    n = len(y_train)
    problems += check_budget(params.epsilon, params.delta, n)
    if params.batch_size > n:
        problems.append(
            Problem(
                "batch_size",
                "error",
                f"--batch-size {params.batch_size} exceeds the {n} training examples; lower it",
            )
        )
    raise_for_errors(problems)
    q = params.batch_size / n
    planned = math.ceil(params.epochs / q - 1e-9)
    physical = params.physical_batch_size or min(256, params.batch_size)
    secure = _secure_generator() if params.secure_mode else None
    balance: GroupBalance | None = None
    w_train: Tensor | None = None
    prefix: tuple[tuple[float, float, int], ...] = ()
    if params.balance:
        from raigate.defenses.groups import groups_of

        groups = groups_of(data, params.balance)
        released = None
        if resume_dir is not None:  # the counts were released once, at the start: reuse them
            saved_balance = _load_checkpoint(resume_dir / CHECKPOINT_NAME)["config"].get("balance")
            if saved_balance and saved_balance.get("groups") == groups.names:
                released = saved_balance["noisy_counts"]
        balance, w_train = balance_groups(
            "+".join(groups.columns),
            groups.names,
            groups.codes[keep],
            params.balance_noise,
            secure or _rng(params.seed, 3),
            released=released,
        )
        prefix = ((params.balance_noise, 1.0, 1),)
        if balance.floored:
            problems.append(
                Problem(
                    "balance",
                    "warn",
                    f"--balance {params.balance}: the noisy counts of {balance.floored} are "
                    f"within {COUNT_FLOOR:g} x --balance-noise of zero, so their weights rest "
                    "on the floor, not on their size; balance a coarser attribute, lower "
                    "--balance-noise, or train on more data",
                )
            )
    sigma = _calibrate(params, q, planned, prefix)

    # 3. Per-sample gradients, optimizer, accountant, sampler.
    mode = resolve_mode(net, params.grad_sample_mode, augmult=params.augmult)
    if params.augmult > 1 and mode == "ew":
        raise ConfigError("--augmult needs --grad-sample-mode fast or hooks (ew fixes the batch)")
    net.to(device).train()
    normalize.to(device)
    if world > 1:
        from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

        trainee: nn.Module = DPDDP(net)
    else:
        trainee = net
    engine: FastGradSample | BookKeeping | None = None
    if mode in ("fast", "bk"):
        engine = BookKeeping(net) if mode == "bk" else FastGradSample(net)
        forward: nn.Module = trainee
    else:
        try:
            from opacus.grad_sample.utils import prepare_module
        except ImportError:  # Opacus 1.5 names it wrap_model
            from opacus.grad_sample.utils import wrap_model as prepare_module

        forward = prepare_module(
            trainee, grad_sample_mode=mode, batch_first=True, loss_reduction="mean"
        )
    noise_gen = secure or _rng(params.seed, 1)
    sample_gen = secure or _rng(params.seed, 100 + rank)
    aug_gen = _rng(params.seed, 200 + rank)
    from opacus.accountants import create_accountant
    from opacus.optimizers import DistributedDPOptimizer, DPOptimizer

    base = DistributedDPOptimizer if world > 1 else DPOptimizer
    if isinstance(engine, BookKeeping):  # clips in the engine; honours sample_weights too
        opt_cls = bookkeeping_optimizer(base, engine)
    else:
        opt_cls = weighted_clip_optimizer(base)
    optimizer = opt_cls(
        _make_optimizer(params, net, params.lr),
        noise_multiplier=sigma,
        max_grad_norm=params.max_grad_norm,
        expected_batch_size=params.batch_size / world if world > 1 else params.batch_size,
        loss_reduction="mean",
        generator=noise_gen,  # the csprng generator in secure mode, as PrivacyEngine does
        secure_mode=params.secure_mode,
    )
    accountant = create_accountant(mechanism=params.accountant)
    accountant.history = list(prefix)  # --balance: the noisy counts, released before step 1
    accountant_rate = q
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=accountant_rate))
    sampler = PoissonBatches(
        shard(n, rank, world, params.seed), sample_rate=q, steps=planned, generator=sample_gen
    )
    problems += check_sampling(
        poisson=isinstance(sampler, PoissonBatches),
        sampler_rate=sampler.sample_rate,
        accountant_rate=accountant_rate,
        expected_rate=params.batch_size / n,
    )
    raise_for_errors(problems)

    # 4. Resume or start.
    key = _config_key(
        epsilon=params.epsilon,
        delta=params.delta,
        sigma=sigma,
        sample_rate=q,
        steps=planned,
        max_grad_norm=params.max_grad_norm,
        accountant=params.accountant,
        n=n,
        manifest=train_data.manifest.digest,
        canaries=plan.as_dict() if plan else None,
        batchnorm=action,
        augmult=params.augmult,
        seed=params.seed,
        world_size=world,
        optimizer=params.optimizer,
        lr=params.lr,
        momentum=params.momentum,
        balance=balance.as_dict() if balance else None,
    )
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    done = 0
    if resume_dir is not None:
        saved = _load_checkpoint(resume_dir / CHECKPOINT_NAME)
        _same_run(saved["config"], key, resume_dir / CHECKPOINT_NAME)
        net.load_state_dict(saved["net"])
        optimizer.original_optimizer.load_state_dict(saved["optimizer"])
        accountant.history = [tuple(h) for h in saved["history"]]
        done = int(saved["step"])
        if secure is None:
            noise_gen.set_state(saved["rng"]["noise"])
            sample_gen.set_state(saved["rng"]["sample"][rank])
        aug_gen.set_state(saved["rng"]["augment"][rank])
    elif ckpt_path is not None and ckpt_path.is_file() and rank == 0:
        old = _load_checkpoint(ckpt_path)
        if not old.get("complete", False):
            raise ConfigError(
                f"{out} holds an unfinished DP run ({old.get('step')} of "
                f"{old['config'].get('steps')} steps): continue it with --resume {out}, or "
                "choose another --out (starting over would spend the budget again)"
            )

    every = params.checkpoint_every or max(1, round(1 / q))
    losses: list[float] = []
    stopped = False
    params_list = [p for p in net.parameters() if p.requires_grad]
    copies = max(params.augmult, 1)

    def make_ledger() -> Ledger:
        history = [(float(s), float(r), int(k)) for s, r, k in accountant.history]
        eps_all = epsilons_for(history, params.delta)
        return Ledger(
            epsilon=eps_all[params.accountant],
            target_epsilon=params.epsilon,
            delta=params.delta,
            accountant=params.accountant,
            epsilons=eps_all,
            noise_multiplier=sigma,
            sample_rate=q,
            steps=done,
            planned_steps=planned,
            max_grad_norm=params.max_grad_norm,
            batch_size=params.batch_size,
            physical_batch_size=physical,
            epochs=params.epochs,
            poisson_sampling=True,
            secure_mode=params.secure_mode,
            augmult=params.augmult,
            canaries=plan.m if plan else 0,
            dataset_size=n,
            dataset_spec=train_data.spec,
            manifest_digest=train_data.manifest.digest,
            grad_sample_mode=mode,
            batchnorm=action,
            opacus_version=opacus_version,
            complete=done == planned,
            history=history,
            group_balance=balance.as_dict() if balance else None,
            definitions=(
                {**DEFINITIONS, "group_balance": BALANCE_DEFINITION} if balance else DEFINITIONS
            ),
        )

    saved_ledger: list[Ledger] = []

    def checkpoint(complete: bool) -> None:
        """Checkpoint and ledger together, so ledger.json always states the budget spent
        by the state a resume would continue from."""
        samples = [sample_gen.get_state() if secure is None else torch.empty(0)]
        augments = [aug_gen.get_state()]
        if world > 1:
            samples, augments = _gather(samples[0]), _gather(augments[0])
        if rank != 0 or ckpt_path is None or out is None:
            return
        _save_checkpoint(
            ckpt_path,
            {
                "version": 1,
                "config": key,
                "step": done,
                "complete": complete,
                "net": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "optimizer": optimizer.original_optimizer.state_dict(),
                "history": [list(h) for h in accountant.history],
                "rng": {
                    "noise": noise_gen.get_state() if secure is None else torch.empty(0),
                    "sample": samples,
                    "augment": augments,
                },
            },
        )
        saved_ledger[:] = [make_ledger()]
        saved_ledger[0].write(out)

    sampler.steps = planned - done
    loader = torch.utils.data.DataLoader(
        TensorSet(x_train, y_train, w_train), batch_sampler=sampler, collate_fn=keep_batch
    )
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    bar = tqdm(total=planned, initial=done, desc="DP-SGD steps", disable=not progress)
    loss_sum = 0.0
    loss_rows = 0
    with BatchMemoryManager(
        data_loader=loader, max_physical_batch_size=physical, optimizer=optimizer
    ) as batches:
        for batch in batches:
            if done >= planned:
                break
            xb, yb = batch[0].to(device), batch[1].to(device)
            if w_train is not None:
                optimizer.sample_weights = batch[2].to(device)
            if len(yb) == 0:
                for p in params_list:
                    p.grad_sample = torch.zeros((0, *p.shape), device=p.device)  # type: ignore[attr-defined]
            else:
                if params.augmult:
                    xb = crop_flip(xb.repeat_interleave(copies, dim=0), aug_gen)
                    yb = yb.repeat_interleave(copies)
                inputs = normalize(xb)
                logits = engine.forward(forward, inputs) if engine else forward(inputs)
                loss = F.cross_entropy(logits, yb)
                loss.backward()
                average_augmentations(params_list, copies)
                loss_sum += float(loss.detach()) * len(yb)
                loss_rows += len(yb)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if optimizer._is_last_step_skipped:
                continue
            done += 1
            bar.update(1)
            if accountant.history[-1][1] != sampler.sample_rate:  # what was charged = drawn
                raise RuntimeError("the accountant was charged a different sample rate")
            if done % every == 0 or done == planned:
                losses.append(loss_sum / max(loss_rows, 1))
                loss_sum, loss_rows = 0.0, 0
                checkpoint(complete=done == planned)
            if params.stop_after_steps is not None and done >= params.stop_after_steps < planned:
                stopped = True  # as if killed here: what survives is the last checkpoint
                break
    bar.close()

    # 5. Unwrap, sync check, save, ledger, canaries.
    if engine is not None:
        engine.detach()
    else:
        forward._close()  # type: ignore[operator]  # Opacus: remove hooks and grad buffers
    for p in net.parameters():
        for attr in ("grad_sample", "summed_grad", "_processed", "_forward_counter"):
            if hasattr(p, attr):
                delattr(p, attr)
        p.grad = None
    net.eval()
    raise_for_errors(check_unwrapped(net))
    in_sync = _weights_in_sync(net) if world > 1 else None
    ledger = saved_ledger[0] if stopped and saved_ledger else make_ledger()
    if ledger.epsilon > params.epsilon + 1e-9:  # calibration guarantees this never happens
        raise RuntimeError(f"spent epsilon {ledger.epsilon} exceeds the target {params.epsilon}")

    canary_audit: CanaryAudit | None = None
    if plan is not None and not stopped and rank == 0:
        scores = _canary_scores(
            net,
            normalize,
            x_all[torch.as_tensor(plan.positions)],
            torch.as_tensor(plan.labels),
            device,
        )
        canary_audit = audit_canaries(scores, plan.included, delta=params.delta)

    baseline: Model | None = None
    baseline_losses: list[float] = []
    if params.baseline and not stopped:
        base_net, baseline_losses = _train_baseline(
            initial,
            normalize,
            x_train,
            y_train,
            q,
            planned,
            params,
            device,
            progress,
            w_train,
        )
        baseline = Model(
            base_net.cpu(),
            class_names=src.class_names,
            input_shape=src.input_shape,
            mean=src.mean,
            std=src.std,
            spec="privacy:baseline (non-private, same steps)",
        )

    net.cpu()
    spec_path: Path | None = None
    trained = Model(
        net,
        class_names=src.class_names,
        input_shape=src.input_shape,
        mean=src.mean,
        std=src.std,
        spec="privacy:train_private",
    )
    if out is not None and rank == 0:
        if baseline is not None:
            # the non-private twin, saved beside the private model so both can be audited
            # (fairness gaps, membership leakage) by any command or plan
            (out / BASELINE_DIR).mkdir(parents=True, exist_ok=True)
            base_spec = _save_model(out / BASELINE_DIR, baseline.net, src, action)
            from raigate.models import load_model

            baseline = load_model(str(base_spec), trust_code=True)
        if not stopped:
            ledger.write(out)
        if canary_audit is not None and plan is not None:
            write_atomic(
                out / "canaries.json", _json({**canary_audit.as_dict(), "plan": plan.as_dict()})
            )
        if not stopped:
            spec_path = _save_model(out, net, src, action)
            from raigate.models import load_model

            # Our own output: its base factory was already imported and run above, by the
            # caller's choice (named, or trusted), so rebuilding it needs no new trust.
            trained = load_model(str(spec_path), trust_code=True)
            with torch.no_grad():
                probe = torch.rand(2, *src.input_shape, generator=_rng(params.seed, 98))
                expected = net(normalize.cpu()(probe))
                if not torch.allclose(trained.logits(probe), expected, atol=1e-5):
                    raise RuntimeError("the saved model does not reproduce the trained network")
    return PrivateTraining(
        model=trained,
        ledger=ledger,
        out_dir=out,
        changes=changes,
        warnings=[p for p in problems if p.severity == "warn"],
        canaries=canary_audit,
        losses=losses,
        seconds=time.perf_counter() - start,
        stopped_early=stopped,
        rank=rank,
        world_size=world,
        weights_in_sync=in_sync,
        fold_max_abs_diff=fold_diff,
        baseline=baseline,
        baseline_losses=baseline_losses,
        spec_path=spec_path,
        canary_plan=plan,
    )


def _gather(t: Tensor) -> list[Tensor]:
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, t)
    return out


def _json(obj: Any) -> str:
    from raigate.results import dumps

    return dumps(obj)


def _calibrate(
    params: DPParams, q: float, steps: int, prefix: tuple[tuple[float, float, int], ...] = ()
) -> float:
    """Noise multiplier for (target epsilon, delta) at sample rate ``q`` over ``steps``,
    after the mechanisms already in ``prefix`` (``--balance``'s noisy counts)."""
    if prefix:
        return _noise_multiplier_after(
            prefix, params.epsilon, params.delta, q, steps, params.accountant
        )
    return _noise_multiplier(params.epsilon, params.delta, q, steps, params.accountant)


@functools.lru_cache(maxsize=16)
def _noise_multiplier_after(
    prefix: tuple[tuple[float, float, int], ...],
    epsilon: float,
    delta: float,
    q: float,
    steps: int,
    accountant: str,
) -> float:
    """The smallest noise multiplier (to 1% of epsilon, as Opacus' ``get_noise_multiplier``
    searches) for which ``prefix`` followed by ``steps`` steps at ``(sigma, q)`` spends at
    most ``epsilon``: the same bisection as Opacus', over the whole history."""

    def spent(sigma: float) -> float:
        return epsilon_for([*prefix, (sigma, q, steps)], delta, accountant)

    if epsilon_for(list(prefix), delta, accountant) >= epsilon:
        raise ConfigError(
            f"the group counts alone (--balance-noise {prefix[0][0]:g}) spend epsilon "
            f"{epsilon_for(list(prefix), delta, accountant):.3g} of the target {epsilon}: "
            "raise --balance-noise or --epsilon"
        )
    low, high = 0.0, 10.0
    eps_high = spent(high)
    while eps_high > epsilon:
        low, high = high, 2 * high
        if high > 2000:
            raise ConfigError(
                f"no noise level reaches epsilon {epsilon} at delta {delta} over {steps} steps "
                f"at sample rate {q:.4g} after the group counts; raise --epsilon"
            )
        eps_high = spent(high)
    while epsilon - eps_high > 0.01 * epsilon:
        mid = (low + high) / 2
        eps_mid = spent(mid)
        if eps_mid < epsilon:
            high, eps_high = mid, eps_mid
        else:
            low = mid
    return high


@functools.lru_cache(maxsize=64)
def _noise_multiplier(epsilon: float, delta: float, q: float, steps: int, accountant: str) -> float:
    # Pure in its arguments (a binary search over Opacus' accountant); cached for reruns.
    import warnings

    from opacus.accountants.utils import get_noise_multiplier

    extra = {"eps_error": 0.01} if accountant == "prv" else {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the")
            sigma = float(
                get_noise_multiplier(
                    target_epsilon=epsilon,
                    target_delta=delta,
                    sample_rate=q,
                    steps=steps,
                    accountant=accountant,
                    epsilon_tolerance=0.01,
                    **extra,
                )
            )
    except ValueError as exc:
        raise ConfigError(
            f"no noise level reaches epsilon {epsilon} at delta {delta} over "
            f"{steps} steps at sample rate {q:.4g} ({exc}); raise --epsilon or lower --epochs"
        ) from None
    spent = epsilon_for([(sigma, q, steps)], delta, accountant)
    if spent > epsilon:
        raise RuntimeError(f"calibrated sigma {sigma} gives epsilon {spent} > {epsilon}")
    return sigma


@torch.no_grad()
def _canary_scores(
    net: nn.Module, normalize: nn.Module, x: Tensor, labels: Tensor, device: torch.device
) -> np.ndarray:
    """Minus the cross-entropy of each canary's wrong label (higher: looks trained on)."""
    net.to(device).eval()
    scores = []
    for i in range(0, len(x), 256):
        logits = net(normalize.to(device)(x[i : i + 256].to(device)))
        scores.append(-F.cross_entropy(logits, labels[i : i + 256].to(device), reduction="none"))
    return torch.cat(scores).double().cpu().numpy() if scores else np.zeros(0)


def _train_baseline(
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
    opt = _make_optimizer(params, net, params.baseline_lr or params.lr)
    gen, aug = _rng(params.seed, 100), _rng(params.seed, 200)
    copies = max(params.augmult, 1)
    physical = params.physical_batch_size or min(256, params.batch_size)
    sampler = PoissonBatches(torch.arange(len(y)), sample_rate=q, steps=steps, generator=gen)
    losses: list[float] = []
    every = max(1, round(1 / q))
    loss_sum, rows = 0.0, 0
    for step, idx in enumerate(tqdm(sampler, desc="baseline steps", disable=not progress), 1):
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


BASELINE_DIR = "baseline"
"""``--baseline``: the non-private model's weights and spec go to ``OUT/baseline/``."""


def _save_model(out: Path, net: nn.Module, src: _Source, action: BatchNormAction) -> Path:
    """Weights as safetensors and a model spec that rebuilds the (folded/fixed) network."""
    from raigate.models.loaders import write_model_spec
    from raigate.models.weights import save_safetensors

    weights = save_safetensors(net, out / WEIGHTS_NAME)
    return write_model_spec(
        out / SPEC_NAME,
        factory=SPEC_FACTORY,
        kwargs={"base": src.base, "base_kwargs": src.base_kwargs, "batchnorm": action},
        weights=weights,
        class_names=list(src.class_names),
        input_shape=list(src.input_shape),
        mean=src.mean,
        std=src.std,
    )


def train_private(
    model: str | Model | nn.Module,
    train_data: Dataset,
    *,
    kwargs: dict[str, Any] | None = None,
    weights: str | os.PathLike[str] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    factory: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    trust_code: bool = False,
    **options: Any,
) -> tuple[Model, Ledger]:
    """DP-SGD retraining in one call: returns the trained :class:`Model` and its
    :class:`Ledger`. ``options`` are :class:`DPParams` fields (``epsilon``, ``delta``,
    ``epochs``, ``batch_size``, ``max_grad_norm``, ``lr``, ``accountant``, ``augmult``,
    ``canaries``, ``seed``, ``device``, ``progress``, ...)."""
    run = run_private_training(
        model,
        train_data,
        DPParams.build(**options),
        kwargs=kwargs,
        weights=weights,
        mean=mean,
        std=std,
        factory=factory,
        out_dir=out_dir,
        resume=resume,
        trust_code=trust_code,
    )
    return run.model, run.ledger
