"""Per-sample gradients for DP-SGD: pick the fastest path that is correct for the model.

DP-SGD (Abadi et al. 2016) clips every example's gradient before summing, so it needs one
gradient per example, not the batch sum autograd gives. Opacus offers several ways to get
them (``grad_sample_mode``): ``hooks`` (module hooks and hand-written per-layer formulas,
the default), ``ew`` (PyTorch's ExpandedWeights), ``functorch`` (``torch.func.vmap`` over
``grad``) and ``ghost`` (ghost clipping: norms without materializing gradients, two
backward passes). raigate adds ``fast``:

* per-example gradients written to the parameters' ``grad_sample``, so Opacus'
  ``DPOptimizer`` clips, noises and accounts exactly as it always does;
* Conv2d: unfold + batched matmul (Opacus' formula) for inputs with few channels, and
  from 8 input channels on a single grouped weight-gradient kernel (the batch folded into
  channels, one group per example), which skips the unfold copy; Linear: an outer
  product; GroupNorm: read off the layer's output instead of normalizing a second time;
* captured with a forward hook plus a *tensor* hook on the layer's output instead of
  ``register_full_backward_hook`` (which wraps every module in extra autograd nodes, while
  Opacus also copies each per-sample gradient through a freshly zeroed buffer);
* :meth:`FastGradSample.forward` builds the graph with the parameters frozen, so autograd
  never forms the summed gradient that DP-SGD replaces by the clipped sum anyway.

``fast`` covers models whose trainable layers are all Conv2d (any stride/padding/dilation,
one group), Linear and GroupNorm, i.e. the DP-ready reference nets. ``bk``
(:mod:`raigate.privacy.bookkeeping`) covers the same layers and goes further: it clips
without writing per-sample gradients for every layer. ``auto`` uses ``bk`` when it covers
the model (``fast`` under augmentation multiplicity) and Opacus' ``hooks`` mode otherwise.
``tests/privacy/test_grad_sample.py`` proves the clipped, summed gradients equal those of
Opacus' hooks mode.

Ghost clipping is measured in the benchmark, not offered for training: Opacus 1.6 has
ghost norms only for Linear and Embedding layers, so convolutions still materialize
per-sample gradients and the second backward pass makes a CNN step slower; ghost norms
for a convolution need a ``T x T`` Gram matrix per example (``T`` output positions),
dearer than the gradient itself on the 32x32 and 16x16 stages of a CIFAR net (Bu et al.
2022, "Scalable and Efficient Training of Large Convolutional Neural Networks with
Differential Privacy", section 3). ``bk`` uses them layer by layer where they are cheaper,
in one backward pass.

>>> import torch
>>> from raigate.zoo import small_cnn
>>> net = small_cnn(num_classes=2, norm="group")
>>> engine = FastGradSample(net)
>>> x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
>>> loss = torch.nn.functional.cross_entropy(net(x), y)
>>> loss.backward()
>>> net.classifier.weight.grad_sample.shape
torch.Size([4, 2, 256])
>>> engine.detach()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from raigate.errors import ConfigError

GradSampleMode = Literal["auto", "bk", "fast", "hooks", "ew", "functorch"]
GRAD_SAMPLE_MODES: tuple[str, ...] = ("auto", "bk", "fast", "hooks", "ew", "functorch")

Sampler = Callable[[Any, Tensor, Any, Tensor, float], dict[nn.Parameter, Tensor]]

__all__ = [
    "GRAD_SAMPLE_MODES",
    "FastGradSample",
    "GradSampleMode",
    "average_augmentations",
    "fast_unsupported",
    "resolve_mode",
]


def _unfold2d(x: Tensor, layer: nn.Conv2d) -> Tensor:
    """Patches ``[B, C*kh*kw, T]`` of ``x`` for ``layer`` (explicit padding, any stride)."""
    pad = layer.padding
    if isinstance(pad, str):  # "same" / "valid": let the layer's own rule decide the sizes
        if pad == "valid":
            pad = (0, 0)
        else:
            kh = layer.dilation[0] * (layer.kernel_size[0] - 1)
            kw = layer.dilation[1] * (layer.kernel_size[1] - 1)
            x = F.pad(x, (kw // 2, kw - kw // 2, kh // 2, kh - kh // 2))
            pad = (0, 0)
    # Opacus' as_strided view + reshape measured faster than F.unfold on CPU (im2col copies
    # twice); both give the same patches.
    from opacus.utils.tensor_utils import unfold2d

    return unfold2d(  # type: ignore[no-any-return]
        x,
        kernel_size=layer.kernel_size,
        padding=pad,
        stride=layer.stride,
        dilation=layer.dilation,
    )


# Each formula gets the layer, its input ``a``, its output ``y`` and the gradient ``g`` of
# the loss with respect to ``y``, and returns per-example gradients multiplied by ``scale``
# (the batch size under a mean loss). Scaling the result instead of ``g`` touches
# parameter-sized tensors rather than activation-sized ones.
GROUPED_MIN_CHANNELS = 8
"""From this many input channels on, per-example convolution gradients come from one
grouped weight-gradient kernel instead of unfold + batched matmul (measured faster from
16 channels on, slower for an RGB input layer, on CPU; bench/dp_step.py)."""


def _conv2d_weight_grouped(layer: nn.Conv2d, a: Tensor, g: Tensor) -> Tensor:
    """Per-example weight gradients as the weight gradient of one grouped convolution: the
    batch folded into channels, one group per example (Goodfellow 2015's per-example trick
    for convolutions, as in Opacus' ``convolution2d_backward_as_a_convolution``, but with
    the native backward kernel). The weight argument is only a shape: no input gradient is
    asked for, so its values are never read."""
    n, c = a.shape[:2]
    o = g.shape[1]
    shape = (n * o, c, *layer.weight.shape[2:])
    _, grad_w, _ = torch.ops.aten.convolution_backward(
        g.reshape(1, n * o, *g.shape[2:]),
        a.reshape(1, n * c, *a.shape[2:]),
        torch.empty(shape, dtype=a.dtype, device=a.device),
        None,
        list(layer.stride),
        list(layer.padding),
        list(layer.dilation),
        False,
        [0, 0],
        n,
        [False, True, False],
    )
    return grad_w.view(n, *layer.weight.shape)


def _conv2d(
    layer: nn.Conv2d, a: Tensor, y: Tensor, g: Tensor, scale: float
) -> dict[nn.Parameter, Tensor]:
    n = a.shape[0]
    g2 = g.reshape(n, g.shape[1], -1)
    out: dict[nn.Parameter, Tensor] = {}
    if layer.weight.requires_grad:
        if layer.in_channels >= GROUPED_MIN_CHANNELS and not isinstance(layer.padding, str):
            gs = _conv2d_weight_grouped(layer, a, g)
        else:
            cols = _unfold2d(a, layer)
            gs = torch.bmm(g2, cols.transpose(1, 2)).view(n, *layer.weight.shape)
        out[layer.weight] = gs.mul_(scale) if scale != 1 else gs
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = g2.sum(dim=2).mul_(scale)
    return out


def _linear(
    layer: nn.Linear, a: Tensor, y: Tensor, g: Tensor, scale: float
) -> dict[nn.Parameter, Tensor]:
    g = g * scale if scale != 1 else g  # the output gradient is the smaller tensor here
    out: dict[nn.Parameter, Tensor] = {}
    if layer.weight.requires_grad:
        out[layer.weight] = torch.einsum("n...i,n...j->nij", g, a)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = torch.einsum("n...k->nk", g)
    return out


GN_GAMMA_MIN = 0.1
"""Smallest |gamma| for which GroupNorm's gradient is read off its output (see below)."""


