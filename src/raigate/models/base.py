"""The one ``Model`` adapter every check talks to.

Whatever the format (a factory plus weights, TorchScript, torch.export, Hugging Face), the
adapter takes pixels in [0, 1] of shape ``[B, C, H, W]``, applies the model's own
normalization inside, and returns logits ``[B, K]``. Attacks, smoothing and attributions
therefore all work in pixel space and never need to know how the model was trained.

>>> import torch
>>> from raigate import wrap
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
>>> model = wrap(net, class_names=["cat", "dog"], input_shape=(3, 8, 8), mean=0.5, std=0.25)
>>> model.logits(torch.rand(4, 3, 8, 8)).shape
torch.Size([4, 2])
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from raigate.errors import ConfigError
from raigate.models.preprocess import Preprocess, ValueTransform, check_geometry, pipeline_text
from raigate.results import RANDOM_INIT_MARK, Finding


@dataclass(frozen=True)
class Capabilities:
    """What a check may rely on. ``gradients``: input gradients are available (white-box
    attacks, Captum); ``deterministic``: two forward passes give the same logits;
    ``batchnorm``: the net holds BatchNorm running statistics (DP-SGD must fold or replace
    them); ``conv``: the net has a Conv2d layer (GradCAM needs one)."""

    gradients: bool = True
    deterministic: bool = True
    batchnorm: bool = False
    conv: bool = False

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as buffers so it moves with the model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if any(s <= 0 for s in std):
            raise ConfigError(f"--std values must be positive, got {list(std)}")
        for name, values in (("mean", mean), ("std", std)):
            buffer = torch.tensor(list(values), dtype=torch.float32).view(1, -1, 1, 1)
            self.register_buffer(name, buffer)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    @property
    def is_identity(self) -> bool:
        return bool(torch.all(self.mean == 0) and torch.all(self.std == 1))


def _per_channel(
    value: float | Sequence[float] | None, channels: int, default: float, name: str
) -> list[float]:
    if value is None:
        return [default] * channels
    if isinstance(value, int | float):
        return _per_channel([value], channels, default, name)
    values = [float(v) for v in value]
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--{name} values must be finite numbers, got {values}")
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ConfigError(
            f"--{name} has {len(values)} values but the input has {channels} channels"
        )
    return values


def state_digest(tensors: Iterable[tuple[str, Tensor]]) -> str:
    """sha256 over (name, dtype, shape, bytes) of named tensors in sorted name order.

    The same weights give the same digest whether they came from a ``.pt`` state dict, a
    safetensors file or an in-memory module, so a report pins the function, not the file.
    """
    h = hashlib.sha256()
    for name, t in sorted(tensors, key=lambda kv: kv[0]):
        t = t.detach().to("cpu").contiguous()
        h.update(name.encode("utf-8"))
        h.update(str(t.dtype).encode("ascii"))
        h.update(str(tuple(t.shape)).encode("ascii"))
        # reshape(-1): 0-dim tensors (BatchNorm's num_batches_tracked) cannot be viewed as bytes.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def module_tensors(module: nn.Module) -> list[tuple[str, Tensor]]:
    """Parameters and buffers of a module by name (state-dict names, duplicates once)."""
    return list(module.state_dict(keep_vars=False).items())


def detect_capabilities(module: nn.Module) -> Capabilities:
    """Inspect a module (eager or TorchScript) for BatchNorm and Conv2d layers."""
    batchnorm = conv = False
    for m in module.modules():
        kind = getattr(m, "original_name", type(m).__name__)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or kind.startswith("BatchNorm"):
            batchnorm = True
        if isinstance(m, nn.Conv2d) or kind == "Conv2d":
            conv = True
    return Capabilities(gradients=True, deterministic=True, batchnorm=batchnorm, conv=conv)


class Model(nn.Module):
    """A classifier in pixel space: ``logits(x in [0,1]) -> [B, K]``, always in eval mode.

    Construct through :func:`raigate.wrap` or :func:`raigate.load_model`. ``net`` is the bare
    network (train it, fold it, privatize it); the adapter only adds normalization, metadata
    and a digest. ``train()`` on the adapter is refused silently (it stays in eval mode) so a
    check can never change BatchNorm statistics or dropout behaviour by accident.
    ``random_init`` marks a network built without trained weights: every report names it.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        class_names: Sequence[str],
        input_shape: Sequence[int],
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        spec: str = "python:wrap",
        digest: str | None = None,
        files: Sequence[dict[str, Any]] = (),
        capabilities: Capabilities | None = None,
        source: str = "module",
        random_init: bool = False,
        preprocess: Preprocess | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        shape = tuple(int(v) for v in input_shape)
        if len(shape) != 3 or min(shape) <= 0:
            raise ConfigError(
                f"input shape must be C,H,W with positive sizes, got {list(input_shape)}"
            )
        names = tuple(str(n) for n in class_names)
        if len(names) < 2:
            raise ConfigError(f"a classifier needs at least 2 class names, got {list(names)}")
        if len(set(names)) != len(names):
            raise ConfigError(f"class names must be unique, got {list(names)}")
        self.net = net
        from raigate.sanity import normalization_findings

        mean_c = _per_channel(mean, shape[0], 0.0, "mean")
        std_c = _per_channel(std, shape[0], 1.0, "std")
        self.normalize = Normalize(mean_c, std_c)
        self.preprocess = preprocess or Preprocess()
        if self.preprocess.has_geometry:
            check_geometry(self.preprocess, shape, spec)
        # the value half of the deployed preprocessing (channel order, scale, mean/std, layout)
        self.transform = ValueTransform(self.normalize, self.preprocess)
        # loader facts worth a report line (ONNX: conversion check, providers, outputs kind)
        self.details: dict[str, Any] = dict(details or {})
        # likely input mistakes, issued as warnings now and recorded by every check's result
        self.warnings: list[Finding] = normalization_findings(
            spec, [v / self.preprocess.value_scale for v in mean_c],
            [v / self.preprocess.value_scale for v in std_c],
        )  # fmt: skip
        self.class_names: tuple[str, ...] = names
        self.input_shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self.spec = spec
        self.source = source
        self.random_init = bool(random_init)
        self.files: list[dict[str, Any]] = [dict(f) for f in files]
        self.capabilities = capabilities or detect_capabilities(net)
        # a rule from logits and the samples' sensitive attributes to labels, set by the
        # post-processed model loader (raigate.models.postprocess); None: argmax of logits
        self.postprocess: Any = None
        self._digest = digest
        super().train(False)

    # -- the contract -------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.transform(x))

    def logits(self, x: Tensor) -> Tensor:
        """Logits ``[B, K]`` for pixels ``x`` in [0, 1], shape ``[B, C, H, W]``."""
        return self.forward(x)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Predicted class indices ``[B]``."""
        return self.forward(x).argmax(dim=1)

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` over the network's tensors (see :func:`state_digest`)."""
        if self._digest is None:
            self._digest = state_digest(module_tensors(self.net))
        return self._digest

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_parameters(self) -> int:
        """Trainable values of the network; for a black-box ONNX model, of its graph."""
        count = sum(p.numel() for p in self.net.parameters())
        return count or int(self.details.get("parameters", 0))

    @property
    def device(self) -> torch.device:
        for t in self.net.parameters():
            return t.device
        for t in self.net.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def pipeline(self) -> str:
        """The deployed preprocessing in one line (``raigate models inspect``, reports)."""
        return pipeline_text(
            self.preprocess,
            mean=self.normalize.mean.flatten().tolist(),
            std=self.normalize.std.flatten().tolist(),
            shape=self.input_shape,
        )

    @property
    def mode(self) -> str:
        """``white-box`` when input gradients are available, else ``black-box`` (an ONNX
        session or a served predictor): every check records it, and picks its methods by it."""
        return "white-box" if self.capabilities.gradients else "black-box"

    @property
    def display_name(self) -> str:
        """The spec as a person should read it: a random-init model says so."""
        return self.spec + (RANDOM_INIT_MARK if self.random_init else "")

    def train(self, mode: bool = True) -> Model:
        """Always eval: train ``model.net`` directly when you mean to train."""
        return super().train(False)

    def describe(self) -> dict[str, Any]:
        """JSON-safe summary for reports and ``raigate models inspect``."""
        return {
            "spec": self.spec,
            "source": self.source,
            "mode": self.mode,
            "random_init": self.random_init,
            "class_names": list(self.class_names),
            "input_shape": list(self.input_shape),
            "num_parameters": self.num_parameters,
            "capabilities": self.capabilities.as_dict(),
            "mean": [round(v, 6) for v in self.normalize.mean.flatten().tolist()],
            "std": [round(v, 6) for v in self.normalize.std.flatten().tolist()],
            "preprocess": self.preprocess.as_dict(),
            "pipeline": self.pipeline,
            "details": self.details,
            "digest": self.digest,
            "files": self.files,
            "warnings": [w.model_dump() for w in self.warnings],
            **({"postprocess": self.postprocess.describe()} if self.postprocess else {}),
        }


