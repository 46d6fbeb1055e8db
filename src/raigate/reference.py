"""One reference of every check command's options and every audit-plan key, generated from
the code itself (the typer commands and the pydantic tables and ``Params`` classes), so the
command line and the plan cannot drift apart unnoticed.

An option ``--foo-bar`` of a check command is the plan key ``foo_bar`` of that check's table
(a key may also accept the option's spelling as an alias, e.g. robustness ``norm`` for
``norms``), or it is listed in :data:`CLI_ONLY` with the place it takes in a plan (``--model``
is ``[model] spec``). ``tests/test_reference.py`` fails when an option has neither, and when
``docs/reference.md`` differs from :func:`render`; regenerate it with::

    PYTHONPATH=src python -m raigate.reference          # writes docs/reference.md

>>> from raigate.reference import plan_key
>>> plan_key("robustness", "--norm"), plan_key("evaluate", "--mean")
('[checks.robustness] norm', '[model] mean')
"""

from __future__ import annotations

import sys
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel
from pydantic.fields import (
    FieldInfo,
    PydanticUndefined,  # pydantic_core is pydantic's, not ours to declare
)

from raigate import values

__all__ = [
    "CHECK_COMMANDS",
    "CLI_ONLY",
    "FORM_NOTES",
    "OUTPUT",
    "check_options",
    "main",
    "plan_key",
    "render",
]

OUTPUT = Path("docs/reference.md")
"""Where :func:`main` writes, relative to the repository root."""

CHECK_COMMANDS: dict[str, str] = {
    "evaluate": "evaluate",
    "robustness": "robustness",
    "fairness": "fairness",
    "explain": "explanations",
    "privacy audit": "privacy",
}
"""Each command that runs a registered check -> the check (its ``[checks.NAME]`` table)."""

CLI_ONLY: dict[str, str] = {
    "--model": "[model] spec",
    "--data": "[data] spec",
    "--weights": "[model] weights",
    "--class-names": "[model] class_names",
    "--input-size": "[model] input_size",
    "--mean": "[model] mean",
    "--std": "[model] std",
    "--preprocess": "[model] preprocess",
    "--outputs": "[model] outputs",
    "--mode": "[model] mode",
    "--random-init": "[model] random_init",
    "--trust-code": "top-level trust_code (or raigate audit --trust-code)",
    "--task": "[data] task",
    "--limit": "[data] limit",
    "--sample": "[data] sample",
    "--out": "raigate audit PLAN --out DIR (each check writes DIR/checks/NAME)",
    "--quiet": "raigate audit --quiet (a check table's progress = false)",
}
"""Options a check table has no key for, because the plan says it once for every check (the
model, the data) or ``raigate audit`` takes it: where each goes in a plan."""

FORM_NOTES: dict[str, str] = {
    "--label-map": "plan: the same JSON file's path, or a table of model class -> data label",
    "--thresholds": "plan: the same file's path, or a [checks.fairness.thresholds] table",
    "--attack-params": "plan: the same JSON text, or a table",
    "--smoothing-model": "CLI: a model spec; plan: the name of a [models.NAME] table",
    "--min-robust-accuracy": "repeat the option; plan: one string, or a list of strings or tables",
    "--min-certified-accuracy": "repeat the option; plan: one string, or a list of strings or "
    "tables",
}
"""Options whose plan key takes more or other forms than the command line's text (a file the
command line names may also be written into the plan as a table)."""


def _command(path: str) -> Any:
    """The click command of ``raigate PATH`` (``"privacy audit"``), built from the typer app."""
    import typer

    from raigate.cli import app

    cmd = typer.main.get_command(app)
    for part in path.split():
        cmd = cmd.commands[part]  # type: ignore[attr-defined]
    return cmd


def check_options(path: str) -> list[Any]:
    """The visible options of a command, in ``--help`` order."""
    return [
        p
        for p in _command(path).params
        if getattr(p, "param_type_name", "") == "option" and not getattr(p, "hidden", False)
    ]


def _long(opt: Any) -> str:
    return next(o for o in opt.opts if o.startswith("--"))