def _group_norm(
    layer: nn.GroupNorm, a: Tensor, y: Tensor, g: Tensor, scale: float
) -> dict[nn.Parameter, Tensor]:
    out: dict[nn.Parameter, Tensor] = {}
    n, c = g.shape[:2]
    g_sum = g.reshape(n, c, -1).sum(dim=2)
    if layer.weight is not None and layer.weight.requires_grad:
        gamma = layer.weight.detach()
        if layer.bias is not None and bool((gamma.abs() >= GN_GAMMA_MIN).all()):
            # y = gamma * x_hat + beta per channel, so sum(x_hat * g) = (sum(y * g) -
            # beta * sum(g)) / gamma: no second normalization pass. With |gamma| >= 0.1 the
            # subtraction loses at most a few float32 digits (checked against autograd).
            yg = (y * g).reshape(n, c, -1).sum(dim=2)
            gs = (yg - layer.bias.detach() * g_sum) / gamma
        else:
            x_hat = F.group_norm(a, layer.num_groups, eps=layer.eps)
            gs = (x_hat * g).reshape(n, c, -1).sum(dim=2)
        out[layer.weight] = gs.mul_(scale)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = g_sum.mul_(scale) if layer.weight is None else g_sum * scale
    return out


FAST_SAMPLERS: dict[type[nn.Module], Sampler] = {
    nn.Conv2d: _conv2d,
    nn.Linear: _linear,
    nn.GroupNorm: _group_norm,
}
"""Layer type -> per-sample gradient formula (exact types: a subclass may change forward)."""


