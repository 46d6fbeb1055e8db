"""Setting up a DP-SGD run: what to train, BatchNorm, the data and canaries, the budget, and
the Opacus machinery (per-sample gradients, DP optimizer, accountant, Poisson sampler).

Each step refuses what would void the guarantee (:mod:`raigate.privacy.preflight`) before
any privacy budget is spent; :mod:`raigate.privacy.train` runs them in order.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from raigate.data.base import Dataset
from raigate.errors import ConfigError, MissingDependencyError
from raigate.models.base import Model, Normalize, require_white_box
from raigate.privacy.balance import (
    COUNT_FLOOR,
    GroupBalance,
    balance_groups,
    weighted_clip_optimizer,
)
from raigate.privacy.bookkeeping import BookKeeping, bookkeeping_optimizer
from raigate.privacy.calibrate import calibrate
from raigate.privacy.canaries import CanaryPlan, plan_canaries
from raigate.privacy.checkpoint import CHECKPOINT_NAME, load_checkpoint
from raigate.privacy.fold import BatchNormAction, batchnorm_layers, rebuild
from raigate.privacy.grad_sample import FastGradSample, resolve_mode
from raigate.privacy.params import DPParams
from raigate.privacy.preflight import (
    Problem,
    check_budget,
    check_network,
    check_sampling,
    raise_for_errors,
)
from raigate.privacy.sampler import resolve_sampler
from raigate.privacy.sampling import PoissonBatches, load_tensors, shard

RETRAIN = "DP-SGD retraining"
"""What a black-box model is refused for (see :func:`~raigate.models.base.require_white_box`)."""

__all__ = [
    "RETRAIN",
    "Budget",
    "Machinery",
    "Network",
    "Source",
    "TrainingData",
    "build_machinery",
    "load_training_data",
    "make_optimizer",
    "plan_budget",
    "prepare_network",
    "resolve_source",
    "rng",
]


# -- what to train ----------------------------------------------------------------------------
@dataclass
class Source:
    """What to train, as a bare network, and what rebuilding it from a spec needs."""

    net: nn.Module
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    mean: list[float] | None
    std: list[float] | None
    base: str | None
    base_kwargs: dict[str, Any]
    pretrained: bool


def norm_values(model: Model) -> tuple[list[float] | None, list[float] | None]:
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


def resolve_source(
    model: str | Model | nn.Module,
    data: Dataset,
    *,
    kwargs: dict[str, Any] | None,
    weights: str | os.PathLike[str] | None,
    mean: list[float] | None,
    std: list[float] | None,
    factory: str | None,
    trust_code: bool = False,
) -> Source:
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
            m, s = norm_values(loaded)
            return Source(
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
        m, s = norm_values(wrapped)
        base_kwargs = {k: v for k, v in (kwargs or {}).items() if k != "num_classes"}
        return Source(
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
        m, s = norm_values(model)
        base, base_kwargs = factory, dict(kwargs or {})
        if base is None and model.source == "factory":
            base = model.spec
        elif base is None and model.source == "json":
            doc = ModelSpecFile.model_validate_json(Path(model.spec).read_text(encoding="utf-8"))
            base, base_kwargs = doc.factory, dict(doc.kwargs)
        return Source(
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
        m, s = norm_values(wrapped)
        return Source(
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


# -- generators and the optimizer -------------------------------------------------------------
def rng(seed: int, stream: int) -> torch.Generator:
    """A seeded generator for one random stream of the run (noise, sampling, ...)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + stream)


def secure_generator() -> torch.Generator:
    try:
        import torchcsprng as csprng  # type: ignore[import-not-found]
    except ImportError as exc:
        raise MissingDependencyError("torchcsprng", "--secure-mode") from exc
    return csprng.create_random_device_generator("/dev/urandom")  # type: ignore[no-any-return]


def make_optimizer(params: DPParams, net: nn.Module, lr: float) -> torch.optim.Optimizer:
    if params.optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=lr, weight_decay=params.weight_decay)
    return torch.optim.SGD(
        net.parameters(), lr=lr, momentum=params.momentum, weight_decay=params.weight_decay
    )


