"""``raigate explain``: parse, call :func:`raigate.audit.explanations.run`, print, exit.

Heavy imports (the check, Captum, matplotlib) happen inside the command function so
``raigate --help`` stays fast.
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
    load_model_from_options,
    make_params,
    parse_names,
    read_label_map,
    resolve_device,
)
from raigate.errors import GateFailed

__all__ = ["explain_cmd", "register"]


def explain_cmd(
    model_spec: ModelOpt,
    data_spec: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="folder for result.json and the PNG figures")],
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods",
            help="comma-separated: integrated-gradients, saliency, gradcam, smoothgrad, "
            "occlusion, feature-ablation, kernelshap (default: the first five for a white-box "
            "model; occlusion, feature-ablation, kernelshap for a black-box one)",
        ),
    ] = None,
    n_samples: Annotated[
        int, typer.Option("--n-samples", help="images to explain (seeded, stratified by label)")
    ] = 16,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer", help="Grad-CAM layer, a module name in the network (default: last conv)"
        ),
    ] = None,
    baseline: Annotated[
        str,
        typer.Option(
            "--baseline",
            help="IG/occlusion/ablation/KernelSHAP reference image: black, blur or uniform",
        ),
    ] = "black",
    n_steps: Annotated[
        int, typer.Option("--n-steps", help="Integrated Gradients quadrature points")
    ] = 50,
    patch_size: Annotated[
        int | None,
        typer.Option(
            "--patch-size",
            help="feature-ablation/KernelSHAP superpixel side in px (default min(H,W)/8)",
        ),
    ] = None,
    kernelshap_samples: Annotated[
        int,
        typer.Option("--kernelshap-samples", help="KernelSHAP coalitions per image (seeded)"),
    ] = 256,
    target: Annotated[
        str, typer.Option("--target", help="class to explain: predicted or label")
    ] = "predicted",
    sanity_samples: Annotated[
        int, typer.Option("--sanity-samples", help="images for the randomization test")
    ] = 16,
    sanity_layers: Annotated[
        int, typer.Option("--sanity-layers", help="randomization depths to test (top to all)")
    ] = 5,
    max_sanity_spearman: Annotated[
        float,
        typer.Option(
            "--max-sanity-spearman",
            help="gate: fail a method whose fully randomized maps correlate above this",
        ),
    ] = 0.7,
    sensitivity_samples: Annotated[
        int, typer.Option("--sensitivity-samples", help="images for sensitivity_max (0: skip)")
    ] = 8,
    weights: WeightsOpt = None,
    class_names: ClassNamesOpt = None,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    task: TaskOpt = None,
    limit: LimitOpt = None,
    sample: SampleOpt = None,
    seed: SeedOpt = 0,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="images per forward/backward pass")
    ] = 128,
    label_map: LabelMapOpt = None,
    trust_code: TrustCodeOpt = False,
    preprocess: PreprocessOpt = None,
    outputs: OutputsOpt = None,
    model_mode: ModelModeOpt = None,
    random_init: RandomInitOpt = False,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Attribution maps (Captum) checked for faithfulness (deletion/insertion vs random,
    infidelity, sensitivity) and sanity (cascading weight randomization)."""
    from raigate.audit import explanations
    from raigate.data import load_data

    params = make_params(
        explanations.ExplainParams,
        methods=None if methods is None else list(parse_names(methods) or []),
        n_samples=n_samples,
        layer=layer,
        baseline=baseline,
        n_steps=n_steps,
        patch_size=patch_size,
        kernelshap_samples=kernelshap_samples,
        target=target,
        sanity_samples=sanity_samples,
        sanity_layers=sanity_layers,
        sanity_max_spearman=max_sanity_spearman,
        sensitivity_samples=sensitivity_samples,
        batch_size=batch_size,
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
    result = explanations.run(model, data, params, out_dir=out)
    path = result.write(out)
    print_explanations(result)
    typer.echo(f"\nwrote {path}" + "".join(f", {out / a}" for a in result.artifacts))
    if result.verdict == "fail":
        raise GateFailed("; ".join(f.message for f in result.findings if f.severity == "fail"))


def print_explanations(result: Any) -> None:
    """The tables a reviewer reads first, as plain text."""
    m = result.metrics
    synthetic = " (SYNTHETIC data)" if result.data.synthetic else ""
    p = result.params
    typer.echo(
        f"explained {m['n']} images{synthetic}; target = {p['target']} class; "
        f"IG n_steps={p['n_steps']}, baseline={p['baseline']}"
    )
    if result.mode == "black-box":
        typer.echo(
            "black-box model (queries only): forward-pass methods "
            f"{', '.join(p['methods'])}; no input gradients, no weights"
        )
    for rec in m["methods"]:
        if rec["status"] == "skipped":
            typer.echo(f"note: {rec['note']}")
    typer.echo("\nfaithfulness (AUC of the target-class probability; random = random pixel order):")
    typer.echo(
        format_table(
            m["faithfulness"],
            [
                "method",
                "deletion_auc",
                "random_deletion_auc",
                "insertion_auc",
                "random_insertion_auc",
                "infidelity",
                "sensitivity_max",
            ],
        )
    )
    if p.get("sanity_note"):
        typer.echo(f"\nsanity: {p['sanity_note']}")
    else:
        typer.echo(
            "\nsanity (Spearman vs the trained model's maps, layers re-initialized top down):"
        )
        typer.echo(
            format_table(
                m["sanity"], ["method", "layer", "layers_randomized", "spearman", "passed"]
            )
        )
    if m["agreement"]:
        typer.echo("\nagreement between methods (mean Spearman of |maps|):")
        typer.echo(format_table(m["agreement"], ["method_a", "method_b", "spearman"]))
    for f in result.findings:
        if f.severity != "pass" or f.id.startswith("explanations.ig_delta"):
            typer.echo(f"\n[{f.severity.upper()}] {f.message}")


def register(app: typer.Typer) -> None:
    """Add ``raigate explain`` to ``app``."""
    app.command("explain")(handle_errors(explain_cmd))
