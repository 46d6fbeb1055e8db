"""The fairness check's reported point estimates, computed by fairlearn.

Every reported group value (``n``, accuracy, the selection rate of each class, one-vs-rest
TPR and FPR) comes from fairlearn's ``MetricFrame`` over the attribute, with fairlearn's
metric functions (``count``, ``selection_rate``, ``true_positive_rate``,
``false_positive_rate``) and scikit-learn's ``accuracy_score``, as fairlearn's user guide
uses them. An intersection passes its columns as several sensitive features, and fairlearn
crosses them into the groups. The differences and ratios between groups are
``MetricFrame.difference()`` and ``.ratio()`` over the groups eligible for the comparison.
The ``parity`` table holds fairlearn's ``demographic_parity_difference/ratio`` and
``equalized_odds_difference/ratio``. So the definitions are fairlearn's, and raigate does
not restate them.

The intervals and gates do not go through fairlearn. They resample confusion matrices
(:mod:`raigate.audit.fairness_stats`), which is thousands of times faster than
``MetricFrame(n_boot=...)``. Both paths read the same predictions. On every run
:func:`attach` checks that fairlearn's values equal the confusion-matrix values of the
original, not resampled, data to ``TOLERANCE``; if they differ, it raises. So the reported
numbers and the numbers the gates test cannot drift apart.

Conventions kept from raigate, stated in docs/fairness.md:

* Multiclass rates are one-vs-rest. TPR and FPR of class ``c`` are fairlearn's functions
  on ``(y == c, pred == c)`` with ``pos_label=1``, and the selection rate is
  ``selection_rate(pos_label=c)``. A prediction of a model class that the data lacks
  (``-1``) is never class ``c``, and it is never correct.
* A group is eligible for a comparison when ``n >= min_group_size``. For TPR (FPR), its
  positives (negatives) must reach that size too. Groups with no samples are left out.
* For a group without positives (negatives), fairlearn returns 0 from scikit-learn's
  normalised confusion matrix. raigate reports that rate as undefined (``None``), and it is
  never eligible.

>>> import numpy as np, pandas as pd
>>> from raigate.audit import fairness
>>> y, pred = np.array([1, 1, 0, 0, 1, 1, 0, 0]), np.array([1, 0, 0, 0, 1, 1, 1, 0])
>>> attrs = pd.DataFrame({"g": ["A"] * 4 + ["B"] * 4})
>>> p = fairness.FairnessParams(n_boot=100, min_group_size=1, progress=False, plots=False)
>>> (s,) = fairness.analyse(y, pred, attrs, [("g",)], ["neg", "pos"], p).stats
>>> s = attach(s, y, pred, 2, p.min_group_size)  # raises if fairlearn and s.point differ
>>> s.point["tpr"][:, 1].tolist(), parity_rows(s, ["neg", "pos"])[0]["equalized_odds_ratio"]
([0.5, 1.0], 0.0)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import sklearn
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
    equalized_odds_ratio,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score

from raigate.errors import RaigateError

if TYPE_CHECKING:
    from raigate.audit.fairness_tables import GroupSpec, SpecStats

TOLERANCE = 1e-12
RATES = ("selection", "tpr", "fpr")  # per-class point keys, beside "n" and "accuracy"
Pair = tuple[float, float]  # (difference, ratio)


def describe() -> str:
    """For ``params``: where the point estimates come from, with fairlearn's version."""
    return (
        f"fairlearn {version('fairlearn')} MetricFrame per attribute (intersections: its "
        "columns as sensitive features) with count, accuracy_score, selection_rate, "
        "true_positive_rate and false_positive_rate (one-vs-rest per class); differences and "
        "ratios: MetricFrame.difference()/.ratio() over eligible groups; parity table: "
        "demographic_parity_difference/ratio and equalized_odds_difference/ratio (binary "
        "task; multiclass: the same from MetricFrame per class one-vs-rest); checked equal "
        f"to the bootstrap path's point values to {TOLERANCE:g}"
    )


@dataclass(frozen=True)
class Points:
    """fairlearn's numbers for one attribute spec, aligned to ``spec.levels``."""

    point: dict[str, np.ndarray]  # n, accuracy [G]; selection, tpr, fpr [G, K]
    overall: dict[str, np.ndarray]  # the same over all samples: [] and [K]
    spread: dict[str, Pair]  # MetricFrame column -> (difference, ratio) over eligible groups
    parity: list[dict[str, Any]]  # one row per class; empty where parity does not apply


