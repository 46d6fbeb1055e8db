"""Book-keeping DP-SGD against Opacus' DPOptimizer fed per-example autograd gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from opacus.optimizers import DPOptimizer
from torch import Tensor, nn

from raigate.errors import ConfigError
from raigate.privacy.balance import weighted_clip_optimizer
from raigate.privacy.bookkeeping import BookKeeping, bookkeeping_optimizer, ghost_cheaper
from raigate.privacy.fold import fold_batchnorm
from raigate.privacy.grad_sample import resolve_mode


class TinyResBlock(nn.Module):
    """A ResNet-like net small enough for per-example autograd: a stem, one residual
    block with GroupNorm, a strided conv, a head. The 4x4 stage is ghost-normed, the 8x8
    ones materialized (checked below), so both paths meet in one clip."""

    def __init__(self, norm: str = "group") -> None:
        super().__init__()

        def nl(c: int) -> nn.Module:
            return nn.GroupNorm(2, c) if norm == "group" else nn.BatchNorm2d(c)

        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.n0 = nl(4)
        self.c1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.n1 = nl(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.n2 = nl(4)
        self.down = nn.Conv2d(4, 16, 3, stride=2, padding=1, bias=False)
        self.n3 = nl(16)
        self.c3 = nn.Conv2d(16, 16, 3, padding=1, dilation=1, bias=False)
        self.n4 = nl(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.n0(self.stem(x)))
        h = F.relu(h + self.n2(self.c2(F.relu(self.n1(self.c1(h))))))
        h = F.relu(self.n3(self.down(h)))
        h = F.relu(h + self.n4(self.c3(h)))
        return self.head(h.mean(dim=(2, 3)))


def folded_block() -> nn.Module:
    """The same net with BatchNorm folded into its convolutions (which gain biases)."""
    torch.manual_seed(1)
    net = TinyResBlock("batch").train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.rand(8, 3, 8, 8))
    folded, changes = fold_batchnorm(net)
    assert len(changes) == 5 and folded.c3.bias is not None
    return folded.train()


def shared_linear() -> nn.Module:
    """A layer called twice in one forward: its per-example gradient sums both calls."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.lin = nn.Linear(8, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x: Tensor) -> Tensor:
            h = self.conv(x).mean(dim=(2, 3))
            return self.head(self.lin(torch.tanh(self.lin(h))))

    return Twice()


def batch(n: int = 5) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def reference_update(
    net: nn.Module, x: Tensor, y: Tensor, *, sigma: float, clip: float, weights=None
) -> list[Tensor]:
    """Opacus' clip, noise and scaling applied to per-example autograd gradients."""
    params = list(net.parameters())
    rows = [
        torch.autograd.grad(F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]), params)
        for i in range(len(y))
    ]
    for j, p in enumerate(params):
        p.grad_sample = torch.stack([r[j] for r in rows])  # type: ignore[attr-defined]
    opt = weighted_clip_optimizer(DPOptimizer)(
        torch.optim.SGD(params, lr=1.0),
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=len(y),
        generator=torch.Generator().manual_seed(7),
    )
    opt.sample_weights = weights
    opt.pre_step()
    out = [p.grad.clone() for p in params]
    for p in params:
        p.grad, p.grad_sample, p.summed_grad = None, None, None  # type: ignore[attr-defined]
    return out


def bk_update(
    net: nn.Module, x: Tensor, y: Tensor, *, sigma: float, clip: float, weights=None
) -> list[Tensor]:
    engine = BookKeeping(net)
    opt = bookkeeping_optimizer(DPOptimizer, engine)(
        torch.optim.SGD(net.parameters(), lr=1.0),
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=len(y),
        generator=torch.Generator().manual_seed(7),
    )
    opt.sample_weights = weights
    F.cross_entropy(engine.forward(net, x), y).backward()
    formed = [n for n, p in net.named_parameters() if p.grad is not None]
    assert {n.split(".")[0] for n in formed} == {"stem" if hasattr(net, "stem") else "conv"}
    assert all(p.requires_grad for p in net.parameters())
    opt.pre_step()
    out = [p.grad.clone() for p in net.parameters()]
    engine.detach()
    return out


