"""The ``raigate`` command: parse options, call one library function, print, map errors.

Only this module turns :class:`raigate.errors.RaigateError` into a one-line message and an
exit code: 0 all gates pass, 1 a gate failed, 2 usage or bad input, 3 internal error.
Set ``RAIGATE_DEBUG=1`` to see the traceback of an internal error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from raigate._version import __version__
from raigate.cli_common import (
    ClassNamesOpt,
    DataOpt,
    DeviceOpt,
    InputSizeOpt,
    JsonOpt,
    LabelMapOpt,
    LimitOpt,
    MeanOpt,
    ModelModeOpt,
    ModelOpt,
    OutputsOpt,
    PreprocessOpt,
    QuietOpt,
    RandomInitOpt,
    SampleOpt,
    SeedOpt,
    StdOpt,
    TaskOpt,
    TrustCodeOpt,
    WeightsOpt,
    add_exit_codes,
    format_table,
    handle_errors,
    load_model_from_options,
    make_params,
    parse_floats,
    parse_ints,
    parse_names,
    read_label_map,
    resolve_device,
)
from raigate.commands import register_commands
from raigate.errors import GateFailed

app = typer.Typer(
    name="raigate",
    help="Audit an image model for bias, robustness, privacy and explanation quality.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: option names are never cut at 80 columns
    add_completion=False,
)
models_app = typer.Typer(
    rich_markup_mode=None, help="Inspect model specs and write spec files.", no_args_is_help=True
)
data_app = typer.Typer(rich_markup_mode=None, help="Inspect data specs.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")


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


@models_app.command("spec")
@handle_errors
def models_spec(
    factory: Annotated[
        str,
        typer.Argument(help="the architecture as pkg.module:factory, e.g. raigate.zoo:resnet20"),
    ],
    out: Annotated[Path, typer.Option("--out", help="the spec file to write, e.g. model.json")],
    weights: WeightsOpt = None,
    class_names: ClassNamesOpt = None,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    preprocess: PreprocessOpt = None,
    kwargs: Annotated[
        str | None,
        typer.Option("--kwargs", help='factory keyword arguments as JSON, e.g. {"norm": "group"}'),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing --out")] = False,
) -> None:
    """Write a model spec JSON (architecture, weights pinned by sha256, classes, input
    shape, normalization, deployed preprocessing) that every command and audit plan takes
    as `--model model.json` / `spec = "model.json"`. The model is built and loaded from the
    written spec before it is kept, so a spec that would not load is never left behind."""
    import json
    import os

    from raigate.errors import ConfigError
    from raigate.models import load_model
    from raigate.models.loaders import write_model_spec
    from raigate.models.preprocess import parse_preprocess

    if ":" not in factory or factory.endswith(".json") or factory.split(":", 1)[0] in {
        "hf", "onnx", "pyfn", "timm",
    }:  # fmt: skip
        raise ConfigError(
            f"{factory}: give the architecture as pkg.module:factory; FILE.pt2, TorchScript, "
            "onnx: and hf: models are already complete specs for --model"
        )
    if out.exists() and not force:
        raise ConfigError(f"{out}: exists; pass --force to overwrite it, or another --out")
    try:
        extra = json.loads(kwargs) if kwargs else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f'--kwargs: not JSON ({exc.msg}); e.g. \'{{"norm": "group"}}\'') from None
    if not isinstance(extra, dict):
        raise ConfigError("--kwargs: give a JSON object of keyword arguments")
    names = parse_names(class_names)
    shape = parse_ints(input_size, "input-size")
    if not names or not shape:
        raise ConfigError("--class-names and --input-size are needed to write a spec")
    trial = out.with_name(f".{out.name}.check.json")  # beside --out: weights stay relative
    try:
        write_model_spec(
            trial, factory=factory, kwargs=extra, weights=weights, class_names=names,
            input_shape=shape, mean=parse_floats(mean, "mean"), std=parse_floats(std, "std"),
            preprocess=parse_preprocess(preprocess) if preprocess else None,
        )  # fmt: skip
        # you named the factory here: its code is yours, as for --model pkg.module:factory
        model = load_model(str(trial), trust_code=True, random_init=weights is None)
        os.replace(trial, out)
    finally:
        trial.unlink(missing_ok=True)
    info = model.describe()
    typer.echo(
        f"wrote {out}: {factory}, {len(info['class_names'])} classes, input "
        f"{'x'.join(map(str, info['input_shape']))}, "
        + (f"weights {info['digest'][:19]}…" if weights is not None else "no weights (random init)")
    )
    typer.echo(f'use it as --model {out} (or spec = "{out}" in an audit plan)')


@models_app.command("inspect")
@handle_errors
def models_inspect(
    spec: Annotated[
        str,
        typer.Argument(
            help="pkg.module:factory, FILE.pt, FILE.pt2, hf:DIR, onnx:FILE, pyfn:pkg.mod:fn "
            "or FILE.json"
        ),
    ],
    weights: WeightsOpt = None,
    class_names: ClassNamesOpt = None,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    as_json: JsonOpt = False,
    trust_code: TrustCodeOpt = False,
    preprocess: PreprocessOpt = None,
    outputs: OutputsOpt = None,
    model_mode: ModelModeOpt = None,
    random_init: RandomInitOpt = False,
) -> None:
    """Print class names, input shape, the deployed preprocessing pipeline, white-box or
    black-box mode, parameter count, capabilities and the weights digest."""
    model = load_model_from_options(
        spec, weights, class_names, input_size, mean, std,
        trust_code=trust_code, random_init=random_init,
        preprocess=preprocess, outputs=outputs, mode=model_mode,
    )  # fmt: skip
    info = model.describe()
    if as_json:
        from raigate.results import dumps

        typer.echo(dumps(info), nl=False)
        return
    caps = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in info["capabilities"].items())
    typer.echo(f"model        {model.display_name}  ({info['source']})")
    typer.echo(f"classes      {len(info['class_names'])}: {', '.join(info['class_names'])}")
    typer.echo(
        f"input shape  {'x'.join(map(str, info['input_shape']))} (C x H x W, pixels in [0,1])"
    )
    typer.echo(f"parameters   {info['num_parameters']:,}")
    typer.echo(f"pipeline     {info['pipeline']}")
    typer.echo(f"mode         {info['mode']}")
    typer.echo(f"capabilities {caps}")
    details = info.get("details") or {}
    if details.get("format") == "onnx":
        dims = ["batch" if d is None else d for d in details["input"]["shape"]]
        shape = f"[{', '.join(map(str, dims))}]"
        out = details["output"]
        how = "detected from random inputs" if out["detected"] else "declared"
        typer.echo(
            f"onnx         input {details['input']['name']} {shape} "
            f"({details['input']['layout'].upper()}), output {out['name']}: {out['kind']} ({how})"
        )
        typer.echo(f"runtime      onnxruntime {', '.join(details['providers'])}")
        conv = details.get("conversion") or {}
        if "max_abs_difference" in conv:
            typer.echo(
                f"conversion   torch vs onnxruntime: largest output difference "
                f"{conv['max_abs_difference']:.3g} (tolerance {conv['tolerance']:g})"
            )
        if details.get("black_box_reason"):
            typer.echo(f"black-box    {details['black_box_reason']}")
    elif details.get("format") == "pyfn":
        typer.echo(f"predictor    {details['predictor']}: {details['input']}")
        typer.echo(f"digest of    {details['digest_of']}")
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
    model_spec: ModelOpt,
    data_spec: DataOpt,
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
    label_map: LabelMapOpt = None,
    trust_code: TrustCodeOpt = False,
    preprocess: PreprocessOpt = None,
    outputs: OutputsOpt = None,
    model_mode: ModelModeOpt = None,
    random_init: RandomInitOpt = False,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Clean accuracy overall, per class and per attribute value, with the confusion matrix."""
    from raigate.audit import evaluate
    from raigate.data import load_data

    params = make_params(
        evaluate.EvaluateParams,
        batch_size=batch_size,
        workers=workers,
        min_accuracy=min_accuracy,
        label_map=read_label_map(label_map),
        device=resolve_device(device),
        seed=seed,
        progress=not quiet,
    )
    data = load_data(data_spec, task=task, limit=limit, sample=sample, seed=seed)
    model = load_model_from_options(
        model_spec, weights, class_names, input_size, mean, std, data=data,
        trust_code=trust_code, random_init=random_init,
        preprocess=preprocess, outputs=outputs, mode=model_mode,
    )  # fmt: skip
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
    typer.echo(format_table(m["per_class"], ["class", "n", "accuracy", "ci_low", "ci_high"]))
    if m["per_attribute"]:
        typer.echo("\nper attribute value:")
        typer.echo(
            format_table(
                m["per_attribute"], ["attribute", "value", "n", "accuracy", "ci_low", "ci_high"]
            )
        )
    for f in result.findings:
        typer.echo(f"\n[{f.severity.upper()}] {f.message}")


