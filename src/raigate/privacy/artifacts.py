"""What a DP-SGD run leaves behind: the unwrapped network, the ledger, the canary scores,
and in ``--out`` the weights (safetensors), a model spec any ``raigate`` command accepts,
``ledger.json``, ``canaries.json`` and the ``--baseline`` twin in ``OUT/baseline/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raigate._io import write_atomic
from raigate.data.base import Dataset
from raigate.models.base import Model
from raigate.privacy.canaries import CanaryAudit, CanaryPlan
from raigate.privacy.checkpoint import Progress
from raigate.privacy.fold import BatchNormAction
from raigate.privacy.ledger import BALANCE_DEFINITION, DEFINITIONS, Ledger, epsilons_for
from raigate.privacy.params import DPParams
from raigate.privacy.preflight import check_unwrapped, raise_for_errors
from raigate.privacy.sampler import realized_rate
from raigate.privacy.setup import Budget, Machinery, Source, rng

WEIGHTS_NAME = "model.safetensors"
SPEC_NAME = "model.json"
SPEC_FACTORY = "raigate.privacy.fold:private_net"
BASELINE_DIR = "baseline"
"""``--baseline``: the non-private model's weights and spec go to ``OUT/baseline/``."""

__all__ = [
    "BASELINE_DIR",
    "SPEC_FACTORY",
    "SPEC_NAME",
    "WEIGHTS_NAME",
    "build_ledger",
    "canary_scores",
    "publish",
    "save_model",
    "unwrap",
]


def unwrap(net: nn.Module, mach: Machinery) -> None:
    """Remove every per-sample-gradient hook and buffer, so ART, Captum or a plain
    ``torch.save`` see an ordinary module (checked, see :mod:`raigate.privacy.preflight`)."""
    if mach.engine is not None:
        mach.engine.detach()
    else:
        mach.forward._close()  # type: ignore[operator]  # Opacus: remove hooks and grad buffers
    for p in net.parameters():
        for attr in ("grad_sample", "summed_grad", "_processed", "_forward_counter"):
            if hasattr(p, attr):
                delattr(p, attr)
        p.grad = None
    net.eval()
    raise_for_errors(check_unwrapped(net))


def build_ledger(
    *,
    params: DPParams,
    budget: Budget,
    mach: Machinery,
    prog: Progress,
    n: int,
    action: BatchNormAction,
    plan: CanaryPlan | None,
    train_data: Dataset,
    total_drawn: int,
) -> Ledger:
    """The ledger of the state ``prog`` describes: epsilon under both accountants over the
    accountant's history, and the realized-rate test of the ``total_drawn`` examples."""
    from opacus.version import __version__ as opacus_version

    history = [(float(s), float(r), int(k)) for s, r, k in mach.accountant.history]
    eps_all = epsilons_for(history, params.delta)
    balance = budget.balance
    return Ledger(
        epsilon=eps_all[params.accountant],
        target_epsilon=params.epsilon,
        delta=params.delta,
        accountant=params.accountant,
        epsilons=eps_all,
        noise_multiplier=budget.sigma,
        sample_rate=budget.q,
        steps=prog.done,
        planned_steps=budget.planned,
        max_grad_norm=params.max_grad_norm,
        batch_size=params.batch_size,
        physical_batch_size=budget.physical,
        epochs=params.epochs,
        poisson_sampling=True,
        secure_mode=params.secure_mode,
        augmult=params.augmult,
        canaries=plan.m if plan else 0,
        dataset_size=n,
        dataset_spec=train_data.spec,
        manifest_digest=train_data.manifest.digest,
        grad_sample_mode=mach.mode,
        batchnorm=action,
        opacus_version=opacus_version,
        complete=prog.done == budget.planned,
        history=history,
        group_balance=balance.as_dict() if balance else None,
        sampler=realized_rate(
            drawn=total_drawn,
            dataset_size=n,
            steps=prog.done - prog.counted_from,
            sample_rate=mach.batches.sample_rate,
            sampler_class=f"{type(mach.batches).__module__}.{type(mach.batches).__qualname__}",
            source=budget.sampler_source,
        ),
        definitions=(
            {**DEFINITIONS, "group_balance": BALANCE_DEFINITION} if balance else DEFINITIONS
        ),
    )


@torch.no_grad()
def canary_scores(
    net: nn.Module, normalize: nn.Module, x: Tensor, labels: Tensor, device: torch.device
) -> np.ndarray:
    """Minus the cross-entropy of each canary's wrong label (higher: looks trained on)."""
    net.to(device).eval()
    scores = []
    for i in range(0, len(x), 256):
        logits = net(normalize.to(device)(x[i : i + 256].to(device)))
        scores.append(-F.cross_entropy(logits, labels[i : i + 256].to(device), reduction="none"))
    return torch.cat(scores).double().cpu().numpy() if scores else np.zeros(0)


def save_model(out: Path, net: nn.Module, src: Source, action: BatchNormAction) -> Path:
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


def publish(
    out: Path,
    *,
    net: nn.Module,
    src: Source,
    action: BatchNormAction,
    normalize: nn.Module,
    ledger: Ledger,
    stopped: bool,
    canary_audit: CanaryAudit | None,
    plan: CanaryPlan | None,
    baseline: Model | None,
    seed: int,
) -> tuple[Model | None, Model | None, Path | None]:
    """Write the run's files to ``out`` (rank 0). Returns the saved model reloaded from its
    own spec (checked to reproduce the trained network's logits), the baseline reloaded the
    same way, and the spec path; ``None`` for what a stopped run does not save."""
    from raigate.models import load_model

    if baseline is not None:
        # the non-private twin, saved beside the private model so both can be audited
        # (fairness gaps, membership leakage) by any command or plan
        (out / BASELINE_DIR).mkdir(parents=True, exist_ok=True)
        base_spec = save_model(out / BASELINE_DIR, baseline.net, src, action)
        baseline = load_model(str(base_spec), trust_code=True)
    if not stopped:
        ledger.write(out)
    if canary_audit is not None and plan is not None:
        write_atomic(
            out / "canaries.json", _json({**canary_audit.as_dict(), "plan": plan.as_dict()})
        )
    if stopped:
        return None, baseline, None
    spec_path = save_model(out, net, src, action)
    # Our own output: its base factory was already imported and run above, by the
    # caller's choice (named, or trusted), so rebuilding it needs no new trust.
    trained = load_model(str(spec_path), trust_code=True)
    with torch.no_grad():
        probe = torch.rand(2, *src.input_shape, generator=rng(seed, 98))
        expected = net(normalize.cpu()(probe))
        if not torch.allclose(trained.logits(probe), expected, atol=1e-5):
            raise RuntimeError("the saved model does not reproduce the trained network")
    return trained, baseline, spec_path


def _json(obj: Any) -> str:
    """Deterministic JSON (sorted keys), as every raigate file."""
    from raigate.results import dumps

    return dumps(obj)
