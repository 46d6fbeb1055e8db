"""The reference networks: shapes, parameter counts, and state-dict keys that match the
published checkpoints (akamaster's CIFAR ResNets, Captum's tutorial net)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raigate.errors import ConfigError
from raigate.zoo import (
    GROUP_NORM_GROUPS,
    captum_cifar_net,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    small_cnn,
)


def _params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _akamaster_keys(blocks: int) -> list[str]:
    bn = ["weight", "bias", "running_mean", "running_var"]
    keys = ["conv1.weight", *(f"bn1.{s}" for s in bn)]
    for layer in (1, 2, 3):
        for b in range(blocks):
            pre = f"layer{layer}.{b}"
            keys += [f"{pre}.conv1.weight", *(f"{pre}.bn1.{s}" for s in bn)]
            keys += [f"{pre}.conv2.weight", *(f"{pre}.bn2.{s}" for s in bn)]
    return [*keys, "linear.weight", "linear.bias"]


@pytest.mark.parametrize(
    ("factory", "blocks", "params"),
    [
        (resnet20, 3, 269_722),
        (resnet32, 5, 464_154),
        (resnet44, 7, 658_586),
        (resnet56, 9, 853_018),
    ],
)
def test_cifar_resnets_match_he_et_al_and_akamaster_keys(factory, blocks, params) -> None:
    net = factory()
    # He et al. 2016 table 6: 0.27M / 0.46M / 0.66M / 0.85M parameters.
    assert _params(net) == params
    keys = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    assert keys == _akamaster_keys(blocks)


def test_resnet_output_shapes_and_num_classes() -> None:
    net = resnet20(num_classes=7).eval()
    assert net(torch.rand(3, 3, 32, 32)).shape == (3, 7)
    # Adaptive pooling: other sizes and channel counts work too.
    assert resnet20(4, in_channels=1).eval()(torch.rand(2, 1, 48, 40)).shape == (2, 4)


def test_option_a_shortcuts_hold_no_parameters() -> None:
    net = resnet20()
    downsampling = net.layer2[0]
    assert list(downsampling.shortcut.parameters()) == []
    x = torch.rand(2, 16, 32, 32)
    assert downsampling.shortcut(x).shape == (2, 32, 16, 16)
    # The padded channels are zeros on both sides (planes // 4 each).
    out = downsampling.shortcut(x)
    assert torch.all(out[:, :8] == 0) and torch.all(out[:, 24:] == 0)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])


def test_group_norm_resnet_has_no_batchnorm_and_same_conv_linear_shapes() -> None:
    bn, gn = resnet20(norm="batch"), resnet20(norm="group")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in gn.modules())
    groups = [m for m in gn.modules() if isinstance(m, nn.GroupNorm)]
    assert len(groups) == 19
    assert all(m.num_groups == min(GROUP_NORM_GROUPS, m.num_channels) for m in groups)
    bn_sd, gn_sd = bn.state_dict(), gn.state_dict()
    for k, v in bn_sd.items():
        if ".bn" in k or k.startswith("bn1"):
            continue
        assert gn_sd[k].shape == v.shape, k
    # GroupNorm keeps weight/bias under the same names, no running statistics.
    assert gn_sd["layer1.0.bn1.weight"].shape == (16,)
    assert not any("running" in k for k in gn_sd)
    assert gn.train()(torch.rand(1, 3, 32, 32)).shape == (1, 10)  # batch of 1 trains


def test_resnet_rejects_other_norms() -> None:
    with pytest.raises(ConfigError, match="norm"):
        resnet20(norm="none")


@pytest.mark.parametrize("norm", ["none", "batch", "group"])
def test_small_cnn_is_small_and_fits_any_size(norm: str) -> None:
    net = small_cnn(num_classes=3, norm=norm).eval()
    assert 10_000 <= _params(net) <= 100_000
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    assert net(torch.rand(2, 3, 64, 48)).shape == (2, 3)
    gray = small_cnn(2, in_channels=1, norm=norm).eval()
    assert gray(torch.rand(1, 1, 28, 28)).shape == (1, 2)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert has_bn == (norm == "batch")


def test_small_cnn_learns_in_a_few_steps() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    y = (x[:, 0].mean(dim=(1, 2)) > x[:, 2].mean(dim=(1, 2))).long()
    x[y == 1, 0] += 0.5  # an easy, learnable signal
    net = small_cnn(2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_captum_cifar_net_keys_and_shape() -> None:
    net = captum_cifar_net()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {
        "conv1.weight": (6, 3, 5, 5),
        "conv1.bias": (6,),
        "conv2.weight": (16, 6, 5, 5),
        "conv2.bias": (16,),
        "fc1.weight": (120, 400),
        "fc1.bias": (120,),
        "fc2.weight": (84, 120),
        "fc2.bias": (84,),
        "fc3.weight": (10, 84),
        "fc3.bias": (10,),
    }
    assert net(torch.rand(5, 3, 32, 32)).shape == (5, 10)
    assert captum_cifar_net(num_classes=4)(torch.rand(1, 3, 32, 32)).shape == (1, 4)
    # DeepLift needs one ReLU module per use.
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 4
