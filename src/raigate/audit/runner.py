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

import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raigate import parallel
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
    resume: bool = False,
    pdf: bool | None = None,
) -> AuditOutcome:
    """Run every check table in ``plan`` on its model (``[model]`` or a ``[models.NAME]``
    variant) and the plan's data, and write the sealed bundle.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs this with the same plan: the
    per-image work of each check is split across them (:mod:`raigate.parallel`), each
    aggregates the same gathered results, and rank 0 alone prints, writes and signs.
    Each finished batch is kept in ``OUT/.progress`` until the bundle is written;
    ``resume`` loads the batches a killed run of the same plan, models and data finished.
    ``pdf``: also print report.pdf with headless Chromium (True: required, a ConfigError
    before any work where Chromium is missing; None: where Chromium is found; False: never).
    Rank 0 holds a lock on ``out_dir`` throughout: a second audit into it exits 2."""
    start = time.perf_counter()
    out = Path(out_dir)
    world, device = parallel.start(device)
    with contextlib.ExitStack() as stack:
        if world.main:  # one writer per folder, for the whole run
            _lock(out, stack)
        return _run(plan, out, world, device, key, fail_on, progress, echo, resume, start, pdf)


def _lock(out: Path, stack: contextlib.ExitStack) -> None:
    """Lock ``out`` (made if new) against another audit writing it; a path that cannot be
    a folder is left to prepare_out_dir's errors."""
    from raigate._io import folder_lock

    with contextlib.suppress(OSError):
        out.mkdir(parents=True, exist_ok=True)
    if out.is_dir():
        stack.enter_context(folder_lock(out))


def _run(
    plan: AuditPlan,
    out: Path,
    world: parallel.World,
    device: str,
    key: str | Path | None,
    fail_on: str | None,
    progress: bool,
    echo: Callable[[str], None],
    resume: bool,
    start: float,
    pdf: bool | None = None,
) -> AuditOutcome:
    """run_audit's work, on every rank (rank 0 holding the folder's lock)."""
    from raigate.data import load_data
    from raigate.models import load_model
    from raigate.models.base import Model
    from raigate.reports.attest import load_private_key

    if world.main:
        prepare_out_dir(out, keep_progress=resume)  # first: no old report stays behind
    else:
        echo = _quiet  # rank 0 speaks for the run
        if world.local_rank == 0 and not resume:
            parallel.remove_progress(out)  # another machine's stale batches
    # fail before work; rank 0 alone signs, so only its machine needs the key file
    private_key = load_private_key(key) if key is not None and world.main else None
    if pdf and world.main:
        from raigate.errors import ConfigError
        from raigate.reports.pdf import find_chromium

        if find_chromium() is None:
            raise ConfigError(
                "--pdf: no Chromium on PATH to print report.pdf (apt-get install chromium)"
            )
    instances = plan.check_instances()
    if world.main:  # announce the check folders
        prepare_out_dir(out, [inst.name for inst in instances], keep_progress=resume)
    world.barrier()  # nobody writes progress into a folder rank 0 is still emptying

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
    if world.size > 1:
        echo(
            f"audit: {world.size} processes ({world.backend}), devices "
            f"{', '.join(world.devices)}; per-image work split in fixed batches"
        )

    results: dict[str, CheckResult] = {}
    total = len(instances)
    fingerprint = run_fingerprint(plan, models, data)
    # ranks other than 0 write their artifacts into a folder that goes whatever happens
    throwaway = (
        contextlib.nullcontext(None)
        if world.main
        else tempfile.TemporaryDirectory(prefix="raigate-rank-")
    )
    with throwaway as scratch, parallel.run_scope(out / parallel.PROGRESS, fingerprint):
        for i, inst in enumerate(instances, 1):
            results[inst.name] = _run_check(
                inst, i, total, models, data, out, scratch, device, progress, echo, plan.seed
            )
    world.barrier()  # every rank's last batch is in before the progress goes
    if world.main or world.local_rank == 0:  # each machine's batches: done with
        parallel.remove_progress(out)  # (rank 0's bundle holds nothing else)
    report = _report(plan, device, model, models, data, results, fail_on)
    if not world.main:  # the same report, neither written nor signed here
        return AuditOutcome(
            report=report, out_dir=out, signed=False, seconds=time.perf_counter() - start
        )
    _write_bundle(report, out, plan, data.manifest.to_dict(), signing_key=private_key, pdf=pdf)
    signed = private_key is not None
    if private_key is not None:
        sign_bundle(out, report, private_key, plan_dir=plan_folder(plan), key_path=key)
    return AuditOutcome(
        report=report, out_dir=out, signed=signed, seconds=time.perf_counter() - start
    )