def _keys(field_name: str, field: FieldInfo) -> list[str]:
    """A field's name and every alias a plan may spell it with."""
    alias = field.validation_alias
    names = [field_name]
    if isinstance(alias, AliasChoices):
        names += [c for c in alias.choices if isinstance(c, str)]
    elif isinstance(alias, str):
        names.append(alias)
    return list(dict.fromkeys(names))


def _params_cls(check: str) -> type[BaseModel]:
    from raigate.audit import CHECKS

    return CHECKS[check][1]


def _field_of(check: str, option: str) -> tuple[str, str] | None:
    """``(field, key)`` of the check's params that ``--option`` sets, ``key`` being the
    spelling equal to the option's name (an alias, where the field is named otherwise)."""
    key = option.removeprefix("--").replace("-", "_")
    for name, field in _params_cls(check).model_fields.items():
        if key in _keys(name, field):
            return name, key
    return None


def plan_key(command: str, option: str) -> str | None:
    """Where ``raigate COMMAND OPTION`` goes in an audit plan, or None when nowhere (which
    the parity test refuses)."""
    check = CHECK_COMMANDS[command]
    found = _field_of(check, option)
    if found is not None:
        return f"[checks.{check}] {found[1]}"
    return CLI_ONLY.get(option)


# -- rendering ------------------------------------------------------------------------------

# the parser values.Fraction carries: every Fraction field holds this very object
_FRACTION = typing.get_args(values.Fraction)[1]


def _forms(tp: Any, meta: Sequence[Any] = ()) -> str:
    """What a plan may write for a value of type ``tp`` (with pydantic metadata ``meta``)."""
    listed = any(m is values.Listed for m in meta)
    if typing.get_origin(tp) is typing.Annotated:
        inner, *more = typing.get_args(tp)
        return _forms(inner, [*meta, *more])
    if any(m is _FRACTION for m in meta):
        return 'number or fraction ("8/255")'
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [_forms(a) for a in typing.get_args(tp) if a is not type(None)]
        out = " or ".join(parts)
    elif origin is typing.Literal:
        out = "one of " + ", ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in tp.__args__)
    elif origin is list:
        (item,) = typing.get_args(tp)
        out = f"list of {_forms(item)}"
        if listed:
            out += ', or one comma string ("a,b")'
    elif origin is dict or tp is dict:
        out = "table"
    elif isinstance(tp, type) and issubclass(tp, BaseModel):
        out = "table or text (as on the CLI)" if hasattr(tp, "from_text") else "table"
    else:
        out = {bool: "true/false", int: "integer", float: "number", str: "text"}.get(tp, "any")
    return out


def _value(v: Any) -> str:
    """A default as a plan would write it."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, BaseModel):
        return "(table)"
    return str(v)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return _value(field.default_factory())  # type: ignore[call-arg]
    if field.default is PydanticUndefined:
        return "required"
    return _value(field.default)


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Iterator[str]:
    yield _row(header)
    yield "|" + "|".join("---" for _ in header) + "|"
    yield from (_row(r) for r in rows)
    yield ""


def _option_name(opt: Any) -> str:
    secondary = [o for o in getattr(opt, "secondary_opts", []) if o.startswith("--")]
    return "/".join([_long(opt), *secondary])


def _command_section(command: str) -> Iterator[str]:
    yield f"### `raigate {command}`"
    yield ""
    rows = []
    for opt in check_options(command):
        name = _long(opt)
        key = plan_key(command, name) or "**none**"
        note = FORM_NOTES.get(name)
        default = "required" if opt.required else _value(opt.default)
        help_text = (opt.help or "") + (f" ({note})" if note else "")
        rows.append([f"`{_option_name(opt)}`", key, default, help_text])
    yield from _table(["option", "plan key", "CLI default", "help"], rows)


def _model_section(
    title: str, cls: type[BaseModel], options: dict[str, str], skip: Sequence[str] = ()
) -> Iterator[str]:
    yield title
    yield ""
    rows = []
    for name, field in cls.model_fields.items():
        if name in skip:
            continue
        keys = " or ".join(f"`{k}`" for k in _keys(name, field))
        forms = _forms(field.annotation, field.metadata)
        kind = getattr(cls, "PLAN_PATH_FIELDS", {}).get(name)
        if kind == "data":
            forms = "data spec (paths relative to the plan)"
        elif kind == "path":
            forms = (
                "path (relative to the plan)"
                if forms == "text"
                else f"{forms}, or the path of a file holding it (relative to the plan)"
            )
        option = options.get(name, "")
        rows.append([keys, forms, _default(field), option, field.description or ""])
    yield from _table(["key", "accepted forms", "default", "CLI option", "meaning"], rows)


def _check_options_by_field(check: str) -> dict[str, str]:
    """Params field -> the options of the check's command that set it."""
    out: dict[str, list[str]] = {}
    for command, c in CHECK_COMMANDS.items():
        if c != check:
            continue
        for opt in check_options(command):
            found = _field_of(check, _long(opt))
            if found is not None:
                out.setdefault(found[0], []).append(f"`{_option_name(opt)}`")
    out.setdefault("progress", []).append("`--quiet` (inverted)")
    return {k: ", ".join(v) for k, v in out.items()}


