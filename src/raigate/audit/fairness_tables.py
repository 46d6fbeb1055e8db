"""Tables and gates of the fairness check, computed from per-group confusion matrices.

:mod:`raigate.audit.fairness` resolves the attribute specs, predicts and assembles the
result; this module turns one attribute spec (``race`` or ``race+gender``) into its
numbers: point values and stratified-bootstrap replicates of every group rate
(:class:`SpecStats`), the ``by_group``, ``selection_rates``, ``tpr_fpr``,
``confusion_by_group`` and ``disparities`` tables, the ``summary`` rows with their
findings, and the Holm-adjusted pairwise ``comparisons``.

Between-group measures are taken between the *named* groups that attain the maximum and
minimum among the eligible groups (n >= ``min_group_size``); their intervals come from
the same replicates of those two groups, so they are joint-bootstrap intervals of the
difference (or ratio) between two named groups. Choosing the extreme pair after looking
at the data favours a large gap (the winner's curse); the number of groups and of
pairwise comparisons behind each choice is therefore stated beside it.
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
from raigate.results import Finding
from raigate.stats import wilson_interval

if TYPE_CHECKING:
    from raigate.audit.fairness import FairnessParams

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


def stream(seed: int, name: str) -> np.random.Generator:
    # one stream per attribute spec: adding an intersection never moves another's intervals
    key = (zlib.crc32(name.encode("utf-8")),)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _metrics(conf: np.ndarray, ordinal: bool) -> dict[str, np.ndarray]:
    out = fs.rates_from_confusion(conf)
    if ordinal:
        out.update(fs.ordinal_from_confusion(conf))
    return out


def spec_stats(
    spec: GroupSpec,
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
    rng = stream(params.seed, spec.name)
    boot_conf = fs.bootstrap_confusions(conf, n_boot=params.n_boot, rng=rng)
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


def _severity(lo: float | None, hi: float | None, threshold: float, higher_is_bad: bool) -> str:
    """fail: the whole interval beyond the threshold; warn: it straddles; pass: otherwise."""
    if lo is None or hi is None:
        return "warn"
    if higher_is_bad:
        return "fail" if lo > threshold else ("warn" if hi > threshold else "pass")
    return "fail" if hi < threshold else ("warn" if lo < threshold else "pass")


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
    every metric and class, over the eligible groups; intervals for the named groups."""
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
            idx = np.flatnonzero(ok)
            far = int(idx[np.argmax(np.abs(values[idx] - overall))])
            row.update(
                {
                    "max_group": s.spec.levels[sp.hi],
                    "max_value": float(values[sp.hi]),
                    "min_group": s.spec.levels[sp.lo],
                    "min_value": float(values[sp.lo]),
                    "difference": sp.difference,
                    "difference_ci": sp.difference_ci,
                    "ratio": sp.ratio,
                    "ratio_ci": sp.ratio_ci,
                    "to_overall_group": s.spec.levels[far],
                    "to_overall_difference": float(values[far] - overall),
                    "to_overall_difference_ci": _ci(reps[:, far] - overall_reps, a),
                }
            )
            rows.append(row)
    return rows


@dataclass
class Comparisons:
    """Pairwise accuracy comparisons of eligible groups, Holm-adjusted over all of them."""

    rows: list[dict[str, Any]]
    holm: dict[tuple[str, int, int], float]


def comparisons(stats: list[SpecStats], alpha: float) -> Comparisons:
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
    adjusted = fs.holm(p)
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
    return Comparisons(rows=rows, holm={k: float(v) for k, v in zip(keys, adjusted, strict=True)})


_RELATION = {
    (True, "fail"): "lies entirely above",
    (True, "warn"): "straddles",
    (True, "pass"): "lies entirely at or below",
    (False, "fail"): "lies entirely below",
    (False, "warn"): "straddles",
    (False, "pass"): "lies entirely at or above",
}


def _fmt_ci(ci: Sequence[float | None]) -> str:
    return "[" + ", ".join("nan" if v is None else f"{v:.3f}" for v in ci) + "]"


