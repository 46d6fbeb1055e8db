"""``hf:DIR``: a local Hugging Face image classifier as a raigate :class:`Model`.

Everything comes from the folder, offline: the network (``from_pretrained`` with
``local_files_only=True``, safetensors preferred, no remote code), the class names
(``config.id2label`` in id order), the input size and the normalization (the image
processor's ``preprocessor_config.json``). raigate feeds pixels in [0, 1], which is what the
processor's ``do_rescale`` with factor 1/255 produces from 8-bit images; other rescale
settings are folded into the adapter's mean and std.

>>> from raigate.models import load_model
>>> model = load_model("hf:path/to/vit-finetuned")  # doctest: +SKIP
>>> model.class_names  # doctest: +SKIP
('cat', 'dog')
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from raigate.errors import MissingDependencyError, ModelLoadError, SpecError
from raigate.models._common import file_record, one_line, same_or_conflict
from raigate.models.base import Model, module_tensors, state_digest
from raigate.models.preprocess import Preprocess
from raigate.models.specs import ModelOptions

__all__ = ["HFLogits", "load_hf", "read_preprocessing"]

_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


class HFLogits(nn.Module):
    """``net(x) -> logits``: Hugging Face models return an output object, checks want a tensor."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.model = hf_model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).logits  # type: ignore[no-any-return]


