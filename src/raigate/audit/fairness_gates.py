"""The fairness gates as one family-wise test over everything they look at.

A gate asks "does some between-group gap exceed the threshold?". Answering it by picking
the best and the worst group and then bootstrapping that pair as if it had been chosen in
advance fails fair models: with 14 groups of 40 faces at equal true accuracy, the extreme
pair's interval lay above 0.05 in 45% of audits. Here every contrast a gate could pick is
tested at once:

* **The family**: for every attribute and intersection, every pair of eligible groups, and
  for every gated measure: accuracy difference; per class, the log selection-rate ratio
  (the four-fifths rule); per class, the one-vs-rest TPR and FPR differences (equalized
  odds). All of them, over all attributes, form one family per check.
* **Simultaneous intervals** by the bootstrap max-T (Westfall & Young 1993; Romano & Wolf
  2005): each contrast ``d`` gets a standard error ``se`` (Agresti-Caffo for differences of
  proportions; the delta method on half-count-smoothed rates for log ratios); every
  stratified bootstrap replicate gives ``M* = max |d* - d| / se`` over the whole family, and
  ``c`` is the ``1 - alpha`` quantile of ``M*``. Then ``d ± c·se`` covers every contrast at
  once with probability about ``1 - alpha``.
* **The rule** per gate (``m`` is the threshold on the contrast's scale: ``t`` for a
  difference, ``-log t`` for a ratio): **fail** when some contrast's interval lies
  entirely beyond ``m`` (``|d| - c·se > m``), which is the same event as its max-T
  adjusted p-value of "``|d| <= m``" being ``<= alpha``, so the printed p and the gate
  agree; **pass** when every contrast's interval lies within ``±m``; **warn** otherwise.
  A false fail anywhere in the check, and a false pass, each happen with probability at
  most about ``alpha`` (a false fail needs some interval to miss its true contrast).
* **Power**, stated with each gate: the gap that would fail with 80% probability for the
  least precise contrast (``m + (c + z_0.8)·se_max``), and whether a pass is reachable at
  all at this n (``c·se_max < m``).

Docs: docs/fairness.md ("Gates"). A simulation test measures the false-fail rate and the
power of this rule (tests/audit/test_fairness_gates.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import norm

from raigate.audit import fairness_stats as fs
from raigate.results import Finding

if TYPE_CHECKING:
    from raigate.audit.fairness import FairnessParams
    from raigate.audit.fairness_tables import SpecStats

POWER = 0.8
MEASURES = ("accuracy_difference", "selection_rate_ratio", "equalized_odds_difference")


@dataclass
class Block:
    """The contrasts of one measure, one attribute spec and one class/rate: every pair
    ``(i, j)`` of groups eligible for it, on the test scale (difference or log ratio)."""

    spec: int
    measure: str
    cls: int | None
    rate: str  # accuracy, selection, tpr or fpr
    i: np.ndarray
    j: np.ndarray
    est: np.ndarray  # [P]
    se: np.ndarray  # [P]
    boot: np.ndarray  # [B, P]
    n: np.ndarray  # [P] the smaller of the pair's denominators (group size, positives, ...)
    margin: float  # the threshold on the test scale
    t: np.ndarray = field(default_factory=lambda: np.empty(0))  # (|est| - margin) / se
    p: np.ndarray = field(default_factory=lambda: np.empty(0))  # adjusted p-values


@dataclass
class Family:
    """Every gated contrast of a check with its max-T calibration."""

    blocks: list[Block]
    critical: float
    n_boot: int
    alpha: float

    @property
    def size(self) -> int:
        return int(sum(b.est.size for b in self.blocks))


def _pairs(ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.flatnonzero(ok)
    a, b = np.triu_indices(idx.size, 1)
    return idx[a], idx[b]


Parts = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""(i, j, estimate, se, replicates, smaller denominator) of a block's contrasts."""


def _difference(
    values: np.ndarray, reps: np.ndarray, succ: np.ndarray, den: np.ndarray, ok: np.ndarray
) -> Parts:
    i, j = _pairs(ok & np.isfinite(values))
    var = fs.agresti_caffo_var(succ, den)
    se = np.sqrt(var[i] + var[j])
    return i, j, values[i] - values[j], se, reps[:, i] - reps[:, j], np.minimum(den[i], den[j])


def _log_ratio(values: np.ndarray, reps: np.ndarray, n: np.ndarray, ok: np.ndarray) -> Parts:
    # Half a count added to each rate (Haldane-Anscombe) keeps log(0) out of the test;
    # var(log p) ~ (1 - p) / (n p) by the delta method.
    i, j = _pairs(ok & np.isfinite(values))
    n = n.astype(np.float64)

    def smooth(rate: np.ndarray) -> np.ndarray:
        return np.log((np.nan_to_num(rate) * n + 0.5) / (n + 1))

    lp, lb = smooth(values), smooth(reps)
    p = np.exp(lp)
    var = (1 - p) / (np.maximum(n, 1) * p)
    se = np.sqrt(var[i] + var[j])
    return i, j, lp[i] - lp[j], se, lb[:, i] - lb[:, j], np.minimum(n[i], n[j])


