"""The ``raigate`` command: parse options, call one library function, print, map errors.

Only this module turns :class:`raigate.errors.RaigateError` into a one-line message and an
exit code: 0 all gates pass, 1 a gate failed, 2 usage or bad input, 3 internal error.
Set ``RAIGATE_DEBUG=1`` to see the traceback of an internal error.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from raigate._version import __version__
from raigate.errors import ConfigError, GateFailed, RaigateError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="raigate",
    help="Audit an image model for bias, robustness, privacy and explanation quality.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="Inspect model specs.", no_args_is_help=True)
data_app = typer.Typer(help="Inspect data specs.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")


def _err(message: str) -> None:
    typer.echo(f"raigate: error: {message}", err=True)


def handle_errors(fn: F) -> F:
    """Map the exception tree to exit codes with a one-line message, never a traceback for
    user mistakes. Works under ``typer.testing.CliRunner`` too (it raises ``typer.Exit``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except GateFailed as exc:
            _err(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except RaigateError as exc:
            _err(_one_line(exc))
            raise typer.Exit(exc.exit_code) from None
        except BrokenPipeError:
            # the reader (e.g. `| head`) went away: no error message, shell-style exit code
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
            raise typer.Exit(141) from None
        except KeyboardInterrupt:
            _err("interrupted; nothing was written for the unfinished step")
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get("RAIGATE_DEBUG"):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            _err(
                f"internal error: {type(exc).__name__}: {first}"
                " (a bug in raigate: rerun with RAIGATE_DEBUG=1 and report the traceback)"
            )
            raise typer.Exit(3) from None

    return wrapper  # type: ignore[return-value]


def _one_line(exc: BaseException) -> str:
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


# -- option parsing -----------------------------------------------------------------------
def _floats(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(_fraction(v)) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--{name} must be comma-separated numbers, got {text!r}") from None


def _fraction(v: str) -> float:
    v = v.strip()
    if "/" in v:
        a, b = v.split("/", 1)
        return float(a) / float(b)
    return float(v)


def _ints(text: str | None, name: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(
            f"--{name} must be comma-separated integers like 3,32,32, got {text!r}"
        ) from None


def _names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    return names or None


def _device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for but no CUDA device is available; use --device cpu"
        )
    return choice


def _label_map(path: Path | None) -> dict[str, str] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: --label-map file not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: --label-map is not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"{path}: --label-map must be a JSON object of model class -> data label")
    return {str(k): v for k, v in data.items()}


def _table(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
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
SeedOpt = Annotated[int, typer.Option("--seed", help="seed for --sample and every random step")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of text")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N]")]


def _load_model(
    spec: str,
    weights: Path | None,
    class_names: str | None,
    input_size: str | None,
    mean: str | None,
    std: str | None,
    data: Any = None,
) -> Any:
    from raigate.models import load_model

    return load_model(
        spec,
        weights=weights,
        class_names=_names(class_names),
        input_size=_ints(input_size, "input-size"),
        mean=_floats(mean, "mean"),
        std=_floats(std, "std"),
        data=data,
    )


# -- commands ---------------------------------------------------------------------------------
def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"raigate {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="print the version and exit",
        ),
    ] = False,
) -> None:
    """raigate: audit an image model for bias, robustness, privacy and explanation quality,
    and seal the results into one signed report."""


