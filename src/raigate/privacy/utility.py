"""What DP cost: accuracy of the private model next to the same model trained without DP.

DP-SGD's clipping and noise do not cost every class or group alike: examples that are
rare or atypical have large gradients that clipping shrinks most, so under-represented
groups lose more accuracy (Bagdasaryan, Poursaeed & Shmatikov 2019, "Differential Privacy
Has Disparate Impact on Model Accuracy"). :func:`utility_result` therefore reports
accuracy overall, per class and per attribute value (FairFace race, gender, age; the demo
data's groups), with ``cost = baseline accuracy - DP accuracy`` in percentage points when
a non-private baseline was trained on the same steps.
"""

from __future__ import annotations

from typing import Any

from raigate.audit.evaluate import EvaluateParams
from raigate.audit.evaluate import run as evaluate
from raigate.data.base import Dataset
from raigate.environment import collect_environment
from raigate.results import CheckResult, DataRef, Finding, ModelRef

__all__ = ["utility_result"]

NAME = "privacy_train"


def _joined(
    dp: list[dict[str, Any]], base: list[dict[str, Any]] | None, keys: list[str]
) -> list[dict[str, Any]]:
    index = {tuple(r[k] for k in keys): r for r in (base or [])}
    rows = []
    for r in dp:
        row = {k: r[k] for k in keys}
        row["n"] = r["n"]
        row["accuracy_dp"] = r["accuracy"]
        b = index.get(tuple(r[k] for k in keys))
        if base is not None:
            row["accuracy_baseline"] = b["accuracy"] if b else None
            both = b is not None and b["accuracy"] is not None and r["accuracy"] is not None
            row["cost_pp"] = 100 * (b["accuracy"] - r["accuracy"]) if both else None  # type: ignore[index]
        rows.append(row)
    return rows


def utility_result(
    run: Any,
    eval_data: Dataset | None,
    *,
    params: dict[str, Any],
    device: str = "cpu",
    progress: bool = True,
) -> CheckResult:
    """The ``result.json`` of ``raigate privacy train``: the ledger's numbers, accuracy of
    the DP model (and baseline) on ``eval_data``, and the gates on the spent and the
    empirically measured epsilon."""
    ledger = run.ledger
    metrics: dict[str, Any] = {
        "epsilon": ledger.epsilon,
        "target_epsilon": ledger.target_epsilon,
        "delta": ledger.delta,
        "epsilon_prv": ledger.epsilons.get("prv"),
        "epsilon_rdp": ledger.epsilons.get("rdp"),
        "noise_multiplier": ledger.noise_multiplier,
        "sample_rate": ledger.sample_rate,
        "steps": ledger.steps,
        "dataset_size": ledger.dataset_size,
    }
    eparams = EvaluateParams(device=device, progress=progress)
    data_ref = DataRef(spec=ledger.dataset_spec, manifest_digest=ledger.manifest_digest)
    if eval_data is not None:
        dp = evaluate(run.model, eval_data, eparams)
        base = evaluate(run.baseline, eval_data, eparams) if run.baseline is not None else None
        metrics["accuracy_dp"] = dp.metrics["accuracy"]
        metrics["accuracy_dp_ci_low"] = dp.metrics["accuracy_ci_low"]
        metrics["accuracy_dp_ci_high"] = dp.metrics["accuracy_ci_high"]
        metrics["n_eval"] = dp.metrics["n"]
        if base is not None:
            metrics["accuracy_baseline"] = base.metrics["accuracy"]
            metrics["cost_pp"] = 100 * (base.metrics["accuracy"] - dp.metrics["accuracy"])
        metrics["per_class"] = _joined(
            dp.metrics["per_class"], base.metrics["per_class"] if base else None, ["class"]
        )  # type: ignore[arg-type]
        metrics["per_attribute"] = _joined(
            dp.metrics["per_attribute"],  # type: ignore[arg-type]
            base.metrics["per_attribute"] if base else None,  # type: ignore[arg-type]
            ["attribute", "value"],
        )
        data_ref = DataRef(
            spec=eval_data.spec,
            manifest_digest=eval_data.manifest.digest,
            synthetic=eval_data.synthetic,
            n=len(eval_data),
            role="evaluation (non-members)",
        )
    findings = [
        Finding(
            id="privacy.spent_epsilon",
            severity="pass" if ledger.epsilon <= ledger.target_epsilon else "fail",
            metric="epsilon",
            value=ledger.epsilon,
            threshold=ledger.target_epsilon,
            message=(
                f"DP-SGD spent epsilon {ledger.epsilon:.3f} at delta {ledger.delta:g} "
                f"({ledger.accountant} accountant; rdp gives {ledger.epsilons['rdp']:.3f}) over "
                f"{ledger.steps} steps at sample rate {ledger.sample_rate:.4g} with noise "
                f"multiplier {ledger.noise_multiplier:.4f} and clipping norm "
                f"{ledger.max_grad_norm:g}"
                + (
                    f", after releasing the {ledger.group_balance['attribute']} group counts "
                    f"for --balance (Gaussian, noise std {ledger.group_balance['count_noise']:g})"
                    if ledger.group_balance
                    else ""
                )
                + f"; target {ledger.target_epsilon:g}"
            ),
        )
    ]
    if ledger.sampler is not None:  # the realized-rate test of the sampling that ran
        from raigate.privacy.sampler import sampler_finding

        findings.append(sampler_finding(ledger.sampler))
        metrics["sampler_examples_drawn"] = ledger.sampler.examples_drawn
        metrics["sampler_expected"] = ledger.sampler.expected
        metrics["sampler_p_value"] = ledger.sampler.p_value
    if ledger.group_balance:  # --balance: each group's released count and clip weight
        b = ledger.group_balance
        metrics["balance_groups"] = [
            {"group": g, "noisy_count": c, "weight": w}
            for g, c, w in zip(b["groups"], b["noisy_counts"], b["weights"], strict=True)
        ]
        metrics["balance_mean_weight"] = b["mean_weight"]
        metrics["balance_count_noise"] = b["count_noise"]
    if run.canaries is not None:
        c = run.canaries
        metrics["canary_eps_lower"] = c.eps_lower
        metrics["canaries"] = c.m
        metrics["canary_guesses"] = c.table
        ok = c.eps_lower <= ledger.epsilon
        findings.append(
            Finding(
                id="privacy.canary_epsilon",
                severity="pass" if ok else "fail",
                metric="canary_eps_lower",
                value=c.eps_lower,
                threshold=ledger.epsilon,
                message=(
                    f"one-run canary audit (Steinke et al. 2023, m={c.m} canaries, "
                    f"{1 - c.alpha:.0%} confidence): epsilon >= {c.eps_lower:.3f}, "
                    f"{'within' if ok else 'ABOVE'} the claimed {ledger.epsilon:.3f}"
                    + ("" if ok else ": the DP guarantee does not hold for this run")
                ),
            )
        )
    for p in run.warnings:
        findings.append(
            Finding(
                id=f"privacy.preflight.{p.code}",
                severity="warn",
                metric="preflight",
                value=None,
                threshold=None,
                message=p.message,
            )
        )
    return CheckResult(
        check=NAME,
        params=params,
        metrics=metrics,
        findings=findings,
        seed=params.get("seed"),
        environment=collect_environment(device),
        model=ModelRef(spec=run.model.spec, digest=run.model.digest),
        data=data_ref,
        timing_s=round(run.seconds, 3),
    )
