"""PNG figures for the explanation report: image + overlay grids, the randomization cascade
and per-group mean maps. Matplotlib is imported lazily with the Agg backend; figures come
back as PNG bytes so the caller writes them atomically.

Overlays show the absolute importance (channel sum of the attributions), scaled per map to
its 99th percentile so one hot pixel does not wash out the rest.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["explanation_grid", "group_maps_figure", "sanity_figure"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def _image(x: Tensor) -> tuple[np.ndarray, str | None]:
    arr = x.detach().cpu().clamp(0, 1).numpy()
    if arr.shape[0] == 1:
        return arr[0], "gray"
    return np.transpose(arr[:3], (1, 2, 0)), None


def _scaled(m: Tensor) -> np.ndarray:
    arr = m.detach().cpu().abs().double().numpy()
    top = float(np.percentile(arr, 99)) if arr.size else 0.0
    return np.clip(arr / top, 0, 1) if top > 0 else np.zeros_like(arr)


def _overlay(ax: Any, image: Tensor, m: Tensor) -> None:
    img, cmap = _image(image)
    ax.imshow(img, cmap=cmap, interpolation="nearest")
    ax.imshow(_scaled(m), cmap="inferno", alpha=0.6, vmin=0, vmax=1, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])


def explanation_grid(
    images: Tensor, maps: Mapping[str, Tensor], row_titles: Sequence[str]
) -> bytes:
    """One row per image: the image, then its overlay for every method (``maps[method]`` is
    ``[n, H, W]``)."""
    plt = _pyplot()
    n = images.shape[0]
    cols = 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(1.7 * cols, 1.8 * n), squeeze=False)
    for i in range(n):
        img, cmap = _image(images[i])
        axes[i, 0].imshow(img, cmap=cmap, interpolation="nearest")
        axes[i, 0].set_xticks([])
        axes[i, 0].set_yticks([])
        axes[i, 0].set_ylabel(row_titles[i], fontsize=7)
        for j, (name, m) in enumerate(maps.items(), start=1):
            _overlay(axes[i, j], images[i], m[i])
            if i == 0:
                axes[i, j].set_title(name, fontsize=8)
    axes[0, 0].set_title("image", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def sanity_figure(
    image: Tensor, rows: Mapping[str, Sequence[tuple[str, Tensor]]], title: str
) -> bytes:
    """One row per method: the map on the trained model, then after each randomization
    checkpoint (``rows[method]`` is ``[(column label, map [H, W]), ...]``)."""
    plt = _pyplot()
    n = len(rows)
    cols = 1 + max((len(v) for v in rows.values()), default=0)
    fig, axes = plt.subplots(n, cols, figsize=(1.7 * cols, 1.8 * n + 0.4), squeeze=False)
    img, cmap = _image(image)
    for i, (name, cells) in enumerate(rows.items()):
        axes[i, 0].imshow(img, cmap=cmap, interpolation="nearest")
        axes[i, 0].set_ylabel(name, fontsize=8)
        axes[i, 0].set_xticks([])
        axes[i, 0].set_yticks([])
        for j, (label, m) in enumerate(cells, start=1):
            ax = axes[i, j]
            ax.imshow(_scaled(m), cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=7)
        for j in range(1 + len(cells), cols):
            axes[i, j].axis("off")
    axes[0, 0].set_title("image", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def group_maps_figure(
    column: str,
    values: Sequence[tuple[str, int]],
    maps: Mapping[str, Mapping[str, Tensor]],
) -> bytes:
    """Rows: methods; columns: ``all`` then each value of ``column`` (label with its n);
    ``maps[method][value]`` is the group's mean normalized absolute map ``[H, W]``, drawn on
    one colour scale per method so regions compare across groups."""
    plt = _pyplot()
    methods = list(maps)
    cols = len(values)
    fig, axes = plt.subplots(
        len(methods), cols, figsize=(1.6 * cols, 1.7 * len(methods) + 0.4), squeeze=False
    )
    for i, method in enumerate(methods):
        arrays = {v: maps[method][v].detach().cpu().double().numpy() for v, _ in values}
        top = max((float(a.max()) for a in arrays.values()), default=0.0) or 1.0
        for j, (value, n) in enumerate(values):
            ax = axes[i, j]
            ax.imshow(arrays[value] / top, cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{value}\n(n={n})", fontsize=7)
            if j == 0:
                ax.set_ylabel(method, fontsize=8)
    fig.suptitle(f"mean |attribution| map by {column} (each map normalized to sum 1)", fontsize=9)
    fig.tight_layout()
    return _png(fig)