def _quiet(_msg: str) -> None:
    """The echo of ranks other than 0."""


def run_fingerprint(plan: AuditPlan, models: dict[str, Any], data: Any) -> str:
    """What per-batch progress must match to be reused: the plan (every check parameter
    and seed), each model's digest and the data manifest's digest."""
    import hashlib

    parts = {
        "plan": plan.model_dump(mode="json", exclude={"source"}),
        "models": {name: m.digest for name, m in models.items()},
        "data": data.manifest.digest,
    }
    return hashlib.sha256(dumps(parts).encode()).hexdigest()


def _run_check(
    inst: CheckInstance,
    i: int,
    total: int,
    models: dict[str, Any],
    data: Any,
    out: Path,
    scratch: str | None,
    device: str,
    progress: bool,
    echo: Callable[[str], None],
    seed: int,
) -> CheckResult:
    """One check table: its result written to ``checks/NAME`` (rank 0; the other ranks
    write their artifacts to a scratch folder that is thrown away)."""
    import torch

    from raigate.audit import CHECKS

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
    root = out if scratch is None else Path(scratch)
    check_dir = root / "checks" / inst.name
    t0 = time.perf_counter()
    torch.manual_seed(seed)  # each check starts from the same RNG state
    with parallel.check_scope(inst.name) as scope:
        result = run(models[inst.model], data, params, out_dir=check_dir, **extra)
    result.artifacts = [f"checks/{inst.name}/{a}" for a in result.artifacts]
    if scratch is None:
        result.write(check_dir)
    reused = sum(scope.reused.values()) if scope is not None else 0
    world = parallel.current()
    if world.size > 1:  # every rank's, not rank 0's alone
        reused = sum(int(t) for t in world.all_gather_text(str(reused)))
    scope_text = f"; {result.verdict_scope}" if result.verdict_scope else ""
    if result.mode == "black-box":
        scope_text += "; black-box"
    if reused:
        scope_text += (
            f"; {reused} batch{'es' if reused > 1 else ''} resumed from {parallel.PROGRESS}"
        )
    echo(f"[{i}/{total}] {label}: {result.verdict}{scope_text} ({time.perf_counter() - t0:.1f}s)")
    return result


def _report(
    plan: AuditPlan,
    device: str,
    model: Any,
    models: dict[str, Any],
    data: Any,
    results: dict[str, CheckResult],
    fail_on: str | None,
) -> AuditReport:
    """The audit's report from its checks' results (the same on every rank)."""
    from raigate.reports.compliance import compliance_table

    gates = [
        {"check": name, "check_type": r.check, **f.model_dump()}
        for name, r in results.items()
        for f in r.findings
    ]
    verdict = max((g["severity"] for g in gates), key=_RANK.__getitem__, default="pass")
    return AuditReport(
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
    report: AuditReport,
    out: Path,
    plan: AuditPlan,
    manifest: dict[str, Any],
    *,
    signing_key: Any = None,
    pdf: bool | None = None,
) -> None:
    """Write the bundle's files. ``signing_key``: the key that will sign the bundle next;
    the page names its key id, since the signature is made only after the page exists.
    ``pdf``: print report.pdf (True), never (False), or where Chromium is found (None)."""
    from raigate.reports.attest import key_id
    from raigate.reports.mlbom import MLBOM_FILE, build_mlbom
    from raigate.reports.render import render_html, render_junit, render_model_card

    kid = key_id(signing_key.public_key()) if signing_key is not None else None
    write_atomic(out / "model-manifest.json", dumps(report.model))
    write_atomic(out / "data-manifest.json", dumps(manifest))
    write_atomic(out / "report.html", render_html(report, out, key_id=kid))
    if pdf is not False:
        from raigate.reports.pdf import PDF_FILE, print_pdf

        print_pdf(out / "report.html", out / PDF_FILE)  # before signing: the PDF is signed
    write_atomic(out / "model-card.md", render_model_card(report, plan.card.model_dump()))
    write_atomic(out / "junit.xml", render_junit(report))
    write_atomic(out / MLBOM_FILE, build_mlbom(report, plan))
    report.write(out)  # last but the attestation: its presence marks a complete bundle
