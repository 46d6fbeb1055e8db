"""Helpers every loader shares: file evidence, required metadata, conflict checks."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raigate._io import sha256_file
from raigate.errors import ConfigError, ModelLoadError, SpecError
from raigate.models.specs import ModelOptions


def file_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"path", "sha256", "bytes"}`` for a file a model was loaded from (report evidence)."""
    p = Path(path)
    return {"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size}


def one_line(e: BaseException) -> str:
    """``Type: first line`` of an exception, for one-line user messages."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def existing_file(target: str, what: str) -> Path:
    """``target`` as a Path, or a ModelLoadError naming it and what it should have been."""
    p = Path(target).expanduser()
    if not p.is_file():
        state = "is a folder, not a file" if p.is_dir() else "not found"
        raise ModelLoadError(f"{what} {p} {state}")
    return p


def require_class_names(spec: str, options: ModelOptions) -> tuple[str, ...]:
    """Formats without class names need them from the user or the dataset, in output order."""
    names = options.class_names or options.data_class_names
    if not names:
        raise SpecError(
            f"model spec {spec!r} carries no class names: pass --class-names a,b,... in the "
            "order of the model's outputs (or run it on a dataset)"
        )
    return names


def names_from_data(options: ModelOptions) -> bool:
    """Whether :func:`require_class_names` fell back to the dataset's labels: then a
    mismatch with the model's outputs is most likely that fallback, not a broken model."""
    return not options.class_names and bool(options.data_class_names)


def require_input_size(spec: str, options: ModelOptions) -> tuple[int, int, int]:
    """Formats without an input size need it for the adapter's shape checks and dummy pass."""
    size = options.input_size or options.data_input_size
    if not size:
        raise SpecError(
            f"model spec {spec!r} carries no input size: pass --input-size C,H,W "
            "(e.g. 3,32,32) (or run it on a dataset)"
        )
    return size


def same_or_conflict(
    field: str, ours: Sequence[Any] | None, given: Sequence[Any] | None, source: str
) -> None:
    """Command-line values may repeat what a self-describing model says, never change it."""
    if ours is None or given is None:
        return
    a, b = list(ours), list(given)
    if all(isinstance(v, int | float) for v in a + b):
        # One value means "every channel", as for --mean 0.5.
        if len(a) == 1 and len(b) > 1:
            a = a * len(b)
        if len(b) == 1 and len(a) > 1:
            b = b * len(a)
        same = len(a) == len(b) and all(
            abs(float(x) - float(y)) <= 1e-6 for x, y in zip(a, b, strict=True)
        )
    else:
        same = [str(x) for x in a] == [str(y) for y in b]
    if not same:
        raise ConfigError(
            f"{field} {b} (from the command line) differs from {a} in {source}; "
            f"drop the option, or fix {source}"
        )


def zip_names(p: Path) -> list[str]:
    """Entry names of a zip archive (TorchScript, torch.save and .pt2 files are zips); [] if not."""
    try:
        with zipfile.ZipFile(p) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def is_torchscript(names: list[str]) -> bool:
    """TorchScript archives hold compiled code next to their pickles; torch.save files do not."""
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def is_pt2(names: list[str]) -> bool:
    """torch.export archives mark their format and keep programs under models/."""
    return any(n.endswith("/archive_format") for n in names) or any("/models/" in n for n in names)
