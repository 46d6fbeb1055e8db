"""Tables of the fairness check, computed from per-group confusion matrices.

:mod:`raigate.audit.fairness` resolves the attribute specs, predicts and assembles the
result; this module turns the attribute specs (``race``, ``race+gender``) into their
numbers: point values and stratified-bootstrap replicates of every group rate
(:class:`SpecStats`, one joint bootstrap for all specs: :func:`all_spec_stats`), the
``by_group``, ``selection_rates``, ``tpr_fpr``, ``confusion_by_group`` and ``disparities``
tables, and the Holm-adjusted pairwise ``comparisons``. The gates are in
:mod:`raigate.audit.fairness_gates`. The tables report fairlearn's point values, which
:mod:`raigate.audit.fairness_fairlearn` attaches to a :class:`SpecStats` after checking them
against the confusion-matrix values computed here.

The ``disparities`` table is descriptive: it names the groups that attain the maximum and
minimum of each measure among the eligible groups (n >= ``min_group_size``) and gives the
percentile interval of that pair's difference. Choosing the extreme pair after looking at
the data favours a large gap (the winner's curse), so these intervals are *not* what the
gates use; the gates use simultaneous intervals over every pair.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raigate.audit import fairness_stats as fs
from raigate.errors import ConfigError
from raigate.stats import holm, wilson_interval

if TYPE_CHECKING:
    from raigate.audit.fairness import FairnessParams
    from raigate.audit.fairness_fairlearn import Points

MISSING = "(missing)"
OTHER = "(other model class)"
MAX_GROUPS = 1000


@dataclass(frozen=True)
class GroupSpec:
    """One attribute or intersection: ``codes[i]`` is sample i's group, ``levels`` its
    names (values joined by ``|``); the full grid of levels, empty combinations included."""

    name: str
    columns: tuple[str, ...]
    codes: np.ndarray
    levels: list[str]
    parts: list[list[str]]  # per column, its level names (for the heatmap)


def _encode_column(series: pd.Series) -> tuple[np.ndarray, list[str]]:
    if isinstance(series.dtype, pd.CategoricalDtype):
        levels = [str(c) for c in series.cat.categories]
        codes = series.cat.codes.to_numpy().astype(np.int64)
    else:
        values = series.astype(object).where(series.notna(), None)
        levels = sorted({str(v) for v in values if v is not None})
        index = {v: i for i, v in enumerate(levels)}
        codes = np.array([-1 if v is None else index[str(v)] for v in values], dtype=np.int64)
    if (codes < 0).any():
        levels = [*levels, MISSING]
        codes = np.where(codes < 0, len(levels) - 1, codes)
    return codes, levels


def group_spec(attrs: pd.DataFrame, columns: Sequence[str]) -> GroupSpec:
    codes = np.zeros(len(attrs), dtype=np.int64)
    parts: list[list[str]] = []
    for col in columns:
        c, levels = _encode_column(attrs[col])
        codes = codes * len(levels) + c
        parts.append(levels)
    size = int(np.prod([len(p) for p in parts]))
    name = "+".join(columns)
    if size > MAX_GROUPS:
        raise ConfigError(
            f"--sensitive/--intersections: {name} has {size} groups (over {MAX_GROUPS}); it "
            "looks like an identifier, not a group attribute: choose coarser columns"
        )
    levels = ["|".join(combo) for combo in itertools.product(*parts)]
    return GroupSpec(name=name, columns=tuple(columns), codes=codes, levels=levels, parts=parts)


# -- per-spec statistics ---------------------------------------------------------------------
@dataclass
class SpecStats:
    """Everything computed for one attribute or intersection: group values ``[G]`` or
    ``[G, K]``, their replicates ``[B, G]`` / ``[B, G, K]``, and the overall value of the same
    samples with its replicates (the sum of the groups' replicates: the stratified bootstrap
    of the whole), so a group's distance to overall has a joint interval too."""

    spec: GroupSpec
    conf: np.ndarray  # [G, K, K+1]
    point: dict[str, np.ndarray]
    boot: dict[str, np.ndarray]
    overall: dict[str, np.ndarray]
    overall_boot: dict[str, np.ndarray]
    eligible: np.ndarray  # [G] bool: n >= min_group_size
    label_defined: bool  # groups are defined by the label: parity/odds are not meaningful
    ci: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # fairlearn's point values, spreads and parity (fairness_fairlearn.attach); the tables
    # report these, the gates read the same values from ``point``
    fairlearn: Points | None = None


def stream(seed: int, name: str) -> np.random.Generator:
    """A seeded stream per purpose (``"joint"`` for the group bootstrap, ``""`` overall)."""
    key = (zlib.crc32(name.encode("utf-8")),)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


MAX_CELLS = 5000


