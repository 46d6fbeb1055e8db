"""Parse a model spec, pick its loader from a small explicit registry, fill gaps from data.

Formats that carry no class names or input size (factory, TorchScript, torch.export) take
them from ``--class-names`` / ``--input-size``, or else from the dataset the command runs on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raigate.errors import SpecError
from raigate.models.base import Model
from raigate.models.preprocess import Preprocess, parse_preprocess

if TYPE_CHECKING:
    from raigate.data.base import Dataset

_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")

SPEC_HELP = (
    "pkg.module:factory (with --weights FILE), FILE.pt (TorchScript), FILE.pt2 (torch.export), "
    "hf:DIR (local Hugging Face model), onnx:FILE.onnx, pyfn:pkg.module:predict (a served "
    "model's client, with --trust-code) or FILE.json (raigate model spec)"
)


@dataclass(frozen=True)
class ModelOptions:
    """Everything a loader may need beyond the spec's target; ``None`` = not given.

    ``class_names``/``input_size`` are what the user said and must agree with a
    self-describing format; ``data_class_names``/``data_input_size`` come from the dataset
    the command runs on and only fill gaps (an HF model at 224x224 may run on 32x32 images:
    the dataset is resized to the model, not the other way round).

    ``trust_code``: import factories that a file names even outside raigate's built-ins;
    ``spec_origin``: the file the spec string itself was read from (a plan), so that a bare
    ``pkg.module:factory`` there is treated as read from a file, not named by the caller;
    ``random_init``: a factory without weights is meant (an untrained network), not a mistake.
    ``preprocess``: the deployed resize/crop/channel order/scale/layout
    (:mod:`raigate.models.preprocess`); ``outputs`` (``logits``/``probs``/``auto``) and
    ``mode`` (``auto``/``white-box``/``black-box``) apply to ``onnx:`` and ``pyfn:`` specs.
    """

    weights: Path | None = None
    class_names: tuple[str, ...] | None = None
    input_size: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    data_class_names: tuple[str, ...] | None = None
    data_input_size: tuple[int, int, int] | None = None
    trust_code: bool = False
    random_init: bool = False
    spec_origin: str | None = None
    preprocess: Preprocess | None = None
    outputs: str | None = None
    mode: str | None = None


ModelLoader = Callable[[str, str, ModelOptions], Model]
"""``loader(spec, target, options) -> Model``; ``target`` is the spec without its scheme."""

_LOADERS: dict[str, ModelLoader] = {}


def register_model_loader(kind: str, loader: ModelLoader) -> None:
    """Register (or replace) the loader for a spec kind."""
    _LOADERS[kind] = loader


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``(kind, target)`` for a spec string; a SpecError lists the accepted forms."""
    s = spec.strip()
    if not s:
        raise SpecError(f"empty model spec; use {SPEC_HELP}")
    if s.startswith("hf:"):
        return "hf", s[3:]
    if s.startswith("onnx:"):
        return "onnx", s[5:]
    if s.startswith("pyfn:"):
        return "pyfn", s[5:]
    suffix = Path(s).suffix.lower()
    if suffix == ".onnx":
        return "onnx", s
    if suffix == ".pt2":
        return "export", s
    if suffix in {".pt", ".pth", ".ts"}:
        return "torchscript", s
    if suffix == ".json":
        return "json", s
    if _FACTORY_RE.match(s):
        return "factory", s
    if suffix in {".safetensors", ".th", ".bin", ".ckpt"}:
        raise SpecError(
            f"model spec {spec!r} is a weights file; give the architecture as "
            f"pkg.module:factory and pass the file with --weights {s}"
        )
    raise SpecError(f"unknown model spec {spec!r}; use {SPEC_HELP}")


def _builtin_loaders() -> None:
    # Imported here, not at module import, so `raigate --help` stays fast and
    # transformers is only imported for hf: specs.
    from raigate.models import loaders

    for kind, fn in loaders.LOADERS.items():
        _LOADERS.setdefault(kind, fn)


def load_model(
    spec: str,
    *,
    weights: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    input_size: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    data: Dataset | None = None,
    trust_code: bool = False,
    random_init: bool = False,
    spec_origin: str | None = None,
    preprocess: str | dict[str, Any] | Preprocess | None = None,
    outputs: str | None = None,
    mode: str | None = None,
) -> Model:
    """Load any model spec as a :class:`Model` in eval mode.

    ``class_names`` and ``input_size`` default to the dataset's label names and image shape
    when ``data`` is given and the format carries none.

    Code a file names (a ``FILE.json`` spec's factory; any factory when ``spec_origin`` says
    the spec was read from a plan) runs only if it is one of raigate's own model factories
    or ``trust_code=True`` (see :mod:`raigate.models.factories`). A factory without weights
    is refused unless ``random_init=True``; the model is then marked ``random_init``.

    ``preprocess`` is the deployed pipeline (``"resize=256,resize_mode=shorter,crop=224"``,
    a dict, or a :class:`~raigate.models.preprocess.Preprocess`). ``outputs`` and ``mode``
    configure ``onnx:`` and ``pyfn:`` models (:mod:`raigate.models.onnx`).
    """
    _builtin_loaders()
    kind, target = parse_model_spec(spec)
    if weights is not None and kind not in {"factory", "json"}:
        raise SpecError(
            f"--weights applies to pkg.module:factory specs, not to {kind} spec {spec!r}"
        )
    options = ModelOptions(
        weights=Path(weights) if weights is not None else None,
        class_names=tuple(class_names) if class_names else None,
        input_size=tuple(int(v) for v in input_size) if input_size else None,  # type: ignore[arg-type]
        mean=tuple(float(v) for v in mean) if mean else None,
        std=tuple(float(v) for v in std) if std else None,
        trust_code=trust_code,
        random_init=random_init,
        spec_origin=spec_origin,
        preprocess=parse_preprocess(preprocess) if preprocess is not None else None,
        outputs=outputs,
        mode=mode,
    )
    if kind not in {"onnx", "pyfn"}:
        for name, value in (("outputs", outputs), ("mode", mode)):
            if value not in (None, "auto"):
                raise SpecError(
                    f"--{name} applies to onnx: and pyfn: models, not to {kind} spec {spec!r}"
                )
    if data is not None:
        options = replace(
            options,
            data_class_names=tuple(data.class_names),
            data_input_size=tuple(data.shape) if len(data) else None,  # type: ignore[arg-type]
        )
    if options.input_size is not None and len(options.input_size) != 3:
        raise SpecError(
            f"--input-size must be C,H,W (three numbers), got {list(options.input_size)}"
        )
    return _LOADERS[kind](spec, target, options)
