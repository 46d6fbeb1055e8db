"""``raigate privacy train`` (DP-SGD to a target epsilon) and ``raigate privacy audit``
(membership inference and the epsilon it proves): parse, call the library, print.

``torchrun --nproc-per-node N -m raigate privacy train ...`` runs the same command in N
processes (Opacus' DPDDP, gloo on CPU); only rank 0 prints and writes files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from raigate.cli_common import (
    ClassNamesOpt,
    DeviceOpt,
    LabelMapOpt,
    LimitOpt,
    MeanOpt,
    ModelModeOpt,
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
    parse_floats,
    parse_names,
    read_label_map,
    resolve_device,
)
from raigate.errors import ConfigError, GateFailed

__all__ = ["audit_cmd", "check_sampler_cmd", "register", "train_cmd"]

privacy_app = typer.Typer(
    rich_markup_mode=None,
    help="DP-SGD retraining to a target epsilon, and measured membership leakage.",
    no_args_is_help=True,
)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", help="pkg.module:factory [--weights FILE] or a model spec .json to retrain"
    ),
]


@privacy_app.command("train")
@handle_errors
def train_cmd(
    model_spec: ModelOpt,
    data_spec: Annotated[str, typer.Option("--data", help="training data spec")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="folder for weights, spec, ledger, result (or --resume DIR)"),
    ] = None,
    eval_data: Annotated[
        str | None, typer.Option("--eval-data", help="held-out data for accuracy per class/group")
    ] = None,
    epsilon: Annotated[float, typer.Option("--epsilon", help="target epsilon")] = 2.0,
    delta: Annotated[float, typer.Option("--delta", help="target delta (< 1/N)")] = 1e-5,
    epochs: Annotated[float, typer.Option("--epochs", help="expected passes over the data")] = 10,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="expected logical batch (q = batch/N)")
    ] = 256,
    physical_batch_size: Annotated[
        int | None, typer.Option("--physical-batch-size", help="most examples per pass")
    ] = None,
    max_grad_norm: Annotated[
        float, typer.Option("--max-grad-norm", help="per-example clipping norm")
    ] = 1.0,
    lr: Annotated[float, typer.Option("--lr", help="learning rate")] = 0.5,
    optimizer: Annotated[
        Literal["sgd", "adam"], typer.Option("--optimizer", help="sgd (with momentum) or adam")
    ] = "sgd",
    momentum: Annotated[float, typer.Option("--momentum", help="SGD momentum")] = 0.9,
    accountant: Annotated[
        Literal["prv", "rdp"], typer.Option("--accountant", help="accountant to calibrate with")
    ] = "prv",
    augmult: Annotated[
        int, typer.Option("--augmult", help="augmented copies per example (De et al. 2022)")
    ] = 0,
    canaries: Annotated[
        int, typer.Option("--canaries", help="mislabelled canaries for the one-run audit")
    ] = 0,
    batchnorm: Annotated[
        Literal["auto", "fold", "groupnorm"],
        typer.Option("--batchnorm", help="fold (pretrained) or groupnorm (scratch); auto picks"),
    ] = "auto",
    grad_sample_mode: Annotated[
        Literal["auto", "bk", "fast", "hooks", "ew", "functorch"],
        typer.Option("--grad-sample-mode", help="per-sample gradient path (bk: book-keeping)"),
    ] = "auto",
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline",
            help="also train without DP on the same steps; saved to OUT/baseline/model.json",
        ),
    ] = False,
    baseline_lr: Annotated[
        float | None, typer.Option("--baseline-lr", help="baseline learning rate (default --lr)")
    ] = None,
    balance: Annotated[
        str | None,
        typer.Option(
            "--balance",
            help="equal total weight per group of this attribute (race, race+gender), by "
            "group-weighted clipping; the group counts are released with noise and accounted",
        ),
    ] = None,
    balance_noise: Annotated[
        float,
        typer.Option("--balance-noise", help="std of the Gaussian noise on the group counts"),
    ] = 20.0,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue the unfinished run saved in DIR")
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option("--checkpoint-every", help="steps between checkpoints")
    ] = None,
    stop_after_steps: Annotated[
        int | None,
        typer.Option("--stop-after-steps", hidden=True, help="stop as if killed (testing)"),
    ] = None,
    secure_mode: Annotated[
        bool, typer.Option("--secure-mode", help="cryptographic RNG (needs torchcsprng)")
    ] = False,
    trust_code: TrustCodeOpt = False,
    weights: WeightsOpt = None,
    class_names: ClassNamesOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    task: TaskOpt = None,
    limit: LimitOpt = None,
    sample: SampleOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Retrain a model with DP-SGD (Opacus, Poisson sampling) to a target epsilon; write
    model.safetensors, model.json, ledger.json, checkpoint.pt and result.json to --out."""
    from raigate.data import load_data
    from raigate.privacy.train import DPParams, run_private_training
    from raigate.privacy.utility import utility_result

    if class_names is not None:
        raise ConfigError("--class-names: DP training takes class names from --data")
    out = out or resume
    if out is None:
        raise ConfigError("--out DIR is required (or --resume DIR to continue a run there)")
    dev = resolve_device(device)
    params = DPParams.build(
        epsilon=epsilon,
        delta=delta,
        epochs=epochs,
        batch_size=batch_size,
        physical_batch_size=physical_batch_size,
        max_grad_norm=max_grad_norm,
        lr=lr,
        optimizer=optimizer,
        momentum=momentum,
        accountant=accountant,
        augmult=augmult,
        canaries=canaries,
        batchnorm=batchnorm,
        grad_sample_mode=grad_sample_mode,
        baseline=baseline,
        baseline_lr=baseline_lr,
        balance=balance,
        balance_noise=balance_noise,
        checkpoint_every=checkpoint_every,
        stop_after_steps=stop_after_steps,
        secure_mode=secure_mode,
        seed=seed,
        device=dev,
        progress=not quiet,
    )
    train = load_data(data_spec, task=task, limit=limit, sample=sample, seed=seed)
    evaluation = load_data(eval_data, task=task or train.task) if eval_data else None
    run = run_private_training(
        model_spec.strip(),
        train,
        params,
        weights=weights,
        mean=list(parse_floats(mean, "mean") or []) or None,
        std=list(parse_floats(std, "std") or []) or None,
        out_dir=out,
        resume=resume,
        trust_code=trust_code,
    )
    if run.rank != 0:
        return
    _print_training(run)
    if run.stopped_early:
        typer.echo(
            f"\nstopped after {run.ledger.steps} of {run.ledger.planned_steps} steps "
            f"(--stop-after-steps); continue with --resume {run.out_dir}"
        )
        return
    result = utility_result(
        run,
        evaluation,
        params=params.model_dump(exclude={"progress"}),
        device=dev,
        progress=params.progress,
    )
    path = result.write(out)
    _print_utility(result.metrics)
    if run.baseline is not None and run.out_dir is not None:
        typer.echo(f"non-private baseline: {run.baseline.spec} (audit it beside the DP model)")
    for f in result.findings:
        typer.echo(f"\n[{f.severity.upper()}] {f.message}")
    typer.echo(f"\nwrote {run.spec_path}, {out / 'ledger.json'}, {path}")
    if result.verdict == "fail":
        raise GateFailed("; ".join(f.message for f in result.findings if f.severity == "fail"))


