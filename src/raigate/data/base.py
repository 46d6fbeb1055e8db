"""The one ``Dataset`` contract every loader fills.

A dataset yields ``(x, y, index)``: ``x`` a float tensor ``[C, H, W]`` in [0, 1], ``y`` the
integer label for the current task, ``index`` the sample's position in this dataset.
``attributes`` is a DataFrame aligned by that position (FairFace race/gender/age, CSV
columns, ...); ``labels`` and ``class_names`` describe the task; ``manifest`` names exactly
which files (with sha256) were read. Images are read lazily, one at a time, so a dataset
never holds every image in memory; :meth:`Dataset.loader` batches them.

Subclasses implement :meth:`Dataset._read` (one stored row to a tensor) and
:meth:`Dataset._manifest_files` (the files behind a set of rows).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from raigate.errors import ConfigError
from raigate.results import Finding, dumps


@dataclass
class Manifest:
    """What a dataset consists of: files with sha256 and size, sample count, and any
    generator or selection details (``extra``). ``digest`` is the sha256 of its canonical
    JSON, so two runs over the same bytes and selection name the same digest."""

    spec: str
    count: int
    files: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        body = dumps({"count": self.count, "files": self.files, "extra": self.extra})
        return "sha256:" + hashlib.sha256(body.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "count": self.count,
            "files": self.files,
            "extra": self.extra,
            "digest": self.digest,
        }


NOT_ATTRIBUTES = frozenset({"file", "path", "filename"})
"""Attribute columns that name a sample's file, not a group it belongs to: no fairness
check or group balancing reads them as a sensitive attribute."""


def resize_tensor(x: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resize one ``[C, H, W]`` image, kept in [0, 1]; bilinear and bicubic are antialiased
    (as PIL shrinks), ``nearest`` and ``area`` are as torch defines them."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    smooth = mode in ("bilinear", "bicubic")
    kwargs = {"antialias": True, "align_corners": False} if smooth else {}
    out = F.interpolate(x.unsqueeze(0), size=size, mode=mode, **kwargs)  # type: ignore[arg-type]
    return out.squeeze(0).clamp_(0.0, 1.0)


class Dataset(torch.utils.data.Dataset):
    """Base class: labels and attributes in memory, images read on demand.

    ``rows`` are positions in the backing store (all files, or all pickle rows); subsets
    and samples only change ``rows``, never the store, so they are cheap.
    """

    def __init__(
        self,
        *,
        spec: str,
        labels: np.ndarray,
        class_names: Sequence[str],
        attributes: pd.DataFrame | None = None,
        task: str | None = None,
        synthetic: bool = False,
        channels: int = 3,
        native_size: tuple[int, int] | None = None,
    ) -> None:
        self.spec = spec
        self.task = task
        self.synthetic = synthetic
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.channels = channels
        self.native_size = native_size
        self.image_size: tuple[int, int] | None = None  # set by resized()
        # deployed resize/crop (raigate.models.preprocess), set by transformed()
        self.geometry: Any = None
        self._all_labels = np.asarray(labels, dtype=np.int64)
        n = len(self._all_labels)
        attrs = attributes if attributes is not None else pd.DataFrame(index=range(n))
        if len(attrs) != n:
            raise ValueError(f"attributes have {len(attrs)} rows for {n} labels")
        self._all_attributes = attrs.reset_index(drop=True)
        self._rows = np.arange(n, dtype=np.int64)
        self._manifest: Manifest | None = None
        # likely selection mistakes (raigate.sanity), recorded by every check's result
        self.warnings: list[Finding] = []

    # -- to implement -------------------------------------------------------------------
    def _read(self, row: int, size: tuple[int, int] | None) -> Tensor:
        """Image at backing-store ``row`` as float ``[C, H, W]`` in [0, 1], resized to
        ``size`` (H, W) when given."""
        raise NotImplementedError

    def _manifest_files(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """``[{"path", "sha256", "bytes"}, ...]`` for the files behind ``rows``."""
        raise NotImplementedError

    def _manifest_extra(self) -> dict[str, Any]:
        """Selection and generator details that belong in the manifest."""
        return {}

    # -- torch Dataset --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        row = int(self._rows[i])
        if self.geometry is not None and self.image_size is not None:
            from raigate.models.preprocess import apply_geometry

            # decoded once at its stored size, then resized and cropped as deployed
            x = apply_geometry(self._read(row, None), self.geometry, self.image_size)
        else:
            x = self._read(row, self.image_size)
        return x, int(self._all_labels[row]), int(i)

    # -- views ----------------------------------------------------------------------------
    @property
    def labels(self) -> np.ndarray:
        """Integer labels of this dataset's samples, in order."""
        return self._all_labels[self._rows]

    @property
    def attributes(self) -> pd.DataFrame:
        """Per-sample attributes, index 0..len-1 aligned with ``index`` from the loader."""
        return self._all_attributes.iloc[self._rows].reset_index(drop=True)

    @property
    def attribute_columns(self) -> list[str]:
        """Columns that can name groups (every attribute but file names, NOT_ATTRIBUTES)."""
        return [str(c) for c in self._all_attributes.columns if str(c) not in NOT_ATTRIBUTES]

    def require_attribute_columns(
        self, columns: Sequence[str], option: str, where: str = ""
    ) -> None:
        """A one-line ConfigError naming ``option`` (and ``where``, e.g. " in race+gender")
        when some of ``columns`` are not attribute columns of this dataset."""
        available = self.attribute_columns
        bad = [c for c in columns if c not in available]
        if bad:
            raise ConfigError(
                f"{option}: unknown column(s) {bad}{where}; {self.spec} has attribute columns "
                f"{available}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images this dataset yields."""
        if self.image_size is not None:
            return (self.channels, *self.image_size)
        if self.native_size is not None:
            return (self.channels, *self.native_size)
        x = self._read(int(self._rows[0]), None)
        return tuple(x.shape)  # type: ignore[return-value]

    def subset(self, positions: Sequence[int] | np.ndarray) -> Dataset:
        """A view on some samples (positions in this dataset); shares the backing store."""
        pos = np.asarray(positions, dtype=np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= len(self)):
            raise ConfigError(f"subset positions must lie in 0..{len(self) - 1}")
        view = copy.copy(self)
        view._rows = self._rows[pos]
        view._manifest = None
        return view

    def resized(self, size: Sequence[int] | None) -> Dataset:
        """A view whose images come out at ``size`` = (H, W) (e.g. the model's input size)."""
        view = copy.copy(self)
        view.image_size = None if size is None else (int(size[0]), int(size[1]))
        return view

    def transformed(self, geometry: Any, size: Sequence[int]) -> Dataset:
        """A view whose images go through a deployed resize and center crop
        (:class:`raigate.models.preprocess.Preprocess`) ending at ``size`` = (H, W)."""
        view = self.resized(size)
        view.geometry = geometry if geometry is not None and geometry.has_geometry else None
        return view

    def loader(
        self, batch_size: int = 64, *, num_workers: int = 0, shuffle: bool = False, seed: int = 0
    ) -> DataLoader:
        """Batches of ``(x [B,C,H,W], y [B], index [B])``, streamed from disk."""
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(
            self,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=num_workers,
            generator=gen,
            persistent_workers=False,
        )

    @property
    def manifest(self) -> Manifest:
        """Files with sha256 behind the selected samples (computed once, then cached)."""
        if self._manifest is None:
            extra = {"task": self.task, "synthetic": self.synthetic, **self._manifest_extra()}
            if len(self._rows) != len(self._all_labels):
                extra["selected_rows"] = hashlib.sha256(self._rows.tobytes()).hexdigest()
            files = self._manifest_files(np.sort(self._rows))
            self._manifest = Manifest(spec=self.spec, count=len(self), files=files, extra=extra)
        return self._manifest

    def counts(self) -> dict[str, dict[str, int]]:
        """Sample counts per label name and per value of every attribute column."""
        out: dict[str, dict[str, int]] = {}
        label_names = np.asarray(self.class_names, dtype=object)[self.labels]
        label_counts = pd.Series(label_names).value_counts().reindex(self.class_names, fill_value=0)
        out["label"] = {str(k): int(v) for k, v in label_counts.items()}
        attrs = self.attributes
        for col in attrs.columns:
            if col in {"file", "path"}:
                continue
            series = attrs[col]
            if isinstance(series.dtype, pd.CategoricalDtype):  # vocabulary order, empty groups kept
                vc = series.value_counts(sort=False)
            else:
                vc = series.astype(str).value_counts(sort=False).sort_index()
            out[str(col)] = {str(k): int(v) for k, v in vc.items()}
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-safe summary for reports and ``raigate data inspect``."""
        return {
            "spec": self.spec,
            "task": self.task,
            "synthetic": self.synthetic,
            "n": len(self),
            "class_names": list(self.class_names),
            "shape": list(self.shape) if len(self) else None,
            "counts": self.counts(),
            "manifest_digest": self.manifest.digest,
            "manifest_files": len(self.manifest.files),
            "warnings": [w.model_dump() for w in self.warnings],
        }


def select(
    data: Dataset, *, limit: int | None = None, sample: int | None = None, seed: int = 0
) -> Dataset:
    """Bound the cost of a command: the first ``limit`` samples, or a seeded ``sample``
    stratified by label (each class keeps its share, rounded by largest remainder).

    The first ``limit`` samples of data stored class by class hold few classes; the view
    then carries a warning that says so and suggests ``sample``
    (:func:`raigate.sanity.limit_findings`)."""
    if limit is not None and sample is not None:
        raise ConfigError("give --limit or --sample, not both")
    if limit is not None:
        if limit <= 0:
            raise ConfigError(f"--limit must be positive, got {limit}")
        from raigate.sanity import limit_findings

        view = data.subset(np.arange(min(limit, len(data))))
        found = limit_findings(data.spec, limit, view.labels, data.labels, data.class_names)
        view.warnings = [*data.warnings, *found]
        return view
    if sample is None:
        return data
    if sample <= 0:
        raise ConfigError(f"--sample must be positive, got {sample}")
    n = len(data)
    if sample >= n:
        return data
    rng = np.random.default_rng(seed)
    labels = data.labels
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * sample / n
    take = np.floor(exact).astype(int)
    remainder = sample - take.sum()
    order = np.argsort(-(exact - take), kind="stable")
    take[order[:remainder]] += 1
    chosen: list[np.ndarray] = []
    for cls, k in zip(classes, take, strict=True):
        members = np.flatnonzero(labels == cls)
        chosen.append(rng.choice(members, size=int(k), replace=False))
    return data.subset(np.sort(np.concatenate(chosen)))
