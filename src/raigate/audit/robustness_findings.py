"""Attack-soundness (gradient-masking) findings, group tables and plots for the robustness
check.

These findings say whether the *attack* can be trusted, not whether the model is robust:
a model at 6% accuracy under FGSM passes them all when the attack works. Robustness itself
is gated by the rules of :mod:`raigate.audit.robustness_gates`; every message here starts
with "attack soundness:" so no reader takes a PASS for a robustness verdict.

A defense that hides its gradients looks robust to gradient attacks without being robust
(Athalye, Carlini & Wagner 2018; Carlini et al. 2019, "On evaluating adversarial
robustness", whose checklist these findings follow). Each sign becomes a ``warn``
finding, and a ``pass`` finding says the check was made and found nothing:

* **single step beats iterative**: FGSM leaves lower accuracy than PGD's own iterates
  (PGD's reported number counts the FGSM point, so the comparison uses PGD without it);
* **accuracy rises with ε**: a larger budget can only help a working attack;
* **no collapse at a huge ε**: at L-inf ε = 0.5 (L2: 0.5·√d) every image can be moved to
  flat grey, so a working attack drives accuracy to about 0;
* **black-box beats white-box**: a query-only attack should not beat gradient attacks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raigate.results import Finding
from raigate.stats import wilson_interval

Record = dict[str, Any]

__all__ = [
    "eps_text",
    "group_gap_records",
    "group_records",
    "masking_findings",
    "plot_certification",
    "plot_sweep",
]


def eps_text(eps: float | None) -> str:
    """``8/255`` where ε is a whole number of 1/255 steps, else ``0.5``; ``-`` for none."""
    if eps is None:
        return "-"
    k = eps * 255
    if eps > 0 and abs(k - round(k)) < 1e-6 and round(k) < 255:
        return f"{round(k)}/255"
    return f"{eps:g}"


def _norm_text(norm: str | None) -> str:
    return {"linf": "L-inf", "l2": "L2"}.get(norm or "", "-")


def group_columns(attrs: pd.DataFrame) -> list[str]:
    """Attribute columns that name groups (not file names or per-sample identifiers)."""
    cols = []
    for col in attrs.columns:
        if col in {"file", "path", "filename"}:
            continue
        if attrs[col].astype(str).nunique() > 200:
            continue
        cols.append(str(col))
    return cols


def group_records(
    rows: Sequence[Record], correct: dict[tuple[Any, ...], np.ndarray], attrs: pd.DataFrame
) -> list[Record]:
    """Robust accuracy per attribute value for every ``attacks`` row, with Wilson 95% CIs."""
    out: list[Record] = []
    for col in group_columns(attrs):
        series = attrs[col]
        values = series.astype(str).to_numpy()
        if isinstance(series.dtype, pd.CategoricalDtype):
            order = [str(c) for c in series.cat.categories]
        else:
            order = sorted(set(values))
        masks = {v: values == v for v in order}
        for row in rows:
            ok = correct[row["key"]]
            for value, mask in masks.items():
                n = int(mask.sum())
                s = int(ok[mask].sum())
                lo, hi = wilson_interval(s, n)
                out.append(
                    {
                        "model": row["model"],
                        "attack": row["attack"],
                        "norm": row["norm"],
                        "eps": row["eps"],
                        "attribute": col,
                        "value": value,
                        "n": n,
                        "accuracy": s / n if n else None,
                        "ci_low": lo,
                        "ci_high": hi,
                    }
                )
    return out


def group_gap_records(by_group: Sequence[Record]) -> list[Record]:
    """Per attack row and attribute: the worst and best group and the accuracy gap."""
    if not by_group:
        return []
    frame = pd.DataFrame.from_records(by_group)
    frame = frame[frame["n"] > 0]
    out: list[Record] = []
    keys = ["model", "attack", "norm", "eps", "attribute"]
    for key, part in frame.groupby(keys, sort=False, dropna=False):
        worst = part.loc[part["accuracy"].idxmin()]
        best = part.loc[part["accuracy"].idxmax()]
        rec = dict(zip(keys, key, strict=True))
        rec["norm"] = None if pd.isna(rec["norm"]) else rec["norm"]
        rec.update(
            worst_group=str(worst["value"]),
            worst_accuracy=float(worst["accuracy"]),
            worst_n=int(worst["n"]),
            best_group=str(best["value"]),
            best_accuracy=float(best["accuracy"]),
            best_n=int(best["n"]),
            gap=float(best["accuracy"] - worst["accuracy"]),
        )
        out.append(rec)
    return out


SOUNDNESS = "attack soundness: "
"""The prefix of every gradient-masking finding's message."""


