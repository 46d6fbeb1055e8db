"""Measured privacy leakage: membership inference against the model, and the epsilon it proves.

The audited data are the non-members (examples the model never trained on, e.g. the test
split); ``members`` names the training data. Each attack scores every example, and the
result reports, per attack, the AUC (probability that a random member outscores a random
non-member), TPR at FPR 0.1% and 1%, and an empirical epsilon lower bound at confidence
``1 - alpha`` from Clopper-Pearson bounds on TPR and FPR (definitions in
:mod:`raigate.privacy.mia`). ``lira_online``, ``lira_offline`` and ``rmia``
(:mod:`raigate.privacy.lira`) train reference models on a ``population`` first
(:mod:`raigate.privacy.reference`; saved under ``OUT/reference``, reused with ``reference``);
with an out folder the check draws every attack's ROC on log-log axes
(``membership_roc.png``). With a claimed epsilon (a DP-SGD ``ledger.json`` or
``epsilon``), a lower bound above it is a ``fail``: the guarantee does not hold.

>>> import raigate
>>> from raigate.audit import privacy
>>> data = raigate.load_data("demo:test", limit=40)
>>> model = raigate.load_model("raigate.zoo:small_cnn", data=data, random_init=True)
>>> params = privacy.PrivacyParams(members="demo:train", members_limit=40,
...     attacks=["loss"], progress=False)
>>> result = privacy.run(model, data, params)
>>> bool(0.0 <= result.metrics["auc"] <= 1.0)
True
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from raigate.data.base import Dataset
from raigate.environment import collect_environment
from raigate.errors import ConfigError
from raigate.labels import LabelMap
from raigate.models.base import Model, require_plain
from raigate.results import CheckResult, DataRef, Finding, ModelRef
from raigate.values import Fraction, Listed, Seed

NAME = "privacy"

__all__ = ["NAME", "PrivacyParams", "run", "validate"]


class PrivacyParams(BaseModel):
    """Parameters of the privacy (membership inference) check."""

    model_config = ConfigDict(extra="forbid")
    # resolved relative to the audit plan file (raigate.config)
    PLAN_PATH_FIELDS: ClassVar[dict[str, str]] = {
        "members": "data",
        "non_members": "data",
        "ledger": "path",
        "population": "data",
        "reference": "path",
        "reference_init": "path",
        "reference_recipe_from": "path",
        "label_map": "path",
    }

    members: str = Field(description="data spec of the training members, e.g. cifar100:ROOT:train")
    members_limit: int | None = Field(None, gt=0, description="first N members only")
    members_sample: int | None = Field(None, gt=0, description="seeded, stratified N members")
    non_members: str | None = Field(
        None, description="data spec of non-members (default: the audited data)"
    )
    ledger: str | None = Field(None, description="ledger.json of a DP run: the claimed epsilon")
    epsilon: Fraction | None = Field(None, gt=0, description="claimed epsilon (without a ledger)")
    delta: float | None = Field(None, gt=0, lt=1, description="delta (default: ledger's or 1e-5)")
    attacks: Annotated[
        list[Literal["loss", "art_blackbox", "lira_online", "lira_offline", "rmia"]], Listed
    ] = Field(default_factory=lambda: ["loss", "art_blackbox"])
    art_attack_model: Literal["rf", "gb", "lr", "nn"] = "rf"
    # -- reference models (LiRA, RMIA: raigate.privacy.lira, raigate.privacy.reference) --
    population: str | None = Field(
        None, description="data spec of a population like the members, for reference models"
    )
    population_limit: int | None = Field(None, gt=0, description="first N population samples")
    population_sample: int | None = Field(None, gt=0, description="seeded N population samples")
    reference_models: int = Field(8, ge=2, description="reference models to train (K)")
    reference_fraction: Fraction = Field(
        0.5, gt=0, lt=1, description="share of the pool each reference model trains on"
    )
    reference: str | None = Field(
        None, description="folder of saved reference models (reference.json) to reuse"
    )
    reference_epochs: int = Field(10, gt=0)
    reference_lr: Fraction = Field(1e-3, gt=0)
    reference_batch_size: int = Field(64, gt=0)
    reference_optimizer: Literal["adam", "sgd"] = "adam"
    reference_weight_decay: Fraction = Field(0.0, ge=0)
    reference_flip: bool = Field(False, description="random horizontal flips in training")
    reference_init: str | None = Field(
        None, description="pretrained weights the audited model was fine-tuned from"
    )
    reference_recipe_from: str | None = Field(
        None,
        description="a `raigate privacy train` output folder: reference models repeat its "
        "DP-SGD recipe (raigate.privacy.reference_dp) instead of the plain reference_* one",
    )
    queries: Literal[1, 2] = Field(2, description="1: the image; 2: the image and its mirror")
    lira_variance: Literal["auto", "global", "per_example"] = "auto"
    rmia_mode: Literal["online", "offline"] = "online"
    rmia_a: Fraction = Field(
        0.3, ge=0, le=1, description="RMIA offline: p(x) = (1+a)/2 p_OUT + (1-a)/2"
    )
    rmia_gamma: Fraction = Field(1.0, gt=0, description="RMIA: ratio a population z must not beat")
    alpha: float = Field(0.05, gt=0, lt=1, description="1 - confidence of the epsilon bound")
    max_auc: float | None = Field(None, ge=0.5, le=1, description="gate: fail above this AUC")
    task: str | None = None
    label_map: LabelMap = Field(None, description="model class -> data label")
    batch_size: int = Field(256, gt=0)
    device: str = "cpu"
    seed: Seed = 0
    progress: bool = True


def _claim(params: PrivacyParams) -> tuple[float | None, float, str]:
    """(claimed epsilon, delta, where they came from)."""
    if params.ledger is not None:
        from raigate.privacy.ledger import Ledger

        ledger = Ledger.load(params.ledger)
        if params.epsilon is not None and abs(params.epsilon - ledger.epsilon) > 1e-9:
            raise ConfigError(
                f"--epsilon {params.epsilon} contradicts the ledger's {ledger.epsilon:.4f}; "
                "give one of them"
            )
        delta = params.delta if params.delta is not None else ledger.delta
        return ledger.epsilon, delta, f"ledger {params.ledger}"
    delta = params.delta if params.delta is not None else 1e-5
    return params.epsilon, delta, "--epsilon" if params.epsilon is not None else "none"


def _inputs(model: Model, data: Dataset, params: PrivacyParams) -> tuple[Dataset, Dataset]:
    """(members, non-members), loaded and checked against the model: no Opacus machinery
    left, both sets load, have samples and the model's channels, and match its classes."""
    from raigate.audit.evaluate import require_inputs
    from raigate.data import load_data
    from raigate.labels import align_classes
    from raigate.privacy.preflight import check_unwrapped

    require_plain(model, "the privacy check (membership inference)")
    problems = check_unwrapped(model.net)
    if problems:
        raise ConfigError(
            f"the model still carries per-sample-gradient machinery ({problems[0].message}); "
            "audit the saved model spec instead"
        )
    task = params.task or data.task
    members = load_data(
        params.members,
        task=task,
        limit=params.members_limit,
        sample=params.members_sample,
        seed=params.seed,
    )
    non_members = load_data(params.non_members, task=task) if params.non_members else data
    for part in (members, non_members):
        require_inputs(model, part)
        align_classes(model.class_names, part.class_names, params.label_map)
    return members, non_members


