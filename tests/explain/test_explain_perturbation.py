"""The forward-only methods (feature ablation and KernelSHAP over square patches): the patch
grid by hand, closed forms on a linear model, Captum called directly on the white-box
network against raigate's method on its black-box twin, seeding and chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from raigate import wrap
from raigate.explain.methods import (
    METHODS,
    AttributionConfig,
    gaussian_blur,
    get_method,
    patch_mask,
)
from raigate.models.base import Capabilities, Model
from raigate.models.blackbox import QueryNet
from raigate.zoo import small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)
# a 6 x 6 image in patches of 4: rows 0-3 | 4-5, columns 0-3 | 4-5 (uneven on purpose)
PATCHES = [(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 6)),
           (slice(4, 6), slice(0, 4)), (slice(4, 6), slice(4, 6))]  # fmt: skip


def linear_model() -> tuple[Model, nn.Linear]:
    torch.manual_seed(0)
    lin = nn.Linear(3 * 6 * 6, 3)
    net = nn.Sequential(nn.Flatten(), lin)
    return wrap(net, class_names=["a", "b", "c"], input_shape=(3, 6, 6), mean=MEAN, std=STD), lin


def black_box_twin(model: Model) -> Model:
    """The same function behind a numpy predictor: queries only, no gradients."""
    net = model.net

    def predict(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(a)).numpy()

    return Model(
        QueryNet(predict),
        class_names=model.class_names,
        input_shape=model.input_shape,
        mean=model.normalize.mean.flatten().tolist(),
        std=model.normalize.std.flatten().tolist(),
        capabilities=Capabilities(gradients=False),
    )


def patch_contributions(
    lin: nn.Linear, x: torch.Tensor, base: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed form for the linear model: logit_t(x) - logit_t(x with patch p at the baseline)
    is sum over patch p and channels of w_t / std * (x - baseline). Returns the map (every
    pixel of a patch holds its patch's value) and the per-patch values ``[B, 4]``."""
    w = lin.weight.detach()[target].view(-1, 3, 6, 6) / torch.tensor(STD).view(1, 3, 1, 1)
    contrib = w * (x - base)
    expected = torch.empty_like(x)
    values = torch.empty(x.shape[0], len(PATCHES))
    for k, (rows, cols) in enumerate(PATCHES):
        v = contrib[:, :, rows, cols].sum(dim=(1, 2, 3))
        values[:, k] = v
        expected[:, :, rows, cols] = v.view(-1, 1, 1, 1)
    return expected, values


def test_patch_mask_is_a_row_major_grid_with_narrow_edges() -> None:
    mask = patch_mask((5, 7), 3)
    expected = torch.tensor(
        [[0, 0, 0, 1, 1, 1, 2],
         [0, 0, 0, 1, 1, 1, 2],
         [0, 0, 0, 1, 1, 1, 2],
         [3, 3, 3, 4, 4, 4, 5],
         [3, 3, 3, 4, 4, 4, 5]]
    )  # fmt: skip
    assert mask.shape == (1, 1, 5, 7)
    torch.testing.assert_close(mask[0, 0], expected)


@pytest.mark.parametrize("baseline", ["black", "blur", "uniform"])
def test_feature_ablation_on_a_linear_model_is_w_times_x_minus_baseline_per_patch(
    baseline: str,
) -> None:
    model, lin = linear_model()
    x = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 2, 1, 2])
    config = AttributionConfig(baseline=baseline, patch_size=4, batch_size=3, seed=5)  # type: ignore[arg-type]
    method = get_method("feature-ablation")
    assert not method.needs_gradients
    assert method.details(model, config) == {"baseline": baseline, "patch_size": 4}
    attr = method.attribute(model, x, target, config)
    if baseline == "black":
        base = torch.zeros_like(x)
    elif baseline == "blur":  # the image blurred with the default sigma, max(H, W) / 16 px
        base = gaussian_blur(x, 6 / 16)
    else:  # one U(0, 1) image drawn with the config's seed, the same for every sample
        base = torch.rand((3, 6, 6), generator=torch.Generator().manual_seed(5)).expand_as(x)
    expected, _ = patch_contributions(lin, x, base, target)
    torch.testing.assert_close(attr, expected, rtol=1e-4, atol=1e-5)