def _section_options(prefix: str) -> dict[str, str]:
    """``[model]``/``[data]`` key -> its CLI option, from :data:`CLI_ONLY`."""
    out = {}
    for option, where in CLI_ONLY.items():
        if where.startswith(prefix + " "):
            out[where.removeprefix(prefix + " ")] = f"`{option}`"
    return out


_INTRO = """\
# Reference: check command options and audit-plan keys

Generated from the code by `PYTHONPATH=src python -m raigate.reference` (which rewrites this
file); `tests/test_reference.py` fails when it is stale and when a check command gains an
option without a plan key. Every option `--foo-bar` of a check command is the key `foo_bar`
of that check's `[checks.NAME]` table, with the same accepted forms: numbers take fractions
(`eps = "8/255"`), and a list takes a TOML array or the command line's comma string
(`eps = "1/255,2/255"` is `--eps 1/255,2/255`). Where the table's key is named otherwise, it
accepts the option's spelling too (robustness `norm` for `norms`, `radii` for
`certify_radii`; explanations `max_sanity_spearman` for `sanity_max_spearman`). Options for
the model, the data and the run go where the plan says them once for every check (the
"plan key" column). Paths in a plan are relative to the plan file; a file an option takes
(`--label-map`, `--thresholds`) is the same path in a plan, or its content as a table.
Commands that run no check (`privacy train`, `harden ...`, `models`, `data`) are documented
by their `--help`.
"""


def render() -> str:
    """The whole reference as Markdown; deterministic, so the checked-in copy can be
    compared byte for byte."""
    from raigate.audit import CHECKS
    from raigate.config import AuditPlan, CardSection, DataSection, ModelSection

    lines = [_INTRO, "## Check commands and their plan keys", ""]
    for command in CHECK_COMMANDS:
        lines += _command_section(command)
    lines += ["## Audit plan keys", ""]
    lines += _model_section(
        "### Top level",
        AuditPlan,
        {"trust_code": "`--trust-code`", "fail_on": "`raigate audit --fail-on`"},
        skip=("model", "models", "data", "checks", "card", "source"),
    )
    lines += _model_section("### `[model]` and `[models.NAME]`", ModelSection,
                            _section_options("[model]"))  # fmt: skip
    lines += _model_section("### `[data]`", DataSection, _section_options("[data]"))
    lines += _model_section("### `[card]`", CardSection, {})
    lines += [
        'A `[checks.NAME]` table runs the check NAME, or the one its `check = "..."` key '
        'names, on `[model]` or on the `[models.NAME]` its `model = "NAME"` key names; its '
        "other keys are the check's parameters below. `seed` defaults to the plan's.",
        "",
    ]
    for check, (_, cls) in CHECKS.items():
        lines += _model_section(f"### `[checks.{check}]`", cls, _check_options_by_field(check))
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m raigate.reference [PATH]``: write the reference (default
    ``docs/reference.md``) atomically."""
    from raigate._io import write_atomic

    args = list(sys.argv[1:] if argv is None else argv)
    target = Path(args[0]) if args else OUTPUT
    write_atomic(target, render())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