def _population(model: Model, params: PrivacyParams, task: str | None) -> Dataset | None:
    """The population for reference models, when an attack needs them (else ``None``)."""
    from raigate.audit.evaluate import require_inputs
    from raigate.data import load_data
    from raigate.labels import align_classes
    from raigate.privacy.mia import REFERENCE_ATTACKS

    wanted = [a for a in params.attacks if a in REFERENCE_ATTACKS]
    if not wanted:
        return None
    if params.population is None:
        raise ConfigError(
            f"attack {wanted[0]} needs reference models trained on a population like the "
            "members: give --population DATA_SPEC (plan: population = ...)"
        )
    population = load_data(
        params.population,
        task=task,
        limit=params.population_limit,
        sample=params.population_sample,
        seed=params.seed,
    )
    require_inputs(model, population)
    align_classes(model.class_names, population.class_names, params.label_map)
    if params.reference is not None and not (Path(params.reference) / "reference.json").is_file():
        raise ConfigError(f"--reference {params.reference}: no reference.json there")
    _dp_recipe(params)
    return population


def _dp_recipe(params: PrivacyParams) -> dict[str, Any] | None:
    """The DP recipe of ``reference_recipe_from`` (checked), or ``None`` without it."""
    if params.reference_recipe_from is None:
        return None
    from raigate.privacy.reference_dp import dp_recipe_from

    dp = dp_recipe_from(params.reference_recipe_from)
    if dp["batchnorm"] == "fold" and params.reference_init is None and params.reference is None:
        # folding keeps pretrained statistics; a fresh network has none worth keeping
        raise ConfigError(
            f"--reference-recipe-from {params.reference_recipe_from}: the run folded BatchNorm "
            "(pretrained weights); give --reference-init with the weights it started from"
        )
    return dp