def _group_counts(s: SpecStats) -> dict[str, int]:
    n = s.point["n"]
    return {
        "groups": len(s.spec.levels),
        "groups_empty": int((n == 0).sum()),
        "groups_insufficient": int((~s.eligible).sum()),
        "groups_eligible": int(s.eligible.sum()),
    }


def gates(
    s: SpecStats, classes: Sequence[str], params: FairnessParams, comps: Comparisons
) -> tuple[list[dict[str, Any]], list[Finding]]:
    """The summary rows of one attribute spec and its findings (see the module docstring)."""
    th, a, m = params.thresholds, params.alpha, params.min_group_size
    level = f"{1 - a:.0%}"
    counts = _group_counts(s)
    small = (
        f"{counts['groups_insufficient']} of {counts['groups']} groups have n<{m} "
        "and are reported, not gated"
    )
    name = s.spec.name
    rows: list[dict[str, Any]] = []
    findings: list[Finding] = []

    def emit(
        measure: str,
        threshold: float | None,
        higher_is_bad: bool,
        sp: Spread | None,
        value: float | None,
        ci: list[float | None],
        detail: dict[str, Any],
        say: str,
    ) -> None:
        row = {"attribute": name, "measure": measure, "threshold": threshold, **counts, **detail}
        if sp is None:
            row.update({"value": None, "ci": [None, None], "severity": None})
            row["note"] = f"fewer than 2 groups with n>={m}"
            rows.append(row)
            if threshold is not None:
                findings.append(
                    Finding(
                        id=f"fairness.{measure}[{name}]",
                        severity="warn",
                        metric=measure,
                        value=None,
                        threshold=threshold,
                        message=(
                            f"{name}: {measure.replace('_', ' ')} not evaluated: only "
                            f"{counts['groups_eligible']} group(s) have at least {m} samples "
                            f"({small}); collect more data or lower --min-group-size"
                        ),
                    )
                )
            return
        severity = None if threshold is None else _severity(ci[0], ci[1], threshold, higher_is_bad)
        row.update({"value": value, "ci": ci, "severity": severity})
        rows.append(row)
        if threshold is None or severity is None:
            return
        findings.append(
            Finding(
                id=f"fairness.{measure}[{name}]",
                severity=severity,  # type: ignore[arg-type]
                metric=measure,
                value=value,
                threshold=threshold,
                message=(
                    f"{name}: {say}; {level} stratified-bootstrap CI {_fmt_ci(ci)} "
                    f"{_RELATION[(higher_is_bad, severity)]} the threshold {threshold:g} "
                    f"(B={params.n_boot}; {small})"
                ),
            )
        )

    # accuracy difference: worst vs best eligible group
    acc, acc_b = s.point["accuracy"], s.boot["accuracy"]
    sp = _spread(acc, acc_b, s.eligible, a)
    detail: dict[str, Any] = {}
    say = ""
    if sp is not None:
        k = sp.eligible
        pair = (name, min(sp.hi, sp.lo), max(sp.hi, sp.lo))
        p_holm = comps.holm.get(pair)
        detail = {
            "group_low": s.spec.levels[sp.lo],
            "value_low": float(acc[sp.lo]),
            "group_high": s.spec.levels[sp.hi],
            "value_high": float(acc[sp.hi]),
            "comparisons": k * (k - 1) // 2,
            "p_holm": p_holm,
        }
        say = (
            f"accuracy of {detail['group_low']} ({acc[sp.lo]:.3f}, n={int(s.point['n'][sp.lo])}) "
            f"is {sp.difference:.3f} below {detail['group_high']} ({acc[sp.hi]:.3f}, "
            f"n={int(s.point['n'][sp.hi])}), worst and best of {k} eligible groups "
            f"({k * (k - 1) // 2} pairwise comparisons here, {len(comps.rows)} in the run; "
            f"Holm-adjusted z-test p={p_holm:.2g})"
        )
    emit(
        "accuracy_difference",
        th.accuracy_difference,
        True,
        sp,
        sp.difference if sp else None,
        sp.difference_ci if sp else [None, None],
        detail,
        say,
    )

    if s.label_defined:
        for measure in (
            "demographic_parity_difference",
            "selection_rate_ratio",
            "equalized_odds_difference",
        ):
            rows.append(
                {
                    "attribute": name,
                    "measure": measure,
                    **counts,
                    "value": None,
                    "ci": [None, None],
                    "threshold": None,
                    "severity": None,
                    "note": "not applicable: the groups are defined by the label itself",
                }
            )
        return rows, findings

    # demographic parity: per class, max - min and min / max selection rate
    spreads = [
        (c, _spread(s.point["selection"][:, c], s.boot["selection"][:, :, c], s.eligible, a))
        for c in range(len(classes))
    ]
    valid = [(c, x) for c, x in spreads if x is not None]
    if valid:
        c, x = max(valid, key=lambda cx: cx[1].difference)
        emit(
            "demographic_parity_difference",
            None,
            True,
            x,
            x.difference,
            x.difference_ci,
            _pair_detail(s, "selection", c, classes, x),
            "",
        )
        with_ratio = [(c, x) for c, x in valid if x.ratio is not None]
        c, x = min(
            with_ratio or valid, key=lambda cx: np.inf if cx[1].ratio is None else cx[1].ratio
        )
        d = _pair_detail(s, "selection", c, classes, x)
        say = (
            f"selection rate of class {classes[c]!r} in {d['group_low']} ({d['value_low']:.3f}) "
            f"is {x.ratio if x.ratio is not None else float('nan'):.3f} of that in "
            f"{d['group_high']} ({d['value_high']:.3f}) (four-fifths rule; lowest ratio over "
            f"{len(classes)} classes and {x.eligible} eligible groups)"
        )
        emit("selection_rate_ratio", th.selection_rate_ratio, False, x, x.ratio, x.ratio_ci, d, say)
    else:
        emit("demographic_parity_difference", None, True, None, None, [None, None], {}, "")
        emit(
            "selection_rate_ratio", th.selection_rate_ratio, False, None, None, [None, None], {}, ""
        )

    # equalized odds: largest gap in one-vs-rest TPR or FPR over classes
    best: tuple[float, int, str, Spread] | None = None
    for c in range(len(classes)):
        for rate, den in (("tpr", "pos"), ("fpr", "neg")):
            values, reps, _, _, eligible = _series(s, rate, c, den, params.min_group_size)
            x = _spread(values, reps, eligible, a)
            if x is not None and (best is None or x.difference > best[0]):
                best = (x.difference, c, rate, x)
    if best is None:
        emit(
            "equalized_odds_difference",
            th.equalized_odds_difference,
            True,
            None,
            None,
            [None, None],
            {},
            "",
        )
    else:
        _, c, rate, x = best
        d = {**_pair_detail(s, rate, c, classes, x), "rate": rate}
        say = (
            f"equalized-odds difference {x.difference:.3f}: one-vs-rest {rate.upper()} of class "
            f"{classes[c]!r} is {d['value_high']:.3f} in {d['group_high']} vs "
            f"{d['value_low']:.3f} in {d['group_low']} (largest gap over {len(classes)} "
            f"classes x TPR/FPR; a rate is gated only when its denominator is >= {m})"
        )
        emit(
            "equalized_odds_difference",
            th.equalized_odds_difference,
            True,
            x,
            x.difference,
            x.difference_ci,
            d,
            say,
        )
    return rows, findings


def _pair_detail(
    s: SpecStats, key: str, c: int, classes: Sequence[str], x: Spread
) -> dict[str, Any]:
    return {
        "class": classes[c],
        "group_low": s.spec.levels[x.lo],
        "value_low": float(s.point[key][x.lo, c]),
        "group_high": s.spec.levels[x.hi],
        "value_high": float(s.point[key][x.hi, c]),
    }