def test_kernelshap_on_a_linear_model_recovers_the_exact_shapley_values() -> None:
    # The linear model is additive over patches, so its Shapley value for a patch is the
    # patch's own contribution, and KernelSHAP's weighted regression fits it exactly.
    model, lin = linear_model()
    x = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([1, 0, 2])
    config = AttributionConfig(patch_size=4, kernelshap_samples=40, seed=3)
    attr = get_method("kernelshap").attribute(model, x, target, config)
    expected, values = patch_contributions(lin, x, torch.zeros_like(x), target)
    torch.testing.assert_close(attr, expected, rtol=1e-3, atol=1e-4)
    # efficiency: the patch values sum to f(x) - f(baseline)
    with torch.no_grad():
        gap = (model.logits(x) - model.logits(torch.zeros_like(x))).gather(1, target.view(-1, 1))
    torch.testing.assert_close(values.sum(dim=1), gap.squeeze(1), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def cnn() -> Model:
    torch.manual_seed(0)
    return wrap(small_cnn(num_classes=3), class_names=["a", "b", "c"], input_shape=(3, 16, 16),
                mean=0.5, std=0.25)  # fmt: skip


def test_both_methods_on_the_black_box_twin_equal_captum_on_the_network(cnn: Model) -> None:
    from captum.attr import FeatureAblation, KernelShap

    twin = black_box_twin(cnn)
    assert twin.mode == "black-box"
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    target = torch.tensor([2, 0, 1])
    config = AttributionConfig(
        baseline="uniform", patch_size=5, kernelshap_samples=30, batch_size=8, seed=7
    )
    base = torch.rand((3, 16, 16), generator=torch.Generator().manual_seed(7)).expand_as(x)
    # 16 x 16 in patches of 5: ids 0..15 on a 4 x 4 grid, the last row and column 1 px wide
    ids = (torch.arange(16) // 5).view(16, 1) * 4 + (torch.arange(16) // 5).view(1, 16)
    mask = ids.view(1, 1, 16, 16)

    got = get_method("feature-ablation").attribute(twin, x, target, config)
    ref = FeatureAblation(cnn).attribute(x, baselines=base, target=target, feature_mask=mask)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    # every pixel of a patch carries one value: 16 distinct values per image and channel
    assert len(torch.unique(got[0, 0])) <= 16

    before = twin.net.queries
    got = get_method("kernelshap").attribute(twin, x, target, config)
    assert twin.net.queries - before == 3 * 30  # one query per coalition and image
    refs = []
    for i in range(3):  # one seeded regression per image, as the method documents
        torch.manual_seed(7)
        refs.append(
            KernelShap(cnn).attribute(
                x[i : i + 1],
                baselines=base[i : i + 1],
                target=target[i : i + 1],
                feature_mask=mask,
                n_samples=30,
            )
        )
    torch.testing.assert_close(got, torch.cat(refs), rtol=1e-4, atol=1e-5)


def test_kernelshap_is_seeded_and_independent_of_chunking(cnn: Model) -> None:
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    target = torch.tensor([0, 1, 2, 0])
    ks = get_method("kernelshap")
    a = ks.attribute(cnn, x, target, AttributionConfig(kernelshap_samples=24, seed=1))
    b = ks.attribute(cnn, x, target, AttributionConfig(kernelshap_samples=24, seed=1, batch_size=1))
    c = ks.attribute(cnn, x, target, AttributionConfig(kernelshap_samples=24, seed=2))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    # the caller's RNG is left as it was
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    ks.attribute(cnn, x[:1], target[:1], AttributionConfig(kernelshap_samples=8))
    torch.testing.assert_close(torch.rand(3), expected)


def test_the_forward_only_methods_are_registered() -> None:
    forward_only = [name for name, m in METHODS.items() if not m.needs_gradients]
    assert forward_only == ["occlusion", "feature-ablation", "kernelshap"]