def validate(model: Model, data: Dataset, params: PrivacyParams) -> None:
    """Plan preflight: the claim (ledger readable, epsilon consistent with it) and the data
    sets (members and population specs load, samples, channels, classes), before any check
    runs."""
    _claim(params)
    _inputs(model, data, params)
    _population(model, params, params.task or data.task)


def _reference_scores(
    model: Model,
    members: Dataset,
    non_members: Dataset,
    params: PrivacyParams,
    out_dir: str | Path | None,
) -> tuple[dict[str, tuple[Any, Any]], dict[str, Any]]:
    """Scores of the reference-model attacks (members, non-members) and what they cost."""
    import numpy as np

    from raigate.privacy.mia import REFERENCE_ATTACKS
    from raigate.privacy.reference import (
        REFERENCE_DIR,
        ReferenceRecipe,
        build_pool,
        load_reference,
        reference_attack_scores,
        train_reference,
    )

    population = _population(model, params, params.task or members.task)
    assert population is not None
    pool = build_pool(model, members, non_members, population, label_map=params.label_map)
    dp = _dp_recipe(params)
    if params.reference is not None:
        refs = load_reference(params.reference, model, pool, dp=dp)
    else:
        recipe = ReferenceRecipe(
            epochs=params.reference_epochs,
            lr=params.reference_lr,
            batch_size=params.reference_batch_size,
            optimizer=params.reference_optimizer,
            weight_decay=params.reference_weight_decay,
            flip=params.reference_flip,
            init=params.reference_init,
            dp=dp,
        )
        refs = train_reference(
            model,
            pool,
            k=params.reference_models,
            fraction=params.reference_fraction,
            recipe=recipe,
            seed=params.seed,
            out_dir=None if out_dir is None else Path(out_dir) / REFERENCE_DIR,
            device=params.device,
            progress=params.progress,
            queries=params.queries,
            batch_size=params.batch_size,
        )
    scores = reference_attack_scores(
        model, pool, refs, [a for a in params.attacks if a in REFERENCE_ATTACKS],
        queries=params.queries, variance=params.lira_variance, rmia_mode=params.rmia_mode,
        rmia_a=params.rmia_a, rmia_gamma=params.rmia_gamma, batch_size=params.batch_size,
        device=params.device, seed=params.seed,
    )  # fmt: skip
    nm, nt = pool.n_members, pool.n_targets
    split = {k: (v[:nm], v[nm:nt]) for k, v in scores.items()}
    cpu = refs.cpu_seconds
    info = {
        "files": ["reference.json", *(m["file"] for m in refs.manifest["models"])],
        "reference_models": len(refs.nets),
        "queries": params.queries,
        "reused": refs.reused,
        "directory": None if refs.directory is None else str(refs.directory),
        "recipe": refs.manifest["recipe"],
        "fraction": refs.manifest["fraction"],
        "pool_size": refs.manifest["pool_size"],
        "population": population.spec,
        "population_digest": population.manifest.digest,
        "population_n": len(pool.population),
        "population_dropped_as_targets": pool.dropped,
        "cpu_seconds_per_reference_model": float(np.mean(cpu)) if cpu else None,
        "train_accuracy_mean": float(
            np.mean([m["train_accuracy"] for m in refs.manifest["models"]])
        ),
        "recipe_from": params.reference_recipe_from,
    }
    ledgers = [m["ledger"] for m in refs.manifest["models"] if m.get("ledger")]
    if ledgers:
        info["dp"] = {
            "epsilon_max": max(led["epsilon"] for led in ledgers),
            "target_epsilon": ledgers[0]["target_epsilon"],
            "noise_multiplier": [led["noise_multiplier"] for led in ledgers],
            "sample_rate": [led["sample_rate"] for led in ledgers],
            "steps": [led["steps"] for led in ledgers],
            "dataset_size": [led["dataset_size"] for led in ledgers],
        }
    return split, info


