"""Audit checks. Every check is a module exposing ``run(model, data, params) -> CheckResult``
and a pydantic ``Params`` class; ``CHECKS`` is the small explicit registry the CLI and the
audit plan read (no registration by import side effect)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raigate.audit import evaluate
from raigate.results import CheckResult

CheckFn = Callable[..., CheckResult]

CHECKS: dict[str, tuple[CheckFn, type[Any]]] = {
    "evaluate": (evaluate.run, evaluate.EvaluateParams),
}


def register_check(name: str, run: CheckFn, params_cls: type[Any]) -> None:
    """Add (or replace) a check under ``name``."""
    CHECKS[name] = (run, params_cls)


__all__ = ["CHECKS", "evaluate", "register_check"]
