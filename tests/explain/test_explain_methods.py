"""Attribution methods against closed forms: IG on a linear model, completeness, Grad-CAM
by hand, SmoothGrad/saliency/occlusion on a linear model; skips and layer errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raigate import wrap
from raigate.errors import ConfigError
from raigate.explain.methods import (
    METHODS,
    AttributionConfig,
    gaussian_blur,
    get_method,
    make_baseline,
)
from raigate.models.base import Model
from raigate.zoo import small_cnn

MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)


def linear_model(seed: int = 0) -> tuple[Model, nn.Linear]:
    torch.manual_seed(seed)
    lin = nn.Linear(3 * 6 * 6, 3)
    net = nn.Sequential(nn.Flatten(), lin)
    return wrap(net, class_names=["a", "b", "c"], input_shape=(3, 6, 6), mean=MEAN, std=STD), lin


def pixel_weights(lin: nn.Linear, target: torch.Tensor) -> torch.Tensor:
    """d logit_t / d x for the linear model: w_t / std per channel (closed form)."""
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return lin.weight.detach()[target].view(-1, 3, 6, 6) / std


@pytest.mark.parametrize("baseline", ["black", "blur", "uniform"])
def test_ig_on_a_linear_model_is_x_minus_baseline_times_w(baseline: str) -> None:
    model, lin = linear_model()
    x = torch.rand(5, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 2, 1, 0])
    config = AttributionConfig(baseline=baseline, n_steps=7, seed=3)  # type: ignore[arg-type]
    attr, delta = get_method("integrated-gradients").attribute_with_delta(model, x, target, config)
    b = make_baseline(x, config)
    expected = (x - b) * pixel_weights(lin, target)
    torch.testing.assert_close(attr, expected, rtol=1e-5, atol=1e-6)
    assert delta is not None and float(delta.abs().max()) < 1e-4


def test_ig_completeness_within_the_reported_delta() -> None:
    torch.manual_seed(0)
    net = small_cnn(num_classes=3)
    model = wrap(net, class_names=["a", "b", "c"], input_shape=(3, 16, 16), mean=0.5, std=0.25)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1, 2, 0])
    ig = get_method("integrated-gradients")
    gaps = []
    for n_steps in (4, 64):
        config = AttributionConfig(n_steps=n_steps, batch_size=16)
        attr, delta = ig.attribute_with_delta(model, x, target, config)
        with torch.no_grad():  # f(x) - f(baseline), computed here, not taken from Captum
            fx = model.logits(x).gather(1, target.view(-1, 1)).squeeze(1)
            fb = model.logits(torch.zeros_like(x)).gather(1, target.view(-1, 1)).squeeze(1)
        gap = attr.flatten(1).sum(1) - (fx - fb)
        assert delta is not None
        assert torch.all(gap.abs() <= delta.abs() + 1e-5)
        torch.testing.assert_close(gap, delta, rtol=1e-3, atol=1e-5)
        gaps.append(float(gap.abs().max()))
    # more quadrature points converge: 16x the points cut the worst gap at least 4-fold
    assert gaps[1] < 0.25 * gaps[0]


def test_saliency_and_smoothgrad_equal_abs_weight_on_a_linear_model() -> None:
    model, lin = linear_model()
    x = torch.rand(3, 3, 6, 6)
    target = torch.tensor([2, 0, 1])
    w = pixel_weights(lin, target).abs()
    config = AttributionConfig(smoothgrad_samples=5, batch_size=4)
    torch.testing.assert_close(get_method("saliency").attribute(model, x, target, config), w)
    # the gradient of a linear model is the same at every noisy copy
    sg = get_method("smoothgrad").attribute(model, x, target, config)
    torch.testing.assert_close(sg, w)


def test_occlusion_with_one_pixel_windows_is_the_linear_drop() -> None:
    model, lin = linear_model()
    x = torch.rand(2, 3, 6, 6)
    target = torch.tensor([1, 2])
    config = AttributionConfig(occlusion_window=1, occlusion_stride=1, batch_size=8)
    attr = get_method("occlusion").attribute(model, x, target, config)
    # blacking out pixel (i, j) in all channels drops the logit by sum_c x_c w_c / s_c
    drop = (x * pixel_weights(lin, target)).sum(dim=1, keepdim=True).expand_as(x)
    torch.testing.assert_close(attr, drop, rtol=1e-4, atol=1e-5)


class ConvPoolNet(nn.Module):
    """conv -> global average pool -> linear: Grad-CAM has a closed form here."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.conv(x)).flatten(1))


