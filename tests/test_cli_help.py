"""Every command's help at 80 columns: no option name cut off, and the exit codes said the
same way (#16). Run as a subprocess with COLUMNS=80, as a user's terminal would be."""

from __future__ import annotations

import os
import subprocess
import sys

import typer

from raigate.cli import app
from raigate.cli_common import EXIT_ONE, exit_codes_text


def commands() -> list[tuple[str, object]]:
    out = []

    def walk(cmd: object, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            out.append((" ".join(path), cmd))

    walk(typer.main.get_command(app), [])
    return out


def test_every_command_is_in_the_exit_code_table() -> None:
    assert sorted(p for p, _ in commands()) == sorted(EXIT_ONE)


def test_help_at_80_columns_names_every_option_and_the_exit_codes() -> None:
    # one interpreter for all commands: the help of each, separated by a marker
    script = (
        "import sys\nfrom typer.testing import CliRunner\nfrom raigate.cli import app\n"
        "for path in sys.argv[1:]:\n"
        "    res = CliRunner().invoke(app, [*path.split(), '--help'], terminal_width=80)\n"
        "    print('=====', path); print(res.output)\n"
    )
    paths = [p for p, _ in commands()]
    env = {**os.environ, "COLUMNS": "80"}
    res = subprocess.run(
        [sys.executable, "-c", script, *paths], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    helps = dict(
        (chunk.split("\n", 1)[0].strip(), chunk.split("\n", 1)[1])
        for chunk in res.stdout.split("===== ")[1:]
    )
    for path, cmd in commands():
        text = helps[path]
        assert max(len(line) for line in text.splitlines()) <= 80, path
        for param in cmd.params:  # type: ignore[attr-defined]
            if getattr(param, "hidden", False):
                continue
            for opt in param.opts:
                if opt.startswith("--"):
                    assert f"{opt} " in text or f"{opt}\n" in text or f"{opt}," in text, (
                        path, opt,
                    )  # fmt: skip
        flat = " ".join(text.split())
        assert exit_codes_text(path) in flat, path
        assert "…" not in text, path  # nothing truncated
