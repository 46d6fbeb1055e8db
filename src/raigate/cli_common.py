"""What every ``raigate`` command shares: error mapping, option parsing, common options.

Command modules (``raigate.cli`` and ``raigate.commands.*``) import from here so each
command stays a thin parse-call-print function.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from raigate.errors import ConfigError, GateFailed, RaigateError
from raigate.values import parse_fraction

F = TypeVar("F", bound=Callable[..., Any])


def echo_error(message: str) -> None:
    typer.echo(f"raigate: error: {message}", err=True)


def echo_warning(message: str) -> None:
    typer.echo(f"raigate: warning: {message}", err=True)


@contextlib.contextmanager
def print_warnings() -> Iterator[None]:
    """Show every :class:`raigate.sanity.RaigateWarning` issued inside as one
    ``raigate: warning: ...`` line on stderr, each distinct message once per command (a model
    loaded twice warns once); other Python warnings keep their usual handling."""
    from raigate.sanity import RaigateWarning

    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("always", RaigateWarning)
        shown = warnings.showwarning

        def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
            if not issubclass(category, RaigateWarning):
                shown(message, category, *args, **kwargs)
            elif str(message) not in seen:
                seen.add(str(message))
                echo_warning(str(message))

        warnings.showwarning = show
        yield


def handle_errors(fn: F) -> F:
    """Map the exception tree to exit codes with a one-line message, never a traceback for
    user mistakes, and print raigate's warnings as one line each (:func:`print_warnings`).
    Works under ``typer.testing.CliRunner`` too (it raises ``typer.Exit``). A command's
    ``--quiet`` (:data:`QuietOpt`) silences every progress bar inside, for this call only. Under
    ``raigate audit --nproc`` each worker also reports its exit code and message to the
    launcher (:func:`report_to_launcher`), and only rank 0 prints errors itself."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from raigate import progress

        try:
            with print_warnings(), progress.quieted(bool(kwargs.get("quiet"))):
                value = fn(*args, **kwargs)
        except typer.Exit as exc:
            report_to_launcher(int(exc.exit_code or 0), "")
            raise
        except typer.Abort:
            raise
        except GateFailed as exc:
            _fail(exc.exit_code, str(exc))
        except RaigateError as exc:
            _fail(exc.exit_code, one_line(exc))
        except BrokenPipeError:
            # the reader (e.g. `| head`) went away: no error message, shell-style exit code
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
            raise typer.Exit(141) from None
        except KeyboardInterrupt:
            _fail(130, "interrupted; nothing was written for the unfinished step")
        except Exception as exc:
            if os.environ.get("RAIGATE_DEBUG"):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            _fail(
                3,
                f"internal error: {type(exc).__name__}: {first}"
                " (a bug in raigate: rerun with RAIGATE_DEBUG=1 and report the traceback)",
            )
        report_to_launcher(0, "")
        return value

    return wrapper  # type: ignore[return-value]


LAUNCH_STATUS = "RAIGATE_LAUNCH_STATUS"
"""Set by ``raigate audit --nproc``: the folder where each worker leaves its exit status."""


def report_to_launcher(code: int, message: str) -> None:
    """Under ``--nproc``: leave this rank's exit code and message for the launcher, which
    prints the first failing rank's message once and exits with its code (torchrun itself
    only knows that some worker failed)."""
    folder = os.environ.get(LAUNCH_STATUS)
    if not folder:
        return
    rank = os.environ.get("RANK", "0")
    with contextlib.suppress(OSError):
        Path(folder, f"rank{rank}.json").write_text(json.dumps({"code": code, "message": message}))


