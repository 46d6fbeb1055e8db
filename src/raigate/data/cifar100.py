"""``cifar100:ROOT[:train|test]``: the official ``cifar-100-python`` pickles (Krizhevsky 2009).

::

    ROOT/cifar-100-python/{train,test,meta}     (or ROOT is that folder itself)

The official files are Python pickles, and unpickling runs whatever callables the file
names. A data file handed to an audit tool is untrusted input, so :class:`SafeUnpickler`
only resolves the few globals that numpy arrays need and refuses everything else before
any of it can run. Pixels stay as the format's uint8 array (150 MB for train) and become
float tensors one sample at a time.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from raigate.data.base import Dataset, resize_tensor
from raigate.data.files import file_entry, parse_root_split
from raigate.errors import ConfigError, DataError

FOLDER = "cifar-100-python"
SPLITS: tuple[str, ...] = ("train", "test")
TASKS: tuple[str, ...] = ("fine", "coarse")

_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }
)


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays, lists, dicts and strings, and nothing
    that could run code: any other global raises :class:`DataError` when it is looked up,
    which happens before the pickle could call it."""

    def __init__(self, file: Any, *, source: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise DataError(
            f"{self.source}: refusing to unpickle {module}.{name}; the official CIFAR-100 "
            "pickles contain only arrays and lists"
        )


def safe_load(path: Path) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler`; damage becomes a :class:`DataError`."""
    try:
        with open(path, "rb") as fh:
            return SafeUnpickler(fh, source=path).load()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except Exception as exc:  # truncated or foreign files raise many pickle error types
        raise DataError(
            f"{path}: not a readable CIFAR-100 pickle ({type(exc).__name__}: {exc}); "
            "download cifar-100-python.tar.gz again and extract it unchanged"
        ) from exc


def _get(record: Any, key: str, path: Path) -> Any:
    """``record[key]`` for pickles written by Python 2 (bytes keys) or 3 (str keys)."""
    if isinstance(record, dict):
        for k in (key.encode("ascii"), key):
            if k in record:
                return record[k]
    found = ", ".join(sorted(str(k) for k in record)) if isinstance(record, dict) else "none"
    raise DataError(f"{path}: missing key {key!r} (keys found: {found}); is it a CIFAR-100 file?")


def _text(values: Any) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _resolve_folder(root: Path) -> Path:
    for folder in (root / FOLDER, root):
        if (folder / "meta").is_file():
            return folder
    raise DataError(
        f"{root}: no CIFAR-100 pickles found; expected {root / FOLDER}/{{train,test,meta}} "
        "(extract cifar-100-python.tar.gz there) or ROOT pointing at that folder itself"
    )


def _labels(record: Any, key: str, names: list[str], n: int, path: Path) -> np.ndarray:
    labels = np.asarray(_get(record, key, path))
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: {key!r} should hold {n} integer labels, found shape "
            f"{labels.shape} of {labels.dtype}"
        )
    if n and (labels.min() < 0 or labels.max() >= len(names)):
        raise DataError(f"{path}: {key!r} has labels outside 0..{len(names) - 1}")
    return labels.astype(np.int64)


class Cifar100Dataset(Dataset):
    """CIFAR-100 rows from the in-memory uint8 array ``[N, 3, 32, 32]``."""

    def __init__(
        self, *, pixels: np.ndarray, files: list[tuple[Path, str]], split: str, **kwargs: Any
    ) -> None:
        super().__init__(native_size=(32, 32), **kwargs)
        self._pixels = torch.from_numpy(pixels)
        self._files = files
        self.split = split

    def _read(self, row: int, size: tuple[int, int] | None) -> Tensor:
        x = self._pixels[row].to(torch.float32).div_(255.0)
        return resize_tensor(x, size) if size is not None else x

    def _manifest_files(self, rows: np.ndarray) -> list[dict[str, Any]]:
        # Every row comes from the same two files; which rows were chosen is recorded by
        # the base class as ``selected_rows``.
        return [file_entry(folder, name) for folder, name in self._files]

    def _manifest_extra(self) -> dict[str, Any]:
        return {"format": "cifar100", "split": self.split}


def load_cifar100(spec: str, target: str, task: str | None) -> Dataset:
    """Load one split; task ``fine`` (100 classes, default) or ``coarse`` (20 superclasses)."""
    root, split = parse_root_split("cifar100", target, SPLITS, "test")
    name = "fine" if task is None else task
    if name not in TASKS:
        raise ConfigError(f"cifar100: unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if not root.is_dir():
        raise DataError(
            f"{root}: CIFAR-100 root folder not found; pass the folder holding "
            f"{FOLDER}/ or {FOLDER}/ itself"
        )
    folder = _resolve_folder(root)
    split_path, meta_path = folder / split, folder / "meta"
    if not split_path.is_file():
        raise DataError(f"{split_path}: CIFAR-100 {split} file not found next to {meta_path}")
    meta = safe_load(meta_path)
    record = safe_load(split_path)
    fine_names = _text(_get(meta, "fine_label_names", meta_path))
    coarse_names = _text(_get(meta, "coarse_label_names", meta_path))

    data = np.asarray(_get(record, "data", split_path))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{split_path}: 'data' should be [N, 3072] (3 planes of 32x32), found "
            f"shape {data.shape}"
        )
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or data.min() < 0 or data.max() > 255:
            raise DataError(f"{split_path}: 'data' should hold uint8 pixels, found {data.dtype}")
        data = data.astype(np.uint8)
    n = data.shape[0]
    # Row layout: 1024 red values, then 1024 green, then 1024 blue, each plane row-major.
    pixels = np.ascontiguousarray(data.reshape(n, 3, 32, 32))
    if not pixels.flags.writeable:
        pixels = pixels.copy()
    fine = _labels(record, "fine_labels", fine_names, n, split_path)
    coarse = _labels(record, "coarse_labels", coarse_names, n, split_path)
    filenames = _text(_get(record, "filenames", split_path))
    if len(filenames) != n:
        raise DataError(f"{split_path}: {len(filenames)} filenames for {n} images")

    if name == "fine":
        labels, classes = fine, fine_names
        attrs = pd.DataFrame(
            {"coarse_label": np.asarray(coarse_names, dtype=object)[coarse], "filename": filenames}
        )
    else:
        labels, classes = coarse, coarse_names
        attrs = pd.DataFrame(
            {"fine_label": np.asarray(fine_names, dtype=object)[fine], "filename": filenames}
        )
    return Cifar100Dataset(
        spec=spec,
        pixels=pixels,
        files=[(folder, split), (folder, "meta")],
        split=split,
        labels=labels,
        class_names=classes,
        attributes=attrs,
        task=name,
    )
