"""BatchNorm before DP-SGD: fold frozen statistics into the layer before it, or replace it.

DP-SGD needs one gradient per example, and BatchNorm in training mode mixes the examples
of a batch (each output depends on the batch mean), so Opacus refuses it. Two ways out:

* ``fold`` (default when pretrained weights are given): in eval mode a BatchNorm is the
  fixed affine map ``y -> gamma * (y - mean) / sqrt(var + eps) + beta`` per channel, so it
  can be merged into the convolution or linear layer that feeds it (the standard inference
  folding, e.g. Jacob et al. 2018, "Quantization and Training of Neural Networks for
  Efficient Integer-Arithmetic-Only Inference", section 3.2). The network computes the same
  function, its pretrained statistics are kept, and no private example is touched: the
  statistics came with the public weights and are never updated again.
* ``groupnorm``: Opacus' ``ModuleValidator.fix`` replaces each BatchNorm with a GroupNorm
  (``gcd(32, channels)`` groups), discarding the pretrained statistics. Right for training
  from scratch.

:func:`rebuild` repeats either change on a fresh network so saved weights load strictly
(the model spec written after training names ``raigate.privacy.fold:private_net``).

>>> import torch
>>> from raigate.zoo import small_cnn
>>> net = small_cnn(num_classes=2, norm="batch").eval()
>>> x = torch.rand(2, 3, 32, 32)
>>> before = net(x)
>>> folded, changes = fold_batchnorm(net)
>>> torch.allclose(before, folded(x), atol=1e-5), changes[0]
(True, 'features.1 (BatchNorm2d) folded into features.0 (Conv2d)')
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import nn

from raigate.errors import ConfigError

BatchNormAction = Literal["fold", "groupnorm", "none"]

__all__ = [
    "BatchNormAction",
    "batchnorm_layers",
    "fold_batchnorm",
    "private_net",
    "rebuild",
    "replace_batchnorm",
]

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def batchnorm_layers(net: nn.Module) -> list[str]:
    """Names of every BatchNorm-family layer in ``net`` (SyncBatchNorm included)."""
    return [n for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _producers(net: nn.Module) -> dict[str, str]:
    """BatchNorm name -> name of the conv/linear module whose output is its only input.

    Traced with ``torch.fx`` so the pairing follows the data flow, not the order in which
    layers happen to be registered.
    """
    from torch.fx import symbolic_trace

    try:
        graph = symbolic_trace(net).graph
    except Exception as exc:  # data-dependent control flow, unsupported ops, ...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"cannot trace the network to find which layer feeds each BatchNorm ({first}); "
            "use --batchnorm groupnorm"
        ) from None
    modules = dict(net.named_modules())
    pairs: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        bn = modules.get(str(node.target))
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0] if node.args else None
        if getattr(src, "op", None) != "call_module" or len(src.users) != 1:
            continue
        if isinstance(modules.get(str(src.target)), _FOLDABLE):
            pairs[str(node.target)] = str(src.target)
    return pairs


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


@torch.no_grad()
def fold_batchnorm(net: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``net`` with every BatchNorm merged into the layer that feeds it.

    Returns ``(folded, changes)``; ``folded`` is in eval mode and computes the same function
    as ``net`` in eval mode (to float rounding). A BatchNorm that is not fed by exactly one
    conv/linear output, or that keeps no running statistics, cannot be folded: a
    ConfigError names it and suggests ``--batchnorm groupnorm``.
    """
    folded = copy.deepcopy(net).eval()
    names = batchnorm_layers(folded)
    if not names:
        return folded, []
    pairs = _producers(folded)
    changes: list[str] = []
    for bn_name in names:
        bn = folded.get_submodule(bn_name)
        if bn_name not in pairs:
            raise ConfigError(
                f"BatchNorm {bn_name} is not fed by a single convolution or linear layer, so it "
                "cannot be folded; use --batchnorm groupnorm"
            )
        if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
            raise ConfigError(
                f"BatchNorm {bn_name} keeps no running statistics (track_running_stats=False), "
                "so it normalizes with batch statistics even in eval mode; "
                "use --batchnorm groupnorm"
            )
        layer = folded.get_submodule(pairs[bn_name])
        scale = torch.rsqrt(bn.running_var + bn.eps)
        shift = -bn.running_mean * scale
        if bn.affine:
            scale = scale * bn.weight
            shift = shift * bn.weight + bn.bias
        w = layer.weight
        if w.shape[0] != scale.shape[0]:
            raise ConfigError(
                f"BatchNorm {bn_name} has {scale.shape[0]} channels but {pairs[bn_name]} "
                f"outputs {w.shape[0]}; use --batchnorm groupnorm"
            )
        shape = (-1,) + (1,) * (w.dim() - 1)
        old_bias = layer.bias if layer.bias is not None else torch.zeros_like(scale)
        layer.weight = nn.Parameter(w * scale.view(shape))
        layer.bias = nn.Parameter(old_bias * scale + shift)
        _set_module(folded, bn_name, nn.Identity())
        changes.append(
            f"{bn_name} ({type(bn).__name__}) folded into {pairs[bn_name]} ({type(layer).__name__})"
        )
    return folded, changes


def replace_batchnorm(net: nn.Module) -> tuple[nn.Module, list[str]]:
    """Opacus' ``ModuleValidator.fix`` (BatchNorm -> GroupNorm, and its other fixes), with
    the list of replaced layers. The input is not modified."""
    from opacus.validators import ModuleValidator

    before = {n: type(m).__name__ for n, m in net.named_modules()}
    fixed = ModuleValidator.fix(copy.deepcopy(net))
    changes = []
    for name, m in fixed.named_modules():
        old = before.get(name)
        if old is not None and old != type(m).__name__ and name:
            detail = f"{m.num_groups} groups" if isinstance(m, nn.GroupNorm) else ""
            changes.append(
                f"{name} ({old}) replaced by {type(m).__name__}"
                + (f" ({detail})" if detail else "")
            )
    return fixed, changes


def rebuild(net: nn.Module, action: BatchNormAction) -> tuple[nn.Module, list[str]]:
    """Apply ``action`` (``fold``, ``groupnorm`` or ``none``) and list what changed."""
    if action == "fold":
        return fold_batchnorm(net)
    if action == "groupnorm":
        return replace_batchnorm(net)
    if action == "none":
        return copy.deepcopy(net), []
    raise ConfigError(f"--batchnorm must be fold, groupnorm or none, got {action!r}")


def private_net(
    *,
    base: str,
    base_kwargs: dict[str, Any] | None = None,
    batchnorm: BatchNormAction = "none",
    num_classes: int | None = None,
) -> nn.Module:
    """Factory for the model spec DP training writes: ``base`` (``pkg.module:factory``) built
    with ``base_kwargs``, then the same BatchNorm change as in training, so the trained
    weights load strictly. ``num_classes`` goes to ``base`` when it takes one. Called while
    an untrusted spec file loads, ``base`` follows that file's trust rules
    (:mod:`raigate.models.factories`)."""
    from raigate.models.factories import build_network

    net = build_network(base, kwargs=base_kwargs, num_classes=num_classes)
    rebuilt, _ = rebuild(net.eval(), batchnorm)
    return rebuilt