def _print_training(run: Any) -> None:
    led = run.ledger
    for change in run.changes:
        typer.echo(f"batchnorm: {change}")
    if run.fold_max_abs_diff is not None:
        typer.echo(
            f"batchnorm: folded network reproduces the original logits (max |diff| "
            f"{run.fold_max_abs_diff:.2e})"
        )
    for p in run.warnings:
        typer.echo(f"preflight warning: {p.message}")
    typer.echo(
        f"DP-SGD: N={led.dataset_size}, q={led.sample_rate:.5g} (Poisson, batch "
        f"{led.batch_size}, physical {led.physical_batch_size}), steps {led.steps}/"
        f"{led.planned_steps}, sigma={led.noise_multiplier:.4f}, C={led.max_grad_norm:g}, "
        f"per-sample gradients: {led.grad_sample_mode}"
        + (f", {run.world_size} processes" if run.world_size > 1 else "")
    )
    typer.echo(
        f"spent epsilon {led.epsilon:.4f} at delta {led.delta:g} ({led.accountant}); "
        f"prv {led.epsilons['prv']:.4f}, rdp {led.epsilons['rdp']:.4f}; target "
        f"{led.target_epsilon:g}"
    )
    if led.group_balance:
        b = led.group_balance
        weights = ", ".join(f"{g} {w:.2f}" for g, w in zip(b["groups"], b["weights"], strict=True))
        typer.echo(
            f"balance over {b['attribute']}: clipped gradients weighted by group ({weights}; "
            f"mean weight {b['mean_weight']:.2f}); counts released with Gaussian noise of std "
            f"{b['count_noise']:g}, included in epsilon"
        )
    if run.weights_in_sync is not None:
        typer.echo(f"weights in sync across processes: {'yes' if run.weights_in_sync else 'NO'}")
    if run.canaries is not None:
        typer.echo(
            f"canary audit: epsilon >= {run.canaries.eps_lower:.3f} ({run.canaries.m} canaries, "
            f"{1 - run.canaries.alpha:.0%} confidence) vs claimed {led.epsilon:.3f}"
        )


