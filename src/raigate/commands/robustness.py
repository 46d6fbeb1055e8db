"""``raigate robustness`` and ``raigate harden smoothing``: parse, call the library, print.

Heavy imports (the check, ART, the defenses) happen inside the command functions so
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
    harden_group,
    load_model_from_options,
    make_params,
    parse_floats,
    parse_names,
    read_label_map,
    resolve_device,
)
from raigate.errors import ConfigError, GateFailed

__all__ = ["harden_smoothing_cmd", "register", "robustness_cmd"]

# pydantic field -> the flag a user typed, for one-line errors
_FLAGS = {
    "norms": "--norm",
    "certify_radii": "--radii",
    "smoothing_sigma": "--smoothing-sigma",
    "smoothing_model": "--smoothing-model",
}


def _norms(text: str) -> list[str]:
    names = parse_names(text) or []
    for n in names:
        if n not in ("linf", "l2"):
            raise ConfigError(f"--norm must be linf or l2 (comma-separated for both), got {n!r}")
    return names


def _floats(text: str, flag: str) -> list[float]:
    values = parse_floats(text, flag) or ()
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    for token, v in zip(tokens, values, strict=True):
        if v < 0:
            raise ConfigError(f"--{flag} values must be >= 0, got {token!r}")
    return list(values)


def _batch_size(text: str) -> int | str:
    """``--smoothing-batch-size``: a positive integer or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"--smoothing-batch-size must be a positive integer or auto, got {text!r}"
        ) from None


def _rules(texts: list[str] | None, cls: type, flag: str) -> list[Any]:
    """Each ``--min-...`` value parsed by the rule's own ``from_text`` (the plan accepts the
    same strings), a bad one named with its flag."""
    out = []
    for text in texts or []:
        try:
            out.append(cls.from_text(text))
        except ValueError as e:
            raise ConfigError(f"{flag} {e}") from None
    return out