def _fail(code: int, message: str) -> NoReturn:
    """Print ``message`` (rank 0 only under ``--nproc``; the launcher prints another rank's)
    and exit with ``code``."""
    if not os.environ.get(LAUNCH_STATUS) or os.environ.get("RANK", "0") == "0":
        echo_error(message)
    report_to_launcher(code, message)
    raise typer.Exit(code) from None


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error. A DataLoader worker re-raises our error with its
    traceback in the message ("Caught DataError in DataLoader worker process 0. Original
    Traceback ..."); the original message is the last line, after the class name."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("Caught ") and "Original Traceback" in str(exc):
        last = lines[-1]
        prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
        return last[len(prefix) :] if last.startswith(prefix) else last
    return lines[0]


def harden_group(app: typer.Typer) -> typer.Typer:
    """The ``raigate harden`` sub-app that every area's defense adds its command to (made by
    the first caller, found by the next)."""
    for group in app.registered_groups:
        if group.name == "harden" and group.typer_instance is not None:
            return group.typer_instance
    harden = typer.Typer(
        rich_markup_mode=None,
        help="Retrain or post-process a model with a defense and save it as a model spec.",
        no_args_is_help=True,
    )
    app.add_typer(harden, name="harden")
    return harden


# -- option parsing -----------------------------------------------------------------------
def parse_floats(text: str | None, name: str) -> tuple[float, ...] | None:
    """Comma-separated numbers or fractions (``1/255,2/255``); anything else, a division by
    zero or a non-finite value is a ConfigError naming the flag."""
    if text is None:
        return None
    try:
        return tuple(parse_fraction(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise ConfigError(
            f"--{name}: {exc}; give comma-separated numbers or fractions, e.g. 0.5 or 8/255"
        ) from None


def make_params(cls: type[Any], flags: dict[str, str] | None = None, **values: Any) -> Any:
    """``cls(**values)`` for a pydantic params class; a validation error becomes a one-line
    ConfigError naming the flag the user typed (``flags`` maps field -> flag where the flag
    is not ``--field-name``), so a bad value exits 2, never 3."""
    from pydantic import ValidationError

    try:
        return cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(x) for x in err["loc"]]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not loc:
            raise ConfigError(msg) from None
        flag = (flags or {}).get(loc[0], "--" + loc[0].replace("_", "-"))
        got = err.get("input")
        shown = f" (got {got!r})" if "input" in err and not isinstance(got, dict | list) else ""
        raise ConfigError(f"{flag}: {msg}{shown}") from None


def parse_ints(text: str | None, name: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(
            f"--{name} must be comma-separated integers like 3,32,32, got {text!r}"
        ) from None


def parse_names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    return names or None


def resolve_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for but no CUDA device is available; use --device cpu"
        )
    return choice


def read_label_map(path: Path | None) -> dict[str, str] | None:
    if path is None:
        return None
    from raigate.labels import read_label_map_file

    try:
        return read_label_map_file(path)
    except ValueError as exc:
        raise ConfigError(f"--label-map {exc}") from None


def format_table(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return "-" if v is None else str(v)

    rows = [[fmt(r.get(c)) for c in columns] for r in records]
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


# -- shared options -------------------------------------------------------------------------
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights", help="weights for a pkg.module:factory spec (.safetensors or .pt state dict)"
    ),
]
ClassNamesOpt = Annotated[
    str | None,
    typer.Option("--class-names", help="comma-separated class names in the model's output order"),
]
InputSizeOpt = Annotated[
    str | None, typer.Option("--input-size", help="C,H,W the model takes, e.g. 3,32,32")
]
MeanOpt = Annotated[
    str | None,
    typer.Option("--mean", help="per-channel normalization mean, e.g. 0.485,0.456,0.406"),
]
StdOpt = Annotated[
    str | None, typer.Option("--std", help="per-channel normalization std, e.g. 0.229,0.224,0.225")
]
TaskOpt = Annotated[
    str | None,
    typer.Option(
        "--task",
        help="which label to predict: FairFace gender|age|race (default gender), "
        "CIFAR-100 fine|coarse",
    ),
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="use only the first N samples")]
SampleOpt = Annotated[
    int | None, typer.Option("--sample", help="use a seeded random N samples, stratified by label")
]
SeedOpt = Annotated[
    int,
    typer.Option("--seed", min=0, help="seed for --sample and every random step (0 or more)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of text")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N]")]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        help="no progress on stderr (else a bar on a terminal, plain lines every 10 s "
        "elsewhere, for steps over 2 s); also RAIGATE_QUIET=1",
    ),
]
ModelOpt = Annotated[
    str, typer.Option("--model", help="model spec (see `raigate models inspect --help`)")
]
DataOpt = Annotated[
    str, typer.Option("--data", help="data spec (see `raigate data inspect --help`)")
]
LabelMapOpt = Annotated[
    Path | None,
    typer.Option("--label-map", help="JSON file mapping model class names to data label names"),
]
TrustCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-code",
        help="let a model spec file (or plan) import the Python factory it names even when it "
        "is not one of raigate's own; only for files you trust, like transformers' "
        "trust_remote_code (a --model pkg.module:factory you type yourself needs no flag)",
    ),
]
RandomInitOpt = Annotated[
    bool,
    typer.Option(
        "--random-init",
        help="allow a factory without weights: audit a randomly initialised (untrained) "
        "network on purpose; every output then marks the model (RANDOM INIT)",
    ),
]