def name(key: str, c: int | None) -> str:
    """The MetricFrame column of a point key: ``accuracy``, ``tpr[2]``."""
    return key if c is None else f"{key}[{c}]"


def _one_vs_rest(rate: Callable[..., float], c: int) -> Callable[[Any, Any], float]:
    def metric(y_true: Any, y_pred: Any) -> float:
        t = (np.asarray(y_true) == c).astype(np.int64)
        p = (np.asarray(y_pred) == c).astype(np.int64)
        return float(rate(t, p, pos_label=1))

    return metric


def metric_functions(n_classes: int) -> dict[str, Callable[[Any, Any], Any]]:
    """fairlearn's metric functions for every reported group value."""
    fns: dict[str, Callable[[Any, Any], Any]] = {"n": count, "accuracy": accuracy_score}
    for c in range(n_classes):
        fns[name("selection", c)] = functools.partial(selection_rate, pos_label=c)
        fns[name("tpr", c)] = _one_vs_rest(true_positive_rate, c)
        fns[name("fpr", c)] = _one_vs_rest(false_positive_rate, c)
    return fns


def sensitive_features(spec: GroupSpec) -> pd.DataFrame:
    """Each sample's level name in every column of the spec (``(missing)`` included), so
    fairlearn's groups carry raigate's names. Columns are named by position: fairlearn
    keeps its own columns beside them, and an attribute called ``y_true`` would collide."""
    index = np.unravel_index(spec.codes, tuple(len(p) for p in spec.parts))
    return pd.DataFrame(
        {
            f"sensitive_{i}": np.asarray(part, dtype=object)[idx]
            for i, (part, idx) in enumerate(zip(spec.parts, index, strict=True))
        }
    )


def by_level(by_group: pd.DataFrame, spec: GroupSpec) -> pd.DataFrame:
    """fairlearn's ``by_group`` on the spec's full grid of levels, in raigate's order. An
    empty group is a row of NaN: fairlearn lists an empty combination of observed values
    that way, and a level nobody has (an unused category) not at all."""
    lookup = [{level: i for i, level in enumerate(part)} for part in spec.parts]
    shape = tuple(len(p) for p in spec.parts)
    keys = by_group.index if len(spec.columns) > 1 else [(k,) for k in by_group.index]
    rows = [
        int(np.ravel_multi_index(tuple(lk[v] for lk, v in zip(lookup, key, strict=True)), shape))
        for key in keys
    ]
    out = np.full((len(spec.levels), by_group.shape[1]), np.nan)
    out[rows] = by_group.to_numpy(dtype=np.float64)
    return pd.DataFrame(out, columns=by_group.columns)


def _values(table: pd.DataFrame | pd.Series, n_classes: int) -> dict[str, np.ndarray]:
    """MetricFrame columns as raigate's point arrays (``[G]`` / ``[G, K]``, or ``[]`` /
    ``[K]`` for ``overall``)."""

    def col(key: str) -> np.ndarray:
        return np.asarray(table[key], dtype=np.float64)

    out = {
        "n": np.nan_to_num(col("n")).astype(np.int64),
        "accuracy": col("accuracy"),
    }
    for key in RATES:
        out[key] = np.stack([col(name(key, c)) for c in range(n_classes)], axis=-1)
    return out


def _undefined_as_nan(values: dict[str, np.ndarray], raw: dict[str, np.ndarray]) -> None:
    # fairlearn (scikit-learn's normalised confusion matrix) gives 0 where raigate's rate
    # is undefined: no positives for TPR, no negatives for FPR
    values["tpr"] = np.where(raw["pos"] > 0, values["tpr"], np.nan)
    values["fpr"] = np.where(raw["neg"] > 0, values["fpr"], np.nan)


def agree(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], what: str) -> None:
    """Raise when fairlearn's value and the confusion-matrix value of the same key differ
    by more than ``TOLERANCE``, or only one of them is undefined."""
    for key, a in ours.items():
        x = np.asarray(a, dtype=np.float64)
        y = np.asarray(theirs[key], dtype=np.float64)
        nan_x, nan_y = np.isnan(x), np.isnan(y)
        gap = np.where(nan_x | nan_y, 0.0, np.abs(x - y))
        if (nan_x != nan_y).any() or (gap > TOLERANCE).any():
            raise RaigateError(
                f"internal: {what}: fairlearn's {key} differs from the bootstrap path's point "
                f"value (largest gap {float(gap.max()):.3g}, undefined in one only: "
                f"{int((nan_x != nan_y).sum())}); please report this"
            )


