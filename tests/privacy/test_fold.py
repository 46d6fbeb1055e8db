"""BatchNorm folding keeps the function; the GroupNorm fixer and the rebuild factory."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raigate.errors import ConfigError
from raigate.privacy.fold import fold_batchnorm, private_net, rebuild, replace_batchnorm
from raigate.zoo import resnet20, small_cnn


def randomize_batchnorm(net: nn.Module, seed: int = 0) -> nn.Module:
    """Pretrained-looking statistics: folding the defaults (mean 0, var 1) proves little."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
    return net.eval()


@pytest.mark.parametrize("factory", [resnet20, lambda: small_cnn(num_classes=10, norm="batch")])
def test_folding_leaves_outputs_unchanged(factory) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = randomize_batchnorm(factory())
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x)
        folded, changes = fold_batchnorm(net)
        got = folded(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert len(changes) == n_bn > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # the original is untouched
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_fold_by_hand_on_one_conv() -> None:
    conv = nn.Conv2d(2, 3, 1, bias=True)
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.arange(6.0).view(3, 2, 1, 1))
        conv.bias.copy_(torch.tensor([1.0, -1.0, 0.5]))
        bn.running_mean.copy_(torch.tensor([0.5, 1.0, -2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
        bn.weight.copy_(torch.tensor([2.0, 1.0, 3.0]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    folded, _ = fold_batchnorm(nn.Sequential(conv, bn))
    s = [2.0 / math.sqrt(4 + bn.eps), 1.0 / math.sqrt(1 + bn.eps), 3.0 / math.sqrt(0.25 + bn.eps)]
    expected_bias = [(1.0 - 0.5) * s[0], (-1.0 - 1.0) * s[1] + 1.0, (0.5 + 2.0) * s[2] - 1.0]
    torch.testing.assert_close(folded[0].bias.detach(), torch.tensor(expected_bias))
    torch.testing.assert_close(
        folded[0].weight.detach()[2, :, 0, 0], torch.tensor([4.0, 5.0]) * s[2]
    )


def test_unfoldable_batchnorm_is_a_clear_error() -> None:
    net = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(ConfigError, match="BatchNorm 0 is not fed by a single convolution"):
        fold_batchnorm(net)
    no_stats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ConfigError, match="keeps no running statistics"):
        fold_batchnorm(no_stats)


def test_groupnorm_fixer_lists_changes_with_opacus_groups() -> None:
    fixed, changes = replace_batchnorm(resnet20())
    gns = {n: m for n, m in fixed.named_modules() if isinstance(m, nn.GroupNorm)}
    assert len(gns) == len(changes) == 19
    # Opacus' rule: gcd(32, channels) groups
    assert {m.num_channels: m.num_groups for m in gns.values()} == {16: 16, 32: 32, 64: 32}
    assert changes[0] == "bn1 (BatchNorm2d) replaced by GroupNorm (16 groups)"


@pytest.mark.parametrize("action", ["fold", "groupnorm"])
def test_private_net_rebuilds_the_architecture_strictly(action: str) -> None:
    trained, _ = rebuild(randomize_batchnorm(resnet20(num_classes=4)), action)  # type: ignore[arg-type]
    fresh = private_net(base="raigate.zoo:resnet20", batchnorm=action, num_classes=4)  # type: ignore[arg-type]
    fresh.load_state_dict(trained.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), trained.eval()(x))
