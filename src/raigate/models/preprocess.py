"""The deployed preprocessing, declared in the model spec, so the audited pipeline is the
one that ships.

A served classifier rarely takes "pixels in [0, 1], NCHW, RGB". It takes images resized
(exactly, or by the shorter side) with a named filter, center-cropped, perhaps in BGR order,
perhaps in 0-255 values, normalized with a mean/std, in NCHW or NHWC. Audit it with a
different pipeline and every number describes a model nobody runs. raigate splits the
pipeline in two at the point where attacks and explanations work:

* **geometry** (``resize``, ``resize_mode``, ``interpolation``, ``crop``): applied to each
  decoded image by the dataset (:meth:`raigate.data.base.Dataset.transformed`). Its output
  is the model's input image in [0, 1], ``input_shape`` = C x H x W. Perturbations (ε,
  radii) are measured on this image, as in the literature (the attacker edits the image the
  model sees).
* **values** (``channel_order``, ``value_scale``, mean/std, ``layout``): differentiable, applied
  inside :class:`raigate.models.base.Model` (:class:`ValueTransform`), in this order::

      v = x[:, ::-1] if channel_order == "bgr" else x     # x: RGB in [0, 1], NCHW
      v = v * value_scale                                  # 1 or 255
      v = (v - mean) / std                                 # mean/std in v's units and order
      v = v.permute(0, 2, 3, 1) if layout == "nhwc" else v

``mean``/``std`` are in the units and channel order the model sees: Caffe-style BGR models
take ``channel_order=bgr, value_scale=255, mean=103.94,116.78,123.68``.

On the command line the pipeline is one option, ``--preprocess``, of comma-separated
``key=value`` items (the plan's ``[model.preprocess]`` table takes the same keys)::

    --preprocess resize=256,resize_mode=shorter,interpolation=bicubic,crop=224,channel_order=bgr

>>> p = parse_preprocess("resize=256,resize_mode=shorter,crop=224,channel_order=bgr")
>>> p.crop, p.channel_order, p.value_scale
([224, 224], 'bgr', 1.0)
>>> text = pipeline_text(p, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], shape=(3, 224, 224))
>>> for step in text.split(" -> "):
...     print(step)
decode RGB
resize shorter side to 256 (bilinear, antialiased)
center crop 224x224
[0,1]
BGR
(v - [0.5, 0.5, 0.5]) / [0.25, 0.25, 0.25]
NCHW 3x224x224
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import Tensor, nn

from raigate.data.base import resize_tensor
from raigate.errors import ConfigError

Interpolation = Literal["nearest", "bilinear", "bicubic", "area"]

__all__ = [
    "Preprocess",
    "ValueTransform",
    "apply_geometry",
    "geometry_output_size",
    "parse_preprocess",
    "pipeline_text",
]


class Preprocess(BaseModel):
    """The deployed preprocessing other than mean/std (which keep their own options).

    Every field's default is raigate's historical pipeline: exact bilinear resize to the
    model's input size, no crop, RGB, values in [0, 1], NCHW.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    resize: list[int] | None = Field(
        None,
        description="exact: H,W (or one number for a square); shorter: the shorter side's "
        "length. None: resize straight to the model's input size",
    )
    resize_mode: Literal["exact", "shorter"] = Field(
        "exact", description="exact: to H,W; shorter: scale so the shorter side is `resize`"
    )
    interpolation: Interpolation = Field(
        "bilinear",
        description="resize filter; bilinear and bicubic are antialiased when shrinking "
        "(as PIL does), nearest and area are as torch defines them",
    )
    crop: list[int] | None = Field(None, description="center crop H,W (or one number) after resize")
    channel_order: Literal["rgb", "bgr"] = "rgb"
    value_scale: float = Field(1.0, description="1: values in [0,1]; 255: values in [0,255]")
    layout: Literal["nchw", "nhwc"] = "nchw"

    @field_validator("resize", "crop", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, int | float | str):
            v = [v]
        out = []
        for item in v:
            try:
                n = int(item)
            except (TypeError, ValueError):
                raise ValueError(f"sizes must be whole numbers, got {item!r}") from None
            if n <= 0 or n != float(item):
                raise ValueError(f"sizes must be positive whole numbers, got {item!r}")
            out.append(n)
        if len(out) == 1:
            out = out * 2
        if len(out) != 2:
            raise ValueError(f"give one size or H,W, got {len(out)} numbers")
        return out

    @field_validator("value_scale")
    @classmethod
    def _scale(cls, v: float) -> float:
        if v not in (1.0, 255.0):
            raise ValueError(f"must be 1 (values in [0,1]) or 255 (values in [0,255]), got {v:g}")
        return float(v)

    @property
    def has_geometry(self) -> bool:
        return self.resize is not None or self.crop is not None

    @property
    def is_default(self) -> bool:
        return self == Preprocess()

    def as_dict(self) -> dict[str, Any]:
        """Only what differs from the default: the form written into specs and plans."""
        return self.model_dump(exclude_defaults=True)


def parse_preprocess(text: str | dict[str, Any] | Preprocess | None) -> Preprocess:
    """``--preprocess`` text (``key=value,...``; sizes as ``224`` or ``256x224``) or a plan
    table; a mistake is a one-line ConfigError naming the key."""
    if text is None:
        return Preprocess()
    if isinstance(text, Preprocess):
        return text
    if isinstance(text, str):
        raw: dict[str, Any] = {}
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not value.strip():
                raise ConfigError(
                    f"--preprocess: {item!r} is not key=value; e.g. --preprocess "
                    "resize=256,resize_mode=shorter,crop=224,channel_order=bgr"
                )
            value = value.strip()
            raw[key] = value.lower().replace("x", ",").split(",") if key in {
                "resize", "crop"
            } else value.lower()  # fmt: skip
        text = raw
    try:
        return Preprocess(**text)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "(preprocess)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key; use " + ", ".join(Preprocess.model_fields)
        raise ConfigError(f"preprocess {key}: {msg}") from None


