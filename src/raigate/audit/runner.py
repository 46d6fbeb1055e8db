"""Run an audit plan end to end and seal it: checks → report.json, report.html,
model-card.md, junit.xml → attestation.dsse.json (signed when a key is given).

Write order is what makes a crash harmless: everything the previous run wrote is removed
first (``prepare_out_dir``; a folder raigate did not write is refused, never emptied),
every file is written atomically, ``report.json`` is written after everything it describes
and the attestation last. A bundle with a ``report.json`` is complete; one whose
attestation verifies is the one that was signed, and holds nothing else. The bundle's own
rules (its folder, subjects, signing, verification) are in :mod:`raigate.reports.bundle`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raigate._io import write_atomic
from raigate.config import PRIMARY, AuditPlan, CheckInstance
from raigate.environment import collect_environment
from raigate.reports.bundle import (
    ATTESTATION,
    BUNDLE_FILES,
    MARKER,
    Verification,
    bundle_subjects,
    plan_folder,
    prepare_out_dir,
    sign_bundle,
    verify_bundle,
)
from raigate.results import AuditReport, CheckResult, dumps

__all__ = [  # the bundle's names stay importable from here, where the CLI and tests look
    "ATTESTATION",
    "BUNDLE_FILES",
    "MARKER",
    "AuditOutcome",
    "Verification",
    "bundle_subjects",
    "plan_folder",
    "preflight",
    "prepare_out_dir",
    "run_audit",
    "sign_bundle",
    "verify_bundle",
]

_RANK = {"pass": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class AuditOutcome:
    """What ``run_audit`` wrote and decided."""

    report: AuditReport
    out_dir: Path
    signed: bool
    seconds: float

    @property
    def passed(self) -> bool:
        return self.report.passed


def run_audit(
    plan: AuditPlan,
    out_dir: str | Path,
    *,
    key: str | Path | None = None,
    fail_on: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> AuditOutcome:
    """Run every check table in ``plan`` on its model (``[model]`` or a ``[models.NAME]``
    variant) and the plan's data, and write the sealed bundle."""
    from raigate.audit import CHECKS
    from raigate.data import load_data
    from raigate.models import load_model
    from raigate.models.base import Model
    from raigate.reports.attest import load_private_key

    start = time.perf_counter()
    out = Path(out_dir)
    prepare_out_dir(out)  # first: whatever fails next, no old report stays behind
    private_key = load_private_key(key) if key is not None else None  # fail before work
    instances = plan.check_instances()
    prepare_out_dir(out, [inst.name for inst in instances])  # announce the check folders

    data = load_data(
        plan.data.spec,
        task=plan.data.task,
        limit=plan.data.limit,
        sample=plan.data.sample,
        seed=plan.seed,
    )
    import torch

    models: dict[str, Model] = {}
    for name in (PRIMARY, *plan.models):
        torch.manual_seed(plan.seed)  # a factory without weights initializes from this seed
        m = plan.model_section(name)
        models[name] = load_model(
            m.spec,
            weights=m.weights,
            class_names=m.class_names,
            input_size=m.input_size,
            mean=m.mean,
            std=m.std,
            data=data,
            trust_code=plan.trust_code,
            random_init=m.random_init,
            preprocess=m.preprocess,
            outputs=m.outputs,
            mode=m.mode,
            spec_origin=plan.source or "the audit plan",
        )
    from raigate.models.onnx import access_line

    for m_ in models.values():
        if line := access_line(m_):
            echo(f"audit: {line}")
    model = models[PRIMARY]
    echo(
        f"audit: model {model.display_name} ({model.digest[:19]}…), data {data.spec} "
        f"(n={len(data)}{', SYNTHETIC' if data.synthetic else ''})"
    )
    for name in plan.models:
        echo(f"audit: variant {name}: {models[name].display_name} ({models[name].digest[:19]}…)")

    preflight(plan, instances, models, data)  # a bad last table costs no check time

    results: dict[str, CheckResult] = {}
    total = len(instances)
    for i, inst in enumerate(instances, 1):
        on = "" if inst.model == PRIMARY else f" on {inst.model}"
        label = inst.name if inst.name == inst.check else f"{inst.name} ({inst.check})"
        echo(f"[{i}/{total}] {label}{on} …")
        run, _ = CHECKS[inst.check]
        params = inst.params
        if "device" in type(params).model_fields:
            params = params.model_copy(update={"device": device})
        if "progress" in type(params).model_fields:
            params = params.model_copy(update={"progress": progress})
        extra = {kw: models[ref] for kw, ref in inst.model_fields().items()}
        check_dir = out / "checks" / inst.name
        t0 = time.perf_counter()
        torch.manual_seed(plan.seed)  # each check starts from the same RNG state
        result = run(models[inst.model], data, params, out_dir=check_dir, **extra)
        result.artifacts = [f"checks/{inst.name}/{a}" for a in result.artifacts]
        result.write(check_dir)
        results[inst.name] = result
        scope = f"; {result.verdict_scope}" if result.verdict_scope else ""
        if result.mode == "black-box":
            scope += "; black-box"
        echo(f"[{i}/{total}] {label}: {result.verdict}{scope} ({time.perf_counter() - t0:.1f}s)")

    gates = [
        {"check": name, "check_type": r.check, **f.model_dump()}
        for name, r in results.items()
        for f in r.findings
    ]
    verdict = max((g["severity"] for g in gates), key=_RANK.__getitem__, default="pass")
    from raigate.reports.compliance import compliance_table

    report = AuditReport(
        plan=plan.model_dump(exclude={"source"}),
        environment=collect_environment(device),
        seed=plan.seed,
        model=model.describe(),
        models={name: models[name].describe() for name in plan.models},
        data={
            **{k: v for k, v in data.describe().items() if k != "manifest_files"},
            "files": len(data.manifest.files),
        },
        checks=results,
        gates=gates,
        compliance=compliance_table(gates, {name: r.check for name, r in results.items()}),
        verdict=verdict,  # type: ignore[arg-type]
        fail_on=(fail_on or plan.fail_on),  # type: ignore[arg-type]
    )
    _write_bundle(report, out, plan, data.manifest.to_dict())
    signed = private_key is not None
    if private_key is not None:
        sign_bundle(out, report, private_key, plan_dir=plan_folder(plan))
    return AuditOutcome(
        report=report, out_dir=out, signed=signed, seconds=time.perf_counter() - start
    )