@app.command("demo")
@handle_errors
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="folder for the demo's outputs")] = Path(
        "demo-out"
    ),
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="private key to sign with, Ed25519 or EC P-256 (default: a throwaway Ed25519 "
            "pair)",
        ),
    ] = None,
    epochs: Annotated[
        int, typer.Option("--epochs", min=1, help="training epochs for the demo model")
    ] = 8,
    epsilon: Annotated[
        float,
        typer.Option("--epsilon", min=0.01, help="target epsilon of the DP-SGD variant"),
    ] = 2.0,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """The whole audit on built-in synthetic data, offline: train the demo model, a
    noise-trained variant for randomized smoothing, a Group DRO variant over race and a
    DP-SGD variant at --epsilon; audit all four in one plan (accuracy, fairness before and
    after, explanations, attacks vs the certified defense, measured membership leakage vs
    the claimed epsilon); sign and verify."""
    from raigate.commands.report import print_verdict
    from raigate.demo import run_demo

    run = run_demo(
        out,
        epochs=epochs,
        dp_epsilon=epsilon,
        seed=seed,
        key=key,
        device=resolve_device(device),
        progress=not quiet,
        echo=typer.echo,
    )
    m = run.result.metrics
    typer.echo(
        f"clean accuracy {m['accuracy']:.4f}  95% CI [{m['accuracy_ci_low']:.4f}, "
        f"{m['accuracy_ci_high']:.4f}]  n={m['n']} (SYNTHETIC data)"
    )
    typer.echo(
        f"demo finished in {run.seconds:.1f}s; model spec {run.model_spec}, variants "
        f"{run.smoothed_spec}, {run.fair_spec} and {run.private_spec}, plan {run.plan}"
    )
    if not run.outcome.passed:
        typer.echo(
            "the demo's verdict is not a pass: the audit finds what was planted in the "
            "synthetic data (see the gates below); `raigate audit` would exit 1 here"
        )
    print_verdict(run.outcome)  # last: the verdict table and where report.html is


register_commands(app)
add_exit_codes(app)  # last: every command is registered


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    app(args=list(argv) if argv is not None else None, prog_name="raigate")