def build_family(stats: Sequence[SpecStats], n_classes: int, params: FairnessParams) -> Family:
    """All gated contrasts of every attribute spec, calibrated jointly (module docstring)."""
    th, m = params.thresholds, params.min_group_size
    blocks: list[Block] = []

    def add(si: int, measure: str, cls: int | None, rate: str, margin: float, parts: Parts) -> None:
        i, j, est, se, boot, n = parts
        if est.size:
            blocks.append(Block(si, measure, cls, rate, i, j, est, se, boot, n, margin))

    for si, s in enumerate(stats):
        pt, bt, n = s.point, s.boot, s.point["n"]
        if th.accuracy_difference is not None:
            parts = _difference(pt["accuracy"], bt["accuracy"], pt["correct"], n, s.eligible)
            add(si, "accuracy_difference", None, "accuracy", th.accuracy_difference, parts)
        if s.label_defined:
            continue  # parity and odds are not meaningful when groups are the label itself
        for c in range(n_classes):
            if th.selection_rate_ratio is not None:
                parts = _log_ratio(pt["selection"][:, c], bt["selection"][:, :, c], n, s.eligible)
                margin = -float(np.log(th.selection_rate_ratio))
                add(si, "selection_rate_ratio", c, "selection", margin, parts)
            if th.equalized_odds_difference is None:
                continue
            for rate, den in (("tpr", "pos"), ("fpr", "neg")):
                d = pt[den][:, c]
                hits = np.rint(np.nan_to_num(pt[rate][:, c]) * d)
                parts = _difference(
                    pt[rate][:, c], bt[rate][:, :, c], hits, d, s.eligible & (d >= m)
                )
                add(si, "equalized_odds_difference", c, rate, th.equalized_odds_difference, parts)
    return calibrate(blocks, params.n_boot, params.alpha)


def calibrate(blocks: list[Block], n_boot: int, alpha: float) -> Family:
    """Max-T critical value over all blocks, then each contrast's ``t`` and adjusted p."""
    worst = np.zeros(n_boot)
    for b in blocks:
        with np.errstate(invalid="ignore"):
            z = np.abs(b.boot - b.est) / b.se
        worst = np.maximum(worst, np.where(np.isfinite(z), z, 0.0).max(axis=1))
    crit = fs.maxt_critical(worst, alpha) if blocks else float("nan")
    for b in blocks:
        b.t = (np.abs(b.est) - b.margin) / b.se
        b.p = fs.maxt_pvalues(worst, b.t)
    return Family(blocks=blocks, critical=crit, n_boot=n_boot, alpha=alpha)


# -- one gate: the contrasts of one measure for one attribute spec ---------------------------------
@dataclass(frozen=True)
class Contrast:
    """One contrast picked out of a gate, oriented low group first."""

    block: Block
    k: int

    @property
    def ratio(self) -> bool:
        return self.block.measure == "selection_rate_ratio"

    def groups(self) -> tuple[int, int]:
        """(low, high): the group with the lower rate first."""
        i, j = int(self.block.i[self.k]), int(self.block.j[self.k])
        return (j, i) if self.block.est[self.k] > 0 else (i, j)

    def value(self, point: np.ndarray) -> float:
        """The gap (high minus low) or the ratio (low over high) of the raw rates."""
        lo, hi = self.groups()
        if self.ratio:
            return float(point[lo] / point[hi]) if point[hi] > 0 else float("nan")
        return float(point[hi] - point[lo])

    def interval(self, crit: float) -> list[float]:
        """Simultaneous interval of the gap (or ratio) on the natural scale."""
        e, se = abs(float(self.block.est[self.k])), float(self.block.se[self.k])
        lo, hi = e - crit * se, e + crit * se
        if self.ratio:
            return [float(np.exp(-hi)), float(np.exp(-lo))]
        return [lo, hi]