# -- geometry (on the decoded image, in the dataset) ----------------------------------------
def _resized_size(h: int, w: int, p: Preprocess, target: tuple[int, int]) -> tuple[int, int]:
    if p.resize is None:
        return (h, w) if p.crop is not None else target
    if p.resize_mode == "exact":
        return (p.resize[0], p.resize[1])
    short = p.resize[0]
    # torchvision's convention: the longer side scales and truncates
    if h <= w:
        return (short, int(short * w / h))
    return (int(short * h / w), short)


def geometry_output_size(
    p: Preprocess, target: tuple[int, int], native: tuple[int, int] | None = None
) -> tuple[int, int] | None:
    """(H, W) the geometry gives for an image of size ``native``, or None when it depends on
    the image (shorter-side resize without a crop)."""
    if p.crop is not None:
        return (p.crop[0], p.crop[1])
    if p.resize is None or p.resize_mode == "exact":
        return target if p.resize is None else (p.resize[0], p.resize[1])
    return None if native is None else _resized_size(native[0], native[1], p, target)


def check_geometry(p: Preprocess, shape: Sequence[int], source: str) -> None:
    """The geometry must end at the model's input size, for every image."""
    target = (int(shape[1]), int(shape[2]))
    out = geometry_output_size(p, target)
    if out is None:
        raise ConfigError(
            f"{source}: preprocess resize_mode=shorter without crop gives images whose size "
            "depends on their aspect ratio; add crop=H,W (the model's input size)"
        )
    if out != target:
        raise ConfigError(
            f"{source}: preprocess ends at {out[0]}x{out[1]} but the model takes "
            f"{target[0]}x{target[1]}; make crop (or resize) equal the model's input size"
        )
    exact = p.crop is not None and p.resize is not None and p.resize_mode == "exact"
    if exact and (p.crop[0] > p.resize[0] or p.crop[1] > p.resize[1]):  # type: ignore[index]
        raise ConfigError(f"{source}: preprocess crop {p.crop} is larger than resize {p.resize}")


def apply_geometry(x: Tensor, p: Preprocess, target: tuple[int, int]) -> Tensor:
    """Resize then center-crop one decoded ``[C, H, W]`` image in [0, 1]."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    size = _resized_size(h, w, p, target)
    if size != (h, w):
        x = resize_tensor(x, size, p.interpolation)
        h, w = size
    if p.crop is not None:
        ch, cw = p.crop
        if ch > h or cw > w:
            raise ConfigError(
                f"preprocess crop {ch}x{cw} is larger than the resized image {h}x{w}; "
                "resize to at least the crop size"
            )
        # torchvision's center_crop rounding
        top = round((h - ch) / 2.0)
        left = round((w - cw) / 2.0)
        x = x[..., top : top + ch, left : left + cw]
    return x.contiguous()


# -- values (inside the model, differentiable) ----------------------------------------------
class ValueTransform(nn.Module):
    """Channel order, value scale, mean/std and layout: what the network's input layer expects,
    from RGB pixels in [0, 1], NCHW. ``normalize`` is the mean/std step (a
    :class:`raigate.models.base.Normalize`)."""

    def __init__(self, normalize: nn.Module, preprocess: Preprocess) -> None:
        super().__init__()
        self.normalize = normalize
        self.bgr = preprocess.channel_order == "bgr"
        self.scale = float(preprocess.value_scale)
        self.nhwc = preprocess.layout == "nhwc"

    def forward(self, x: Tensor) -> Tensor:
        if self.bgr:
            x = x.flip(1)
        if self.scale != 1.0:
            x = x * self.scale
        x = self.normalize(x)
        if self.nhwc:
            x = x.permute(0, 2, 3, 1)
        return x


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def pipeline_text(
    p: Preprocess, *, mean: Sequence[float], std: Sequence[float], shape: Sequence[int]
) -> str:
    """The whole pipeline in one line, as ``raigate models inspect`` prints it."""
    c, h, w = (int(v) for v in shape)
    filt = p.interpolation + (", antialiased" if p.interpolation in ("bilinear", "bicubic") else "")
    steps = ["decode RGB"]
    if p.resize is None:
        if p.crop is None:
            steps.append(f"resize to {h}x{w} ({filt})")
    elif p.resize_mode == "shorter":
        steps.append(f"resize shorter side to {p.resize[0]} ({filt})")
    else:
        steps.append(f"resize to {p.resize[0]}x{p.resize[1]} ({filt})")
    if p.crop is not None:
        steps.append(f"center crop {p.crop[0]}x{p.crop[1]}")
    steps.append("[0,1]")
    if p.channel_order == "bgr":
        steps.append("BGR")
    if p.value_scale != 1.0:
        steps.append(f"x{p.value_scale:g}")
    identity = all(v == 0 for v in mean) and all(v == 1 for v in std)
    if not identity:
        steps.append(f"(v - {_fmt(mean)}) / {_fmt(std)}")
    if p.layout == "nhwc":
        steps.append(f"NHWC {h}x{w}x{c}")
    else:
        steps.append(f"NCHW {c}x{h}x{w}")
    return " -> ".join(steps)
