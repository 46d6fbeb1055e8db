"""The privacy check's figure: every attack's ROC curve on log-log axes.

Membership inference matters at low false-positive rates (Carlini et al. 2022: an attack
that confidently identifies a few members is a privacy failure even at AUC 0.5), which a
linear ROC hides in its bottom-left corner; log-log axes show it. matplotlib is used as in
:mod:`raigate.audit.fairness_plots` (object-oriented, Agg, no version in the metadata).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raigate.audit.fairness_plots import _save

ROC_NAME = "membership_roc.png"

__all__ = ["ROC_NAME", "plot_roc"]


def plot_roc(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> None:
    """``curves[attack] = (member scores, non-member scores)``; the chance diagonal dashed."""
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot(1, 1, 1)
    floor = 1.0
    for name, (m, n) in curves.items():
        labels = np.r_[np.ones(len(m)), np.zeros(len(n))]
        scores = np.r_[m, n]
        fpr, tpr, _ = roc_curve(labels, scores)
        floor = min(floor, 1 / max(len(n), 1), 1 / max(len(m), 1))
        auc = roc_auc_score(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})", linewidth=1.4)
    lo = floor / 2
    ax.plot([lo, 1], [lo, 1], linestyle="--", color="#9a9a9a", linewidth=1, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, 1)
    ax.set_ylim(lo, 1)
    ax.set_xlabel("false positive rate (non-members flagged)")
    ax.set_ylabel("true positive rate (members flagged)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
