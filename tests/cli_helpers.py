"""What the CLI tests share: run a command in-process, and check a user error's shape.

Importable from any test module (``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

from typer.testing import CliRunner

from raigate.cli import app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    """``raigate ARGS`` in-process: (exit code, stdout and stderr); exceptions propagate."""
    res = runner.invoke(app, list(args), catch_exceptions=False)
    return res.exit_code, res.output


def assert_user_error(code: int, out: str, *needles: str) -> None:
    """Exit 2 with exactly one ``raigate: error:`` line, holding every needle, no traceback."""
    assert code == 2, out
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if ln.startswith("raigate: error:")]
    assert len(lines) == 1, out
    for needle in needles:
        assert needle in lines[0], lines[0]
