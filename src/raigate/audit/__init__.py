"""Audit checks. Every check is a module exposing ``run(model, data, params) -> CheckResult``,
a pydantic ``Params`` class and ``validate(model, data, params)``, a preflight that raises
what ``run`` would refuse (missing attributes, unloadable members, a bad layer) without doing
the work. ``CHECKS`` and ``VALIDATORS`` are the small explicit registries the CLI and the
audit plan read (no registration by import side effect); an audit plan validates every check
table before the first check runs, so a mistake in the last table costs no check time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raigate.audit import evaluate, explanations, fairness, privacy, robustness
from raigate.results import CheckResult

CheckFn = Callable[..., CheckResult]
ValidateFn = Callable[..., None]
"""``validate(model, data, params, **plan_models) -> None``; raises a UserError."""

CHECKS: dict[str, tuple[CheckFn, type[Any]]] = {
    "evaluate": (evaluate.run, evaluate.EvaluateParams),
    "robustness": (robustness.run, robustness.RobustnessParams),
    "fairness": (fairness.run, fairness.FairnessParams),
    "explanations": (explanations.run, explanations.ExplainParams),
    "privacy": (privacy.run, privacy.PrivacyParams),
}

VALIDATORS: dict[str, ValidateFn] = {
    "evaluate": evaluate.validate,
    "robustness": robustness.validate,
    "fairness": fairness.validate,
    "explanations": explanations.validate,
    "privacy": privacy.validate,
}


def register_check(
    name: str, run: CheckFn, params_cls: type[Any], validate: ValidateFn | None = None
) -> None:
    """Add (or replace) a check under ``name``, with its preflight when it has one."""
    CHECKS[name] = (run, params_cls)
    if validate is None:
        VALIDATORS.pop(name, None)
    else:
        VALIDATORS[name] = validate


__all__ = ["CHECKS", "VALIDATORS", "evaluate", "register_check"]