ROW_CHUNK = 64
"""Per-example gradients are computed this many rows at a time: the working set of a
chunk stays in cache, measured up to 2x faster than the whole batch at once for ResNet-20's
16- and 32-channel stages at batch 256-500 on CPU (``bench/dp_resnet.py``)."""


def per_sample(
    module: nn.Module, a: Tensor, y: Tensor | None, g: Tensor, scale: float
) -> dict[nn.Parameter, Tensor]:
    """``FAST_SAMPLERS[type(module)]`` applied :data:`ROW_CHUNK` rows at a time (``y``, the
    layer's output, is read by GroupNorm only: ``None`` for the other layers)."""
    sampler = FAST_SAMPLERS[type(module)]
    n = a.shape[0]
    if n <= ROW_CHUNK:
        return sampler(module, a, y, g, scale)
    parts: dict[nn.Parameter, list[Tensor]] = {}
    for i in range(0, n, ROW_CHUNK):
        rows = slice(i, i + ROW_CHUNK)
        part = None if y is None else y[rows]
        for p, gs in sampler(module, a[rows], part, g[rows], scale).items():
            parts.setdefault(p, []).append(gs)
    return {p: torch.cat(chunks) for p, chunks in parts.items()}


def _own_trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def fast_unsupported(net: nn.Module) -> list[str]:
    """Names (with types) of modules holding trainable parameters that ``fast`` cannot
    handle: other layer types, or Conv2d with groups. Empty means ``fast`` covers ``net``."""
    bad = []
    for name, m in net.named_modules():
        if not _own_trainable(m):
            continue
        kind = type(m)
        if kind not in FAST_SAMPLERS or (isinstance(m, nn.Conv2d) and m.groups != 1):
            bad.append(f"{name or '(root)'} ({kind.__name__})")
    return bad


def resolve_mode(net: nn.Module, mode: str, *, augmult: int = 1) -> str:
    """The concrete mode for ``net``: ``auto`` is ``bk`` (book-keeping,
    :mod:`raigate.privacy.bookkeeping`) where it covers every trainable layer, ``fast``
    there under augmentation multiplicity (``augmult > 1``: the copies' gradients are
    averaged before the clip, which ``bk`` does not do), else Opacus' ``hooks``. Asking for
    ``bk`` or ``fast`` where they cannot work is an error."""
    if mode not in GRAD_SAMPLE_MODES:
        raise ConfigError(
            f"--grad-sample-mode must be one of {', '.join(GRAD_SAMPLE_MODES)}, got {mode!r}"
        )
    if mode == "auto":
        if fast_unsupported(net):
            return "hooks"
        return "fast" if augmult > 1 else "bk"
    if mode in ("fast", "bk"):
        bad = fast_unsupported(net)
        if bad:
            raise ConfigError(
                f"--grad-sample-mode {mode} does not cover {', '.join(bad[:3])}: use "
                "--grad-sample-mode hooks (Opacus) or auto"
            )
    if mode == "bk" and augmult > 1:
        raise ConfigError("--augmult needs --grad-sample-mode fast or hooks (bk clips each row)")
    return mode