def _print_utility(m: dict[str, Any]) -> None:
    if "accuracy_dp" not in m:
        return
    line = f"\naccuracy DP {m['accuracy_dp']:.4f} (n={m['n_eval']})"
    if "accuracy_baseline" in m:
        line += f", non-private baseline {m['accuracy_baseline']:.4f}, cost {m['cost_pp']:.1f} pp"
    typer.echo(line)
    cols = ["n", "accuracy_dp"] + (
        ["accuracy_baseline", "cost_pp"] if "accuracy_baseline" in m else []
    )
    typer.echo("\nper class:")
    typer.echo(format_table(m["per_class"], ["class", *cols]))
    if m["per_attribute"]:
        typer.echo("\nper attribute value:")
        typer.echo(format_table(m["per_attribute"], ["attribute", "value", *cols]))


@privacy_app.command("audit")
@handle_errors
def audit_cmd(
    model_spec: Annotated[str, typer.Option("--model", help="model spec to attack")],
    members: Annotated[str, typer.Option("--members", help="data spec of the training members")],
    non_members: Annotated[
        str, typer.Option("--non-members", help="data spec of examples never trained on")
    ],
    out: Annotated[Path, typer.Option("--out", help="folder for result.json")],
    ledger: Annotated[
        Path | None, typer.Option("--ledger", help="ledger.json of the DP run (claimed epsilon)")
    ] = None,
    epsilon: Annotated[
        float | None, typer.Option("--epsilon", help="claimed epsilon, without a ledger")
    ] = None,
    delta: Annotated[
        float | None, typer.Option("--delta", help="delta (default: the ledger's or 1e-5)")
    ] = None,
    attacks: Annotated[
        str,
        typer.Option(
            "--attacks",
            help="comma-separated: loss, art_blackbox, lira_online, lira_offline, rmia "
            "(the last three train reference models on --population)",
        ),
    ] = "loss,art_blackbox",
    population: Annotated[
        str | None,
        typer.Option(
            "--population", help="data spec of a population like the members (LiRA, RMIA)"
        ),
    ] = None,
    population_sample: Annotated[
        int | None, typer.Option("--population-sample", help="seeded N population samples")
    ] = None,
    reference_models: Annotated[
        int, typer.Option("--reference-models", help="reference models to train (K)")
    ] = 8,
    reference_fraction: Annotated[
        float,
        typer.Option(
            "--reference-fraction",
            help="share of the pool (targets + population) each reference model trains on: "
            "match the audited model's training-set size",
        ),
    ] = 0.5,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference", help="reuse reference models saved in OUT/reference by an earlier audit"
        ),
    ] = None,
    reference_epochs: Annotated[
        int, typer.Option("--reference-epochs", help="reference recipe: epochs")
    ] = 10,
    reference_lr: Annotated[
        float, typer.Option("--reference-lr", help="reference recipe: learning rate")
    ] = 1e-3,
    reference_batch_size: Annotated[
        int, typer.Option("--reference-batch-size", help="reference recipe: batch size")
    ] = 64,
    reference_optimizer: Annotated[
        Literal["adam", "sgd"],
        typer.Option("--reference-optimizer", help="reference recipe: adam or sgd (momentum 0.9)"),
    ] = "adam",
    reference_weight_decay: Annotated[
        float, typer.Option("--reference-weight-decay", help="reference recipe: weight decay")
    ] = 0.0,
    reference_flip: Annotated[
        bool, typer.Option("--reference-flip", help="reference recipe: random horizontal flips")
    ] = False,
    reference_init: Annotated[
        Path | None,
        typer.Option(
            "--reference-init",
            help="pretrained weights the audited model was fine-tuned from (default: fresh "
            "initialization from its factory)",
        ),
    ] = None,
    reference_recipe_from: Annotated[
        Path | None,
        typer.Option(
            "--reference-recipe-from",
            help="a `raigate privacy train --out` folder: train the reference models with its "
            "DP-SGD recipe (same batch size, epochs, target epsilon; q and noise recalibrated "
            "to the reference set size) instead of the --reference-* options",
        ),
    ] = None,
    queries: Annotated[
        int, typer.Option("--queries", help="1: the image; 2: the image and its mirror")
    ] = 2,
    lira_variance: Annotated[
        Literal["auto", "global", "per_example"],
        typer.Option("--lira-variance", help="auto: one global variance below 64 models"),
    ] = "auto",
    rmia_mode: Annotated[
        Literal["online", "offline"],
        typer.Option("--rmia-mode", help="online: IN and OUT models; offline: OUT only"),
    ] = "online",
    rmia_a: Annotated[
        float, typer.Option("--rmia-a", help="RMIA offline: p(x) = (1+a)/2 p_OUT(x) + (1-a)/2")
    ] = 0.3,
    rmia_gamma: Annotated[float, typer.Option("--rmia-gamma", help="RMIA's gamma")] = 1.0,
    members_limit: Annotated[
        int | None, typer.Option("--members-limit", help="first N members only")
    ] = None,
    max_auc: Annotated[
        float | None, typer.Option("--max-auc", help="gate: exit 1 above this AUC")
    ] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="1 - confidence of the bound")] = 0.05,
    label_map: LabelMapOpt = None,
    trust_code: TrustCodeOpt = False,
    preprocess: PreprocessOpt = None,
    outputs: OutputsOpt = None,
    model_mode: ModelModeOpt = None,
    random_init: RandomInitOpt = False,
    weights: WeightsOpt = None,
    class_names: ClassNamesOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    task: TaskOpt = None,
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Membership inference (loss threshold, ART black box, LiRA online/offline and RMIA with
    reference models): AUC, TPR at FPR 0.1%/1% with intervals, and an empirical epsilon
    lower bound (Clopper-Pearson) next to the claimed epsilon."""
    from raigate.audit import privacy
    from raigate.data import load_data

    data = load_data(non_members, task=task, limit=limit, seed=seed)
    model = load_model_from_options(
        model_spec, weights, class_names, None, mean, std, data=data,
        trust_code=trust_code, random_init=random_init,
        preprocess=preprocess, outputs=outputs, mode=model_mode,
    )  # fmt: skip
    params = make_params(
        privacy.PrivacyParams,
        members=members,
        members_limit=members_limit,
        ledger=str(ledger) if ledger else None,
        epsilon=epsilon,
        delta=delta,
        attacks=list(parse_names(attacks) or []),
        population=population,
        population_sample=population_sample,
        reference_models=reference_models,
        reference_fraction=reference_fraction,
        reference=str(reference) if reference else None,
        reference_epochs=reference_epochs,
        reference_lr=reference_lr,
        reference_batch_size=reference_batch_size,
        reference_optimizer=reference_optimizer,
        reference_weight_decay=reference_weight_decay,
        reference_flip=reference_flip,
        reference_init=str(reference_init) if reference_init else None,
        reference_recipe_from=str(reference_recipe_from) if reference_recipe_from else None,
        queries=queries,
        lira_variance=lira_variance,
        rmia_mode=rmia_mode,
        rmia_a=rmia_a,
        rmia_gamma=rmia_gamma,
        alpha=alpha,
        max_auc=max_auc,
        task=task,
        label_map=read_label_map(label_map),
        device=resolve_device(device),
        seed=seed,
        progress=not quiet,
    )
    result = privacy.run(model, data, params, out_dir=out)
    path = result.write(out)
    m = result.metrics
    typer.echo(
        f"members {m['n_members']} (accuracy {m['member_accuracy']:.4f}), non-members "
        f"{m['n_non_members']} (accuracy {m['non_member_accuracy']:.4f})"
    )
    ref = result.params.get("reference_run")
    if ref is not None:
        how = (
            f"reused from {ref['directory']}"
            if ref["reused"]
            else (
                f"trained, {ref['cpu_seconds_per_reference_model']:.1f} CPU s each, mean train "
                f"accuracy {ref['train_accuracy_mean']:.4f}"
                + (f", saved in {ref['directory']}" if ref["directory"] else "")
            )
        )
        typer.echo(
            f"reference models: {ref['reference_models']} ({how}); population "
            f"{ref['population']}: {ref['population_n']} samples"
            + f"; each model trained on {ref['fraction']:g} of the pool of {ref['pool_size']}"
            + (f" ({ref['population_dropped_as_targets']} equal to a target dropped)"
               if ref["population_dropped_as_targets"] else "")
        )  # fmt: skip
        if ref.get("dp"):
            dp = ref["dp"]
            typer.echo(
                "reference models trained with DP-SGD"
                + (f" (recipe of {ref['recipe_from']})" if ref.get("recipe_from") else "")
                + f": spent epsilon at most {dp['epsilon_max']:.4f} (target "
                f"{dp['target_epsilon']:g}), N={min(dp['dataset_size'])}-"
                f"{max(dp['dataset_size'])}, steps {min(dp['steps'])}-{max(dp['steps'])}, sigma "
                f"{min(dp['noise_multiplier']):.4f}-{max(dp['noise_multiplier']):.4f}"
            )
    typer.echo(
        format_table(
            [_ci_row(r) for r in m["attacks"]],
            [
                "attack",
                "auc",
                "tpr@0.1%fpr",
                "tpr@1%fpr",
                "eps_lower",
                "eps_point",
                "models",
                "queries",
            ],
        )
    )
    claimed = m["claimed_epsilon"]
    n_attacks = len(m["attacks"])
    joint = f" jointly over {n_attacks} attacks, each at {1 - m['alpha_per_attack']:.1%}"
    typer.echo(
        f"\nempirical epsilon >= {m['eps_lower']:.3f} ({1 - alpha:.0%} confidence"
        f"{joint if n_attacks > 1 else ''}) vs claimed "
        f"{'none' if claimed is None else format(claimed, '.3f')} (delta {m['delta']:g})"
    )
    for f in result.findings:
        typer.echo(f"\n[{f.severity.upper()}] {f.message}")
    for a in result.artifacts:
        if a.endswith(".png"):
            typer.echo(f"\nROC (log-log): {out / a}")
    typer.echo(f"\nwrote {path}")
    if result.verdict == "fail":
        raise GateFailed("; ".join(f.message for f in result.findings if f.severity == "fail"))


@privacy_app.command("check-sampler")
@handle_errors
def check_sampler_cmd(
    weights: Annotated[
        Path,
        typer.Option(
            "--weights", help="per-example WeightedRandomSampler weights: .npy or one per line"
        ),
    ],
    batch_size: Annotated[int, typer.Option("--batch-size", help="the DataLoader's batch size")],
    num_samples: Annotated[
        int | None,
        typer.Option("--num-samples", help="the sampler's num_samples (default: all)"),
    ] = None,
    replacement: Annotated[
        bool, typer.Option("--replacement/--no-replacement", help="the sampler's replacement")
    ] = True,
) -> None:
    """Would an Opacus accountant charging q = batch/N cover a WeightedRandomSampler with
    these weights? Prints the true per-example rate of the heaviest example against q, and
    the rate Opacus' make_private would charge (opacus#813)."""
    from raigate.privacy.sampler import check_weighted, read_weights

    report = check_weighted(
        read_weights(weights),
        batch_size=batch_size,
        num_samples=num_samples,
        replacement=replacement,
    )
    typer.echo(report.message)
    if not report.ok:
        raise GateFailed("the sampler's draws are not the Poisson sampling the accountant charges")


def _ci_row(r: dict[str, Any]) -> dict[str, Any]:
    """One attack's table row: TPRs with their Clopper-Pearson intervals."""

    def tpr(key: str) -> str:
        lo, hi = r.get(f"{key}_ci", (None, None))
        v = r[key]
        return f"{v:.4f}" if lo is None else f"{v:.4f} [{lo:.3f},{hi:.3f}]"

    return {
        **r,
        "tpr@0.1%fpr": tpr("tpr_at_fpr_0.001"),
        "tpr@1%fpr": tpr("tpr_at_fpr_0.01"),
        "models": r.get("reference_models", 0),
    }


def register(app: typer.Typer) -> None:
    """Add ``raigate privacy train|audit|check-sampler`` to the CLI."""
    app.add_typer(privacy_app, name="privacy")