@models_app.command("inspect")
@handle_errors
def models_inspect(
    spec: Annotated[
        str, typer.Argument(help="pkg.module:factory, FILE.pt, FILE.pt2, hf:DIR or FILE.json")
    ],
    weights: WeightsOpt = None,
    class_names: ClassNamesOpt = None,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print class names, input shape, parameter count, capabilities and the weights digest."""
    model = _load_model(spec, weights, class_names, input_size, mean, std)
    info = model.describe()
    if as_json:
        from raigate.results import dumps

        typer.echo(dumps(info), nl=False)
        return
    caps = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in info["capabilities"].items())
    typer.echo(f"model        {info['spec']}  ({info['source']})")
    typer.echo(f"classes      {len(info['class_names'])}: {', '.join(info['class_names'])}")
    typer.echo(
        f"input shape  {'x'.join(map(str, info['input_shape']))} (C x H x W, pixels in [0,1])"
    )
    typer.echo(f"parameters   {info['num_parameters']:,}")
    typer.echo(f"normalize    mean={info['mean']} std={info['std']}")
    typer.echo(f"capabilities {caps}")
    typer.echo(f"digest       {info['digest']}  (sha256 over the weight tensors)")
    for f in info["files"]:
        typer.echo(f"file         {f['path']}  sha256:{f['sha256']}  {f['bytes']:,} bytes")


@data_app.command("inspect")
@handle_errors
def data_inspect(
    spec: Annotated[
        str,
        typer.Argument(
            help="fairface:ROOT[:val], cifar100:ROOT[:test], folder:ROOT, csv:FILE or demo"
        ),
    ],
    task: TaskOpt = None,
    limit: LimitOpt = None,
    sample: SampleOpt = None,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Print sample counts overall, per label and per attribute value, and the manifest digest."""
    from raigate.data import load_data

    data = load_data(spec, task=task, limit=limit, sample=sample, seed=seed)
    info = data.describe()
    if as_json:
        from raigate.results import dumps

        typer.echo(dumps(info), nl=False)
        return
    typer.echo(f"data      {info['spec']}{'  (SYNTHETIC)' if info['synthetic'] else ''}")
    typer.echo(f"task      {info['task']}  ({len(info['class_names'])} classes)")
    typer.echo(f"samples   {info['n']:,}")
    if info["shape"]:
        typer.echo(
            f"shape     {'x'.join(map(str, info['shape']))} "
            "(first image; resized to the model's input size when audited)"
        )
    typer.echo(f"manifest  {info['manifest_digest']}  ({info['manifest_files']} files)")
    for column, counts in info["counts"].items():
        typer.echo(f"\nby {column}:")
        width = max(len(k) for k in counts) if counts else 0
        for key, n in counts.items():
            typer.echo(f"  {key.ljust(width)}  {n:>7,}  {n / max(info['n'], 1):6.1%}")


@app.command("evaluate")
@handle_errors
def evaluate_cmd(
    model_spec: Annotated[
        str, typer.Option("--model", help="model spec (see `raigate models inspect --help`)")
    ],
    data_spec: Annotated[
        str, typer.Option("--data", help="data spec (see `raigate data inspect --help`)")
    ],
    out: Annotated[Path, typer.Option("--out", help="folder for result.json and predictions.csv")],
    weights: WeightsOpt = None,
    class_names: ClassNamesOpt = None,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    task: TaskOpt = None,
    limit: LimitOpt = None,
    sample: SampleOpt = None,
    seed: SeedOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="images per forward pass")] = 128,
    workers: Annotated[
        int, typer.Option("--workers", min=0, help="DataLoader worker processes reading images")
    ] = 0,
    min_accuracy: Annotated[
        float | None,
        typer.Option("--min-accuracy", help="gate: exit 1 when clean accuracy is below this"),
    ] = None,
    label_map: Annotated[
        Path | None,
        typer.Option("--label-map", help="JSON file mapping model class names to data label names"),
    ] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Clean accuracy overall, per class and per attribute value, with the confusion matrix."""
    from raigate.audit import evaluate
    from raigate.data import load_data

    data = load_data(data_spec, task=task, limit=limit, sample=sample, seed=seed)
    model = _load_model(model_spec, weights, class_names, input_size, mean, std, data=data)
    params = evaluate.EvaluateParams(
        batch_size=batch_size,
        workers=workers,
        min_accuracy=min_accuracy,
        label_map=_label_map(label_map),
        device=_device(device),
        seed=seed,
        progress=sys.stderr.isatty(),
    )
    result = evaluate.run(model, data, params, out_dir=out)
    path = result.write(out)
    _print_evaluation(result)
    typer.echo(f"\nwrote {path}")
    if result.verdict == "fail":
        raise GateFailed("; ".join(f.message for f in result.findings if f.severity == "fail"))


def _print_evaluation(result: Any) -> None:
    m = result.metrics
    synthetic = " (SYNTHETIC data)" if result.data.synthetic else ""
    typer.echo(
        f"accuracy {m['accuracy']:.4f}  95% CI [{m['accuracy_ci_low']:.4f}, "
        f"{m['accuracy_ci_high']:.4f}]  n={m['n']}{synthetic}"
    )
    typer.echo("\nper class:")
    typer.echo(_table(m["per_class"], ["class", "n", "accuracy", "ci_low", "ci_high"]))
    if m["per_attribute"]:
        typer.echo("\nper attribute value:")
        typer.echo(
            _table(m["per_attribute"], ["attribute", "value", "n", "accuracy", "ci_low", "ci_high"])
        )
    for f in result.findings:
        typer.echo(f"\n[{f.severity.upper()}] {f.message}")


@app.command("demo")
@handle_errors
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="folder for the demo's outputs")] = Path(
        "demo-out"
    ),
    epochs: Annotated[
        int, typer.Option("--epochs", min=1, help="training epochs for the demo model")
    ] = 8,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train the built-in demo model on built-in synthetic data and audit it, offline."""
    from raigate.demo import run_demo

    run = run_demo(
        out,
        epochs=epochs,
        seed=seed,
        device=_device(device),
        progress=sys.stderr.isatty(),
        echo=typer.echo,
    )
    _print_evaluation(run.result)
    typer.echo(
        f"\ndemo finished in {run.seconds:.1f}s; wrote {run.result_path} "
        f"and the model spec {run.model_spec}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    app(args=list(argv) if argv is not None else None, prog_name="raigate")