PreprocessOpt = Annotated[
    str | None,
    typer.Option(
        "--preprocess",
        # no long unbreakable tokens: help text cannot wrap them, and at 80 columns they
        # squeeze the option-name column until names are cut off
        help="the deployed preprocessing as key=value pairs joined by commas. Keys: resize "
        "(H,W or N), resize_mode (exact or shorter), interpolation (nearest, bilinear, "
        "bicubic or area), crop (H,W or N), channel_order (rgb or bgr), value_scale (1 or "
        "255), layout (nchw or nhwc). Example: resize=256,crop=224 (mean and std keep their "
        "own options)",
    ),
]
OutputsOpt = Annotated[
    str | None,
    typer.Option(
        "--outputs",
        help="onnx:/pyfn: models: the model outputs logits or probs (default: detected)",
    ),
]
ModelModeOpt = Annotated[
    str | None,
    typer.Option(
        "--mode",
        help="onnx: models: auto (white-box when the torch conversion matches onnxruntime, "
        "else black-box), white-box (or exit 2) or black-box (queries only)",
    ),
]


def load_model_from_options(
    spec: str,
    weights: Path | None,
    class_names: str | None,
    input_size: str | None,
    mean: str | None,
    std: str | None,
    data: Any = None,
    *,
    trust_code: bool = False,
    random_init: bool = False,
    preprocess: str | None = None,
    outputs: str | None = None,
    mode: str | None = None,
) -> Any:
    """``load_model`` from the shared options; a random-init model is announced on stderr
    before any number is printed, whatever the command prints afterwards, and so is how an
    ONNX model will be audited (white-box after a checked conversion, or black-box)."""
    from raigate.models import load_model

    model = load_model(
        spec,
        weights=weights,
        class_names=parse_names(class_names),
        input_size=parse_ints(input_size, "input-size"),
        mean=parse_floats(mean, "mean"),
        std=parse_floats(std, "std"),
        data=data,
        trust_code=trust_code,
        random_init=random_init,
        preprocess=preprocess,
        outputs=outputs,
        mode=mode,
    )
    from raigate.models.onnx import access_line

    line = access_line(model)
    if line:
        typer.echo(f"raigate: {line}", err=True)
    if model.random_init:
        typer.echo(
            f"raigate: warning: model {model.display_name}: no weights, a randomly initialised "
            "network (--random-init); its results describe no trained model",
            err=True,
        )
    return model


# -- exit codes in every command's help -----------------------------------------------------
EXIT_ONE: dict[str, str | None] = {
    "evaluate": "a gate failed (--min-accuracy)",
    "demo": None,  # the demo prints its audit's verdict; it does not gate
    "audit": "a gate reached --fail-on",
    "verify": "the bundle does not verify (the first failing file is named)",
    "robustness": "a gate failed (--min-robust-accuracy, --min-certified-accuracy)",
    "fairness": "a gate failed",
    "explain": "a method's maps do not depend on the model's weights (sanity check)",
    "models spec": None,
    "models inspect": None,
    "data inspect": None,
    "keys generate": None,
    "harden smoothing": None,
    "harden fairness": None,
    "privacy train": "a finding failed (the [FAIL] lines say which)",
    "privacy audit": "a gate failed (measured leakage above the claim)",
    "privacy check-sampler": "the accountant would not cover the sampler",
}
"""What exit 1 means per command (None: never exits 1). Every command must be listed
(tests/test_cli_help.py), so its help always says how it exits."""


def exit_codes_text(path: str) -> str:
    """The sentence every command's help ends with."""
    one = EXIT_ONE[path]
    codes = ["0 done" if one is None else "0 every gate passed", *([f"1 {one}"] if one else [])]
    return "Exit codes: " + ", ".join([*codes, "2 bad input", "3 internal error"]) + "."


def add_exit_codes(app: typer.Typer, prefix: str = "") -> None:
    """Append :func:`exit_codes_text` to the help of every command of ``app`` (and of its
    groups): one table, so no command's help lacks it or words it differently."""
    import inspect

    for info in app.registered_commands:
        path = f"{prefix}{info.name}"
        doc = info.help or inspect.getdoc(info.callback) or ""
        info.help = f"{doc.rstrip()}\n\n{exit_codes_text(path)}"
    for group in app.registered_groups:
        add_exit_codes(group.typer_instance, f"{prefix}{group.name} ")
