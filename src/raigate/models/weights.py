"""Read weights files safely and fit them to a module strictly, with errors that say why not.

A weights file is data, not code: ``.safetensors`` cannot hold code at all, and ``.pt``
checkpoints are read with ``torch.load(weights_only=True)``, whose restricted unpickler
refuses any global outside tensors and plain containers. A checkpoint that needs more (a
pickled ``nn.Module``, a custom class, a ``__reduce__`` payload) is refused, never run.

>>> import torch, tempfile, pathlib
>>> from raigate.zoo import small_cnn
>>> path = pathlib.Path(tempfile.mkdtemp()) / "w.pt"
>>> torch.save({"state_dict": small_cnn(2).state_dict(), "epoch": 3}, path)
>>> net = small_cnn(2)
>>> apply_state_dict(net, load_state_dict_file(path), source=path)
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from raigate._io import atomic_path
from raigate.errors import ModelLoadError
from raigate.models._common import is_torchscript, one_line, zip_names

__all__ = [
    "PICKLE_SUFFIXES",
    "SAFETENSORS_SUFFIXES",
    "apply_state_dict",
    "load_state_dict_file",
    "save_safetensors",
]

SAFETENSORS_SUFFIXES = frozenset({".safetensors"})
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".th", ".bin", ".ckpt"})

# Where training scripts nest the state dict inside a checkpoint, most common first.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
_SHOW = 8


def save_safetensors(net: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``net``'s state dict (on CPU, contiguous) as safetensors, atomically
    (:func:`raigate._io.atomic_path`: a unique temp file in the same folder, fsync, rename),
    so a crash never leaves half a file and two writers never share a temp file."""
    from safetensors.torch import save_file

    out = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp))
    return out


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Tensors by name from a ``.safetensors`` or ``.pt/.pth/.th/.bin/.ckpt`` file.

    Legacy checkpoints are unwrapped (``{"state_dict": ...}``, ``model_state_dict``,
    ``model``), entries that are not tensors (``best_prec1``, ``epoch``) are dropped, and a
    ``module.`` prefix that every key carries (``nn.DataParallel``) is stripped.
    """
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "not found"
        raise ModelLoadError(f"weights file {p} {what}; check the --weights path")
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        raw: Any = _read_safetensors(p)
    elif suffix in PICKLE_SUFFIXES:
        if is_torchscript(zip_names(p)):
            raise ModelLoadError(
                f"{p} is a TorchScript archive, not a state dict; give it as the model spec "
                "itself (without --weights)"
            )
        raw = _read_torch(p)
    else:
        known = ", ".join(sorted(SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES))
        raise ModelLoadError(
            f"weights file {p} has an unknown suffix {suffix!r}; use one of {known}"
        )
    return _as_state_dict(raw, p)


def _read_safetensors(p: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"weights file {p} is not a readable safetensors file: {e}") from e


def _read_torch(p: Path) -> Any:
    try:
        # weights_only=True is the whole point: never run code from a weights file.
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's weights-only unpickler names the first global it refused ("GLOBAL
        # posix.system"); anything else is a pickle it cannot parse at all.
        text = str(e)
        culprit = re.search(r"GLOBAL ([\w.]+)", text)
        if culprit:
            raise ModelLoadError(
                f"weights file {p} contains pickled code or objects (it references "
                f"{culprit.group(1)}) and was not loaded; re-save a plain state dict "
                "(torch.save(model.state_dict(), ...)) or safetensors"
            ) from e
        detail = re.search(r"(Unsupported [^\n]+|Unpickler error: [^\n]+)", text)
        raise ModelLoadError(
            f"weights file {p} is not a readable torch checkpoint"
            f"{f' ({detail.group(1).strip()})' if detail else ''}; re-save a plain state dict "
            "(torch.save(model.state_dict(), ...)) or safetensors"
        ) from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise ModelLoadError(
            f"weights file {p} is not a readable torch checkpoint: {one_line(e)}"
        ) from e


def _numpy_scalar_globals() -> list[Any]:
    """numpy scalars and dtypes, allowed in addition to torch's defaults.

    Training scripts often store metrics as numpy scalars (``best_acc = np.float64(...)``);
    rebuilding those runs no code (a dtype plus raw bytes), so such checkpoints need not be
    refused. Arrays and everything else stay blocked.
    """
    try:
        import numpy as np
    except ImportError:
        return []
    core = getattr(np, "_core", None) or np.core
    dtypes = getattr(np, "dtypes", None)
    classes = [v for v in vars(dtypes).values() if isinstance(v, type)] if dtypes else []
    return [core.multiarray.scalar, np.dtype, *classes]


def _as_state_dict(raw: Any, p: Path) -> dict[str, Tensor]:
    if not isinstance(raw, Mapping):
        raise ModelLoadError(
            f"weights file {p} holds a {type(raw).__name__}, not a state dict of named tensors"
        )
    for key in _NESTED_KEYS:
        nested = raw.get(key)
        if isinstance(nested, Mapping) and any(isinstance(v, Tensor) for v in nested.values()):
            raw = nested
            break
    sd = {str(k): v for k, v in raw.items() if isinstance(v, Tensor)}
    if not sd:
        keys = ", ".join(map(str, list(raw)[:_SHOW])) or "none"
        raise ModelLoadError(f"weights file {p} holds no tensors (top-level keys: {keys})")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def apply_state_dict(
    module: nn.Module, state_dict: Mapping[str, Tensor], *, source: str | os.PathLike[str]
) -> None:
    """Load ``state_dict`` into ``module`` strictly or raise a ModelLoadError that lists the
    missing and unexpected keys and the shape mismatches, naming ``source``.

    Nothing is copied unless everything fits, so a failed load leaves the module unchanged.
    ``num_batches_tracked`` may be absent (checkpoints from PyTorch < 0.4.1 lack it);
    BatchNorm then keeps its own counter, as ``load_state_dict`` does.
    """
    expected = module.state_dict()
    missing = [
        k for k in expected if k not in state_dict and not k.endswith(".num_batches_tracked")
    ]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: file {list(state_dict[k].shape)} vs model {list(expected[k].shape)}"
        for k in state_dict
        if k in expected and state_dict[k].shape != expected[k].shape
    ]
    name = type(module).__name__
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_listing(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_listing(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({_listing(shapes)})")
        raise ModelLoadError(
            f"weights {source} do not fit {name}: {'; '.join(parts)}; check that the factory "
            "and its num_classes match the weights file"
        )
    try:
        module.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"weights {source} do not fit {name}: {one_line(e)}") from e


def _listing(items: Iterable[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:_SHOW])
    return shown + (f", ... (+{len(items) - _SHOW} more)" if len(items) > _SHOW else "")