@dataclass(frozen=True)
class Gate:
    """The decision of one gate (measure x attribute spec) from its blocks."""

    severity: str
    p_value: float
    reported: Contrast  # fail: the most significant contrast; else the widest upper bound
    largest: Contrast  # the largest observed gap
    contrasts: int
    detectable: float  # the gap (ratio) that fails with POWER for the least precise contrast
    widest_half_width: float  # c * se_max on the test scale
    widest_n: int  # the smaller denominator of that least precise contrast
    margin: float
    n_boot: int

    @property
    def equal_groups_pass(self) -> bool:
        """Whether groups with equal true rates would pass in about 1 - alpha of audits at
        this n: a pass needs |d| + c·se <= margin for every contrast, and with equal groups
        max |d| / se is itself about c, so the widest half-width c·se_max must be at most
        half the margin."""
        return 2 * self.widest_half_width <= self.margin

    def samples_to_pass(self) -> int:
        """Samples per group (in the smaller group of the least precise contrast) at which
        equal groups would pass: se shrinks as 1/sqrt(n)."""
        factor = (2 * self.widest_half_width / self.margin) ** 2
        return int(np.ceil(self.widest_n * max(factor, 1.0)))


def decide(blocks: Sequence[Block], crit: float, alpha: float, n_boot: int = 0) -> Gate:
    """fail / warn / pass for one gate; see the module docstring."""
    cands = [Contrast(b, k) for b in blocks for k in range(b.est.size)]
    t = np.array([c.block.t[c.k] for c in cands])
    p = np.array([c.block.p[c.k] for c in cands])
    est = np.array([abs(c.block.est[c.k]) for c in cands])
    se = np.array([c.block.se[c.k] for c in cands])
    widest = int(np.argmax(se))
    margin = blocks[0].margin
    upper = est + crit * se
    p_gate = float(p.min())
    if p_gate <= alpha:
        severity, reported = "fail", cands[int(np.argmax(t))]
    else:
        severity = "pass" if upper.max() <= margin else "warn"
        reported = cands[int(np.argmax(upper))]
    return Gate(
        severity=severity,
        p_value=p_gate,
        reported=reported,
        largest=cands[int(np.argmax(est))],
        contrasts=len(cands),
        detectable=margin + (crit + float(norm.ppf(POWER))) * float(se.max()),
        widest_half_width=crit * float(se[widest]),
        widest_n=int(cands[widest].block.n[cands[widest].k]),
        margin=margin,
        n_boot=n_boot,
    )


def natural(measure: str, x: float) -> float:
    """A margin or gap on the test scale back on the threshold's scale (ratio: exp(-x))."""
    return float(np.exp(-x)) if measure == "selection_rate_ratio" else x


# -- summary rows and findings ------------------------------------------------------------------
_WHAT = {
    "accuracy_difference": "accuracy difference",
    "selection_rate_ratio": "selection-rate ratio (four-fifths rule)",
    "equalized_odds_difference": "equalized-odds difference (one-vs-rest TPR and FPR)",
}


def _rate_text(c: Contrast, classes: Sequence[str]) -> str:
    b = c.block
    if b.rate == "accuracy":
        return "accuracy"
    if b.rate == "selection":
        return f"selection rate of class {classes[b.cls]!r}"  # type: ignore[index]
    return f"one-vs-rest {b.rate.upper()} of class {classes[b.cls]!r}"  # type: ignore[index]


def _describe(s: SpecStats, c: Contrast, classes: Sequence[str], crit: float) -> dict[str, Any]:
    lo, hi = c.groups()
    b = c.block
    point = s.point[b.rate] if b.cls is None else s.point[b.rate][:, b.cls]
    den = {"tpr": "pos", "fpr": "neg"}.get(b.rate, "n")
    n = s.point[den] if b.cls is None or den == "n" else s.point[den][:, b.cls]
    return {
        "class": None if b.cls is None else classes[b.cls],
        "rate": b.rate,
        "group_low": s.spec.levels[lo],
        "value_low": float(point[lo]),
        "n_low": int(n[lo]),
        "group_high": s.spec.levels[hi],
        "value_high": float(point[hi]),
        "n_high": int(n[hi]),
        "value": c.value(point),
        "ci": c.interval(crit),
        "p_value": float(b.p[c.k]),
    }


def _pair_text(d: dict[str, Any], what: str, ratio: bool) -> str:
    low = f"{d['group_low']} ({d['value_low']:.3f}, n={d['n_low']})"
    high = f"{d['group_high']} ({d['value_high']:.3f}, n={d['n_high']})"
    if ratio:
        return f"{what} in {low} is {d['value']:.3f} of that in {high}"
    joint = "of" if d["rate"] == "accuracy" else "in"
    return f"{what} {joint} {low} is {d['value']:.3f} below {high}"


