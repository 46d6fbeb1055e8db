"""``raigate fairness``: the bias audit of one model on one dataset, group by group; and
``raigate harden fairness``: a variant with smaller group gaps.

Thin: parse the options, call :func:`raigate.audit.fairness.run` (or
:func:`raigate.defenses.harden_fairness`), print a short table, write ``DIR/result.json``,
exit 1 when a gate fails (see ``docs/fairness.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from raigate.cli_common import (
    ClassNamesOpt,
    DataOpt,
    DeviceOpt,
    InputSizeOpt,
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
    format_table,
    handle_errors,
    harden_group,
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
    quiet: QuietOpt = False,
) -> None:
    """Per-group and intersectional accuracy, selection rates, TPR/FPR and disparities with
    stratified-bootstrap intervals; gates fail only when the whole interval is beyond the
    threshold."""
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
        progress=not quiet,
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


def harden_fairness_cmd(
    model_spec: ModelOpt,
    data_spec: DataOpt,
    attribute: Annotated[
        str,
        typer.Option(
            "--attribute", help="sensitive attribute column, or an intersection: race+gender"
        ),
    ],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="reweight (group-balanced weighted loss), resample (group-balanced sampler), "
            "group-dro (Sagawa et al. 2020) or threshold (fairlearn group thresholds, binary "
            "tasks; needs the attribute at prediction time)",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="folder for model.json, weights, harden.json")],
    epochs: Annotated[int, typer.Option("--epochs", help="fine-tuning epochs")] = 5,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate")] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", help="batch size")] = 64,
    by_label: Annotated[
        bool,
        typer.Option(
            "--by-label/--no-by-label",
            help="groups are (attribute, label) cells, as in Sagawa et al. 2020",
        ),
    ] = False,
    dro_eta: Annotated[
        float, typer.Option("--dro-eta", help="group-dro: step size of the group weights q")
    ] = 0.01,
    constraint: Annotated[
        str,
        typer.Option("--constraint", help="threshold: equalized_odds or demographic_parity"),
    ] = "equalized_odds",
    positive: Annotated[
        str | None,
        typer.Option("--positive", help="threshold: the positive class (default: the second)"),
    ] = None,
    weights: WeightsOpt = None,
    class_names: ClassNamesOpt = None,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    task: TaskOpt = None,
    limit: LimitOpt = None,
    sample: SampleOpt = None,
    seed: SeedOpt = 0,
    label_map: LabelMapOpt = None,
    trust_code: TrustCodeOpt = False,
    preprocess: PreprocessOpt = None,
    outputs: OutputsOpt = None,
    model_mode: ModelModeOpt = None,
    random_init: RandomInitOpt = False,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Make a variant of the model with smaller gaps between the groups of --attribute:
    fine-tune it (reweight, resample, group-dro) or post-process it per group (threshold);
    writes a model spec every command and audit plan accepts, and harden.json."""
    from raigate.data import load_data
    from raigate.defenses import harden_fairness

    data = load_data(data_spec, task=task, limit=limit, sample=sample, seed=seed)
    model = load_model_from_options(
        model_spec, weights, class_names, input_size, mean, std, data=data,
        trust_code=trust_code, random_init=random_init,
        preprocess=preprocess, outputs=outputs, mode=model_mode,
    )  # fmt: skip
    res = harden_fairness(
        model, data, out, method=method, attribute=attribute, by_label=by_label,  # type: ignore[arg-type]
        epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, dro_eta=dro_eta,
        constraint=constraint, positive=positive, device=resolve_device(device),
        label_map=read_label_map(label_map), progress=not quiet,
    )  # fmt: skip
    print_harden(res, model.display_name, len(data), attribute)
    cols = attribute.split("+")
    audit = f"--sensitive {','.join(cols)}" + (f" --intersections {attribute}" if cols[1:] else "")
    typer.echo(
        f"\nnext: audit both on held-out data, e.g. raigate fairness --model {res.model_spec} "
        f"--data DATA {audit} --out DIR (and the same with the original), or name the "
        "variant in a plan as [models.fair] with a fairness check on it"
    )


def print_harden(res: Any, model_name: str, n: int, attribute: str) -> None:
    """What ``harden fairness`` did: the fit, the groups' weights / q / rules, the files."""
    groups = res.groups
    if res.report is not None:
        rep = res.report
        typer.echo(
            f"fine-tuned {model_name} by {res.method} over {attribute} ({len(groups)} groups) for "
            f"{len(rep.losses)} epoch(s) on {n} images in {rep.seconds:.1f}s (training "
            f"accuracy, last epoch: {rep.accuracies[-1]:.4f}; loss {rep.losses[-1]:.4f})"
        )
        cols = [c for c in ("weight", "draw_probability", "q") if c in groups[0]]
        typer.echo(format_table(groups, ["group", "n", *cols]))
    else:
        rows = [
            {
                "group": g["group"],
                "n": g["n"],
                **{f"{k}_before": g["before"][k] for k in ("selection_rate", "tpr", "fpr")},
                **{f"{k}_after": g["after_expected"][k] for k in ("selection_rate", "tpr", "fpr")},
            }
            for g in groups
        ]
        typer.echo(
            f"fit group thresholds on {model_name}'s positive-class probability over {attribute} "
            f"({len(groups)} groups, {n} images); rates on these data, before (argmax) and after "
            "(expected, the rule is randomized):"
        )
        typer.echo(format_table(rows, list(rows[0])))
        typer.echo(
            f"NOTE: this variant predicts from each sample's {attribute}: it needs the sensitive "
            "attribute at prediction time, which many deployments do not have or may not use. "
            "The robustness, explain and privacy checks refuse it; audit the base model there."
        )
    typer.echo(f"digest  {res.digest}")
    typer.echo(f"wrote {res.model_spec}, {res.weights} and {res.record}")


def register(app: typer.Typer) -> None:
    """Add ``raigate fairness`` and ``raigate harden fairness`` to the CLI."""
    app.command("fairness")(fairness_cmd)
    harden_group(app).command("fairness")(handle_errors(harden_fairness_cmd))