def robustness_cmd(
    model_spec: ModelOpt,
    data_spec: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="folder for result.json, plots and CSVs")],
    attacks: Annotated[
        str | None,
        typer.Option(
            "--attacks",
            help="comma-separated: fgsm, pgd, square, hsj, art:NAME (any ART attack); default "
            "fgsm,pgd for a white-box model, square for a black-box one (queries only)",
        ),
    ] = None,
    query_budget: Annotated[
        int,
        typer.Option(
            "--query-budget",
            help="square and hsj: the most queries per image (its clean query included)",
        ),
    ] = 1000,
    attack_params: Annotated[
        str | None,
        typer.Option(
            "--attack-params", help='JSON keyword arguments for art:NAME, e.g. {"max_iter": 100}'
        ),
    ] = None,
    norm: Annotated[str, typer.Option("--norm", help="linf, l2, or linf,l2")] = "linf",
    eps: Annotated[
        str, typer.Option("--eps", help="comma-separated budgets in pixel units, fractions allowed")
    ] = "1/255,2/255,4/255,8/255",
    pgd_steps: Annotated[int, typer.Option("--pgd-steps", help="PGD iterations")] = 20,
    pgd_restarts: Annotated[int, typer.Option("--pgd-restarts", help="PGD random starts")] = 1,
    pgd_step_size: Annotated[
        float | None, typer.Option("--pgd-step-size", help="PGD step (default 2.5*eps/steps)")
    ] = None,
    smoothing_sigma: Annotated[
        float | None,
        typer.Option(
            "--smoothing-sigma", help="also attack and certify the smoothed model at this sigma"
        ),
    ] = None,
    smoothing_model: Annotated[
        str | None,
        typer.Option(
            "--smoothing-model",
            help="smooth this model spec (a noise-trained variant from `raigate harden "
            "smoothing`) instead of --model; attacks on the base rows still hit --model",
        ),
    ] = None,
    eot_samples: Annotated[
        int,
        typer.Option(
            "--eot-samples", help="noise draws per gradient step against the smoothed model"
        ),
    ] = 8,
    predict_n: Annotated[
        int, typer.Option("--predict-n", help="noise draws per smoothed prediction")
    ] = 100,
    certify: Annotated[
        bool, typer.Option("--certify/--no-certify", help="run CERTIFY when smoothing")
    ] = True,
    certify_n: Annotated[
        int, typer.Option("--certify-n", help="CERTIFY estimation draws")
    ] = 100_000,
    certify_n0: Annotated[int, typer.Option("--certify-n0", help="CERTIFY selection draws")] = 100,
    alpha: Annotated[
        float, typer.Option("--alpha", help="failure probability of PREDICT/CERTIFY")
    ] = 0.001,
    radii: Annotated[
        str, typer.Option("--radii", help="L2 radii for the certified-accuracy table")
    ] = "0,0.25,0.5,0.75,1.0",
    certify_max_samples: Annotated[
        int | None,
        typer.Option(
            "--certify-max-samples", help="certify a seeded, class-stratified N of the samples"
        ),
    ] = None,
    max_samples: Annotated[
        int, typer.Option("--max-samples", help="attack a seeded stratified sample of at most N")
    ] = 500,
    large_eps_check: Annotated[
        bool,
        typer.Option(
            "--large-eps-check/--no-large-eps-check", help="PGD at a huge eps must reach ~0"
        ),
    ] = True,
    min_robust_accuracy: Annotated[
        list[str] | None,
        typer.Option(
            "--min-robust-accuracy",
            metavar="RULE",
            help="gate, repeatable: [smoothed:]ATTACK:NORM:EPS=MIN, e.g. pgd:linf:8/255=0.4 "
            "(FAIL when the whole Clopper-Pearson interval of that row's accuracy is below MIN)",
        ),
    ] = None,
    min_certified_accuracy: Annotated[
        list[str] | None,
        typer.Option(
            "--min-certified-accuracy",
            metavar="RULE",
            help="gate, repeatable: RADIUS=MIN on CERTIFY's certified accuracy, e.g. 0.25=0.6 "
            "(needs --smoothing-sigma)",
        ),
    ] = None,
    gate_alpha: Annotated[
        float,
        typer.Option(
            "--gate-alpha",
            help="error level of the gates together, Bonferroni over them: P(any false FAIL) "
            "<= alpha/2",
        ),
    ] = 0.05,
    weights: WeightsOpt = None,
    class_names: ClassNamesOpt = None,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    task: TaskOpt = None,
    limit: LimitOpt = None,
    sample: SampleOpt = None,
    seed: SeedOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="images per attack batch")] = 128,
    smoothing_batch_size: Annotated[
        str,
        typer.Option(
            "--smoothing-batch-size",
            help="noisy images per forward pass, or auto: the largest power of two that fits "
            "a quarter of the free memory (measured; recorded in the result)",
        ),
    ] = "1000",
    channels_last: Annotated[
        bool,
        typer.Option(
            "--channels-last", help="run the base model on channels-last (NHWC) input batches"
        ),
    ] = False,
    compile_model: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the base model for attacks and smoothing (needs a C++ "
            "compiler on CPU, Triton on CUDA)",
        ),
    ] = False,
    bf16: Annotated[
        bool,
        typer.Option(
            "--bf16",
            help="bfloat16 autocast for attacks and smoothing (CUDA, or a CPU with native "
            "bf16); certificates then hold for the bf16 base model",
        ),
    ] = False,
    workers: Annotated[int, typer.Option("--workers", min=0, help="DataLoader workers")] = 0,
    label_map: LabelMapOpt = None,
    trust_code: TrustCodeOpt = False,
    preprocess: PreprocessOpt = None,
    outputs: OutputsOpt = None,
    model_mode: ModelModeOpt = None,
    random_init: RandomInitOpt = False,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Accuracy under FGSM/PGD/Square/HopSkipJump/ART attacks over an eps sweep, per group
    (a black-box model: query attacks only, under --query-budget); with
    --smoothing-sigma the same (adaptive, EOT) attacks on the smoothed model, the
    smoothed/base ratio and Cohen et al.'s certified accuracy. Robustness is gated only by
    --min-robust-accuracy / --min-certified-accuracy; without them the verdict covers
    attack soundness alone and says so."""
    from raigate.attacks import parse_attack_params
    from raigate.audit import robustness
    from raigate.audit.robustness_gates import CertifiedAccuracyRule, RobustAccuracyRule
    from raigate.data import load_data

    params = make_params(
        robustness.RobustnessParams,
        _FLAGS,
        attacks=None if attacks is None else list(parse_names(attacks) or []),
        query_budget=query_budget,
        attack_params=parse_attack_params(attack_params),
        norms=_norms(norm),
        eps=_floats(eps, "eps"),
        pgd_steps=pgd_steps,
        pgd_restarts=pgd_restarts,
        pgd_step_size=pgd_step_size,
        smoothing_sigma=smoothing_sigma,
        smoothing_model=smoothing_model,
        eot_samples=eot_samples,
        predict_n=predict_n,
        certify=certify,
        certify_n=certify_n,
        certify_n0=certify_n0,
        alpha=alpha,
        certify_radii=_floats(radii, "radii"),
        certify_max_samples=certify_max_samples,
        max_samples=max_samples,
        large_eps_check=large_eps_check,
        min_robust_accuracy=_rules(
            min_robust_accuracy, RobustAccuracyRule, "--min-robust-accuracy"
        ),
        min_certified_accuracy=_rules(
            min_certified_accuracy, CertifiedAccuracyRule, "--min-certified-accuracy"
        ),
        gate_alpha=gate_alpha,
        label_map=read_label_map(label_map),
        batch_size=batch_size,
        smoothing_batch_size=_batch_size(smoothing_batch_size),
        channels_last=channels_last,
        compile=compile_model,
        bf16=bf16,
        workers=workers,
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
    smoothing_base = None
    if smoothing_model:  # loaded here so --trust-code and --random-init apply to it too
        smoothing_base = load_model_from_options(
            smoothing_model, None, None, None, None, None, data=data,
            trust_code=trust_code, random_init=random_init,
        )  # fmt: skip
    result = robustness.run(
        model, data, params, out_dir=out, echo=typer.echo, smoothing_base=smoothing_base
    )
    path = result.write(out)
    print_robustness(result)
    typer.echo(f"\nwrote {path}")
    if result.verdict == "fail":
        failed = [f.id for f in result.findings if f.severity == "fail"]
        raise GateFailed(f"robustness FAIL: {', '.join(failed)} (see {path})")


def print_robustness(result: Any) -> None:
    """The tables a reader needs first; everything else is in result.json."""
    m, p = result.metrics, result.params
    synthetic = " (SYNTHETIC data)" if result.data.synthetic else ""
    attacks = p.get("attacks") or []
    how = [f"PGD {p['pgd_steps']} steps x {p['pgd_restarts']} restart(s)"] * ("pgd" in attacks)
    if {"square", "hsj"} & set(attacks):
        how.append(f"square/hsj at most {p['query_budget']} queries per image")
    mode = " (black-box model: queries only)" if p.get("mode") == "black-box" else ""
    typer.echo(
        f"\naccuracy under attack, n={m['n']}{synthetic}{mode}; eps in pixel units of [0,1] "
        f"images, {', '.join([*how, 'Wilson 95% CI'])}:"
    )
    cols = ["model", "attack", "norm", "eps_text", "accuracy", "ci_low", "ci_high"]
    if any("pgd_own_accuracy" in r for r in m["attacks"]):
        cols.append("pgd_own_accuracy")
    if any("queries_mean" in r for r in m["attacks"]):
        cols += ["queries_mean", "queries_max"]
    typer.echo(format_table(m["attacks"], cols))
    if m.get("smoothed_vs_base"):
        variant = f" of {p['smoothing_model']}" if p.get("smoothing_model") else ""
        typer.echo(
            f"\nsmoothed{variant} vs base (sigma={p['smoothing_sigma']:g}; smoothed attacked with "
            f"EOT m={p['eot_samples']}, predicted by majority vote of {p['predict_n']} draws):"
        )
        typer.echo(
            format_table(
                m["smoothed_vs_base"],
                ["attack", "norm", "eps_text", "base_accuracy", "smoothed_accuracy", "ratio"],
            )
        )
    if m.get("certification"):
        typer.echo(
            f"\ncertified accuracy (CERTIFY, sigma={p['smoothing_sigma']:g}, "
            f"n0={p['certify_n0']}, n={p['certify_n']:,}, alpha={p['alpha']:g}; L2 radius, "
            f"pixel units; n={m['certified_n']} samples):"
        )
        typer.echo(format_table(m["certification"], ["radius", "certified_accuracy", "certified"]))
        typer.echo(
            f"abstain rate {m['abstain_rate']:.4f}, certified but wrong "
            f"{m['certified_wrong_rate']:.4f}, average certified radius "
            f"{m['average_certified_radius']:.4f}, largest certifiable radius at this n "
            f"{m['max_certifiable_radius']:.4f}"
        )
    from raigate.audit.robustness_findings import eps_text

    gaps = sorted(m.get("group_gaps") or [], key=lambda g: -g["gap"])[:5]
    gaps = [{**g, "eps": eps_text(g["eps"]) if g["attack"] != "clean" else "0"} for g in gaps]
    if gaps:
        typer.echo("\nlargest accuracy gaps between groups (worst vs best group):")
        typer.echo(
            format_table(
                gaps,
                [
                    "model",
                    "attack",
                    "norm",
                    "eps",
                    "attribute",
                    "worst_group",
                    "worst_accuracy",
                    "best_group",
                    "best_accuracy",
                    "gap",
                ],
            )
        )
    if m.get("gates"):
        g = p["gates"]
        typer.echo(
            f"\nrobustness gates ({g['m']}; two-sided Clopper-Pearson intervals at confidence "
            f"1 - {g['alpha']:g}/{g['m']}, Bonferroni):"
        )
        typer.echo(
            format_table(
                m["gates"],
                ["gate", "correct", "n", "accuracy", "ci_low", "ci_high", "min", "severity"],
            )
        )
    for f in result.findings:
        typer.echo(f"\n[{f.severity.upper()}] {f.message}")
    typer.echo(f"\nrobustness: {result.verdict_label}")


def harden_smoothing_cmd(
    model_spec: ModelOpt,
    data_spec: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="folder for model.json, model.safetensors")],
    sigma: Annotated[float, typer.Option("--sigma", help="Gaussian noise std on [0,1] pixels")],
    epochs: Annotated[int, typer.Option("--epochs", help="training epochs")] = 10,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate")] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", help="training batch size")] = 64,
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
    """Train the model with Gaussian noise augmentation (Cohen et al. 2019) so its smoothed
    version predicts instead of abstaining; writes a model spec every command accepts."""
    from raigate.data import load_data
    from raigate.defenses import harden_smoothing

    data = load_data(data_spec, task=task, limit=limit, sample=sample, seed=seed)
    model = load_model_from_options(
        model_spec, weights, class_names, input_size, mean, std, data=data,
        trust_code=trust_code, random_init=random_init,
        preprocess=preprocess, outputs=outputs, mode=model_mode,
    )  # fmt: skip
    res = harden_smoothing(
        model, data, out, sigma=sigma, epochs=epochs, lr=lr, batch_size=batch_size,
        seed=seed, device=resolve_device(device), label_map=read_label_map(label_map),
        progress=not quiet,
    )  # fmt: skip
    rep = res.report
    typer.echo(
        f"trained {model.display_name} with Gaussian noise sigma={sigma:g} for {epochs} "
        f"epoch(s) on {len(data)} images in {rep.seconds:.1f}s (accuracy on the noisy training "
        f"batches, last epoch: {rep.accuracies[-1]:.4f}; loss {rep.losses[-1]:.4f})"
    )
    typer.echo(f"digest  {res.digest}")
    typer.echo(f"wrote {res.model_spec}, {res.weights} and {res.record}")
    original = f"{model_spec}" + (f" --weights {weights}" if weights else "")
    original += " --random-init" if model.random_init else ""
    typer.echo(
        f"next: raigate robustness --model {original} --smoothing-model {res.model_spec} "
        f"--data {data_spec} --smoothing-sigma {sigma:g} --out DIR   (attacks the original, "
        "defends with the smoothed variant)"
    )


def register(app: typer.Typer) -> None:
    """Add ``raigate robustness`` and ``raigate harden smoothing`` to ``app``."""
    app.command("robustness")(handle_errors(robustness_cmd))
    harden_group(app).command("smoothing")(handle_errors(harden_smoothing_cmd))