def test_gradcam_matches_the_hand_computed_cam() -> None:
    torch.manual_seed(0)
    net = ConvPoolNet()
    model = wrap(net, class_names=["a", "b"], input_shape=(3, 8, 8))
    x = torch.rand(3, 3, 8, 8)
    target = torch.tensor([0, 1, 1])
    method = get_method("gradcam")
    config = AttributionConfig()
    assert method.skip_reason(model, config) is None
    assert method.details(model, config)["layer"] == "conv"
    attr = method.attribute(model, x, target, config)
    with torch.no_grad():
        a = net.conv(x)  # [B, 5, 8, 8]; the layer output is already input-sized
        alpha = net.head.weight[target] / (8 * 8)  # d logit / d A_k(i, j), averaged
        cam = torch.relu((alpha[:, :, None, None] * a).sum(dim=1))
    torch.testing.assert_close(attr.sum(dim=1), cam, rtol=1e-4, atol=1e-6)


def test_gradcam_picks_the_last_conv_and_upsamples() -> None:
    model = wrap(small_cnn(num_classes=2), class_names=["a", "b"], input_shape=(3, 32, 32))
    method = get_method("gradcam")
    config = AttributionConfig()
    assert method.details(model, config)["layer"] == "features.8"
    attr = method.attribute(model, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), config)
    assert attr.shape == (2, 3, 32, 32) and float(attr.min()) >= 0


def test_gradcam_skipped_cleanly_without_conv_layers() -> None:
    model, _ = linear_model()
    reason = get_method("gradcam").skip_reason(model, AttributionConfig())
    assert reason is not None and "no Conv2d" in reason


class PatchNet(nn.Module):
    """ViT-like: a patchify conv (kernel = stride = 4) whose tokens are averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(tokens.mean(dim=1))


def test_gradcam_skips_a_patch_embedding_unless_forced() -> None:
    model = wrap(PatchNet(), class_names=["a", "b"], input_shape=(3, 16, 16))
    method = get_method("gradcam")
    reason = method.skip_reason(model, AttributionConfig())
    assert reason is not None and "patch embedding" in reason and "--layer" in reason
    forced = AttributionConfig(layer="patch")
    assert method.skip_reason(model, forced) is None
    attr = method.attribute(model, torch.rand(1, 3, 16, 16), torch.tensor([1]), forced)
    assert attr.shape == (1, 3, 16, 16)


def test_gradcam_bad_layer_is_a_config_error() -> None:
    model = wrap(small_cnn(num_classes=2), class_names=["a", "b"], input_shape=(3, 32, 32))
    method = get_method("gradcam")
    with pytest.raises(ConfigError, match=r"--layer 'nope' is not a module.*features\.8"):
        method.skip_reason(model, AttributionConfig(layer="nope"))
    with pytest.raises(ConfigError, match=r"--layer 'classifier' outputs shape \[1, 2\]"):
        method.skip_reason(model, AttributionConfig(layer="classifier"))


def test_smoothgrad_is_seeded_and_chunking_does_not_change_maps() -> None:
    torch.manual_seed(0)
    model = wrap(small_cnn(num_classes=2), class_names=["a", "b"], input_shape=(3, 16, 16))
    x = torch.rand(5, 3, 16, 16)
    target = torch.tensor([0, 1, 0, 1, 1])
    sg = get_method("smoothgrad")
    a = sg.attribute(model, x, target, AttributionConfig(smoothgrad_samples=4, seed=1))
    b = sg.attribute(model, x, target, AttributionConfig(smoothgrad_samples=4, seed=1))
    c = sg.attribute(model, x, target, AttributionConfig(smoothgrad_samples=4, seed=2))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    ig = get_method("integrated-gradients")
    whole = ig.attribute(model, x, target, AttributionConfig(n_steps=8, batch_size=64))
    parts = ig.attribute(model, x, target, AttributionConfig(n_steps=8, batch_size=2))
    torch.testing.assert_close(whole, parts, rtol=1e-4, atol=1e-6)


def test_baselines() -> None:
    x = torch.rand(2, 3, 8, 8)
    flat = torch.full((1, 3, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)
    blurred = make_baseline(x, AttributionConfig(baseline="blur", blur_sigma=1.0))
    assert blurred.shape == x.shape and float(blurred.std()) < float(x.std())
    u1 = make_baseline(x, AttributionConfig(baseline="uniform", seed=4))
    u2 = make_baseline(x, AttributionConfig(baseline="uniform", seed=4))
    torch.testing.assert_close(u1, u2)
    assert float(make_baseline(x, AttributionConfig()).abs().max()) == 0.0


def test_registry_names_the_known_methods() -> None:
    assert list(METHODS)[:5] == [
        "integrated-gradients",
        "saliency",
        "gradcam",
        "smoothgrad",
        "occlusion",
    ]
    with pytest.raises(ConfigError, match=r"unknown method 'shap'.*integrated-gradients"):
        get_method("shap")
