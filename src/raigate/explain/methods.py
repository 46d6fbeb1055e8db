"""Attribution methods in pixel space: a small explicit registry over Captum.

Every method maps ``(model, x, target, config)`` to attributions shaped like ``x``
(``[B, C, H, W]``), computed on the :class:`~raigate.models.base.Model` adapter, so the
model's normalization is inside the differentiated function and the maps live in the same
[0, 1] pixel space as the images. Inputs are split into chunks of at most
``config.batch_size`` samples, and each method bounds the rows of one forward/backward pass
by ``config.batch_size`` too (Captum's ``internal_batch_size``, ``nt_samples_batch_size``,
``perturbations_per_eval``), so memory stays bounded for any number of samples.

Built-in methods (``METHODS``):

* ``integrated-gradients``: Sundararajan et al. 2017, Gauss-Legendre quadrature with
  ``n_steps`` points; also returns the completeness (convergence) delta per sample.
* ``saliency``: Simonyan et al. 2014, ``|d logit_target / d x|``.
* ``gradcam``: Selvaraju et al. 2017 on the last ``Conv2d`` of ``model.net`` (or
  ``config.layer``), ReLU applied, upsampled bilinearly to the input size.
* ``smoothgrad``: Smilkov et al. 2017, mean of ``|gradient|`` over ``smoothgrad_samples``
  noisy copies (Gaussian, std ``smoothgrad_stdev`` in pixel units).
* ``occlusion``: Zeiler & Fergus 2014, drop in the target logit when a square window is
  replaced by the baseline image, averaged over the windows covering each pixel.
* ``feature-ablation``: the drop in the target logit when one square patch of a fixed grid
  (a feature mask of ``patch_size`` superpixels, all channels) is set to the baseline image;
  every pixel of the patch carries the patch's drop.
* ``kernelshap``: Lundberg & Lee 2017, Shapley values of the same patches estimated from
  ``kernelshap_samples`` seeded coalitions (weighted linear regression, Captum's KernelShap).

The last three query the model's forward pass only (``needs_gradients = False``), so they
also explain a black-box model (an ONNX session, a served predictor); their cost is bounded
by the number of windows or patches (about 64-225 forward passes per image at any size)
and by ``kernelshap_samples``.

>>> import torch
>>> from raigate import wrap
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
>>> model = wrap(net, class_names=["a", "b"], input_shape=(3, 4, 4))
>>> attr = get_method("saliency").attribute(model, torch.rand(2, 3, 4, 4), torch.tensor([0, 1]))
>>> attr.shape
torch.Size([2, 3, 4, 4])
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raigate.errors import ConfigError
from raigate.models.base import Model

__all__ = [
    "BASELINES",
    "METHODS",
    "AttributionConfig",
    "Baseline",
    "FeatureAblationMethod",
    "GradCamMethod",
    "IntegratedGradientsMethod",
    "KernelShapMethod",
    "Method",
    "OcclusionMethod",
    "SaliencyMethod",
    "SmoothGradMethod",
    "gaussian_blur",
    "get_method",
    "make_baseline",
    "patch_mask",
    "register_method",
    "seeded",
]

Baseline = Literal["black", "blur", "uniform"]


@dataclass(frozen=True)
class AttributionConfig:
    """Settings shared by all methods; every one is echoed into the check's params.

    ``blur_sigma`` ``None`` means ``max(H, W) / 16`` pixels (2 px at 32x32, 14 px at 224);
    ``occlusion_window`` ``None`` means ``round(min(H, W) / 8)`` (4 px at 32, 28 at 224) and
    ``occlusion_stride`` ``None`` half the window, so every image costs about 225 occluded
    forward passes whatever its size. ``patch_size`` ``None`` means ``round(min(H, W) / 8)``
    too: the feature-ablation and KernelSHAP superpixels form a grid of about 8 x 8 patches.
    ``kernelshap_samples``: coalitions KernelSHAP evaluates per image (one forward each).
    """

    baseline: Baseline = "black"
    n_steps: int = 50
    batch_size: int = 64
    layer: str | None = None
    smoothgrad_samples: int = 16
    smoothgrad_stdev: float = 0.15
    occlusion_window: int | None = None
    occlusion_stride: int | None = None
    patch_size: int | None = None
    kernelshap_samples: int = 256
    blur_sigma: float | None = None
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run a block with torch's global RNG seeded, restoring the caller's RNG state after.

    Captum's NoiseTunnel and sensitivity perturbations draw from the global generator;
    seeding them makes every map reproducible and lets the randomization test compare
    maps computed with the very same noise.
    """
    dev = torch.device(device)
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# -- baselines ---------------------------------------------------------------------------
def default_blur_sigma(x: Tensor) -> float:
    return max(x.shape[-2:]) / 16.0


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` with reflect padding (radius 3 sigma,
    capped below the image size so reflect padding stays defined)."""
    if sigma <= 0:
        return x.clone()
    h, w = x.shape[-2:]
    radius = max(1, min(math.ceil(3 * sigma), h - 1, w - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _black(x: Tensor, config: AttributionConfig) -> Tensor:
    return torch.zeros_like(x)


def _blur(x: Tensor, config: AttributionConfig) -> Tensor:
    sigma = config.blur_sigma if config.blur_sigma is not None else default_blur_sigma(x)
    return gaussian_blur(x, sigma)


def _uniform(x: Tensor, config: AttributionConfig) -> Tensor:
    # one noise image for every sample: a map then does not depend on the chunk it was in
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    noise = torch.rand(x.shape[1:], generator=gen, dtype=x.dtype).to(x.device)
    return noise.expand_as(x).clone()


BASELINES: dict[str, Callable[[Tensor, AttributionConfig], Tensor]] = {
    "black": _black,
    "blur": _blur,
    "uniform": _uniform,
}
"""The reference image an attribution is measured against (Sturmfels et al. 2020,
"Visualizing the Impact of Feature Attribution Baselines"): ``black`` all zeros, ``blur``
the image blurred with ``blur_sigma``, ``uniform`` one U(0, 1) noise image drawn with
``seed``, the same for every sample."""


def make_baseline(x: Tensor, config: AttributionConfig) -> Tensor:
    """The baseline image for every sample of ``x`` (same shape), per ``config.baseline``."""
    try:
        fn = BASELINES[config.baseline]
    except KeyError:
        raise ConfigError(
            f"--baseline must be one of {', '.join(BASELINES)}, got {config.baseline!r}"
        ) from None
    return fn(x, config)


# -- the method contract --------------------------------------------------------------------
class Method(ABC):
    """One attribution method. Subclasses implement :meth:`compute` for one chunk of at
    most ``config.batch_size`` samples; :meth:`attribute` does the chunking."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = True

    def skip_reason(self, model: Model, config: AttributionConfig) -> str | None:
        """Why this method cannot run on ``model`` (a note for the report), or ``None``.

        Raises ConfigError for a setting the user got wrong (e.g. an unknown layer name)."""
        if self.needs_gradients and not model.capabilities.gradients:
            return f"{self.name} needs input gradients, which this model does not provide"
        return None

    def details(self, model: Model, config: AttributionConfig) -> dict[str, Any]:
        """The settings this method actually used, for the report (e.g. the layer)."""
        return {}

    @abstractmethod
    def compute(
        self, model: Model, x: Tensor, target: Tensor, config: AttributionConfig
    ) -> tuple[Tensor, Tensor | None]:
        """Attributions ``[B, C, H, W]`` for one chunk and, where the method has one, a
        per-sample convergence delta ``[B]``."""

    def attribute_with_delta(
        self, model: Model, x: Tensor, target: Tensor, config: AttributionConfig
    ) -> tuple[Tensor, Tensor | None]:
        """Attributions and deltas for any number of samples, in chunks."""
        target = torch.as_tensor(target, device=x.device).reshape(-1)
        # a fresh leaf: Captum then needs not flip requires_grad on the caller's tensor
        x = x.detach().requires_grad_(self.needs_gradients)
        if target.numel() == 1 and x.shape[0] > 1:
            target = target.expand(x.shape[0])
        step = max(1, config.batch_size)
        maps: list[Tensor] = []
        deltas: list[Tensor] = []
        has_delta = True
        for start in range(0, x.shape[0], step):
            a, d = self.compute(
                model, x[start : start + step], target[start : start + step], config
            )
            maps.append(a.detach())
            if d is None:
                has_delta = False
            else:
                deltas.append(d.detach().reshape(-1))
        attr = torch.cat(maps) if maps else torch.zeros_like(x)
        return attr, (torch.cat(deltas) if has_delta and deltas else None)

    def attribute(
        self, model: Model, x: Tensor, target: Tensor, config: AttributionConfig | None = None
    ) -> Tensor:
        """Attributions ``[B, C, H, W]`` in pixel space for ``target`` class indices."""
        return self.attribute_with_delta(model, x, target, config or AttributionConfig())[0]


def _rows_per_sample(config: AttributionConfig, n: int) -> int:
    """How many perturbed copies of ``n`` samples fit in one pass of ``batch_size`` rows."""
    return max(1, config.batch_size // max(n, 1))


class IntegratedGradientsMethod(Method):
    """Integrated Gradients (Sundararajan et al. 2017): ``(x - x') * mean of the gradient
    along the straight path from the baseline x' to x``. Completeness says the attributions
    sum to ``f(x) - f(x')``; the returned delta is the per-sample gap."""

    name = "integrated-gradients"
    summary = "Integrated Gradients (Sundararajan et al. 2017), Gauss-Legendre quadrature"

    def details(self, model: Model, config: AttributionConfig) -> dict[str, Any]:
        return {
            "baseline": config.baseline,
            "n_steps": config.n_steps,
            "quadrature": "gausslegendre",
        }

    def compute(
        self, model: Model, x: Tensor, target: Tensor, config: AttributionConfig
    ) -> tuple[Tensor, Tensor | None]:
        from captum.attr import IntegratedGradients

        attr, delta = IntegratedGradients(model).attribute(
            x,
            baselines=make_baseline(x, config),
            target=target,
            n_steps=config.n_steps,
            method="gausslegendre",
            internal_batch_size=max(config.batch_size, x.shape[0]),
            return_convergence_delta=True,
        )
        return attr, delta


class SaliencyMethod(Method):
    """Vanilla gradient saliency (Simonyan et al. 2014): ``|d logit_target / d x|``."""

    name = "saliency"
    summary = "absolute input gradient (Simonyan et al. 2014)"

    def compute(
        self, model: Model, x: Tensor, target: Tensor, config: AttributionConfig
    ) -> tuple[Tensor, Tensor | None]:
        from captum.attr import Saliency

        return Saliency(model).attribute(x, target=target, abs=True), None


class SmoothGradMethod(Method):
    """SmoothGrad (Smilkov et al. 2017): mean ``|gradient|`` over noisy copies of the input,
    noise N(0, smoothgrad_stdev^2) in pixel units (the paper's 10-20% of the input range)."""

    name = "smoothgrad"
    summary = "SmoothGrad over |gradient| (Smilkov et al. 2017)"

    def details(self, model: Model, config: AttributionConfig) -> dict[str, Any]:
        return {"samples": config.smoothgrad_samples, "stdev": config.smoothgrad_stdev}

    def compute(
        self, model: Model, x: Tensor, target: Tensor, config: AttributionConfig
    ) -> tuple[Tensor, Tensor | None]:
        from captum.attr import NoiseTunnel, Saliency

        with seeded(config.seed, x.device):
            attr = NoiseTunnel(Saliency(model)).attribute(
                x,
                nt_type="smoothgrad",
                nt_samples=config.smoothgrad_samples,
                nt_samples_batch_size=_rows_per_sample(config, x.shape[0]),
                stdevs=config.smoothgrad_stdev,
                target=target,
            )
        return attr, None


def occlusion_geometry(config: AttributionConfig, hw: tuple[int, int]) -> tuple[int, int]:
    """``(window, stride)`` in pixels for an image of size ``hw``."""
    window = config.occlusion_window or max(1, round(min(hw) / 8))
    window = min(window, *hw)
    stride = config.occlusion_stride or max(1, window // 2)
    return window, stride


class OcclusionMethod(Method):
    """Occlusion (Zeiler & Fergus 2014): the drop of the target logit when a window of all
    channels is replaced by the baseline image, averaged over the windows covering a pixel."""

    name = "occlusion"
    summary = "sliding-window occlusion (Zeiler & Fergus 2014)"
    needs_gradients = False

    def details(self, model: Model, config: AttributionConfig) -> dict[str, Any]:
        window, stride = occlusion_geometry(config, model.input_shape[1:])  # type: ignore[arg-type]
        return {"baseline": config.baseline, "window": window, "stride": stride}

    def compute(
        self, model: Model, x: Tensor, target: Tensor, config: AttributionConfig
    ) -> tuple[Tensor, Tensor | None]:
        from captum.attr import Occlusion

        c = x.shape[1]
        window, stride = occlusion_geometry(config, (x.shape[2], x.shape[3]))
        attr = Occlusion(model).attribute(
            x,
            sliding_window_shapes=(c, window, window),
            strides=(c, stride, stride),
            baselines=make_baseline(x, config),
            target=target,
            perturbations_per_eval=_rows_per_sample(config, x.shape[0]),
        )
        return attr, None


def patch_side(config: AttributionConfig, hw: tuple[int, int]) -> int:
    """Side of the square superpixels, in pixels, for an image of size ``hw``."""
    size = config.patch_size or max(1, round(min(hw) / 8))
    return min(size, *hw)


def patch_mask(hw: tuple[int, int], size: int, device: torch.device | str = "cpu") -> Tensor:
    """Captum feature mask ``[1, 1, H, W]``: patch ids ``0..P-1`` of a grid of ``size`` x
    ``size`` squares in row-major order (the last row and column may be narrower), shared
    by all channels and all images of a batch."""
    h, w = hw
    rows = torch.arange(h, device=device) // size
    cols = torch.arange(w, device=device) // size
    per_row = -(-w // size)  # ceil: a narrower last column still gets its own id
    return (rows.view(h, 1) * per_row + cols.view(1, w)).view(1, 1, h, w)


class FeatureAblationMethod(Method):
    """Feature ablation over superpixels (Captum's ``FeatureAblation`` with a patch feature
    mask): the drop of the target logit when one ``patch_size`` x ``patch_size`` patch, all
    channels, is replaced by the baseline image; every pixel of a patch gets its drop. For a
    linear model that is ``w . (x - baseline)`` summed over the patch."""

    name = "feature-ablation"
    summary = "superpixel (square patch) ablation to the baseline, forward passes only"
    needs_gradients = False

    def details(self, model: Model, config: AttributionConfig) -> dict[str, Any]:
        size = patch_side(config, model.input_shape[1:])  # type: ignore[arg-type]
        return {"baseline": config.baseline, "patch_size": size}

    def compute(
        self, model: Model, x: Tensor, target: Tensor, config: AttributionConfig
    ) -> tuple[Tensor, Tensor | None]:
        from captum.attr import FeatureAblation

        hw = (x.shape[2], x.shape[3])
        attr = FeatureAblation(model).attribute(
            x,
            baselines=make_baseline(x, config),
            target=target,
            feature_mask=patch_mask(hw, patch_side(config, hw), x.device),
            perturbations_per_eval=_rows_per_sample(config, x.shape[0]),
        )
        return attr, None


class KernelShapMethod(Method):
    """KernelSHAP (Lundberg & Lee 2017, via Captum) over the same superpixels as
    ``feature-ablation``: ``kernelshap_samples`` coalitions of patches (the all-on and
    all-off ones first, then drawn from the Shapley kernel under ``seed``) are evaluated
    with the patches outside the coalition set to the baseline image, and a linear
    regression of the target logit on the coalitions gives each patch's Shapley value
    estimate. Each image gets its own regression and the same seeded draws; forward passes
    only."""

    name = "kernelshap"
    summary = "KernelSHAP over square patches (Lundberg & Lee 2017), forward passes only"
    needs_gradients = False

    def details(self, model: Model, config: AttributionConfig) -> dict[str, Any]:
        size = patch_side(config, model.input_shape[1:])  # type: ignore[arg-type]
        return {
            "baseline": config.baseline,
            "patch_size": size,
            "n_samples": config.kernelshap_samples,
            "seed": config.seed,
        }

    def compute(
        self, model: Model, x: Tensor, target: Tensor, config: AttributionConfig
    ) -> tuple[Tensor, Tensor | None]:
        from captum.attr import KernelShap

        hw = (x.shape[2], x.shape[3])
        mask = patch_mask(hw, patch_side(config, hw), x.device)
        baseline = make_baseline(x, config)
        per_eval = max(1, min(config.batch_size, config.kernelshap_samples))
        maps = []
        # Captum draws the coalitions from torch's global RNG. Seeding per image gives every
        # image the same coalitions wherever it sits in a batch, so a map does not depend
        # on the chunking, and max-sensitivity compares x and x + d under the same draws.
        for i in range(x.shape[0]):
            with seeded(config.seed, x.device):
                maps.append(
                    KernelShap(model).attribute(
                        x[i : i + 1],
                        baselines=baseline[i : i + 1],
                        target=target[i : i + 1],
                        feature_mask=mask,
                        n_samples=config.kernelshap_samples,
                        perturbations_per_eval=per_eval,
                    )
                )
        return torch.cat(maps), None


def _is_patch_embedding(conv: nn.Conv2d) -> bool:
    """A non-overlapping patchify convolution (ViT-style: kernel == stride > 1): its output
    becomes a token sequence, not a spatial map the classifier pools."""
    k, s = tuple(conv.kernel_size), tuple(conv.stride)
    return k == s and max(k) > 1


class GradCamMethod(Method):
    """Grad-CAM (Selvaraju et al. 2017): ReLU of the gradient-weighted sum of a conv layer's
    feature maps, upsampled bilinearly to the input and spread evenly over the channels (so
    the channel sum is the Grad-CAM map).

    Layer: ``config.layer`` (a module name in ``model.net``) or else the last ``nn.Conv2d``
    in registration order. Skipped, with a note, for TorchScript and torch.export models
    (no hookable layer modules), for networks without a ``Conv2d`` and when the last conv is
    a patch embedding (kernel == stride > 1, e.g. a ViT): its output is a token grid mixed by
    attention afterwards, so a CAM over it says little. ``--layer`` overrides the last case.
    """

    name = "gradcam"
    summary = "Grad-CAM (Selvaraju et al. 2017), upsampled to the input"

    def _auto_layer(self, model: Model) -> tuple[str | None, str | None]:
        """``(layer name, None)`` or ``(None, reason to skip)``."""
        if model.source in ("torchscript", "export"):
            return None, (
                f"gradcam skipped: a {model.source} model keeps no layer modules to hook; "
                "load the network from a factory or a model-spec JSON to get Grad-CAM"
            )
        convs = [(n, m) for n, m in model.net.named_modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            return (
                None,
                "gradcam skipped: the network has no Conv2d layer to take a feature map from",
            )
        name, conv = convs[-1]
        if _is_patch_embedding(conv):
            return None, (
                f"gradcam skipped: the last Conv2d ({name}, kernel {tuple(conv.kernel_size)} = "
                "stride) is a patch embedding, as in a ViT, not a spatial feature map; pass "
                "--layer NAME to force a layer"
            )
        return name, None

    def _layer(self, model: Model, config: AttributionConfig) -> tuple[str, nn.Module]:
        if config.layer is not None:
            modules = dict(model.net.named_modules())
            if config.layer not in modules or config.layer == "":
                convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
                hint = f"conv layers are {', '.join(convs[-8:])}" if convs else "it has no Conv2d"
                raise ConfigError(
                    f"--layer {config.layer!r} is not a module of the network; {hint}"
                )
            return config.layer, modules[config.layer]
        name, reason = self._auto_layer(model)
        if name is None:
            raise ConfigError(reason or "gradcam has no layer")
        return name, dict(model.net.named_modules())[name]

    def skip_reason(self, model: Model, config: AttributionConfig) -> str | None:
        base = super().skip_reason(model, config)
        if base is not None:
            return base
        if config.layer is None:
            return self._auto_layer(model)[1]
        if model.source in ("torchscript", "export"):
            return self._auto_layer(model)[1]
        name, layer = self._layer(model, config)
        shape = _layer_output_shape(model, layer)
        if shape is None or len(shape) != 4:
            raise ConfigError(
                f"--layer {name!r} outputs shape {list(shape) if shape else 'nothing'}; Grad-CAM "
                "needs a layer whose output is a [B, C, H, W] feature map (e.g. a Conv2d)"
            )
        return None

    def details(self, model: Model, config: AttributionConfig) -> dict[str, Any]:
        return {"layer": self._layer(model, config)[0], "relu": True, "upsample": "bilinear"}

    def compute(
        self, model: Model, x: Tensor, target: Tensor, config: AttributionConfig
    ) -> tuple[Tensor, Tensor | None]:
        from captum.attr import LayerAttribution, LayerGradCam

        _, layer = self._layer(model, config)
        cam = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")
        c = x.shape[1]
        return cam.expand(-1, c, -1, -1) / c, None


def _layer_output_shape(model: Model, layer: nn.Module) -> tuple[int, ...] | None:
    """Shape of ``layer``'s output on one blank input (a dry run with a forward hook)."""
    seen: list[tuple[int, ...]] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, Tensor) and not seen:
            seen.append(tuple(out.shape))

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model.logits(torch.zeros(1, *model.input_shape, device=model.device))
    finally:
        handle.remove()
    return seen[0] if seen else None


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        IntegratedGradientsMethod(),
        SaliencyMethod(),
        GradCamMethod(),
        SmoothGradMethod(),
        OcclusionMethod(),
        FeatureAblationMethod(),
        KernelShapMethod(),
    )
}
"""Registered attribution methods by name, in the order reports list them."""


def register_method(name: str, method: Method) -> None:
    """Add (or replace) a method under ``name`` (e.g. a custom map to sanity-check)."""
    if not isinstance(method, Method):
        raise ConfigError(f"register_method needs a Method instance, got {type(method).__name__}")
    METHODS[name] = method


def get_method(name: str) -> Method:
    """The registered method ``name``; ConfigError lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"--methods: unknown method {name!r}; choose from {', '.join(METHODS)}"
        ) from None