def _finding(fid: str, bad: bool, metric: str, value: float, threshold: float, msg: str) -> Finding:
    return Finding(
        id=fid,
        severity="warn" if bad else "pass",
        metric=metric,
        value=value,
        threshold=threshold,
        message=SOUNDNESS + msg,
    )


def masking_findings(
    rows: Sequence[Record],
    large_eps: Sequence[Record],
    *,
    tolerance: float,
    large_eps_max_accuracy: float,
) -> list[Finding]:
    """The four gradient-masking (attack-soundness) checks of the module docstring, per
    model."""
    findings: list[Finding] = []
    by_model: dict[str, list[Record]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    for model, mrows in by_model.items():
        what = "the base model" if model == "base" else "the smoothed model (EOT attack)"
        findings += _single_step(model, what, mrows, tolerance)
        findings += _monotone(model, what, mrows, tolerance)
        findings += _black_box(model, what, mrows, tolerance)
        big = [r for r in large_eps if r["model"] == model]
        if big:
            worst = max(big, key=lambda r: r["accuracy"])
            bad = worst["accuracy"] > large_eps_max_accuracy
            findings.append(
                _finding(
                    f"robustness.masking.large_eps.{model}",
                    bad,
                    "large_eps_accuracy",
                    worst["accuracy"],
                    large_eps_max_accuracy,
                    f"PGD at {_norm_text(worst['norm'])} eps={worst['eps']:.4g} (large enough to "
                    f"turn any image flat grey) leaves accuracy {worst['accuracy']:.4f} on {what} "
                    f"(n={worst['n']}); "
                    + (
                        f"above {large_eps_max_accuracy:.2f}: the attack is not working, so small-"
                        "eps numbers are likely overestimates (gradient masking, Athalye et al. "
                        "2018)"
                        if bad
                        else f"at most {large_eps_max_accuracy:.2f}, as a working attack should"
                    ),
                )
            )
    return findings


def _single_step(model: str, what: str, rows: Sequence[Record], tol: float) -> list[Finding]:
    fg = {(r["norm"], r["eps"]): r for r in rows if r["attack"] == "fgsm"}
    pg = {(r["norm"], r["eps"]): r for r in rows if r["attack"] == "pgd"}
    pairs = [(fg[k], pg[k]) for k in fg if k in pg and pg[k].get("pgd_own_accuracy") is not None]
    if not pairs:
        return []
    f, p = max(pairs, key=lambda fp: fp[1]["pgd_own_accuracy"] - fp[0]["accuracy"])
    gap = p["pgd_own_accuracy"] - f["accuracy"]
    bad = gap > tol
    return [
        _finding(
            f"robustness.masking.single_step.{model}",
            bad,
            "pgd_own_minus_fgsm_accuracy",
            gap,
            tol,
            f"largest excess of PGD's own accuracy over FGSM's on {what}: {gap:+.4f} at "
            f"{_norm_text(f['norm'])} eps={eps_text(f['eps'])} (FGSM {f['accuracy']:.4f}, PGD "
            f"without the FGSM point {p['pgd_own_accuracy']:.4f}, n={f['n']}); "
            + (
                f"above the tolerance {tol:.2f}: a single step beats {p['steps']} iterative "
                "steps, a sign of masked or noisy gradients"
                if bad
                else f"within the tolerance {tol:.2f}: the iterative attack is at least as strong"
            ),
        )
    ]


def _monotone(model: str, what: str, rows: Sequence[Record], tol: float) -> list[Finding]:
    clean = next((r for r in rows if r["attack"] == "clean"), None)
    worst: tuple[float, Record, Record] | None = None
    curves: dict[tuple[str, str], list[Record]] = {}
    for r in rows:
        if r["attack"] != "clean" and r["eps"] is not None:
            curves.setdefault((r["attack"], r["norm"]), []).append(r)
    for curve in curves.values():
        pts = sorted(curve, key=lambda r: r["eps"])
        if clean is not None:
            pts = [clean, *pts]
        for a, b in pairwise(pts):
            rise = b["accuracy"] - a["accuracy"]
            if worst is None or rise > worst[0]:
                worst = (rise, a, b)
    if worst is None:
        return []
    rise, a, b = worst
    bad = rise > tol
    return [
        _finding(
            f"robustness.masking.monotone.{model}",
            bad,
            "accuracy_rise_with_eps",
            rise,
            tol,
            f"largest rise of accuracy with a larger eps on {what}: {rise:+.4f} ({b['attack']} "
            f"{_norm_text(b['norm'])}, eps {eps_text(a['eps'])} -> {eps_text(b['eps'])}); "
            + (
                f"above the tolerance {tol:.2f}: a bigger budget should never help the model"
                if bad
                else f"within the tolerance {tol:.2f}: accuracy falls as eps grows"
            ),
        )
    ]


def _black_box(model: str, what: str, rows: Sequence[Record], tol: float) -> list[Finding]:
    white: dict[tuple[str, float], float] = {}
    for r in rows:
        if r["attack"] in {"fgsm", "pgd"}:
            k = (r["norm"], r["eps"])
            white[k] = min(white.get(k, math.inf), r["accuracy"])
    gaps = [
        (white[(r["norm"], r["eps"])] - r["accuracy"], r)
        for r in rows
        if r.get("black_box") and (r["norm"], r["eps"]) in white
    ]
    if not gaps:
        return []
    gap, r = max(gaps, key=lambda g: g[0])
    bad = gap > tol
    return [
        _finding(
            f"robustness.masking.black_box.{model}",
            bad,
            "white_minus_black_box_accuracy",
            gap,
            tol,
            f"{r['attack']} (query-only) leaves accuracy {r['accuracy']:.4f} vs "
            f"{white[(r['norm'], r['eps'])]:.4f} for the best gradient attack on {what} at "
            f"{_norm_text(r['norm'])} eps={eps_text(r['eps'])} (n={r['n']}); "
            + (
                f"the black-box attack is stronger by more than {tol:.2f}: gradients are likely "
                "masked, so the white-box numbers overstate robustness"
                if bad
                else f"the gradient attacks are within {tol:.2f} or stronger, as expected"
            ),
        )
    ]


def plot_sweep(rows: Sequence[Record], path: Path) -> None:
    """Accuracy against ε per attack and model, one panel per norm (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norms = sorted({r["norm"] for r in rows if r["norm"]})
    if not norms:
        return
    fig, axes = plt.subplots(1, len(norms), figsize=(5 * len(norms), 3.6), squeeze=False)
    clean = {r["model"]: r["accuracy"] for r in rows if r["attack"] == "clean"}
    for ax, norm in zip(axes[0], norms, strict=True):
        curves: dict[tuple[str, str], list[Record]] = {}
        for r in rows:
            if r["norm"] == norm and r["eps"] is not None:
                curves.setdefault((r["model"], r["attack"]), []).append(r)
        for (model, attack), pts in sorted(curves.items()):
            pts = sorted(pts, key=lambda r: r["eps"])
            xs = [0.0, *[p["eps"] for p in pts]]
            ys = [clean.get(model, math.nan), *[p["accuracy"] for p in pts]]
            ax.plot(xs, ys, marker="o", linestyle="-" if model == "base" else "--",
                    label=f"{attack} ({model})")  # fmt: skip
        ax.set_title(f"{_norm_text(norm)} attacks")
        ax.set_xlabel("eps (pixel units, [0, 1] images)")
        ax.set_ylabel("accuracy under attack")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_certification(curve: Sequence[Record], sigma: float, path: Path) -> None:
    """Certified accuracy against L2 radius (Cohen et al.'s Figure 1 style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([c["radius"] for c in curve], [c["certified_accuracy"] for c in curve])
    ax.set_xlabel("L2 radius (pixel units, [0, 1] images)")
    ax.set_ylabel("certified accuracy")
    ax.set_title(f"randomized smoothing, sigma={sigma:g}")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    from raigate._io import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    write_atomic(path, buf.getvalue())
