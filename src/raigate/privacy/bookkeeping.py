"""Book-keeping DP-SGD: per-example norms and the clipped sum from one backward pass.

Bu, Wang, Zha and Karypis (2023, "Differentially Private Optimization on Large Model at
Small Cost", algorithm 1): during the one backward pass, keep every layer's input ``a``
and output gradient ``g``. Then

* each example's gradient norm comes, layer by layer, from whichever is cheaper:
  materializing the per-example gradients (for a convolution, one grouped weight-gradient
  kernel, as :mod:`raigate.privacy.grad_sample` does) or the *ghost norm*
  ``||sum_t g_t a_t^T||^2 = sum_{t,t'} (a_t . a_t')(g_t . g_t')`` over the ``T`` output
  positions (Goodfellow 2015; Li et al. 2022 for sequences), which never forms the
  gradient (the "mixed" rule of Bu et al. 2022, section 3: ghost where it costs less);
* the clipped sum ``sum_i c_i grad_i`` is, for a ghost layer, one ordinary weight-gradient
  kernel with each example's ``g`` scaled by its clip factor ``c_i``, and for a
  materialized layer a weighted sum of the gradients already at hand. No second backward
  pass (Opacus' ghost clipping needs one).

For a convolution the ghost norm needs the ``T x T`` Gram matrix of the unfolded patches.
We build it from the Gram matrix of the *pixels* (``C`` channels, ``H*W`` pixels) summed
over the ``kh*kw`` kernel offsets, shifted diagonals of one matrix, which is ``kh*kw``
times cheaper than the patches' own Gram matrix. On ResNet-20 this makes the 64-channel
8x8 stage ghost (its per-example gradients cost 6x the batch's weight gradient on CPU)
and leaves the 16- and 32-channel stages materialized (:func:`ghost_cheaper`).

:class:`BookKeeping` records; :meth:`BookKeeping.clip_and_accumulate` writes the clipped
sum to each parameter's ``summed_grad``, and :func:`bookkeeping_optimizer` makes an Opacus
``DPOptimizer`` (or ``DistributedDPOptimizer``) take it from there, so the noise, its
generator, the scaling and the accountant's hook are Opacus' own.
``tests/privacy/test_bookkeeping.py`` checks the update against Opacus' ``DPOptimizer`` fed
per-example autograd gradients.

>>> import torch
>>> from opacus.optimizers import DPOptimizer
>>> from raigate.zoo import resnet20
>>> net = resnet20(num_classes=3, norm="group")
>>> engine = BookKeeping(net)
>>> opt = bookkeeping_optimizer(DPOptimizer, engine)(
...     torch.optim.SGD(net.parameters(), lr=0.1),
...     noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4)
>>> x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
>>> torch.nn.functional.cross_entropy(engine.forward(net, x), y).backward()
>>> opt.step()
>>> engine.detach()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from raigate.errors import ConfigError
from raigate.privacy.grad_sample import (
    FAST_SAMPLERS,
    ROW_CHUNK,
    _own_trainable,
    fast_unsupported,
    per_sample,
)

__all__ = ["BookKeeping", "bookkeeping_optimizer", "ghost_cheaper"]


def ghost_cheaper(layer: nn.Module, a: Tensor, g: Tensor) -> bool:
    """Whether the ghost norm costs fewer multiply-adds per example than materializing.

    Conv2d (one group, numeric padding): pixel Gram ``(H*W)^2 * C`` plus output Gram
    ``T^2 * O`` against ``T * O * C * kh * kw`` for the per-example gradient. Linear on
    ``[B, features]`` inputs: the ghost norm is two dot products, always cheaper.
    """
    if isinstance(layer, nn.Linear):
        return a.dim() == 2
    if isinstance(layer, nn.Conv2d) and layer.groups == 1 and not isinstance(layer.padding, str):
        c, pixels = a.shape[1], a.shape[2] * a.shape[3]
        o, t = g.shape[1], g.shape[2] * g.shape[3]
        kk = layer.kernel_size[0] * layer.kernel_size[1]
        return pixels * pixels * c + t * t * o < t * o * c * kk
    return False


def _conv_ghost_sq(layer: nn.Conv2d, a: Tensor, g: Tensor) -> Tensor:
    """``[B]`` squared Frobenius norms of the per-example weight gradients, never formed.

    The patch Gram ``A[t, t'] = sum_k x[p(t) + k] . x[p(t') + k]`` (``p(t)`` the corner of
    output position ``t``'s receptive field in the padded input, ``k`` the kernel offsets
    times the dilation) is a sum of strided slices of the padded pixel Gram
    ``P[u, v] = x_u . x_v``, taken in two passes (kernel rows, then kernel columns:
    ``kh + kw`` slices instead of ``kh * kw``); the norm is ``sum_{t,t'} A[t, t'] G[t, t']``
    with ``G[t, t'] = g_t . g_t'``.
    """
    n, c, h, w = a.shape
    _, o, ho, wo = g.shape
    flat = a.reshape(n, c, h * w)
    pix = torch.bmm(flat.transpose(1, 2), flat).view(n, h, w, h, w)
    ph, pw = layer.padding  # type: ignore[misc]
    pix = F.pad(pix, (pw, pw, ph, ph, pw, pw, ph, ph))  # zero rows/columns for the padding
    g2 = g.reshape(n, o, ho * wo)
    gram_g = torch.bmm(g2.transpose(1, 2), g2)
    (sh, sw), (dh, dw), (kh, kw) = layer.stride, layer.dilation, layer.kernel_size

    def window(start: int, stride: int, size: int) -> slice:
        return slice(start, start + stride * (size - 1) + 1, stride)

    rows = torch.zeros(n, ho, pix.shape[2], ho, pix.shape[4], dtype=a.dtype, device=a.device)
    for i in range(kh):
        r = window(i * dh, sh, ho)
        rows += pix[:, r, :, r, :]
    patch = torch.zeros(n, ho, wo, ho, wo, dtype=a.dtype, device=a.device)
    for j in range(kw):
        q = window(j * dw, sw, wo)
        patch += rows[:, :, q, :, q]
    return torch.bmm(patch.view(n, 1, -1), gram_g.view(n, -1, 1)).view(n)


def _group_stats(layer: nn.GroupNorm, a: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example, per-group mean and 1/std ``[B, G]`` of GroupNorm's input: read off the
    autograd node, which saved them (``native_group_norm``'s second and third results),
    else computed again."""
    n, groups = a.shape[0], layer.num_groups
    try:
        mean, rstd = y.grad_fn._saved_result1, y.grad_fn._saved_result2  # type: ignore[union-attr]
        if mean.numel() == rstd.numel() == n * groups:
            return mean.detach().view(n, groups), rstd.detach().view(n, groups)
    except (AttributeError, RuntimeError):
        pass
    var, mean = torch.var_mean(a.reshape(n, groups, -1), dim=2, unbiased=False)
    return mean, (var + layer.eps).rsqrt()


def _group_norm_grads(
    layer: nn.GroupNorm, a: Tensor, stats: tuple[Tensor, Tensor], g: Tensor, scale: float
) -> dict[nn.Parameter, Tensor]:
    """Per-example GroupNorm gradients from its input and saved statistics:
    ``d gamma_c = rstd * (sum(a * g) - mean * sum(g))`` over channel ``c``'s positions,
    ``d beta_c = sum(g)``; :data:`ROW_CHUNK` rows at a time."""
    n, c = g.shape[:2]
    per_group = c // layer.num_groups
    mean = stats[0].repeat_interleave(per_group, dim=1)
    rstd = stats[1].repeat_interleave(per_group, dim=1)
    ag = torch.empty(n, c, dtype=g.dtype, device=g.device)
    gsum = torch.empty(n, c, dtype=g.dtype, device=g.device)
    for i in range(0, n, ROW_CHUNK):
        rows = slice(i, i + ROW_CHUNK)
        gr = g[rows].reshape(-1, c, g[0].numel() // c)
        ag[rows] = (a[rows].reshape(gr.shape) * gr).sum(dim=2)
        gsum[rows] = gr.sum(dim=2)
    out: dict[nn.Parameter, Tensor] = {}
    if layer.weight is not None and layer.weight.requires_grad:
        out[layer.weight] = rstd * (ag - mean * gsum) * scale
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = gsum * scale
    return out


def _conv_weight_grad(layer: nn.Conv2d, a: Tensor, g: Tensor) -> Tensor:
    """The ordinary (batch-summed) weight gradient of ``layer`` for input ``a``, output
    gradient ``g``: the native kernel, no input gradient."""
    _, grad_w, _ = torch.ops.aten.convolution_backward(
        g,
        a,
        layer.weight.detach(),
        None,
        list(layer.stride),
        list(layer.padding),  # type: ignore[arg-type]
        list(layer.dilation),
        False,
        [0, 0],
        1,
        [False, True, False],
    )
    return grad_w  # type: ignore[no-any-return]


@dataclass
class _Ghost:
    """One call of a ghost-normed layer: its input and output gradient, kept until the clip
    factors are known."""

    layer: nn.Module
    a: Tensor
    g: Tensor


@dataclass
class _Pending:
    """Everything one backward pass left behind."""

    sq_norms: list[Tensor] = field(default_factory=list)
    ghosts: list[_Ghost] = field(default_factory=list)
    samples: dict[nn.Parameter, Tensor] = field(default_factory=dict)
    rows: int = 0


class BookKeeping:
    """Record a backward pass of ``net`` for book-keeping DP-SGD (in place, no wrapper).

    Covers the layers of ``fast`` (:func:`raigate.privacy.grad_sample.fast_unsupported`):
    Conv2d, Linear, GroupNorm. A layer called more than once in one forward (shared
    weights) is materialized, since its per-example gradient is the sum over the calls.
    ``loss_reduction="mean"``: each row's gradient is that of its own loss, as in Opacus.
    """

    def __init__(self, net: nn.Module, *, loss_reduction: Literal["mean", "sum"] = "mean") -> None:
        bad = fast_unsupported(net)
        if bad:
            raise ConfigError(f"book-keeping DP-SGD: unsupported layers {', '.join(bad[:3])}")
        self.net = net
        self.loss_reduction = loss_reduction
        self._params = [p for p in net.parameters() if p.requires_grad]
        self._pending = _Pending()
        self._calls: dict[nn.Module, int] = {}
        self._handles: list[RemovableHandle] = []
        self._params_of: dict[nn.Module, list[nn.Parameter]] = {}
        self._live: set[nn.Module] = set()  # layers whose parameters _enter unfroze
        self._active = False  # inside forward()
        for m in net.modules():
            if type(m) in FAST_SAMPLERS and _own_trainable(m):
                self._params_of[m] = _own_trainable(m)
                self._handles.append(m.register_forward_pre_hook(self._enter))
                self._handles.append(m.register_forward_hook(self._capture))

    def forward(self, module: nn.Module, x: Tensor) -> Tensor:
        """``module(x)`` with the parameters frozen while the graph is built, so backward
        forms no summed parameter gradient (the clipped sum replaces it). Only a layer
        whose input needs no gradient (the first) keeps its parameters live, so autograd
        still reaches every layer: one small weight gradient instead of the gradient of
        the input image (for a 3-channel stem the dearer of the two, measured 5x)."""
        self._calls.clear()
        for p in self._params:
            p.requires_grad_(False)
        self._active = True
        try:
            return module(x)  # type: ignore[no-any-return]
        finally:
            self._active = False
            self._live.clear()
            for p in self._params:
                p.requires_grad_(True)

    def _enter(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        if not (self._active and module.training and torch.is_grad_enabled()):
            return
        if not any(isinstance(t, Tensor) and t.requires_grad for t in inputs):
            self._live.add(module)
            for p in self._params_of[module]:
                p.requires_grad_(True)

    def _capture(self, module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        if module in self._live:  # frozen again after the first layer
            self._live.discard(module)
            for p in self._params_of[module]:
                p.requires_grad_(False)
        if not isinstance(output, Tensor) or not output.requires_grad:
            return
        self._calls[module] = self._calls.get(module, 0) + 1
        a = inputs[0].detach()
        # Keep nothing autograd does not keep anyway: a layer's input is saved by it or by
        # the ReLU before it, but a GroupNorm output would be an extra activation-sized
        # tensor per layer (measured +25% step time at batch 500), so keep its statistics.
        stats = _group_stats(module, a, output) if isinstance(module, nn.GroupNorm) else None

        def on_grad(grad: Tensor) -> None:
            self._record(module, a, stats, grad)

        output.register_hook(on_grad)

    def _record(
        self, module: nn.Module, a: Tensor, stats: tuple[Tensor, Tensor] | None, g: Tensor
    ) -> None:
        pending = self._pending
        n = a.shape[0]
        pending.rows = n
        scale = n if self.loss_reduction == "mean" else 1
        ghost = self._calls.get(module, 1) == 1 and ghost_cheaper(module, a, g)
        if not ghost:
            if stats is not None:
                grads = _group_norm_grads(module, a, stats, g, scale)  # type: ignore[arg-type]
            else:
                grads = per_sample(module, a, None, g, scale)
            for p, gs in grads.items():
                prev = pending.samples.get(p)
                pending.samples[p] = gs if prev is None else prev + gs
            return
        if isinstance(module, nn.Linear):
            sq = (a * a).sum(dim=1) * (g * g).sum(dim=1)
        else:
            sq = torch.cat(
                [
                    _conv_ghost_sq(module, a[i : i + ROW_CHUNK], g[i : i + ROW_CHUNK])  # type: ignore[arg-type]
                    for i in range(0, n, ROW_CHUNK)
                ]
            )
        bias = getattr(module, "bias", None)
        if bias is not None:
            pending.samples[bias] = g.reshape(n, g.shape[1], -1).sum(dim=2) * scale
        pending.sq_norms.append(sq * (scale * scale))
        pending.ghosts.append(_Ghost(module, a, g))

    def clip_and_accumulate(self, max_grad_norm: float, weights: Tensor | None = None) -> None:
        """Add ``sum_i w_i * min(1, C / (||grad_i|| + 1e-6)) * grad_i`` to every
        parameter's ``summed_grad`` (Opacus' clip factor, to the same 1e-6), then forget
        the recorded pass. ``weights``: optional per-example factors (group balancing,
        :mod:`raigate.privacy.balance`). An empty batch adds zeros."""
        pending, self._pending = self._pending, _Pending()
        sq = [s for s in pending.sq_norms]
        sq += [gs.reshape(len(gs), -1).pow(2).sum(dim=1) for gs in pending.samples.values()]
        if not sq or pending.rows == 0:
            for p in self._params:
                _add_summed(p, torch.zeros_like(p))
            return
        norms = torch.stack(sq, dim=1).sum(dim=1).sqrt()
        factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        if weights is not None:
            if len(weights) != len(factor):
                raise RuntimeError(f"{len(weights)} sample weights for {len(factor)} examples")
            factor = factor * weights.to(factor.device, factor.dtype)
        scale = pending.rows if self.loss_reduction == "mean" else 1
        done: set[nn.Parameter] = set()
        for p, gs in pending.samples.items():
            _add_summed(p, torch.einsum("i,i...", factor.to(gs.dtype), gs))
            done.add(p)
        for ghost in pending.ghosts:
            layer, a, g = ghost.layer, ghost.a, ghost.g
            cg = g * (factor * scale).view(-1, *([1] * (g.dim() - 1))).to(g.dtype)
            linear = isinstance(layer, nn.Linear)
            grad = cg.t() @ a if linear else _conv_weight_grad(layer, a, cg)  # type: ignore[arg-type]
            _add_summed(layer.weight, grad)
            done.add(layer.weight)
        for p in self._params:  # a layer no gradient reached this pass (unused branch)
            if p not in done:
                _add_summed(p, torch.zeros_like(p))

    def discard(self) -> None:
        """Forget a recorded pass without using it."""
        self._pending = _Pending()

    def detach(self) -> None:
        """Remove every hook and buffer: ``net`` is a plain module again."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.discard()
        for p in self.net.parameters():
            for attr in ("grad_sample", "summed_grad", "_processed"):
                if hasattr(p, attr):
                    delattr(p, attr)


def _add_summed(p: nn.Parameter, grad: Tensor) -> None:
    prev = getattr(p, "summed_grad", None)
    p.summed_grad = grad if prev is None else prev + grad  # type: ignore[attr-defined]


def bookkeeping_optimizer(base: type, engine: BookKeeping) -> type:
    """A subclass of Opacus' ``DPOptimizer`` (or ``DistributedDPOptimizer``) that takes the
    clipped sum from ``engine`` instead of from ``p.grad_sample``; noise, scaling, the
    accountant's step hook and Opacus' skipped steps (``BatchMemoryManager``) are the
    base class's. ``sample_weights`` (``[B]`` or ``None``) multiply the clip factors, as in
    :func:`raigate.privacy.balance.weighted_clip_optimizer`."""

    class BookKeepingOptimizer(base):  # type: ignore[misc, valid-type]
        sample_weights: Tensor | None = None

        @property
        def accumulated_iterations(self) -> int:
            return 1  # one backward pass per step() call, its clipped sum already added

        def clip_and_accumulate(self) -> None:
            engine.clip_and_accumulate(self.max_grad_norm, self.sample_weights)

        def pre_step(self, closure: Any = None) -> bool:
            # DPOptimizer.pre_step without its p.grad_sample check: there is none here.
            self.clip_and_accumulate()
            if self._check_skip_next_step():
                self._is_last_step_skipped = True
                return False
            self.add_noise()
            self.scale_grad()
            if self.step_hook:
                self.step_hook(self)
            self._is_last_step_skipped = False
            return True

        def zero_grad(self, set_to_none: bool = False) -> None:
            for p in self.params:
                p.grad_sample = None  # set by the training loop for an empty batch
                if not self._is_last_step_skipped:
                    p.summed_grad = None
            self.original_optimizer.zero_grad(set_to_none)

    BookKeepingOptimizer.__name__ = f"BookKeeping{base.__name__}"
    BookKeepingOptimizer.__qualname__ = BookKeepingOptimizer.__name__
    return BookKeepingOptimizer
