"""Gate rows that read the same way in every area: value, threshold, the direction that
passes, and one line saying what passing means.

The checks state their decisions in sentences (``Finding.message``); a release board comparing
thresholds across areas needs the same four columns everywhere. The direction is derived from
the finding's id here, next to the renderer, because it is a property of the gate kind (every
``robustness.min_*`` gate passes when its interval lies at or above the minimum), not of one
run. A gate kind not listed gets ``None`` and is shown as "—" rather than a guessed sign.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SEVERITY_ORDER = ("pass", "warn", "fail")
BADGE_COLORS = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "reported": "#57606a"}
"""One badge palette for the whole page (verdict, areas, gates)."""


@dataclass(frozen=True)
class GateRule:
    """How one kind of gate decides: ``direction`` compares value with threshold (or, for an
    interval test, says which side the interval must lie on); ``passing`` is the one line a
    release board reads."""

    pattern: str
    direction: str
    passing: str


_RULES = (
    GateRule(r"evaluate\.min_accuracy$", "≥", "clean accuracy at or above the required minimum"),
    GateRule(
        r"[a-z_]+\.chance_level$",
        "upper CI bound ≥",
        "accuracy's 95% upper bound reaches past chance: the model is not guessing",
    ),
    GateRule(
        r"[a-z_]+\.input_scale$",
        "within [1/t, t]",
        "the first BatchNorm layer sees inputs scaled like its training data",
    ),
    GateRule(
        r"model\.normalization_scale$",
        "≤",
        "--mean and --std are statistics of pixels in [0, 1], as raigate feeds them",
    ),
    GateRule(
        r"data\.limit_misses_classes$",
        "≥",
        "the samples audited hold every class of the data",
    ),
    GateRule(
        r"fairness\.selection_rate_ratio\[",
        "CI entirely above",
        "every group pair's selection-rate ratio stays above the threshold",
    ),
    GateRule(
        r"fairness\.[a-z_]+_difference\[",
        "CI entirely below",
        "every group pair's gap stays below the threshold",
    ),
    GateRule(
        r"robustness\.min_",
        "CI entirely above",
        "accuracy under attack (or certified) stays above the minimum",
    ),
    GateRule(
        r"robustness\.query_budget\.",
        "≤",
        "the query-only attack stayed within its query budget",
    ),
    GateRule(
        r"robustness\.smoothing\.certified_accuracy$",
        "≥",
        "the smoothed model certifies a required share of its clean accuracy",
    ),
    GateRule(
        r"robustness\.masking\.",
        "≤",
        "no sign of gradient masking (attacks behave as a sound attack should)",
    ),
    GateRule(
        r"privacy\.empirical_epsilon$",
        "≤",
        "measured privacy leakage stays below the claimed epsilon",
    ),
    GateRule(
        r"privacy\.membership_auc$",
        "CI entirely below",
        "a membership attack does no better than the maximum AUC allowed",
    ),
    GateRule(r"privacy\.spent_epsilon$", "≤", "DP-SGD spent no more than its target epsilon"),
    GateRule(
        r"privacy\.sampler$",
        "≥",
        "training sampled as the privacy accounting assumed",
    ),
    GateRule(
        r"explanations\.faithfulness\.",
        "below random (Wilcoxon)",
        "removing the most important pixels hurts more than removing random ones",
    ),
    GateRule(
        r"explanations\.sanity",
        "≤",
        "maps change when the model's weights are randomized: they explain this model",
    ),
    GateRule(
        r"explanations\.ig_delta$",
        "≤",
        "Integrated Gradients' integral converged within tolerance",
    ),
)


def rule_for(finding_id: str) -> GateRule | None:
    """The rule of the first pattern matching ``finding_id``; ``None`` for an unknown kind."""
    for rule in _RULES:
        if re.match(rule.pattern, finding_id):
            return rule
    return None


def gate_row(finding: dict[str, Any], check: str) -> dict[str, Any]:
    """One gate as the page shows it. Explanations' faithfulness gates compare with a random
    pixel order, not with a threshold a person chose: that number goes in ``baseline`` and the
    threshold stays empty, so the threshold column holds only chosen bars."""
    fid = str(finding["id"])
    rule = rule_for(fid)
    baseline = None
    threshold = finding.get("threshold")
    if fid.startswith("explanations.faithfulness."):
        baseline, threshold = threshold, None
    return {
        "check": check,
        "id": fid,
        "severity": finding["severity"],
        "value": finding.get("value"),
        "threshold": threshold,
        "baseline": baseline,
        "direction": rule.direction if rule else None,
        "passing": rule.passing if rule else None,
        "message": finding.get("message", ""),
    }
