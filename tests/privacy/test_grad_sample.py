"""raigate's fast per-sample gradients against Opacus' hooks mode and plain autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from raigate.errors import ConfigError
from raigate.privacy.grad_sample import (
    FastGradSample,
    average_augmentations,
    fast_unsupported,
    resolve_mode,
)
from raigate.zoo import small_cnn


def odd_convs() -> nn.Module:
    """Both convolution paths (unfold below 8 input channels, grouped kernel from 8 on)
    with strides, dilation, asymmetric and "same" padding, biases, GroupNorm."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.GroupNorm(4, 8),
        nn.ReLU(),
        nn.Conv2d(8, 6, (3, 2), stride=(1, 2), dilation=2, padding=(2, 1)),
        nn.ReLU(),
        nn.Conv2d(6, 4, (3, 2), dilation=2, padding="same", bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    )


def batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("make", [odd_convs, lambda: small_cnn(num_classes=3, norm="group")])
def test_per_sample_grads_equal_single_example_autograd(make) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = make()
    x, y = batch()
    engine = FastGradSample(net)
    F.cross_entropy(engine.forward(net, x), y).backward()
    fast = {n: p.grad_sample.clone() for n, p in net.named_parameters()}
    assert all(p.grad is None for p in net.parameters())  # the summed gradient is skipped
    engine.detach()
    for i in range(len(y)):  # the independent computation: one example at a time
        grads = torch.autograd.grad(
            F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]), list(net.parameters())
        )
        for (name, _), g in zip(net.named_parameters(), grads, strict=True):
            torch.testing.assert_close(fast[name][i], g, rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_clipped_noised_gradients_equal_opacus_hooks_mode() -> None:
    torch.manual_seed(0)
    reference = small_cnn(num_classes=3, norm="group")
    ours = small_cnn(num_classes=3, norm="group")
    ours.load_state_dict(reference.state_dict())
    x, y = batch(16)
    gsm = GradSampleModule(reference)
    engine = FastGradSample(ours)
    grads = []
    for module, fwd in ((gsm, gsm), (ours, None)):
        opt = DPOptimizer(
            torch.optim.SGD(module.parameters(), lr=0.1),
            noise_multiplier=0.7,
            max_grad_norm=0.05,  # small enough that every example is clipped
            expected_batch_size=16,
            generator=torch.Generator().manual_seed(11),
        )
        out = fwd(x) if fwd is not None else engine.forward(ours, x)
        F.cross_entropy(out, y).backward()
        opt.pre_step()  # clip, sum, noise, scale: what step() applies before SGD
        grads.append([p.grad.clone() for p in module.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_modes_are_chosen_and_refused_by_coverage() -> None:
    assert resolve_mode(small_cnn(num_classes=2, norm="group"), "auto") == "bk"
    assert resolve_mode(small_cnn(num_classes=2, norm="group"), "auto", augmult=2) == "fast"
    embed = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))
    assert fast_unsupported(embed) == ["0 (Embedding)"]
    assert resolve_mode(embed, "auto") == "hooks"
    with pytest.raises(ConfigError, match="fast does not cover 0 \\(Embedding\\)"):
        resolve_mode(embed, "fast")
    with pytest.raises(ConfigError, match="--grad-sample-mode must be one of"):
        resolve_mode(embed, "ghostly")


def test_augmentation_multiplicity_averages_adjacent_copies() -> None:
    p = nn.Parameter(torch.zeros(2))
    p.grad_sample = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [20.0, 2.0]])  # type: ignore[attr-defined]
    average_augmentations([p], 2)
    torch.testing.assert_close(p.grad_sample, torch.tensor([[2.0, 3.0], [15.0, 1.0]]))  # type: ignore[attr-defined]


def test_detach_leaves_a_plain_module() -> None:
    net = small_cnn(num_classes=2, norm="group")
    engine = FastGradSample(net)
    x, _ = batch(2)
    F.cross_entropy(engine.forward(net, x), torch.tensor([0, 1])).backward()
    engine.detach()
    assert all(not m._forward_hooks for m in net.modules())
    assert not any(hasattr(p, "grad_sample") for p in net.parameters())


@pytest.mark.filterwarnings("ignore")
def test_training_with_opacus_hooks_mode_gives_the_same_model(tiny_dp, dp_runner) -> None:  # type: ignore[no-untyped-def]
    """Same data, sampling and noise: only the per-sample gradient path differs."""
    hooks = dp_runner(grad_sample_mode="hooks")
    assert hooks.ledger.grad_sample_mode == "hooks" and tiny_dp.ledger.grad_sample_mode == "bk"
    assert hooks.ledger.epsilon == tiny_dp.ledger.epsilon
    # One step agrees to float rounding (test above); over 6 steps at lr 0.5 the rounding
    # differences of the two formulas grow, so compare the paths against the distance
    # both models travelled from their common starting point.
    torch.manual_seed(0)
    start = small_cnn(num_classes=2, norm="group").state_dict()
    a, b = hooks.model.net.state_dict(), tiny_dp.model.net.state_dict()
    gap = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float((b[k] - start[k]).abs().max()) for k in b)
    assert moved > 0.05 and gap < 0.01 * moved
    assert not any(m._forward_hooks for m in hooks.model.net.modules())  # unwrapped