@pytest.mark.parametrize("make", [TinyResBlock, folded_block, shared_linear])
@pytest.mark.parametrize(("sigma", "chunk"), [(0.0, 64), (0.8, 64), (0.8, 2)])
def test_update_equals_opacus_on_per_example_autograd(make, sigma, chunk, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # chunk 2: the per-example work runs 2 rows at a time, as it does 64 at a time on big batches
    import raigate.privacy.bookkeeping as bk
    import raigate.privacy.grad_sample as gs

    monkeypatch.setattr(bk, "ROW_CHUNK", chunk)
    monkeypatch.setattr(gs, "ROW_CHUNK", chunk)
    torch.manual_seed(0)
    net = make()
    x, y = batch()
    # clip 0.05: every example is clipped, so the factors, not just the sum, are tested
    ref = reference_update(net, x, y, sigma=sigma, clip=0.05)
    ours = bk_update(net, x, y, sigma=sigma, clip=0.05)
    for a, b in zip(ref, ours, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_ghost_and_materialized_layers_both_occur() -> None:
    net = TinyResBlock()
    a8, g8 = torch.rand(2, 4, 8, 8), torch.rand(2, 4, 8, 8)
    a4, g4 = torch.rand(2, 16, 4, 4), torch.rand(2, 16, 4, 4)
    assert not ghost_cheaper(net.c1, a8, g8)  # 64^2*4 + 64^2*4 > 64*4*4*9
    assert ghost_cheaper(net.c3, a4, g4)  # 16^2*16 * 2 < 16*16*16*9
    assert ghost_cheaper(net.head, torch.rand(2, 16), torch.rand(2, 3))


def test_sample_weights_multiply_the_clip_factor() -> None:
    torch.manual_seed(0)
    net = TinyResBlock()
    x, y = batch()
    w = torch.tensor([1.0, 0.5, 0.25, 1.0, 0.75])
    ref = reference_update(net, x, y, sigma=0.0, clip=0.05, weights=w)
    ours = bk_update(net, x, y, sigma=0.0, clip=0.05, weights=w)
    for a, b in zip(ref, ours, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_physical_batches_accumulate_like_opacus() -> None:
    """Two backward passes, the first step skipped (BatchMemoryManager's pattern), equal
    one logical batch's update."""
    torch.manual_seed(0)
    net = TinyResBlock()
    x, y = batch(6)
    engine = BookKeeping(net)
    opt = bookkeeping_optimizer(DPOptimizer, engine)(
        torch.optim.SGD(net.parameters(), lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=0.05,
        expected_batch_size=6,
    )
    for part in (slice(0, 3), slice(3, 6)):
        if part.start == 0:
            opt.signal_skip_step(do_skip=True)
        F.cross_entropy(engine.forward(net, x[part]), y[part]).backward()
        done = opt.pre_step()
        opt.zero_grad(set_to_none=True) if not done else None
    ours = [p.grad.clone() for p in net.parameters()]
    engine.detach()
    ref = reference_update(net, x, y, sigma=0.0, clip=0.05)
    for a, b in zip(ref, ours, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_empty_batch_adds_only_noise_and_refusals() -> None:
    net = TinyResBlock()
    engine = BookKeeping(net)
    opt = bookkeeping_optimizer(DPOptimizer, engine)(
        torch.optim.SGD(net.parameters(), lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=1.0,
        expected_batch_size=4,
    )
    opt.pre_step()
    assert all(float(p.grad.abs().max()) == 0.0 for p in net.parameters())
    with pytest.raises(ConfigError, match="unsupported layers 0 \\(Embedding\\)"):
        BookKeeping(nn.Sequential(nn.Embedding(4, 2)))
    with pytest.raises(ConfigError, match="--augmult needs"):
        resolve_mode(net, "bk", augmult=2)


@pytest.mark.parametrize(
    ("conv", "size"),
    [
        (nn.Conv2d(6, 5, 3, padding=1), 6),
        (nn.Conv2d(4, 8, 3, stride=2, padding=1), 7),
        (nn.Conv2d(3, 4, (3, 2), stride=(1, 2), dilation=2, padding=(2, 1)), 9),
        (nn.Conv2d(3, 4, 2, padding=0), 5),
    ],
)
def test_conv_ghost_norm_equals_the_materialized_norm(conv: nn.Conv2d, size: int) -> None:
    from raigate.privacy.bookkeeping import _conv_ghost_sq
    from raigate.privacy.grad_sample import _conv2d_weight_grouped

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, conv.in_channels, size, size, generator=g)
    out = conv(a)
    grad = torch.randn(out.shape, generator=g)
    full = _conv2d_weight_grouped(conv, a, grad).reshape(3, -1).pow(2).sum(dim=1)
    torch.testing.assert_close(_conv_ghost_sq(conv, a, grad), full, rtol=1e-4, atol=1e-5)


def test_group_norm_statistics_are_read_off_autograd_or_recomputed() -> None:
    from raigate.privacy.bookkeeping import _group_stats

    gn = nn.GroupNorm(2, 4)
    a = torch.randn(3, 4, 5, 5) * 3 + 1
    saved = _group_stats(gn, a, gn(a.requires_grad_(True)))
    with torch.no_grad():
        again = _group_stats(gn, a.detach(), gn(a))  # no autograd node: computed
    var, mean = torch.var_mean(a.detach().reshape(3, 2, -1), dim=2, unbiased=False)
    for got in (saved, again):
        torch.testing.assert_close(got[0], mean)
        torch.testing.assert_close(got[1], (var + gn.eps).rsqrt())