# -- 1. BatchNorm, then the network checks -----------------------------------------------------
def batchnorm_action(src: Source, choice: str) -> BatchNormAction:
    if not batchnorm_layers(src.net):
        return "none"
    if choice == "auto":
        return "fold" if src.pretrained else "groupnorm"
    return choice  # type: ignore[return-value]


@dataclass
class Network:
    """The network DP-SGD trains (BatchNorm folded or replaced), its starting copy for the
    baseline, its normalization, and the preflight problems found so far."""

    net: nn.Module
    initial: nn.Module
    normalize: Normalize
    action: BatchNormAction
    changes: list[str]
    fold_diff: float | None
    problems: list[Problem]


def prepare_network(src: Source, params: DPParams) -> Network:
    """Fold or replace BatchNorm (listing the changes), then refuse a network DP-SGD cannot
    train; with ``fold``, measure how far the folded logits are from the original's."""
    action = batchnorm_action(src, params.batchnorm)
    net, changes = rebuild(src.net.eval(), action)
    initial = copy.deepcopy(net)  # the baseline starts where DP-SGD starts
    normalize = Normalize(
        src.mean or [0.0] * src.input_shape[0], src.std or [1.0] * src.input_shape[0]
    )
    fold_diff: float | None = None
    if action == "fold":
        with torch.no_grad():
            probe = torch.rand(4, *src.input_shape, generator=rng(params.seed, 99))
            fold_diff = float((src.net(normalize(probe)) - net(normalize(probe))).abs().max())
    problems = check_network(net, src.input_shape)
    raise_for_errors(problems)
    return Network(net, initial, normalize, action, changes, fold_diff, problems)


# -- 2. Data as tensors, canaries, the budget ---------------------------------------------------
@dataclass
class TrainingData:
    """All examples as tensors (canaries relabelled), and the ones DP-SGD trains on."""

    data: Dataset
    x_all: Tensor
    x_train: Tensor
    y_train: Tensor
    keep: np.ndarray
    plan: CanaryPlan | None

    @property
    def n(self) -> int:
        return len(self.y_train)


def load_training_data(
    net: nn.Module, src: Source, train_data: Dataset, params: DPParams, *, progress: bool
) -> TrainingData:
    """Load the images once, map labels to the model's classes, and plant the canaries
    (each kept with probability 1/2: the excluded ones are not trained on)."""
    from raigate.audit.evaluate import prepare
    from raigate.labels import data_to_model_index

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
    return TrainingData(data, x_all, x_train, y_train, keep, plan)


@dataclass
class Budget:
    """The sampling and noise of the run: ``q = batch_size / N``, ``T = ceil(epochs / q)``,
    sigma calibrated over the whole history (``prefix``: ``--balance``'s noisy counts)."""

    q: float
    planned: int
    physical: int
    sigma: float
    prefix: tuple[tuple[float, float, int], ...]
    balance: GroupBalance | None
    w_train: Tensor | None
    sampler_source: str
    secure: torch.Generator | None


def plan_budget(
    params: DPParams,
    td: TrainingData,
    problems: list[Problem],
    *,
    sampler: Any,
    resume_dir: Path | None,
) -> Budget:
    """Refuse a budget or sampler DP-SGD cannot honour, then fix q, T and sigma."""
    n = td.n
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
    sampler_source = resolve_sampler(sampler, dataset_size=n, batch_size=params.batch_size)
    q = params.batch_size / n
    planned = math.ceil(params.epochs / q - 1e-9)
    physical = params.physical_batch_size or min(256, params.batch_size)
    secure = secure_generator() if params.secure_mode else None
    balance, w_train = _balance(params, td, secure, problems, resume_dir)
    prefix = ((params.balance_noise, 1.0, 1),) if balance is not None else ()
    sigma = calibrate(params, q, planned, prefix)
    return Budget(q, planned, physical, sigma, prefix, balance, w_train, sampler_source, secure)