def _cost(r: Any) -> str:
    """`` (8 reference models, 2 queries per example)`` for a reference-model attack."""
    if not r.reference_models:
        return ""
    return f" ({r.reference_models} reference models, {r.queries} queries per example)"


def run(
    model: Model,
    data: Dataset,
    params: PrivacyParams | None = None,
    *,
    out_dir: str | Path | None = None,
) -> CheckResult:
    """Attack ``model`` with members (``params.members``) against non-members (``data``, or
    ``params.non_members``); see the module docstring for every number reported."""
    if params is None:
        raise ConfigError("the privacy check needs members: PrivacyParams(members=DATA_SPEC)")
    from raigate.privacy.mia import (
        REFERENCE_ATTACKS,
        art_blackbox_scores,
        model_outputs,
        score_attack,
    )

    start = time.perf_counter()
    claimed, delta, source = _claim(params)
    members, non_members = _inputs(model, data, params)
    if members.manifest.digest == non_members.manifest.digest:
        raise ConfigError(
            f"members {members.spec} and non-members {non_members.spec} are the same data; "
            "non-members must be examples the model never trained on (e.g. the test split)"
        )
    out_kw: dict[str, Any] = {
        "batch_size": params.batch_size,
        "device": params.device,
        "progress": params.progress,
        "label_map": params.label_map,
        "seed": params.seed,
    }
    # each pass shared out over the ranks of a torchrun world, one progress stage each
    mo = model_outputs(model, members, stage="member_outputs", **out_kw)
    no = model_outputs(model, non_members, stage="non_member_outputs", **out_kw)

    attacks = list(dict.fromkeys(params.attacks))
    # The verdict rests on the strongest of m attacks: each bound is taken at alpha / m
    # (Bonferroni), so "some attack's bound is wrong" has probability at most alpha.
    each = params.alpha / len(attacks)
    ref_scores: dict[str, tuple[Any, Any]] = {}
    ref_info: dict[str, Any] | None = None
    if any(a in REFERENCE_ATTACKS for a in attacks):
        ref_scores, ref_info = _reference_scores(model, members, non_members, params, out_dir)
    results = []
    curves: dict[str, tuple[Any, Any]] = {}
    for name in attacks:
        cost: dict[str, int] = {}
        if name == "loss":
            sm, sn = -mo.loss, -no.loss
        elif name == "art_blackbox":
            sm, sn = art_blackbox_scores(
                model, mo, no, attack_model=params.art_attack_model, seed=params.seed
            )
        else:
            sm, sn = ref_scores[name]
            assert ref_info is not None
            cost = {"reference_models": ref_info["reference_models"], "queries": params.queries}
        curves[name] = (sm, sn)
        results.append(
            score_attack(name, sm, sn, delta=delta, alpha=each, seed=params.seed, **cost)
        )
    table = [r.record() for r in results]
    best = max(results, key=lambda r: r.epsilon["eps_lower"])
    best_auc = max(results, key=lambda r: r.auc)
    conf = f"{1 - params.alpha:.0%}"
    joint = (
        f"{conf} confidence jointly over {len(attacks)} attacks (each at "
        f"{1 - each:.1%}, Bonferroni)"
        if len(attacks) > 1
        else f"{conf} confidence"
    )
    eps_text = (
        f"empirical epsilon lower bound {best.epsilon['eps_lower']:.3f} ({joint}, "
        f"attack {best.attack}{_cost(best)}, threshold chosen on half the scores, "
        f"Clopper-Pearson on the other half: {best.epsilon.get('tp')}/"
        f"{best.epsilon.get('n_members_test')} members and "
        f"{best.epsilon.get('fp')}/{best.epsilon.get('n_non_members_test')} non-members flagged, "
        f"delta={delta:g})"
    )
    findings: list[Finding] = []
    if claimed is not None:
        broken = best.epsilon["eps_lower"] > claimed
        findings.append(
            Finding(
                id="privacy.empirical_epsilon",
                severity="fail" if broken else "pass",
                metric="eps_lower",
                value=best.epsilon["eps_lower"],
                threshold=claimed,
                message=(
                    f"{eps_text} is {'ABOVE' if broken else 'below'} the claimed epsilon "
                    f"{claimed:.3f} ({source})"
                    + (": the DP guarantee does not hold" if broken else "")
                ),
            )
        )
    else:
        leaks = best.epsilon["eps_lower"] > 0
        findings.append(
            Finding(
                id="privacy.empirical_epsilon",
                severity="warn" if leaks else "pass",
                metric="eps_lower",
                value=best.epsilon["eps_lower"],
                threshold=None,
                message=(
                    f"{eps_text}; no DP claim to compare with"
                    + (": membership is measurably inferable" if leaks else "")
                ),
            )
        )
    if params.max_auc is not None:
        findings.append(_auc_finding(results, params.max_auc, each, joint))
    if params.ledger is not None:  # a ledger whose sampling refutes its own rate: no claim
        from raigate.privacy.ledger import Ledger
        from raigate.privacy.sampler import sampler_finding

        record = Ledger.load(params.ledger).sampler
        if record is not None:
            findings.append(sampler_finding(record))
    artifacts: list[str] = []
    if out_dir is not None:
        from raigate import parallel
        from raigate.audit.privacy_plots import ROC_NAME, plot_roc

        if parallel.current().main:  # every rank holds the same curves; one draws them
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            plot_roc(
                Path(out_dir) / ROC_NAME,
                curves,
                f"membership inference: {len(mo.labels)} members vs {len(no.labels)} non-members",
            )
        artifacts.append(ROC_NAME)
        if ref_info is not None and not ref_info["reused"]:
            # the saved reference models are part of the bundle: signed, like the figure
            artifacts += [f"reference/{f}" for f in ref_info["files"]]
    metrics: dict[str, Any] = {
        "attacks": table,
        "reference_models": 0 if ref_info is None else ref_info["reference_models"],
        "eps_lower": best.epsilon["eps_lower"],
        "auc": best_auc.auc,
        "alpha_per_attack": each,
        "claimed_epsilon": claimed,
        "delta": delta,
        "n_members": len(mo.labels),
        "n_non_members": len(no.labels),
        "member_accuracy": float((mo.probs.argmax(1) == mo.labels).mean()),
        "non_member_accuracy": float((no.probs.argmax(1) == no.labels).mean()),
    }
    return CheckResult(
        check=NAME,
        params={
            **params.model_dump(exclude={"progress"}),
            "claim_source": source,
            "strongest_attack": best.attack,
            "reference_run": ref_info,
            "definitions": {
                "auc": "P(score of a random member > score of a random non-member), ties 1/2",
                "tpr_at_fpr": "TPR at the largest ROC point with FPR <= the target",
                "eps_lower": "largest epsilon with TPR_lo > e^eps FPR_hi + delta or "
                "1 - FPR_hi > e^eps (1 - TPR_lo) + delta, one-sided Clopper-Pearson at a/2 "
                "each on a held-out half, a = alpha / number of attacks (Bonferroni: the "
                "strongest attack's bound holds with confidence 1 - alpha)",
                "auc_gate": "fail: some attack's AUC lower bound (Hanley-McNeil, one-sided at "
                "alpha / number of attacks) is above max_auc; pass: every attack's upper bound "
                "is at or below it; warn: otherwise",
                "loss": "score = -cross-entropy of the true label (Yeom et al. 2018)",
                "art_blackbox": f"ART MembershipInferenceBlackBox ({params.art_attack_model}) "
                "on probabilities + label, fit on half, scored on the other half",
                "lira_online": "Carlini et al. 2022: log N(phi; mu_in, s_in) - log N(phi; "
                "mu_out, s_out), phi = logit_y - logsumexp(other logits), Gaussians fitted "
                "to the reference models that did / did not train on the example, mean over "
                "queries; one global variance below 64 reference models (lira_variance auto)",
                "lira_offline": "Carlini et al. 2022: log Pr[Z <= phi], Z ~ N(mu_out, s_out^2) "
                "from the OUT reference models only, mean over queries",
                "rmia": "Zarifzadeh et al. 2024: fraction of population z with "
                "(p(x|theta)/p(x)) / (p(z|theta)/p(z)) >= gamma, p(.) the reference models' "
                "mean probability of the true label (offline: (1+a)/2 p_OUT + (1-a)/2)",
            },
        },
        metrics=metrics,
        findings=findings,
        artifacts=artifacts,
        seed=params.seed,
        environment=collect_environment(params.device),
        model=ModelRef.of(model),
        data=DataRef(
            spec=non_members.spec,
            manifest_digest=non_members.manifest.digest,
            synthetic=non_members.synthetic,
            n=len(non_members),
            members_spec=members.spec,
            members_manifest_digest=members.manifest.digest,
            warnings=[*non_members.warnings, *members.warnings],
        ),
        timing_s=round(time.perf_counter() - start, 3),
    )


