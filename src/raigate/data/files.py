"""Image files on disk: shared PIL reading, manifest entries, and the ``folder:`` / ``csv:``
loaders.

Every image-file dataset (FairFace, folders, CSV lists) keeps only paths, labels and
attributes in memory and decodes one image per ``__getitem__``: the full FairFace
validation set (10,954 faces at 224x224) would need about 6.6 GB as float tensors, so
holding them all is never an option.

Reading is PIL's, on purpose: ``open -> RGB -> resize(BILINEAR)`` is what the common
pretrained pipelines do, and tests compare our pixels with PIL's own decode of the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor

from raigate._io import sha256_file
from raigate.data.base import Dataset
from raigate.errors import ConfigError, DataError, SpecError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"})


def read_image(path: str | os.PathLike[str], size: tuple[int, int] | None = None) -> Tensor:
    """One image file as float ``[3, H, W]`` in [0, 1]; ``size`` is (H, W).

    Resizing uses PIL's BILINEAR filter with ``reducing_gap=None`` so the result is the
    exact filter, not PIL's faster approximate JPEG draft reduction.
    """
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            if size is not None and rgb.size != (size[1], size[0]):
                rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=None)
            arr = np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DataError(
            f"{path}: cannot read image ({type(exc).__name__}: {reason}); check that the "
            "file exists and is a complete JPEG/PNG/BMP/WebP/GIF, or drop it from the dataset"
        ) from exc
    # uint8 -> float32 then divide: the same numbers as np.float32(arr) / 255 everywhere.
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


def check_file_names(label_file: Path, column: str, names: Sequence[str]) -> None:
    """A label file's image names must be ones a file system can hold: a NUL character
    (a corrupted or binary file) is refused here, naming the line, instead of failing deep
    inside ``open``."""
    for row, name in enumerate(names):
        if "\x00" in str(name):
            raise DataError(
                f"{label_file}: line {row + 2}, column {column!r} holds a NUL character, not a "
                "file name; the label file is corrupted: restore it from the original"
            )


def file_entry(root: Path, rel: str) -> dict[str, Any]:
    """Manifest entry ``{"path", "sha256", "bytes"}`` for ``root / rel``; ``path`` stays
    relative (posix) so the same data in another folder gives the same manifest digest."""
    full = root / rel
    try:
        digest = sha256_file(full)
        size = full.stat().st_size
    except (OSError, ValueError) as exc:  # ValueError: a name no file system holds
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise DataError(
            f"{full!s:.200}: cannot read file for the data manifest ({reason}); "
            "restore the file or drop it from the dataset"
        ) from exc
    return {"path": Path(rel).as_posix(), "sha256": digest, "bytes": int(size)}


def parse_root_split(
    scheme: str,
    target: str,
    splits: Sequence[str],
    default: str,
) -> tuple[Path, str]:
    """Split ``ROOT[:SPLIT]`` into a path and a split name.

    Only the last ``:`` can start a split, and only when what follows has no path
    separator, so ``C:\\data`` or ``/mnt/a:b/data`` still read as plain roots.
    """
    head, sep, tail = target.rpartition(":")
    if sep and "/" not in tail and "\\" not in tail and head:
        root_text, split = head, tail
    else:
        root_text, split = target, default
    if not root_text.strip():
        raise SpecError(f"{scheme}: needs a root folder; use {scheme}:ROOT[:{'|'.join(splits)}]")
    if split not in splits:
        raise SpecError(
            f"{scheme}:{target}: unknown split {split!r}; use one of {', '.join(splits)}"
        )
    return Path(root_text).expanduser(), split


def read_label_csv(path: Path) -> pd.DataFrame:
    """A label CSV as strings (no NaN guessing: ``"NA"`` stays a label, not a missing value)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the CSV file is empty; it needs a header row and rows") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path}: cannot parse the CSV ({str(exc).splitlines()[0]}); save it as UTF-8 "
            "comma-separated text"
        ) from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read the CSV ({exc.strerror or exc})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame) == 0:
        raise DataError(f"{path}: the CSV has a header but no rows; add one row per image")
    return frame