def _balance(
    params: DPParams,
    td: TrainingData,
    secure: torch.Generator | None,
    problems: list[Problem],
    resume_dir: Path | None,
) -> tuple[GroupBalance | None, Tensor | None]:
    """``--balance``: release the group counts once (a resume reuses them) and weight each
    example's clipped gradient by its group (:mod:`raigate.privacy.balance`)."""
    if not params.balance:
        return None, None
    from raigate.defenses.groups import groups_of

    groups = groups_of(td.data, params.balance, option="--balance")
    released = None
    if resume_dir is not None:  # the counts were released once, at the start: reuse them
        saved_balance = load_checkpoint(resume_dir / CHECKPOINT_NAME)["config"].get("balance")
        if saved_balance and saved_balance.get("groups") == groups.names:
            released = saved_balance["noisy_counts"]
    balance, w_train = balance_groups(
        "+".join(groups.columns),
        groups.names,
        groups.codes[td.keep],
        params.balance_noise,
        secure or rng(params.seed, 3),
        released=released,
    )
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
    return balance, w_train


# -- 3. Per-sample gradients, optimizer, accountant, sampler ------------------------------------
@dataclass
class Machinery:
    """Opacus' side of the run, wired as ``make_private`` wires it."""

    mode: str
    engine: FastGradSample | BookKeeping | None
    forward: nn.Module
    optimizer: Any  # opacus DPOptimizer (group-weighted under --balance)
    accountant: Any  # opacus IAccountant
    batches: PoissonBatches
    noise_gen: torch.Generator
    sample_gen: torch.Generator
    aug_gen: torch.Generator
    secure: bool


def build_machinery(
    network: Network,
    params: DPParams,
    budget: Budget,
    n: int,
    *,
    rank: int,
    world: int,
    device: torch.device,
) -> Machinery:
    """Per-sample gradients (fastest correct path), the DP optimizer feeding the accountant
    through its step hook, and this process's Poisson sampler; the sampling checks last."""
    net, problems = network.net, network.problems
    mode = resolve_mode(net, params.grad_sample_mode, augmult=params.augmult)
    if params.augmult > 1 and mode == "ew":
        raise ConfigError("--augmult needs --grad-sample-mode fast or hooks (ew fixes the batch)")
    net.to(device).train()
    network.normalize.to(device)
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
    secure = budget.secure
    noise_gen = secure or rng(params.seed, 1)
    sample_gen = secure or rng(params.seed, 100 + rank)
    aug_gen = rng(params.seed, 200 + rank)
    from opacus.accountants import create_accountant
    from opacus.optimizers import DistributedDPOptimizer, DPOptimizer

    base = DistributedDPOptimizer if world > 1 else DPOptimizer
    if isinstance(engine, BookKeeping):  # clips in the engine; honours sample_weights too
        opt_cls = bookkeeping_optimizer(base, engine)
    else:
        opt_cls = weighted_clip_optimizer(base)
    optimizer = opt_cls(
        make_optimizer(params, net, params.lr),
        noise_multiplier=budget.sigma,
        max_grad_norm=params.max_grad_norm,
        expected_batch_size=params.batch_size / world if world > 1 else params.batch_size,
        loss_reduction="mean",
        generator=noise_gen,  # the csprng generator in secure mode, as PrivacyEngine does
        secure_mode=params.secure_mode,
    )
    accountant = create_accountant(mechanism=params.accountant)
    accountant.history = list(budget.prefix)  # --balance: the noisy counts, before step 1
    accountant_rate = budget.q
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=accountant_rate))
    batches = PoissonBatches(
        shard(n, rank, world, params.seed),
        sample_rate=budget.q,
        steps=budget.planned,
        generator=sample_gen,
    )
    problems += check_sampling(
        poisson=isinstance(batches, PoissonBatches),
        sampler_rate=batches.sample_rate,
        accountant_rate=accountant_rate,
        expected_rate=params.batch_size / n,
    )
    raise_for_errors(problems)
    return Machinery(
        mode, engine, forward, optimizer, accountant, batches, noise_gen, sample_gen, aug_gen,
        secure is not None,
    )  # fmt: skip
