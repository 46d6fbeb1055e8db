"""``raigate fairness``: the bias audit of one model on one dataset, group by group.

Thin: parse the options, call :func:`raigate.audit.fairness.run`, print a short table,
write ``DIR/result.json``, exit 1 when a gate fails (see ``docs/fairness.md``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from raigate.cli_common import (
    ClassNamesOpt,
    DeviceOpt,
    InputSizeOpt,
    LabelMapOpt,
    LimitOpt,
    MeanOpt,
    ModelModeOpt,
    OutputsOpt,
    PreprocessOpt,
    RandomInitOpt,
    SampleOpt,
    SeedOpt,
    StdOpt,
    TaskOpt,
    TrustCodeOpt,
    WeightsOpt,
    format_table,
    handle_errors,
    load_model_from_options,
    parse_names,
    read_label_map,
    resolve_device,
)
from raigate.errors import GateFailed


@handle_errors
def fairness_cmd(
    model_spec: Annotated[
        str, typer.Option("--model", help="model spec (see `raigate models inspect --help`)")
    ],
    data_spec: Annotated[
        str, typer.Option("--data", help="data spec, e.g. fairface:ROOT:val or demo:test")
    ],
    out: Annotated[Path, typer.Option("--out", help="folder for result.json, plots, predictions")],
    task: TaskOpt = None,
    sensitive: Annotated[
        str | None,
        typer.Option(
            "--sensitive",
            help="comma-separated attribute columns (default: race,gender,age where present)",
        ),
    ] = None,
    intersections: Annotated[
        str | None,
        typer.Option(
            "--intersections",
            help="comma-separated column combinations joined by '+', or 'none' "
            "(default: race+gender where present)",
        ),
    ] = None,
    n_boot: Annotated[
        int, typer.Option("--n-boot", help="bootstrap replicates (stratified by group)")
    ] = 1000,
    min_group_size: Annotated[
        int,
        typer.Option("--min-group-size", help="groups with fewer samples: reported, never gated"),
    ] = 30,
    alpha: Annotated[
        float, typer.Option("--alpha", help="intervals are 1-alpha; Holm's family-wise level")
    ] = 0.05,
    thresholds: Annotated[
        Path | None,
        typer.Option(
            "--thresholds",
            help="JSON or TOML file: accuracy_difference, selection_rate_ratio, "
            'equalized_odds_difference ("off" disables one)',
        ),
    ] = None,
    label_map: LabelMapOpt = None,
    trust_code: TrustCodeOpt = False,
    preprocess: PreprocessOpt = None,
    outputs: OutputsOpt = None,
    model_mode: ModelModeOpt = None,
    random_init: RandomInitOpt = False,
    weights: WeightsOpt = None,
    class_names: ClassNamesOpt = None,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    limit: LimitOpt = None,
    sample: SampleOpt = None,
    seed: SeedOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="images per forward pass")] = 128,
    workers: Annotated[
        int, typer.Option("--workers", help="DataLoader worker processes reading images")
    ] = 0,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="write the PNG plots")] = True,
    device: DeviceOpt = "auto",
) -> None:
    """Per-group and intersectional accuracy, selection rates, TPR/FPR and disparities with
    stratified-bootstrap intervals; gates fail only when the whole interval is beyond the
    threshold. Exit 0: no gate failed, 1: a gate failed, 2: bad input."""
    from raigate.audit import fairness
    from raigate.data import load_data

    combos: list[list[str]] | None = None
    if intersections is not None:
        text = intersections.strip()
        combos = [] if text.lower() in {"", "none"} else [c.split("+") for c in text.split(",")]
    options: dict[str, Any] = {}
    if thresholds is not None:
        options["thresholds"] = fairness.load_thresholds(thresholds)
    names = parse_names(sensitive)
    params = fairness.params_from_options(
        sensitive=list(names) if names else None,
        intersections=combos,
        n_boot=n_boot,
        min_group_size=min_group_size,
        alpha=alpha,
        label_map=read_label_map(label_map),
        batch_size=batch_size,
        workers=workers,
        device=resolve_device(device),
        seed=seed,
        plots=plots,
        progress=sys.stderr.isatty(),
        **options,
    )
    data = load_data(data_spec, task=task, limit=limit, sample=sample, seed=seed)
    model = load_model_from_options(
        model_spec, weights, class_names, input_size, mean, std, data=data,
        trust_code=trust_code, random_init=random_init,
        preprocess=preprocess, outputs=outputs, mode=model_mode,
    )  # fmt: skip
    result = fairness.run(model, data, params, out_dir=out)
    path = result.write(out)
    print_fairness(result)
    plots_written = sum(a.endswith(".png") for a in result.artifacts)
    typer.echo(f"\nwrote {path} ({plots_written} plots, predictions.csv)")
    failed = [f.id for f in result.findings if f.severity == "fail"]
    if failed:
        raise GateFailed(f"fairness gate(s) failed: {', '.join(failed)} (details in {path})")


def print_fairness(result: Any) -> None:
    """The short table: overall accuracy, worst/best group and gap per attribute, findings."""
    m, p = result.metrics, result.params
    synthetic = " (SYNTHETIC data)" if result.data.synthetic else ""
    typer.echo(
        f"fairness: task {result.data.task}, n={m['n']}{synthetic}; intervals: "
        f"{1 - p['alpha']:.0%} percentile bootstrap stratified by group, B={p['n_boot']}, "
        f"seed {result.seed}; groups with n<{p['min_group_size']} reported, not gated"
    )
    typer.echo(
        f"accuracy {m['accuracy']:.4f}  {1 - p['alpha']:.0%} CI [{m['accuracy_ci_low']:.4f}, "
        f"{m['accuracy_ci_high']:.4f}]"
    )
    rows = []
    for r in m["summary"]:
        if r["measure"] != "accuracy_difference":
            continue
        ci = r.get("ci") or [None, None]
        rows.append(
            {
                "attribute": r["attribute"],
                "groups": r["groups"],
                "small": r["groups_insufficient"],
                "worst": _named(r.get("group_low"), r.get("value_low")),
                "best": _named(r.get("group_high"), r.get("value_high")),
                "gap": "-" if r.get("value") is None else f"{r['value']:.3f}",
                "simultaneous CI": "-" if ci[0] is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]",
                "p": _p(r.get("p_value"), p["n_boot"]),
                "detectable": "-"
                if r.get("detectable_gap_80") is None
                else f"{r['detectable_gap_80']:.3f}",
                "gate": r.get("severity") or "-",
            }
        )
    typer.echo("\naccuracy by group (worst and best of the groups with enough data):")
    columns = ["attribute", "groups", "small", "worst", "best", "gap", "simultaneous CI", "p"]
    typer.echo(format_table(rows, [*columns, "detectable", "gate"]))
    typer.echo(
        f"\ngates: {m['gate_contrasts']} between-group contrasts (every pair of eligible "
        "groups, class, TPR/FPR, attribute and intersection) tested as one family: "
        f"simultaneous {1 - p['alpha']:.0%} intervals by bootstrap max-T (critical value "
        f"{_num(m.get('gate_critical_value'))}), p adjusted over the family; 'detectable': the "
        "gap that fails with 80% power"
    )
    typer.echo(
        f"{m['n_comparisons']} pairwise accuracy comparisons (two-proportion z-test, "
        f"descriptive): {m['comparisons_significant_holm']} significant after Holm at alpha "
        f"{p['alpha']}"
    )
    if m["groups_insufficient"]:
        typer.echo(
            f"{m['groups_insufficient']} group(s) with n<{p['min_group_size']} "
            f"({m['groups_empty']} empty): insufficient data, excluded from every gate"
        )
    if result.findings:
        typer.echo("\nfindings:")
    for f in result.findings:
        typer.echo(f"[{f.severity.upper()}] {f.message}")


def _p(value: float | None, n_boot: int) -> str:
    """An adjusted p; 0 means no replicate reached it, i.e. below 1/B."""
    if value is None:
        return "-"
    return f"<{1 / n_boot:.2g}" if value == 0 else f"{value:.2g}"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _named(group: str | None, value: float | None) -> str:
    return "-" if group is None or value is None else f"{group} {value:.3f}"


def register(app: typer.Typer) -> None:
    """Add ``raigate fairness`` to the CLI."""
    app.command("fairness")(fairness_cmd)
