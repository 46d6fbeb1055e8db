"""Checks that refuse (or warn) before a DP-SGD run spends privacy budget.

Every check returns a list of :class:`Problem` and never raises on its own (validators
that report, as Opacus' ``ModuleValidator.validate(strict=False)`` does);
:func:`raise_for_errors` turns the first ``error`` into a one-line ConfigError when the
caller decides to stop. What is checked and why:

* the budget: ``epsilon > 0``, ``0 < delta < 1/N``. A ``delta`` of ``1/N`` or more admits
  mechanisms that publish one whole record in the clear (Dwork & Roth 2014, section 2.3);
* sampling: Poisson sampling on, and the sample rate the accountant is told equal to the
  rate the sampler draws with (the guarantee of the subsampled Gaussian holds only for the
  rate actually used: Mironov, Talwar & Zhang 2019);
* the network: no BatchNorm left, no other layer that updates a buffer from the batch in
  training mode (running statistics mix examples outside the clipped gradients), and
  Opacus' own module validator clean;
* after training: the returned network carries no per-sample-gradient hooks or buffers,
  so ART, Captum or a plain ``torch.save`` see an ordinary module.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from raigate.errors import ConfigError

__all__ = [
    "Problem",
    "check_budget",
    "check_network",
    "check_sampling",
    "check_unwrapped",
    "raise_for_errors",
]


@dataclass(frozen=True)
class Problem:
    """One finding of a preflight check: ``error`` stops training, ``warn`` is reported."""

    code: str
    severity: Literal["error", "warn"]
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "severity": self.severity, "message": self.message}


def raise_for_errors(problems: list[Problem]) -> None:
    """Raise a ConfigError for the first ``error`` (saying how many more there are)."""
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more preflight error(s))" if len(errors) > 1 else ""
        raise ConfigError(errors[0].message + more)


def check_budget(epsilon: float, delta: float, n: int) -> list[Problem]:
    """``epsilon > 0`` and ``0 < delta < 1/n``; a warning when ``delta > 1/(10 n)``."""
    out: list[Problem] = []
    if not epsilon > 0:
        out.append(
            Problem("epsilon", "error", f"--epsilon must be positive, got {epsilon}: pick e.g. 2")
        )
    if n <= 0:
        out.append(Problem("data", "error", "the training data is empty"))
        return out
    if not 0 < delta < 1 / n:
        out.append(
            Problem(
                "delta",
                "error",
                f"--delta {delta:g} must lie in (0, 1/N) = (0, {1 / n:.3g}) for N={n} "
                f"training examples; pick e.g. {min(1e-5, 0.1 / n):.1g}",
            )
        )
    elif delta > 0.1 / n:
        out.append(
            Problem(
                "delta",
                "warn",
                f"delta {delta:g} is above 1/(10 N) = {0.1 / n:.3g}: the usual advice is a delta "
                "well below 1/N",
            )
        )
    return out


def check_sampling(
    *, poisson: bool, sampler_rate: float, accountant_rate: float, expected_rate: float
) -> list[Problem]:
    """Poisson sampling on, and the accountant, the sampler and ``batch_size / N`` agreeing
    on the sample rate (relative tolerance 1e-12)."""
    out: list[Problem] = []
    if not poisson:
        out.append(
            Problem(
                "poisson",
                "error",
                "Poisson sampling is off: the accountants assume each example joins each batch "
                "independently with probability q; shuffled fixed-size batches void the bound",
            )
        )

    def same(a: float, b: float) -> bool:
        return abs(a - b) <= 1e-12 * max(abs(a), abs(b), 1e-300)

    if not same(sampler_rate, accountant_rate):
        out.append(
            Problem(
                "sample_rate",
                "error",
                f"the accountant is told sample rate {accountant_rate!r} but the sampler draws "
                f"with {sampler_rate!r}",
            )
        )
    if not same(sampler_rate, expected_rate):
        out.append(
            Problem(
                "sample_rate",
                "error",
                f"the sampler draws with rate {sampler_rate!r}, not batch_size / N = "
                f"{expected_rate!r}",
            )
        )
    return out


def _buffers_changed_by_training_forward(net: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    probe = copy.deepcopy(net).train()
    before = {n: b.detach().clone() for n, b in probe.named_buffers()}
    if not before:
        return []
    try:
        with torch.no_grad():
            probe(torch.rand(2, *input_shape, device=next(iter(before.values())).device))
    except Exception:  # the forward itself is checked elsewhere (the loader runs it)
        return []
    return [
        n
        for n, b in probe.named_buffers()
        if n in before and (b.shape != before[n].shape or not torch.equal(b, before[n]))
    ]


def check_network(net: nn.Module, input_shape: tuple[int, ...]) -> list[Problem]:
    """BatchNorm left, buffers updated by a training-mode forward, Opacus' validator."""
    from opacus.validators import ModuleValidator

    from raigate.privacy.fold import batchnorm_layers

    out: list[Problem] = []
    bns = batchnorm_layers(net)
    if bns:
        out.append(
            Problem(
                "batchnorm",
                "error",
                f"BatchNorm layer(s) {', '.join(bns[:3])} left in the network: they mix examples "
                "of a batch; use --batchnorm fold (pretrained) or groupnorm",
            )
        )
    changed = [n for n in _buffers_changed_by_training_forward(net, input_shape)]
    changed = [n for n in changed if not any(n.startswith(b + ".") for b in bns)]
    if changed:
        layer = changed[0].rpartition(".")[0] or "(root)"
        kind = type(net.get_submodule(layer)).__name__ if layer != "(root)" else type(net).__name__
        out.append(
            Problem(
                "running_stats",
                "error",
                f"layer {layer} ({kind}) updates buffer {changed[0]} from the batch in training "
                "mode, which Opacus cannot fix and DP-SGD cannot account for: replace the layer "
                "(e.g. with GroupNorm) or freeze it",
            )
        )
    was_training = net.training
    net.train()
    try:
        errors = ModuleValidator.validate(net, strict=False)
    finally:
        net.train(was_training)
    for e in errors:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if bns and "BatchNorm" in text:
            continue  # already reported above, with the fix
        out.append(Problem("opacus_validator", "error", f"Opacus ModuleValidator: {text}"))
    if not any(p.requires_grad for p in net.parameters()):
        out.append(Problem("no_parameters", "error", "the network has no trainable parameters"))
    return out


def check_unwrapped(net: nn.Module) -> list[Problem]:
    """No Opacus wrapper, hooks or per-sample buffers left on the trained network."""
    from opacus.grad_sample import GradSampleModule

    out: list[Problem] = []
    if isinstance(net, GradSampleModule) or hasattr(net, "_module"):
        out.append(Problem("wrapped", "error", "the trained network is still an Opacus wrapper"))
    hooked = [
        name or "(root)"
        for name, m in net.named_modules()
        if m._forward_hooks or m._backward_hooks or getattr(m, "autograd_grad_sample_hooks", None)
    ]
    if hooked:
        out.append(
            Problem("hooks", "error", f"per-sample-gradient hooks left on {', '.join(hooked[:3])}")
        )
    leftovers = [
        n
        for n, p in net.named_parameters()
        if hasattr(p, "grad_sample") or hasattr(p, "summed_grad")
    ]
    if leftovers:
        out.append(
            Problem("buffers", "error", f"per-sample gradient buffers left on {leftovers[0]}")
        )
    return out