def close(fairlearn_value: Any, ours: Any, what: str) -> float:
    """fairlearn's value after checking it against raigate's (:func:`agree` for scalars;
    ``None`` is undefined)."""
    a, b = (np.nan if v is None else float(v) for v in (fairlearn_value, ours))
    agree({what: np.array([a])}, {what: np.array([b])}, what)
    return a


def _eligible(s: SpecStats, key: str, c: int | None, min_size: int) -> np.ndarray:
    den = {"tpr": "pos", "fpr": "neg"}.get(key)
    if den is None or c is None:
        return s.eligible
    return s.eligible & (s.point[den][:, c] >= min_size)


def _subset(sf: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    return sf[rows].reset_index(drop=True)


def _scalar(v: Any) -> float | None:
    f = float(v)
    return f if np.isfinite(f) else None


def _spreads(
    frame: MetricFrame,
    fns: dict[str, Callable[[Any, Any], Any]],
    masks: dict[str, np.ndarray],
    s: SpecStats,
    y: np.ndarray,
    pred: np.ndarray,
    sf: pd.DataFrame,
) -> dict[str, Pair]:
    """``MetricFrame.difference()`` and ``.ratio()`` of each metric over its eligible
    groups: from the full frame where every non-empty group is eligible, else from a frame
    of the eligible groups' samples (one per distinct set of groups)."""
    nonempty = s.point["n"] > 0
    by_mask: dict[bytes, list[str]] = {}
    for metric, mask in masks.items():
        if mask.sum() >= 2:
            by_mask.setdefault(mask.tobytes(), []).append(metric)
    out: dict[str, Pair] = {}
    for metrics in by_mask.values():
        mask = masks[metrics[0]]
        if np.array_equal(mask, nonempty):
            sub = frame
        else:
            rows = mask[s.spec.codes]
            sub = MetricFrame(
                metrics={m: fns[m] for m in metrics},
                y_true=y[rows],
                y_pred=pred[rows],
                sensitive_features=_subset(sf, rows),
            )
        diff, ratio = sub.difference(), sub.ratio()
        for m in metrics:
            out[m] = (float(diff[m]), float(ratio[m]))
    return out


def _odds(
    s: SpecStats,
    yc: np.ndarray,
    pc: np.ndarray,
    sf: pd.DataFrame,
    spread: dict[str, Pair],
    masks: dict[str, np.ndarray],
    c: int,
) -> Pair | None:
    """Equalized-odds difference and ratio of class ``c`` (0/1 labels ``yc``, ``pc``) over
    the groups eligible for both TPR and FPR: fairlearn's worst case of the TPR and FPR
    ``MetricFrame`` spreads, from the spreads when their groups are the same."""
    tpr, fpr = name("tpr", c), name("fpr", c)
    both = masks[tpr] & masks[fpr]
    if both.sum() < 2:
        return None
    if np.array_equal(masks[tpr], both) and np.array_equal(masks[fpr], both):
        return max(spread[tpr][0], spread[fpr][0]), min(spread[tpr][1], spread[fpr][1])
    rows = both[s.spec.codes]
    frame = MetricFrame(
        metrics={"tpr": true_positive_rate, "fpr": false_positive_rate},
        y_true=yc[rows],
        y_pred=pc[rows],
        sensitive_features=_subset(sf, rows),
    )
    return max(frame.difference()), min(frame.ratio())


def _binary(
    yc: np.ndarray,
    pc: np.ndarray,
    sf: pd.DataFrame,
    rows: np.ndarray,
    pair: Pair,
    functions: tuple[Callable[..., float], Callable[..., float]],
    what: str,
) -> Pair:
    """fairlearn's (difference, ratio) functions on the samples in ``rows``, checked equal
    to the MetricFrame ``pair``."""
    kw = {"sensitive_features": _subset(sf, rows)}
    d, r = (f(yc[rows], pc[rows], **kw) for f in functions)
    return close(d, pair[0], what), close(r, pair[1], f"{what} ratio")


def _parity(
    s: SpecStats,
    y: np.ndarray,
    pred: np.ndarray,
    sf: pd.DataFrame,
    spread: dict[str, Pair],
    masks: dict[str, np.ndarray],
    n_classes: int,
) -> list[dict[str, Any]]:
    """Demographic parity over the eligible groups and equalized odds over the groups
    eligible for both TPR and FPR, per class one-vs-rest from ``MetricFrame`` (what
    fairlearn's functions compute on binarized labels). A binary task reports class 1,
    fairlearn's ``pos_label``, and its values are fairlearn's functions themselves, checked
    equal to the MetricFrame values (for every class of a multiclass task the functions
    would build 4K frames)."""
    out: list[dict[str, Any]] = []
    for c in [1] if n_classes == 2 else range(n_classes):
        sel = name("selection", c)
        yc, pc = (y == c).astype(np.int64), (pred == c).astype(np.int64)
        dp = spread[sel] if masks[sel].sum() >= 2 else None
        eo = _odds(s, yc, pc, sf, spread, masks, c)
        eo_mask = masks[name("tpr", c)] & masks[name("fpr", c)]
        if n_classes == 2:
            what = f"{s.spec.name}: parity of class {c}"
            if dp is not None:
                dp_fns = (demographic_parity_difference, demographic_parity_ratio)
                dp = _binary(yc, pc, sf, masks[sel][s.spec.codes], dp, dp_fns, what)
            if eo is not None:
                eo_fns = (equalized_odds_difference, equalized_odds_ratio)
                eo = _binary(yc, pc, sf, eo_mask[s.spec.codes], eo, eo_fns, what)
        out.append(
            {
                "class_index": c,
                "groups_eligible": int(masks[sel].sum()),
                "demographic_parity_difference": None if dp is None else _scalar(dp[0]),
                "demographic_parity_ratio": None if dp is None else _scalar(dp[1]),
                "groups_eligible_odds": int(eo_mask.sum()),
                "equalized_odds_difference": None if eo is None else _scalar(eo[0]),
                "equalized_odds_ratio": None if eo is None else _scalar(eo[1]),
            }
        )
    return out


def attach(
    s: SpecStats,
    y: np.ndarray,
    pred: np.ndarray,
    n_classes: int,
    min_size: int,
) -> SpecStats:
    """``s`` with its point values (groups and overall) replaced by fairlearn's, after
    checking that they agree with the confusion-matrix values, and with fairlearn's
    differences, ratios and parity in ``s.fairlearn``. ``pred`` holds data class indices,
    ``-1`` for a model class the data lacks."""
    # our own validated arrays: scikit-learn's per-call argument checks are pure overhead
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        return _attach(s, y, pred, n_classes, min_size)


def _attach(
    s: SpecStats, y: np.ndarray, pred: np.ndarray, n_classes: int, min_size: int
) -> SpecStats:
    sf = sensitive_features(s.spec)
    fns = metric_functions(n_classes)
    frame = MetricFrame(metrics=fns, y_true=y, y_pred=pred, sensitive_features=sf)
    point = _values(by_level(frame.by_group, s.spec), n_classes)
    overall = _values(frame.overall, n_classes)
    _undefined_as_nan(point, s.point)
    _undefined_as_nan(overall, s.overall)
    agree(point, s.point, f"fairness groups of {s.spec.name}")
    agree(overall, s.overall, f"fairness overall ({s.spec.name})")

    masks = {"accuracy": s.eligible}
    for key in RATES:
        for c in range(n_classes):
            masks[name(key, c)] = _eligible(s, key, c, min_size) & np.isfinite(point[key][:, c])
    spread = _spreads(frame, fns, masks, s, y, pred, sf)
    parity = [] if s.label_defined else _parity(s, y, pred, sf, spread, masks, n_classes)
    return dataclasses.replace(
        s,
        point={**s.point, **point},
        overall={**s.overall, **overall},
        fairlearn=Points(point=point, overall=overall, spread=spread, parity=parity),
    )


def parity_rows(s: SpecStats, classes: Sequence[str]) -> list[dict[str, Any]]:
    """The ``parity`` table rows of one attribute spec (none where the groups are the
    label itself: parity and odds do not apply there)."""
    if s.fairlearn is None:
        raise ValueError(f"{s.spec.name}: call fairness_fairlearn.attach first")
    return [
        {"attribute": s.spec.name, "class": classes[r["class_index"]]}
        | {k: v for k, v in r.items() if k != "class_index"}
        for r in s.fairlearn.parity
    ]