def preflight(
    plan: AuditPlan, instances: list[CheckInstance], models: dict[str, Any], data: Any
) -> None:
    """Run every check table's ``validate`` (``raigate.audit.VALIDATORS``) against its model
    and the plan's data before any check runs. The first problem is a ConfigError naming the
    plan file and the table, e.g. ``plan.toml: checks.fairness: ...``."""
    from raigate.audit import VALIDATORS
    from raigate.errors import ConfigError, UserError

    where = plan.source or "plan"
    for inst in instances:
        validate = VALIDATORS.get(inst.check)
        if validate is None:
            continue
        extra = {kw: models[ref] for kw, ref in inst.model_fields().items()}
        try:
            validate(models[inst.model], data, inst.params, **extra)
        except UserError as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"{where}: checks.{inst.name}: {first}") from None


def _write_bundle(
    report: AuditReport, out: Path, plan: AuditPlan, manifest: dict[str, Any]
) -> None:
    from raigate.reports.render import render_html, render_junit, render_model_card

    write_atomic(out / "model-manifest.json", dumps(report.model))
    write_atomic(out / "data-manifest.json", dumps(manifest))
    write_atomic(out / "report.html", render_html(report, out))
    write_atomic(out / "model-card.md", render_model_card(report, plan.card.model_dump()))
    write_atomic(out / "junit.xml", render_junit(report))
    report.write(out)  # last but the attestation: its presence marks a complete bundle