def joint_bootstrap(
    specs: Sequence[GroupSpec],
    y: np.ndarray,
    pred: np.ndarray,
    n_classes: int,
    *,
    n_boot: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Stratified bootstrap replicates ``[B, G, K, K + 1]`` of every spec's confusions, all
    from one resampling: the finest cells (every observed combination of the specs'
    groups) are resampled at their own sizes and summed into each spec's groups. So the
    gates' max-T over race, gender and race+gender sees their true dependence."""
    codes = np.stack([s.codes for s in specs], axis=1)
    cells, cell_of = np.unique(codes, axis=0, return_inverse=True)
    if len(cells) > MAX_CELLS:
        raise ConfigError(
            f"--sensitive/--intersections: the attributes combine into {len(cells)} observed "
            f"groups (over {MAX_CELLS}); choose fewer or coarser columns"
        )
    conf = fs.confusion_by_group(y, pred, cell_of.ravel(), n_groups=len(cells), n_classes=n_classes)
    boot = fs.bootstrap_confusions(conf, n_boot=n_boot, rng=rng)
    return [fs.aggregate_cells(boot, cells[:, i], len(spec.levels)) for i, spec in enumerate(specs)]


def _metrics(conf: np.ndarray, ordinal: bool) -> dict[str, np.ndarray]:
    out = fs.rates_from_confusion(conf)
    if ordinal:
        out.update(fs.ordinal_from_confusion(conf))
    return out


def all_spec_stats(
    specs: Sequence[GroupSpec],
    y: np.ndarray,
    pred: np.ndarray,
    n_classes: int,
    params: FairnessParams,
    *,
    ordinal: bool,
    task: str | None,
) -> list[SpecStats]:
    """:class:`SpecStats` of every spec from one joint bootstrap (:func:`joint_bootstrap`)."""
    boots = joint_bootstrap(
        specs, y, pred, n_classes, n_boot=params.n_boot, rng=stream(params.seed, "joint")
    )
    return [
        _spec_stats(spec, boot, y, pred, n_classes, params, ordinal=ordinal, task=task)
        for spec, boot in zip(specs, boots, strict=True)
    ]


def _spec_stats(
    spec: GroupSpec,
    boot_conf: np.ndarray,
    y: np.ndarray,
    pred: np.ndarray,
    n_classes: int,
    params: FairnessParams,
    *,
    ordinal: bool,
    task: str | None,
) -> SpecStats:
    g = len(spec.levels)
    conf = fs.confusion_by_group(y, pred, spec.codes, n_groups=g, n_classes=n_classes)
    point = _metrics(conf, ordinal)
    nonempty = point["n"] > 0
    label_defined = (task is not None and task in spec.columns) or bool(
        nonempty.any() and np.all(np.nanmax(point["base"][nonempty], axis=1) == 1.0)
    )
    boot = _metrics(boot_conf, ordinal)
    overall_boot = _metrics(boot_conf.sum(axis=1), ordinal)
    keys = [k for k in ("accuracy", "selection", "tpr", "fpr", "mae", "off_by_one") if k in boot]
    ci = {k: fs.percentile_interval(boot[k], params.alpha) for k in keys}
    ci["accuracy_to_overall"] = fs.percentile_interval(
        boot["accuracy"] - overall_boot["accuracy"][:, None], params.alpha
    )
    return SpecStats(
        spec=spec,
        conf=conf,
        point=point,
        boot=boot,
        overall=_metrics(conf.sum(axis=0), ordinal),
        overall_boot=overall_boot,
        eligible=point["n"] >= params.min_group_size,
        label_defined=label_defined,
        ci=ci,
    )


def _ci(samples: np.ndarray, alpha: float) -> list[float | None]:
    lo, hi = fs.percentile_interval(samples, alpha)
    return [_num(lo), _num(hi)]


def _num(v: Any) -> float | None:
    f = float(v)
    return f if np.isfinite(f) else None


@dataclass(frozen=True)
class Spread:
    """Between-group spread of one metric over eligible groups, for a named pair."""

    hi: int
    lo: int
    difference: float
    difference_ci: list[float | None]
    ratio: float | None
    ratio_ci: list[float | None]
    eligible: int


def _spread(
    values: np.ndarray, reps: np.ndarray, eligible: np.ndarray, alpha: float
) -> Spread | None:
    idx = np.flatnonzero(eligible & np.isfinite(values))
    if idx.size < 2:
        return None
    lo = int(idx[np.argmin(values[idx])])  # first of the lowest
    hi = int(idx[::-1][np.argmax(values[idx][::-1])])  # last of the highest: lo != hi on ties
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_b = reps[:, lo] / reps[:, hi]
    ratio = values[lo] / values[hi] if values[hi] > 0 else np.nan
    return Spread(
        hi=hi,
        lo=lo,
        difference=float(values[hi] - values[lo]),
        difference_ci=_ci(reps[:, hi] - reps[:, lo], alpha),
        ratio=_num(ratio),
        ratio_ci=_ci(np.where(np.isfinite(ratio_b), ratio_b, np.nan), alpha),
        eligible=int(idx.size),
    )


# -- tables ------------------------------------------------------------------------------------
def _pair(s: SpecStats, key: str, *index: int) -> list[float | None]:
    lo, hi = s.ci[key]
    return [_num(lo[index]), _num(hi[index])]


def by_group_rows(s: SpecStats, params: FairnessParams) -> list[dict[str, Any]]:
    """``by_group``: n, accuracy with its bootstrap and Wilson intervals, distance to overall
    (and for ordinal tasks MAE in bins and off-by-one accuracy), one row per group."""
    overall = float(s.overall["accuracy"])
    rows = []
    for i, level in enumerate(s.spec.levels):
        n, correct = int(s.point["n"][i]), int(s.point["correct"][i])
        acc = _num(s.point["accuracy"][i])
        row: dict[str, Any] = {
            "attribute": s.spec.name,
            "group": level,
            "n": n,
            "insufficient_data": bool(not s.eligible[i]),
            "accuracy": acc,
            "accuracy_ci": _pair(s, "accuracy", i),
            "accuracy_wilson_ci": [_num(v) for v in wilson_interval(correct, n, params.alpha)],
            "error_rate": None if acc is None else 1 - acc,
            "accuracy_diff_to_overall": None if acc is None else acc - overall,
            "accuracy_diff_to_overall_ci": _pair(s, "accuracy_to_overall", i),
        }
        if "mae" in s.point:
            row["mae_bins"] = _num(s.point["mae"][i])
            row["mae_bins_ci"] = _pair(s, "mae", i)
            row["off_by_one_accuracy"] = _num(s.point["off_by_one"][i])
            row["off_by_one_accuracy_ci"] = _pair(s, "off_by_one", i)
        rows.append(row)
    return rows


def class_rows(
    s: SpecStats, classes: Sequence[str], params: FairnessParams
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    m = params.min_group_size
    sel_rows, rate_rows = [], []
    for i, level in enumerate(s.spec.levels):
        n = int(s.point["n"][i])
        for c, cls in enumerate(classes):
            sel_rows.append(
                {
                    "attribute": s.spec.name,
                    "group": level,
                    "class": cls,
                    "n": n,
                    "insufficient_data": bool(not s.eligible[i]),
                    "base_rate": _num(s.point["base"][i, c]),
                    "selection_rate": _num(s.point["selection"][i, c]),
                    "selection_rate_ci": _pair(s, "selection", i, c),
                }
            )
            for rate, den in (("tpr", "pos"), ("fpr", "neg")):
                d = int(s.point[den][i, c])
                rate_rows.append(
                    {
                        "attribute": s.spec.name,
                        "group": level,
                        "class": cls,
                        "rate": rate,
                        "n": d,
                        "insufficient_data": bool(not s.eligible[i] or d < m),
                        "value": _num(s.point[rate][i, c]),
                        "ci": _pair(s, rate, i, c),
                    }
                )
    return sel_rows, rate_rows


def confusion_rows(s: SpecStats, classes: Sequence[str]) -> list[dict[str, Any]]:
    predicted = [*classes, OTHER]
    rows = []
    for g, t, p in zip(*np.nonzero(s.conf), strict=True):
        rows.append(
            {
                "attribute": s.spec.name,
                "group": s.spec.levels[g],
                "true": classes[t],
                "predicted": predicted[p],
                "count": int(s.conf[g, t, p]),
            }
        )
    return rows


# metric name in the tables -> (key in the rate dicts, per class?, denominator for eligibility)
_METRICS: tuple[tuple[str, str, bool, str | None], ...] = (
    ("accuracy", "accuracy", False, None),
    ("selection_rate", "selection", True, None),
    ("tpr", "tpr", True, "pos"),
    ("fpr", "fpr", True, "neg"),
    ("mae_bins", "mae", False, None),
    ("off_by_one_accuracy", "off_by_one", False, None),
)


_FAIRLEARN = frozenset({"accuracy", "selection", "tpr", "fpr"})  # not mae, off_by_one


def _series(
    s: SpecStats, key: str, c: int | None, den: str | None, min_size: int
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]:
    """(group values, replicates, overall value, overall replicates, eligibility)."""
    if c is None:
        values, reps = s.point[key], s.boot[key]
        overall, overall_reps = float(s.overall[key]), s.overall_boot[key]
    else:
        values, reps = s.point[key][:, c], s.boot[key][:, :, c]
        overall, overall_reps = float(s.overall[key][c]), s.overall_boot[key][:, c]
    eligible = s.eligible if den is None else s.eligible & (s.point[den][:, c] >= min_size)
    return values, reps, overall, overall_reps, eligible


def disparity_rows(
    s: SpecStats, classes: Sequence[str], params: FairnessParams
) -> list[dict[str, Any]]:
    """Difference (max - min), ratio (min / max) and the group farthest from overall, for
    every metric and class, over the eligible groups; intervals for the named groups.
    Differences and ratios are fairlearn's (``s`` from :func:`fairness_fairlearn.attach`),
    except for the ordinal measures, which fairlearn does not define."""
    from raigate.audit import fairness_fairlearn as ffl

    if s.fairlearn is None:
        raise ValueError(f"{s.spec.name}: call fairness_fairlearn.attach first")
    spread = s.fairlearn.spread
    a, m = params.alpha, params.min_group_size
    rows = []
    for metric, key, per_class, den in _METRICS:
        if key not in s.point:
            continue
        for c, cls in enumerate(classes) if per_class else [(None, None)]:
            values, reps, overall, overall_reps, eligible = _series(s, key, c, den, m)
            ok = eligible & np.isfinite(values)
            row: dict[str, Any] = {
                "attribute": s.spec.name,
                "metric": metric,
                "class": cls,
                "groups_eligible": int(ok.sum()),
                "overall": _num(overall),
            }
            sp = _spread(values, reps, eligible, a)
            if sp is None:
                rows.append({**row, "difference": None, "note": "fewer than 2 eligible groups"})
                continue
            difference, ratio = sp.difference, sp.ratio
            if key in _FAIRLEARN:  # fairlearn's MetricFrame.difference()/.ratio(), checked
                what = f"{s.spec.name} {metric} difference"
                fl_diff, fl_ratio = spread[ffl.name(key, c)]
                difference = ffl.close(fl_diff, sp.difference, what)
                ratio = _num(ffl.close(fl_ratio, sp.ratio, f"{what} ratio"))
            idx = np.flatnonzero(ok)
            far = int(idx[np.argmax(np.abs(values[idx] - overall))])
            row.update(
                {
                    "max_group": s.spec.levels[sp.hi],
                    "max_value": float(values[sp.hi]),
                    "min_group": s.spec.levels[sp.lo],
                    "min_value": float(values[sp.lo]),
                    "difference": difference,
                    "difference_ci": sp.difference_ci,
                    "ratio": ratio,
                    "ratio_ci": sp.ratio_ci,
                    "to_overall_group": s.spec.levels[far],
                    "to_overall_difference": float(values[far] - overall),
                    "to_overall_difference_ci": _ci(reps[:, far] - overall_reps, a),
                }
            )
            rows.append(row)
    return rows


def comparisons(stats: list[SpecStats], alpha: float) -> list[dict[str, Any]]:
    """Every pair of eligible groups within an attribute, compared on accuracy (two-sided
    pooled z-test), Holm-adjusted over all of them. Descriptive: which differences are
    nonzero; whether one exceeds a threshold is the gates' question."""
    keys: list[tuple[str, int, int]] = []
    s1, n1, s2, n2 = [], [], [], []
    for s in stats:
        idx = np.flatnonzero(s.eligible)
        for i, j in itertools.combinations(idx.tolist(), 2):
            keys.append((s.spec.name, i, j))
            s1.append(s.point["correct"][i])
            n1.append(s.point["n"][i])
            s2.append(s.point["correct"][j])
            n2.append(s.point["n"][j])
    p = fs.two_proportion_pvalue(np.array(s1), np.array(n1), np.array(s2), np.array(n2))
    adjusted = holm(p)
    by_name = {s.spec.name: s for s in stats}
    rows = []
    for (name, i, j), pv, ph in zip(keys, p, adjusted, strict=True):
        s = by_name[name]
        rows.append(
            {
                "attribute": name,
                "group_a": s.spec.levels[i],
                "group_b": s.spec.levels[j],
                "n_a": int(s.point["n"][i]),
                "n_b": int(s.point["n"][j]),
                "accuracy_a": float(s.point["accuracy"][i]),
                "accuracy_b": float(s.point["accuracy"][j]),
                "difference": float(s.point["accuracy"][i] - s.point["accuracy"][j]),
                "p_value": float(pv),
                "p_holm": float(ph),
                "significant_holm": bool(ph < alpha),
            }
        )
    return rows


def group_counts(s: SpecStats) -> dict[str, int]:
    n = s.point["n"]
    return {
        "groups": len(s.spec.levels),
        "groups_empty": int((n == 0).sum()),
        "groups_insufficient": int((~s.eligible).sum()),
        "groups_eligible": int(s.eligible.sum()),
    }