class ImageFileDataset(Dataset):
    """Images listed by path (relative to ``root`` or absolute), decoded on demand.

    ``label_files`` are extra files (a label CSV) that define the dataset as much as the
    images do, so they go into the manifest too.
    """

    def __init__(
        self,
        *,
        root: Path,
        paths: Sequence[str],
        label_files: Sequence[str] = (),
        extra: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(paths) != len(self._all_labels):
            raise ValueError(f"{len(paths)} paths for {len(self._all_labels)} labels")
        self.root = root
        self._paths = np.asarray(list(paths), dtype=object)
        self._label_files = tuple(label_files)
        self._extra = dict(extra or {})

    def path(self, i: int) -> Path:
        """Full path of sample ``i`` of this view."""
        return self.root / str(self._paths[int(self._rows[i])])

    def _read(self, row: int, size: tuple[int, int] | None) -> Tensor:
        return read_image(self.root / str(self._paths[row]), size)

    def _manifest_files(self, rows: np.ndarray) -> list[dict[str, Any]]:
        entries = [file_entry(self.root, rel) for rel in self._label_files]
        entries += [file_entry(self.root, str(self._paths[r])) for r in rows]
        return entries

    def _manifest_extra(self) -> dict[str, Any]:
        return dict(self._extra)


def check_single_task(scheme: str, task: str | None) -> None:
    """Folder datasets carry one label; a ``task`` would otherwise be silently
    ignored and the audit would claim to measure something it did not."""
    if task not in (None, "label"):
        raise ConfigError(
            f"{scheme}: datasets have one label (task 'label'), not {task!r}; drop the task"
        )


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def load_folder(spec: str, target: str, task: str | None) -> Dataset:
    """``folder:ROOT``: one subfolder per class (sorted names are the class names), any
    depth of images inside each, in sorted path order (the same order on every machine)."""
    check_single_task("folder", task)
    if not target.strip():
        raise SpecError("folder: needs a root folder; use folder:ROOT")
    root = Path(target).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; folder:ROOT needs one subfolder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"{root}: no class subfolders; folder:ROOT expects ROOT/<class>/<image> "
            "(e.g. ROOT/cat/1.jpg)"
        )
    paths: list[str] = []
    labels: list[int] = []
    for k, name in enumerate(classes):
        found = sorted(
            p.relative_to(root).as_posix() for p in (root / name).rglob("*") if _is_image(p)
        )
        if not found:
            raise DataError(
                f"{root / name}: class folder holds no images "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder"
            )
        paths += found
        labels += [k] * len(found)
    attrs = pd.DataFrame({"path": paths})
    return ImageFileDataset(
        spec=spec,
        root=root,
        paths=paths,
        labels=np.asarray(labels),
        class_names=classes,
        attributes=attrs,
        task=task,
        extra={"format": "folder"},
    )


def load_csv(spec: str, target: str, task: str | None) -> Dataset:
    """``csv:FILE``: columns ``path`` and the label plus any attribute columns (kept as
    strings); paths relative to the CSV's folder or absolute; class names are the sorted
    labels. The label is column ``label``, or the column ``task`` names (``--task gender``
    on ``path,gender,race,age``), which then also stays an attribute, as FairFace's do, so
    the fairness check can group by it; a ``label`` column beside another task becomes
    attribute ``csv_label``."""
    column = task or "label"
    if not target.strip():
        raise SpecError("csv: needs a file; use csv:FILE with columns path,label")
    csv_path = Path(target).expanduser()
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: CSV file not found; csv:FILE needs columns path,label")
    frame = read_label_csv(csv_path)
    if column == "path":
        raise ConfigError(f"{csv_path}: --task path: the path column cannot be the label")
    missing = [c for c in ("path", column) if c not in frame.columns]
    if missing:
        how = (
            "the CSV needs path,label (plus optional attribute columns)"
            if task in (None, "label")
            else f"--task {task} names the label column"
        )
        raise DataError(
            f"{csv_path}: missing column(s) {', '.join(missing)}; {how} but has "
            f"{', '.join(frame.columns)}"
        )
    for col in ("path", column):
        empty = np.flatnonzero(frame[col].str.strip().to_numpy() == "")
        if empty.size:
            raise DataError(
                f"{csv_path}: line {int(empty[0]) + 2}, column {col!r} is empty; every row "
                "needs a path and a label"
            )
    label_text = frame[column].str.strip().to_numpy(dtype=object)
    classes = sorted(set(label_text))
    index = {name: k for k, name in enumerate(classes)}
    labels = np.asarray([index[v] for v in label_text], dtype=np.int64)
    paths = [p.strip() for p in frame["path"]]
    check_file_names(csv_path, "path", paths)
    attrs = frame.reset_index(drop=True).copy()
    attrs["path"] = paths
    if column == "label":
        attrs = attrs.drop(columns=["label"])
    else:
        attrs[column] = label_text
        if "label" in attrs.columns:  # "label" names the class counts in reports
            attrs = attrs.rename(columns={"label": "csv_label"})
    root = csv_path.parent
    return ImageFileDataset(
        spec=spec,
        root=root,
        paths=paths,
        labels=labels,
        class_names=classes,
        attributes=attrs,
        task=task,
        label_files=[csv_path.name],
        extra={"format": "csv"},
    )
