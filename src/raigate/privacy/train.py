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

The steps live in their own modules, each readable in one sitting: :mod:`~raigate.privacy.setup`
(1-3: source, BatchNorm, data and canaries, budget, Opacus machinery),
:mod:`~raigate.privacy.loop` (the training loop and the ``--baseline`` twin),
:mod:`~raigate.privacy.checkpoint` (4: checkpoints and resume) and
:mod:`~raigate.privacy.artifacts` (5: ledger, unwrapping, saved files). This module runs them.

>>> import raigate
>>> from raigate.privacy import train_private
>>> data = raigate.load_data("demo:train", limit=64)
>>> model, ledger = train_private("raigate.zoo:small_cnn", data, kwargs={"norm": "group"},
...     epsilon=8.0, delta=1e-3, epochs=0.25, batch_size=8, accountant="rdp", progress=False)
>>> ledger.steps, ledger.epsilon <= 8.0
(2, True)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raigate.data.base import Dataset
from raigate.errors import ConfigError, RaigateError
from raigate.models.base import Model
from raigate.privacy import distributed
from raigate.privacy.artifacts import (
    BASELINE_DIR,
    SPEC_FACTORY,
    SPEC_NAME,
    WEIGHTS_NAME,
    build_ledger,
    canary_scores,
    publish,
    unwrap,
)
from raigate.privacy.calibrate import calibrate as _calibrate
from raigate.privacy.canaries import CanaryAudit, audit_canaries
from raigate.privacy.checkpoint import (
    CHECKPOINT_NAME,
    Checkpointer,
    Progress,
    config_key,
    start_or_resume,
)
from raigate.privacy.ledger import Ledger
from raigate.privacy.loop import train_baseline, train_steps
from raigate.privacy.params import DPParams, PrivateTraining
from raigate.privacy.sampler import sampler_finding
from raigate.privacy.setup import (
    RETRAIN,
    Budget,
    Network,
    Source,
    TrainingData,
    build_machinery,
    load_training_data,
    plan_budget,
    prepare_network,
    resolve_source,
)

__all__ = [
    "BASELINE_DIR",
    "CHECKPOINT_NAME",
    "RETRAIN",
    "SPEC_FACTORY",
    "SPEC_NAME",
    "WEIGHTS_NAME",
    "DPParams",
    "PrivateTraining",
    "run_private_training",
    "train_private",
]

_ = _calibrate  # importable from here, as before the split (tests/privacy/test_ledger.py)


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
    sampler: Any = None,
) -> PrivateTraining:
    """Retrain ``model`` on ``train_data`` with DP-SGD to ``params.epsilon`` (see the module
    docstring for the recipe). ``model`` is a factory spec (``pkg.module:factory`` with
    ``kwargs`` and optional ``weights``), a model spec ``.json``, a loaded :class:`Model`, or
    a bare module (pass ``factory`` so the saved spec can rebuild it). With ``out_dir``,
    writes ``model.safetensors``, ``model.json``, ``ledger.json``, ``checkpoint.pt`` and
    (with canaries) ``canaries.json`` there; ``resume`` continues the run saved in that
    folder. ``trust_code``: a ``.json`` spec may name a factory outside raigate's own.
    ``sampler``: ``None`` (raigate's Poisson batches at ``q = batch_size / N``) or Opacus'
    ``UniformWithReplacementSampler`` / ``DPDataLoader`` at exactly that rate over the N
    training examples (then drawn by raigate's seeded sampler); any other sampler, a
    ``WeightedRandomSampler`` above all, is refused with one line (see
    :mod:`raigate.privacy.sampler`)."""
    params = params or DPParams()
    start = time.perf_counter()
    rank, world, started_group = distributed.start(params.device)
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
            sampler=sampler,
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
    sampler: Any,
    rank: int,
    world: int,
    start: float,
) -> PrivateTraining:
    out = Path(out_dir) if out_dir is not None else None
    resume_dir = Path(resume) if resume is not None else None
    if out is None and resume_dir is not None:
        out = resume_dir
    progress = params.progress and rank == 0
    device = torch.device(params.device)
    torch.manual_seed(params.seed)  # initial weights of a factory built here
    src = resolve_source(
        model, train_data, kwargs=kwargs, weights=weights, mean=mean, std=std, factory=factory,
        trust_code=trust_code,
    )  # fmt: skip
    if out is not None and src.base is None:
        raise ConfigError(
            "cannot write a model spec for a bare module: pass factory='pkg.module:factory' "
            "(and kwargs) so the trained weights can be rebuilt"
        )
    # 1-3. BatchNorm and the network checks; data, canaries, budget; the Opacus machinery.
    network = prepare_network(src, params)
    td = load_training_data(network.net, src, train_data, params, progress=progress)
    budget = plan_budget(params, td, network.problems, sampler=sampler, resume_dir=resume_dir)
    mach = build_machinery(network, params, budget, td.n, rank=rank, world=world, device=device)

    # 4. Resume or start, then train, checkpointing with the ledger.
    key = _run_key(params, network, td, budget, train_data, world)
    net = network.net
    prog = start_or_resume(net=net, mach=mach, key=key, resume_dir=resume_dir, out=out, rank=rank)

    def ledger_for(state: Progress, total_drawn: int) -> Ledger:
        return build_ledger(
            params=params,
            budget=budget,
            mach=mach,
            prog=state,
            n=td.n,
            action=network.action,
            plan=td.plan,
            train_data=train_data,
            total_drawn=total_drawn,
        )

    ckpt = Checkpointer(
        out=out, key=key, net=net, mach=mach, rank=rank, world=world, ledger_for=ledger_for
    )
    train_steps(
        net,
        network.normalize,
        td.x_train,
        td.y_train,
        budget.w_train,
        mach=mach,
        budget=budget,
        params=params,
        prog=prog,
        checkpoint=ckpt,
        device=device,
        progress=progress,
    )

    # 5. Unwrap, sync check, ledger, canaries, baseline, files.
    unwrap(net, mach)
    in_sync = distributed.weights_in_sync(net) if world > 1 else None
    total = distributed.sum_over_ranks(prog.drawn, world)
    ledger = ckpt.last_ledger if prog.stopped and ckpt.last_ledger else ledger_for(prog, total)
    _refuse_unsound(ledger, params)
    return _finish(
        src,
        network,
        td,
        budget,
        params,
        ledger,
        prog,
        out=out,
        rank=rank,
        world=world,
        in_sync=in_sync,
        device=device,
        progress=progress,
        start=start,
    )


