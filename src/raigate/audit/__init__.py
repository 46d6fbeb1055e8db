"""Audit checks. Every check is a module exposing ``run(model, data, params) -> CheckResult``
and a pydantic ``Params`` class; ``CHECKS`` is the small explicit registry the CLI and the
audit plan read (no registration by import side effect)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raigate.audit import evaluate, explanations, fairness, privacy, robustness
from raigate.results import CheckResult

CheckFn = Callable[..., CheckResult]

CHECKS: dict[str, tuple[CheckFn, type[Any]]] = {
    "evaluate": (evaluate.run, evaluate.EvaluateParams),
    "robustness": (robustness.run, robustness.RobustnessParams),
    "fairness": (fairness.run, fairness.FairnessParams),
    "explanations": (explanations.run, explanations.ExplainParams),
    "privacy": (privacy.run, privacy.PrivacyParams),
}


def register_check(name: str, run: CheckFn, params_cls: type[Any]) -> None:
    """Add (or replace) a check under ``name``."""
    CHECKS[name] = (run, params_cls)


__all__ = ["CHECKS", "evaluate", "register_check"]
