"""PNG figures of the fairness check, for the report: per-group accuracy with interval bars,
accuracy heatmaps of two-attribute intersections (race x gender), and the confusion matrices
of the worst and best group.

matplotlib is imported here, lazily, and only through its object-oriented ``Figure`` with
the Agg canvas: no pyplot state and no global backend switch, so importing raigate in a
notebook changes nothing. PNGs are written atomically and without the matplotlib version
in their metadata, so the same numbers give the same bytes.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raigate._io import write_atomic

if TYPE_CHECKING:
    from raigate.audit.fairness_tables import SpecStats

MAX_ROWS = 60  # an accuracy plot with more non-empty groups would not be readable
ELIGIBLE = "#1f4e79"
SMALL = "#9a9a9a"


def slug(name: str) -> str:
    """File-name form of an attribute spec: ``race+gender`` -> ``race_x_gender``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace("+", "_x_"))


def _save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    write_atomic(path, buf.getvalue())


def plot_group_accuracy(
    path: Path,
    title: str,
    groups: Sequence[str],
    n: np.ndarray,
    acc: np.ndarray,
    ci: tuple[np.ndarray, np.ndarray],
    eligible: np.ndarray,
    overall: float,
    min_group_size: int,
) -> None:
    """Horizontal accuracy bars with interval whiskers; small groups in grey, marked."""
    from matplotlib.figure import Figure

    rows = np.flatnonzero(n > 0)
    fig = Figure(figsize=(7.5, 1.2 + 0.32 * len(rows)))
    ax = fig.add_subplot()
    for pos, i in enumerate(rows[::-1]):
        colour = ELIGIBLE if eligible[i] else SMALL
        lo, hi = ci[0][i], ci[1][i]
        err = [[max(acc[i] - lo, 0.0)], [max(hi - acc[i], 0.0)]] if np.isfinite(lo) else None
        ax.errorbar(acc[i], pos, xerr=err, fmt="o", color=colour, capsize=3)
    labels = [
        f"{groups[i]} (n={int(n[i])}{'' if eligible[i] else f' < {min_group_size}: insufficient'})"
        for i in rows[::-1]
    ]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.axvline(overall, color="#c0392b", linestyle="--", linewidth=1)
    ax.set_xlabel(f"accuracy (dot), interval (bar); dashed: overall {overall:.3f}", fontsize=9)
    ax.set_title(title, fontsize=10)
    low = np.where(np.isfinite(ci[0][rows]), ci[0][rows], acc[rows])
    ax.set_xlim(max(0.0, min(0.5, float(np.nanmin(low)) - 0.03)), 1.01)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def plot_heatmap(
    path: Path,
    title: str,
    row_levels: Sequence[str],
    col_levels: Sequence[str],
    acc: np.ndarray,
    n: np.ndarray,
    eligible: np.ndarray,
) -> None:
    """Accuracy of every cell of a two-attribute grid, with its n; small cells hatched."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.6 + 1.3 * len(col_levels), 1.0 + 0.5 * len(row_levels)))
    ax = fig.add_subplot()
    shown = np.where(n > 0, acc, np.nan)
    image = ax.imshow(
        shown,
        cmap="viridis",
        vmin=np.nanmin(shown) if np.isfinite(shown).any() else 0,
        vmax=1.0,
        aspect="auto",
    )
    for r in range(len(row_levels)):
        for c in range(len(col_levels)):
            if n[r, c] == 0:
                text = "n=0"
            else:
                text = f"{acc[r, c]:.3f}\nn={int(n[r, c])}" + ("" if eligible[r, c] else " (small)")
            dark = not np.isfinite(shown[r, c]) or shown[r, c] < 0.85
            colour = "white" if dark else "black"
            ax.text(c, r, text, ha="center", va="center", fontsize=7, color=colour)
            if not eligible[r, c]:
                ax.add_patch(_hatch(c, r))
    ax.set_xticks(range(len(col_levels)), col_levels, fontsize=8)
    ax.set_yticks(range(len(row_levels)), row_levels, fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="accuracy")
    _save(fig, path)


def _hatch(x: int, y: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#dddddd", lw=0)


def plot_confusions(
    path: Path,
    title: str,
    true_names: Sequence[str],
    pred_names: Sequence[str],
    panels: Sequence[tuple[str, np.ndarray]],
) -> None:
    """Row-normalized confusion matrices side by side (counts printed in the cells)."""
    from matplotlib.figure import Figure

    k = len(true_names)
    size = max(3.4, 1.4 + 0.45 * k)
    fig = Figure(figsize=(size * len(panels), size + 0.6), layout="constrained")
    for i, (label, conf) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        rows = conf.sum(axis=1, keepdims=True)
        norm = np.divide(conf, rows, out=np.zeros(conf.shape, dtype=float), where=rows > 0)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for r in range(conf.shape[0]):
            for c in range(conf.shape[1]):
                if conf[r, c]:
                    ax.text(
                        c,
                        r,
                        str(int(conf[r, c])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[r, c] > 0.6 else "black",
                    )
        ax.set_xticks(range(conf.shape[1]), pred_names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(k), true_names, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def write_plots(
    out: Path,
    stats: Sequence[SpecStats],
    classes: Sequence[str],
    overall: float,
    alpha: float,
    min_group_size: int,
) -> list[str]:
    """Every figure for these attribute specs; returns the file names written."""
    written: list[str] = []
    for s in stats:
        name = s.spec.name
        n, acc = s.point["n"], s.point["accuracy"]
        if 0 < int((n > 0).sum()) <= MAX_ROWS:
            fname = f"accuracy_by_{slug(name)}.png"
            plot_group_accuracy(
                out / fname,
                f"accuracy by {name} ({1 - alpha:.0%} stratified bootstrap intervals)",
                s.spec.levels,
                n,
                acc,
                s.ci["accuracy"],
                s.eligible,
                overall,
                min_group_size,
            )
            written.append(fname)
        if len(s.spec.columns) == 2:
            shape = (len(s.spec.parts[0]), len(s.spec.parts[1]))
            fname = f"heatmap_{slug(name)}.png"
            plot_heatmap(
                out / fname,
                f"accuracy by {name} (hatched: n < {min_group_size})",
                s.spec.parts[0],
                s.spec.parts[1],
                acc.reshape(shape),
                n.reshape(shape),
                s.eligible.reshape(shape),
            )
            written.append(fname)
        idx = np.flatnonzero(s.eligible & np.isfinite(acc))
        if idx.size >= 2:  # a worst and a different best group
            worst, best = int(idx[np.argmin(acc[idx])]), int(idx[np.argmax(acc[idx])])
            conf = s.conf
            other = bool(conf[..., -1].any())
            pred_names = [*classes, "(other)"] if other else list(classes)
            cut = conf.shape[-1] if other else conf.shape[-1] - 1
            panels = [
                (
                    f"worst: {s.spec.levels[worst]}\naccuracy {acc[worst]:.3f}, n={int(n[worst])}",
                    conf[worst][:, :cut],
                ),
                (
                    f"best: {s.spec.levels[best]}\naccuracy {acc[best]:.3f}, n={int(n[best])}",
                    conf[best][:, :cut],
                ),
            ]
            fname = f"confusion_worst_{slug(name)}.png"
            title = f"{name}: worst and best group with n >= {min_group_size}"
            plot_confusions(out / fname, title, classes, pred_names, panels)
            written.append(fname)
    return written