class FastGradSample:
    """Attach per-sample gradient capture to ``net`` (in place, no wrapper module).

    During a training-mode forward with gradients enabled, each covered layer keeps its
    input; when autograd reaches the layer's output, the per-sample gradients are written
    to ``p.grad_sample`` (summed over repeated calls of the same layer in one forward, as
    shared weights require). ``loss_reduction="mean"`` rescales them by the batch size so
    each row is the gradient of that row's own loss, as in Opacus.
    """

    def __init__(self, net: nn.Module, *, loss_reduction: Literal["mean", "sum"] = "mean") -> None:
        bad = fast_unsupported(net)
        if bad:
            raise ConfigError(f"per-sample gradients: unsupported layers {', '.join(bad[:3])}")
        self.net = net
        self.loss_reduction = loss_reduction
        self.enabled = True
        self._params = [p for p in net.parameters() if p.requires_grad]
        self._handles: list[RemovableHandle] = []
        for m in net.modules():
            if type(m) in FAST_SAMPLERS and _own_trainable(m):
                self._handles.append(m.register_forward_hook(self._capture))

    def forward(self, module: nn.Module, x: Tensor) -> Tensor:
        """``module(x)`` recorded so that backward computes per-sample gradients only.

        The parameters are frozen while the graph is built and the input requires grad
        instead, so autograd propagates to every layer but never forms the summed parameter
        gradient that DP-SGD would discard (the clipped sum replaces it). Saves a weight
        gradient per layer, at the price of one input gradient for the first layer.
        """
        for p in self._params:
            p.requires_grad_(False)
        try:
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            return module(x)  # type: ignore[no-any-return]
        finally:
            for p in self._params:
                p.requires_grad_(True)

    def _capture(self, module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
        if not (self.enabled and module.training and torch.is_grad_enabled()):
            return
        if not isinstance(output, Tensor) or not output.requires_grad:
            return
        activation = inputs[0].detach()
        result = output.detach()
        scale = activation.shape[0] if self.loss_reduction == "mean" else 1

        def on_grad(grad: Tensor) -> None:
            for p, gs in per_sample(module, activation, result, grad, scale).items():
                prev = getattr(p, "grad_sample", None)
                p.grad_sample = gs if prev is None else prev + gs  # type: ignore[attr-defined]

        output.register_hook(on_grad)

    def detach(self) -> None:
        """Remove every hook and per-sample buffer: ``net`` is a plain module again."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for p in self.net.parameters():
            for attr in ("grad_sample", "summed_grad", "_processed"):
                if hasattr(p, attr):
                    delattr(p, attr)


def average_augmentations(params: list[nn.Parameter], copies: int) -> None:
    """Augmentation multiplicity (De et al. 2022, section 3.2): the rows of a batch are
    ``copies`` augmentations of each example, adjacent; average their per-sample gradients
    so each example contributes one gradient, clipped once. Sensitivity stays one example."""
    if copies <= 1:
        return
    for p in params:
        gs = getattr(p, "grad_sample", None)
        if gs is None:
            continue
        if isinstance(gs, list):  # Opacus keeps a list only under gradient accumulation
            raise ConfigError("augmentation multiplicity cannot be combined with accumulation")
        p.grad_sample = gs.view(gs.shape[0] // copies, copies, *gs.shape[1:]).mean(dim=1)  # type: ignore[attr-defined]
