"""Commands of the audit areas, one module each, added to the CLI by an explicit list.

Each module exposes ``register(app: typer.Typer) -> None`` and keeps heavy imports inside
its command functions so ``raigate --help`` stays fast. Shared option types, parsing and
the error-to-exit-code mapping live in :mod:`raigate.cli_common`.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

from raigate.commands import explain, fairness, privacy, report, robustness

REGISTRARS: list[Callable[[typer.Typer], None]] = [
    report.register,
    robustness.register,
    fairness.register,
    explain.register,
    privacy.register,
]


def register_commands(app: typer.Typer) -> None:
    """Add every area's commands to ``app``."""
    for register in REGISTRARS:
        register(app)