def _run_key(
    params: DPParams,
    network: Network,
    td: TrainingData,
    budget: Budget,
    train_data: Dataset,
    world: int,
) -> dict[str, Any]:
    """The settings a resume must share with the run it continues."""
    return config_key(
        epsilon=params.epsilon,
        delta=params.delta,
        sigma=budget.sigma,
        sample_rate=budget.q,
        steps=budget.planned,
        max_grad_norm=params.max_grad_norm,
        accountant=params.accountant,
        n=td.n,
        manifest=train_data.manifest.digest,
        canaries=td.plan.as_dict() if td.plan else None,
        batchnorm=network.action,
        augmult=params.augmult,
        seed=params.seed,
        world_size=world,
        optimizer=params.optimizer,
        lr=params.lr,
        momentum=params.momentum,
        balance=budget.balance.as_dict() if budget.balance else None,
    )


def _refuse_unsound(ledger: Ledger, params: DPParams) -> None:
    """Publish no model whose ledger cannot stand: epsilon over the target (calibration
    rules it out), or a sampling that refutes the rate the accountant was charged."""
    if ledger.epsilon > params.epsilon + 1e-9:
        raise RuntimeError(f"spent epsilon {ledger.epsilon} exceeds the target {params.epsilon}")
    if ledger.sampler is not None and not ledger.sampler.plausible:
        raise RaigateError(
            f"{sampler_finding(ledger.sampler).message}; no model was saved (ledger.json "
            "records the test): train with raigate's own sampler"
        )


def _finish(
    src: Source,
    network: Network,
    td: TrainingData,
    budget: Budget,
    params: DPParams,
    ledger: Ledger,
    prog: Progress,
    *,
    out: Path | None,
    rank: int,
    world: int,
    in_sync: bool | None,
    device: torch.device,
    progress: bool,
    start: float,
) -> PrivateTraining:
    """The canary audit and the ``--baseline`` twin (finished runs only), then the files."""
    net, normalize, plan = network.net, network.normalize, td.plan
    canary_audit: CanaryAudit | None = None
    if plan is not None and not prog.stopped and rank == 0:
        scores = canary_scores(
            net,
            normalize,
            td.x_all[torch.as_tensor(plan.positions)],
            torch.as_tensor(plan.labels),
            device,
        )
        canary_audit = audit_canaries(scores, plan.included, delta=params.delta)
    baseline: Model | None = None
    baseline_losses: list[float] = []
    if params.baseline and not prog.stopped:
        base_net, baseline_losses = train_baseline(
            network.initial,
            normalize,
            td.x_train,
            td.y_train,
            budget.q,
            budget.planned,
            params,
            device,
            progress,
            budget.w_train,
        )
        baseline = _wrap(base_net.cpu(), src, "privacy:baseline (non-private, same steps)")
    net.cpu()
    trained = _wrap(net, src, "privacy:train_private")
    spec_path = None
    if out is not None and rank == 0:
        saved, baseline, spec_path = publish(
            out,
            net=net,
            src=src,
            action=network.action,
            normalize=normalize,
            ledger=ledger,
            stopped=prog.stopped,
            canary_audit=canary_audit,
            plan=plan,
            baseline=baseline,
            seed=params.seed,
        )
        trained = saved or trained
    return PrivateTraining(
        model=trained,
        ledger=ledger,
        out_dir=out,
        changes=network.changes,
        warnings=[p for p in network.problems if p.severity == "warn"],
        canaries=canary_audit,
        losses=prog.losses,
        seconds=time.perf_counter() - start,
        stopped_early=prog.stopped,
        rank=rank,
        world_size=world,
        weights_in_sync=in_sync,
        fold_max_abs_diff=network.fold_diff,
        baseline=baseline,
        baseline_losses=baseline_losses,
        spec_path=spec_path,
        canary_plan=plan,
    )


def _wrap(net: nn.Module, src: Source, spec: str) -> Model:
    return Model(
        net,
        class_names=src.class_names,
        input_shape=src.input_shape,
        mean=src.mean,
        std=src.std,
        spec=spec,
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
    sampler: Any = None,
    **options: Any,
) -> tuple[Model, Ledger]:
    """DP-SGD retraining in one call: returns the trained :class:`Model` and its
    :class:`Ledger`. ``options`` are :class:`DPParams` fields (``epsilon``, ``delta``,
    ``epochs``, ``batch_size``, ``max_grad_norm``, ``lr``, ``accountant``, ``augmult``,
    ``canaries``, ``seed``, ``device``, ``progress``, ...); ``sampler`` as in
    :func:`run_private_training`."""
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
        sampler=sampler,
    )
    return run.model, run.ledger