def _auc_finding(results: list[Any], max_auc: float, each: float, joint: str) -> Finding:
    """The AUC gate over all attacks at once, by one-sided bounds at ``alpha / m`` each."""
    from raigate.privacy.mia import auc_interval

    bounds = [auc_interval(r.auc, r.n_members, r.n_non_members, 2 * each) for r in results]
    worst = max(range(len(results)), key=lambda i: bounds[i][0])
    top = max(range(len(results)), key=lambda i: bounds[i][1])
    if bounds[worst][0] > max_auc:
        severity, i, rel = "fail", worst, "lies entirely above"
    elif bounds[top][1] <= max_auc:
        severity, i, rel = "pass", top, "lies at or below"
    else:
        severity, i, rel = "warn", top, "straddles"
    r, (lo, hi) = results[i], bounds[i]
    return Finding(
        id="privacy.membership_auc",
        severity=severity,  # type: ignore[arg-type]
        metric="auc",
        value=max(x.auc for x in results),
        threshold=max_auc,
        message=(
            f"membership inference AUC {r.auc:.4f} (attack {r.attack}{_cost(r)}, "
            f"{r.n_members} members vs {r.n_non_members} non-members; 0.5 is chance): its "
            f"interval [{lo:.4f}, "
            f"{hi:.4f}] ({joint}, Hanley-McNeil) {rel} the maximum {max_auc:.4f}"
        ),
    )