def _read_json(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{p} is not readable JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{p} holds a JSON {type(data).__name__}, not an object")
    return data


def _hw(value: Any) -> tuple[int, int] | None:
    """(height, width) from the forms processors use: int, {height,width}, {shortest_edge}."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, list | tuple) and len(value) == 2:
        return int(value[0]), int(value[1])
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        # Aspect-preserving resizes: raigate feeds square images, so both sides get it.
        for key in ("shortest_edge", "longest_edge"):
            if isinstance(value.get(key), int):
                return value[key], value[key]
    return None


def read_preprocessing(
    folder: Path, config: dict[str, Any]
) -> tuple[list[float] | None, list[float] | None, tuple[int, int] | None]:
    """``(mean, std, (H, W))`` for inputs in [0, 1], from the processor config of ``folder``.

    The processor computes ``(x * 255 * rescale_factor [- 1 if rescale_offset] - m) / s`` on
    8-bit pixels; for ``x`` in [0, 1] that is ``(x - m') / s'`` with ``k = 255 * factor``,
    ``m' = (m + offset) / k`` and ``s' = s / k``. Any part unknown is ``None``.
    """
    proc: dict[str, Any] = {}
    for name in _PROCESSOR_FILES:
        if (folder / name).is_file():
            data = _read_json(folder / name)
            # processor_config.json (multimodal) nests the image processor's settings.
            proc = data.get("image_processor", data) if name == "processor_config.json" else data
            break
    size = None
    if proc.get("do_center_crop") and proc.get("crop_size") is not None:
        size = _hw(proc["crop_size"])
    if size is None and proc.get("size") is not None:
        size = _hw(proc["size"])
    if size is None and config.get("image_size") is not None:
        size = _hw(config["image_size"])
    k = (
        255.0 * float(proc.get("rescale_factor", 1 / 255))
        if proc.get("do_rescale", True)
        else 255.0
    )
    offset = 1.0 if proc.get("do_rescale", True) and proc.get("rescale_offset") else 0.0
    if proc.get("do_normalize", True) and proc.get("image_mean") is not None:
        m, s = _per_channel(proc["image_mean"]), _per_channel(proc.get("image_std", 1.0))
    elif proc and not proc.get("do_normalize", True):
        m, s = [0.0], [1.0]
    else:
        return None, None, size
    mean = [(v + offset) / k for v in m]
    std = [v / k for v in s]
    if mean == [0.0] and std == [1.0]:
        return None, None, size
    return mean, std, size


_PIL_FILTERS = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def read_geometry(folder: Path) -> Preprocess | None:
    """The processor's resize and center crop as a deployed geometry, when it has both a
    shorter-side resize and a crop (the ImageNet recipe, e.g. shortest_edge 256 then crop
    224) with a filter raigate implements; else None (resize straight to the input size)."""
    for name in _PROCESSOR_FILES:
        if (folder / name).is_file():
            data = _read_json(folder / name)
            proc = data.get("image_processor", data) if name == "processor_config.json" else data
            break
    else:
        return None
    size, crop = proc.get("size"), proc.get("crop_size")
    short = size.get("shortest_edge") if isinstance(size, dict) else None
    if not (proc.get("do_resize", True) and proc.get("do_center_crop") and isinstance(short, int)):
        return None
    hw = _hw(crop) if crop is not None else None
    interp = _PIL_FILTERS.get(int(proc.get("resample", 2)))
    if hw is None or interp is None:
        return None
    return Preprocess(resize=[short], resize_mode="shorter", crop=list(hw), interpolation=interp)


def _per_channel(v: float | Sequence[float]) -> list[float]:
    return [float(v)] if isinstance(v, int | float) else [float(x) for x in v]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars on the CLI's stderr while loading; restore the user's setting."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if was_enabled:
            hf_logging.enable_progress_bar()


def _files(folder: Path) -> list[dict[str, Any]]:
    # Top level only: save_pretrained writes everything there (shards included), and
    # from_pretrained reads nothing below it; trainer checkpoint-N/ folders are not the model.
    return [
        file_record(f)
        for f in sorted(folder.iterdir())
        if f.is_file() and not f.name.startswith(".")
    ]


def load_hf(spec: str, target: str, options: ModelOptions) -> Model:
    """Load ``hf:DIR``; see the module docstring for where each piece comes from."""
    folder = Path(target).expanduser()
    if not target or not folder.is_dir():
        raise ModelLoadError(
            f"Hugging Face model folder {folder} not found; hf: specs take a local folder "
            "written by save_pretrained (raigate never downloads models)"
        )
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{config_path} not found; is {folder} a save_pretrained folder?")
    config = _read_json(config_path)
    try:
        from transformers import AutoModelForImageClassification
    except ImportError as e:
        raise MissingDependencyError("transformers", "hf: model specs") from e

    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    if (folder / "model.safetensors").is_file() or (
        folder / "model.safetensors.index.json"
    ).is_file():
        kwargs["use_safetensors"] = True
    try:
        with _quiet_transformers():
            hf_model = AutoModelForImageClassification.from_pretrained(str(folder), **kwargs)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, ...
        raise ModelLoadError(f"cannot load {folder} as an image classifier: {one_line(e)}") from e
    hf_model.eval()

    id2label = {int(k): str(v) for k, v in (hf_model.config.id2label or {}).items()}
    names = tuple(id2label[i] for i in sorted(id2label)) if id2label else options.class_names
    if names and options.class_names and all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        # transformers' placeholder names: the user's --class-names are the real ones
        names = options.class_names
    if not names:
        raise SpecError(f"{config_path} has no id2label; pass --class-names a,b,...")
    same_or_conflict("class names", names, options.class_names, str(config_path))

    mean, std, hw = read_preprocessing(folder, config)
    channels = int(getattr(hf_model.config, "num_channels", 3) or 3)
    shape = (channels, *hw) if hw else (options.input_size or options.data_input_size)
    if shape is None:
        raise SpecError(f"{folder} names no image size; pass --input-size {channels},H,W")
    same_or_conflict("input size", shape, options.input_size, str(folder))
    same_or_conflict("mean", mean, options.mean, str(folder))
    same_or_conflict("std", std, options.std, str(folder))

    return Model(
        HFLogits(hf_model),
        class_names=names,
        input_shape=shape,
        mean=mean if mean is not None else options.mean,
        std=std if std is not None else options.std,
        spec=spec,
        digest=state_digest(module_tensors(hf_model)),
        files=_files(folder),
        source="hf",
        preprocess=options.preprocess or read_geometry(folder),
    )