def wrap(
    module: nn.Module,
    *,
    class_names: Sequence[str],
    input_shape: Sequence[int],
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
) -> Model:
    """Wrap an ``nn.Module`` that maps normalized images to logits as a raigate ``Model``.

    ``mean``/``std`` are the normalization the module was trained with (per channel or one
    value); the adapter applies it, so callers pass pixels in [0, 1].
    """
    if not isinstance(module, nn.Module):
        raise ConfigError(f"wrap() needs a torch.nn.Module, got {type(module).__name__}")
    return Model(module, class_names=class_names, input_shape=input_shape, mean=mean, std=std)


def require_white_box(model: nn.Module, what: str) -> None:
    """ConfigError (one line) when ``model`` can only be queried: a black-box
    :class:`Model` (no gradients, e.g. an ONNX session or a served predictor) or a bare
    :class:`~raigate.models.blackbox.QueryNet`. ``what`` names the step that needs the
    network's weights, e.g. ``"DP-SGD retraining"``; checks that only query run anyway."""
    from raigate.models.blackbox import QueryNet

    if isinstance(model, Model):
        if model.mode == "white-box" and not isinstance(model.net, QueryNet):
            return
        name = model.display_name
    elif isinstance(model, QueryNet):
        name = model.name
    else:
        return
    raise ConfigError(
        f"{name} is black-box (queries only); {what} needs the network: give a factory + "
        "weights or a white-box ONNX"
    )


def require_plain(model: nn.Module, what: str) -> None:
    """ConfigError (one line) when ``model`` predicts through a rule that reads the samples'
    sensitive attributes (a ``raigate harden fairness --method threshold`` variant): ``what``
    (attacks, explanations, membership inference) needs a function of the image alone."""
    post = getattr(model, "postprocess", None)
    if post is None or not isinstance(model, Model):
        return
    base = model.details.get("base_model", {}).get("spec", "its base model")
    raise ConfigError(
        f"{model.display_name} post-processes its predictions with the sensitive attribute(s) "
        f"{'+'.join(post.needs_attributes)}; {what} cannot use an attribute-dependent "
        f"predictor: audit the base model ({base}) instead"
    )