def _fmt(ci: Sequence[float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def gate_rows(
    si: int,
    s: SpecStats,
    family: Family,
    classes: Sequence[str],
    params: FairnessParams,
    counts: dict[str, int],
) -> tuple[list[dict[str, Any]], list[Finding]]:
    """The summary rows and findings of one attribute spec's gates."""
    th, m, a = params.thresholds, params.min_group_size, params.alpha
    name = s.spec.name
    small = f"{counts['groups_insufficient']} of {counts['groups']} groups have n<{m}, not gated"
    method = (
        f"bootstrap max-T over the check's {family.size} between-group contrasts, "
        f"B={family.n_boot}, c={family.critical:.2f}; {small}"
    )
    rows: list[dict[str, Any]] = []
    findings: list[Finding] = []
    for measure in MEASURES:
        threshold = getattr(th, measure)
        row: dict[str, Any] = {
            "attribute": name,
            "measure": measure,
            "threshold": threshold,
            **counts,
            "value": None,
            "ci": [None, None],
            "severity": None,
        }
        if s.label_defined and measure != "accuracy_difference":
            note = "not applicable: the groups are defined by the label itself"
            rows.append({**row, "threshold": None, "note": note})
            continue
        if threshold is None:
            rows.append({**row, "note": "gate off"})
            continue
        blocks = [b for b in family.blocks if b.spec == si and b.measure == measure]
        if not blocks:
            rows.append({**row, "severity": "warn", "note": f"fewer than 2 groups with n>={m}"})
            findings.append(
                Finding(
                    id=f"fairness.{measure}[{name}]", severity="warn", metric=measure,
                    value=None, threshold=threshold,
                    message=(
                        f"{name}: {_WHAT[measure]} not evaluated: only "
                        f"{counts['groups_eligible']} group(s) have at least {m} samples "
                        f"({small}); collect more data or lower --min-group-size"
                    ),
                )
            )  # fmt: skip
            continue
        gate = decide(blocks, family.critical, a, family.n_boot)
        rep = _describe(s, gate.reported, classes, family.critical)
        big = _describe(s, gate.largest, classes, family.critical)
        detectable = natural(measure, gate.detectable)
        half = natural(measure, gate.widest_half_width)
        row.update(
            {
                **big,  # the measure itself: largest gap (lowest ratio), as fairlearn defines it
                "severity": gate.severity,
                "p_value": gate.p_value,
                "decisive": rep,  # fail: the most significant contrast; else the widest one
                "contrasts": gate.contrasts,
                "family_size": family.size,
                "critical_value": family.critical,
                "detectable_gap_80": detectable,
                "equal_groups_pass": gate.equal_groups_pass,
                "samples_to_pass": None if gate.equal_groups_pass else gate.samples_to_pass(),
            }
        )
        rows.append(row)
        findings.append(
            Finding(
                id=f"fairness.{measure}[{name}]",
                severity=gate.severity,  # type: ignore[arg-type]
                metric=measure,
                value=big["value"],
                threshold=threshold,
                message=_message(
                    f"{name}: ", gate, rep, _rate_text(gate.reported, classes), threshold,
                    f"{1 - a:.0%}", detectable, half, method,
                ),
            )
        )  # fmt: skip
    return rows, findings


_NOUN = {
    "accuracy_difference": "accuracy gap",
    "selection_rate_ratio": "selection-rate ratio",
    "equalized_odds_difference": "TPR or FPR gap",
}


def _message(
    head: str,
    gate: Gate,
    rep: dict[str, Any],
    what: str,
    threshold: float,
    level: str,
    detectable: float,
    half: float,
    method: str,
) -> str:
    """One finding's sentence: the decision and the pair behind it, then the power, then
    how the interval was made."""
    ratio = gate.reported.ratio
    noun = _NOUN[gate.reported.block.measure]
    p = gate.p_value
    p_text = f"adjusted p<{1 / gate.n_boot:.2g}" if p == 0 else f"adjusted p={p:.2g}"
    ci = f"simultaneous {level} interval {_fmt(rep['ci'])}"
    power = (
        f"a {'ratio' if ratio else 'gap'} of {detectable:.3f} or {'less' if ratio else 'more'} "
        f"would fail with {POWER:.0%} power"
    )
    pair = _pair_text(rep, what, ratio)
    if gate.severity == "fail":
        side = "below" if ratio else "above"
        text = f"{pair}; {ci}, entirely {side} the threshold {threshold:g} ({p_text})"
    elif gate.severity == "pass":
        text = (
            f"every {noun} between eligible groups is within the threshold {threshold:g} by "
            f"its simultaneous {level} interval (widest: {pair}, {_fmt(rep['ci'])}); {power}"
        )
    else:
        text = (
            f"no {noun} is shown beyond the threshold {threshold:g} ({p_text}), nor every one "
            f"within it: {pair}, {ci} straddles it; {power}"
        )
        if not gate.equal_groups_pass:
            reach = f"reaches down to {half:.3f}" if ratio else f"is ±{half:.3f}"
            text += (
                f"; the widest simultaneous interval {reach}, so even groups with equal rates "
                f"would pass only with about {gate.samples_to_pass():,} samples per group "
                f"(here {gate.widest_n:,}): collect more data to certify this threshold"
            )
    return f"{head}{text} ({method})"
