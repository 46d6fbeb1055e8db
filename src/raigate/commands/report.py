"""``raigate audit``, ``raigate keys generate`` and ``raigate verify``: the signed report
and the CI gate."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Literal

import typer

from raigate.cli_common import (
    DeviceOpt,
    QuietOpt,
    TrustCodeOpt,
    format_table,
    handle_errors,
    resolve_device,
)
from raigate.errors import ConfigError, GateFailed

keys_app = typer.Typer(
    rich_markup_mode=None,
    help="Create the key pair that signs audit reports (Ed25519, or EC P-256 that also signs "
    "the model with OpenSSF model signing).",
    no_args_is_help=True,
)


@keys_app.command("generate")
@handle_errors
def keys_generate(
    out: Annotated[Path, typer.Option("--out", help="folder for raigate.key and raigate.pub")],
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing key pair")] = False,
    key_type: Annotated[
        Literal["ed25519", "ec"],
        typer.Option(
            "--type",
            help="ed25519 (default) signs the report; ec (P-256) signs the report and, with "
            "OpenSSF model signing, the audited model's files (model.sig)",
        ),
    ] = "ed25519",
) -> None:
    """Write raigate.key (private PKCS#8 PEM, mode 0600; never put it in a report) and
    raigate.pub (SPKI PEM)."""
    from raigate.reports.attest import generate_keys, key_id, load_public_key

    priv, pub = generate_keys(out, overwrite=force, key_type=key_type)
    kind = "EC P-256" if key_type == "ec" else "Ed25519"
    typer.echo(f"wrote {priv} ({kind} private key, mode 0600: keep it secret, e.g. a CI secret)")
    typer.echo(
        f"wrote {pub} (public: give it to whoever verifies; key id "
        f"{key_id(load_public_key(pub))[:16]})"
    )


def audit_cmd(
    plan: Annotated[Path, typer.Argument(help="audit plan TOML (model, data, checks, gates)")],
    out: Annotated[Path, typer.Option("--out", help="folder for the report bundle")],
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="private key (raigate.key) to sign the report; an EC P-256 key also signs "
            "the model's files with OpenSSF model signing (model.sig)",
        ),
    ] = None,
    fail_on: Annotated[
        Literal["warn", "fail"] | None,
        typer.Option(
            "--fail-on",
            help="exit 1 on failed gates (fail, default from the plan) or on warnings too (warn)",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    trust_code: TrustCodeOpt = False,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="processes on this machine (torchrun); per-image work is split among them, "
            "the report is the same as with 1",
        ),
    ] = 1,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="reuse the batches a killed run of this plan left in OUT/.progress",
        ),
    ] = False,
    pdf: Annotated[
        bool | None,
        typer.Option(
            "--pdf/--no-pdf",
            help="also print report.pdf with headless Chromium (signed with the bundle); "
            "default: where Chromium is installed",
        ),
    ] = None,
    mlflow_uri: Annotated[
        str | None,
        typer.Option(
            "--mlflow-uri",
            help="also log the audit as one MLflow run (metrics, a tag per gate, the bundle "
            "as artifacts) to this tracking store, e.g. file:mlruns or http://host:5000; "
            "needs pip install 'raigate[mlflow]'",
        ),
    ] = None,
) -> None:
    """Run an audit plan and write report.json, report.html, model-card.md, junit.xml and
    (with --key) a signed attestation; with an EC key (keys generate --type ec) also
    model.sig, the model's OpenSSF model signature.
    --out must be new, empty or a bundle of an earlier run, which is emptied first (with
    --resume, all but its .progress). --nproc N runs N processes with torchrun; on several
    machines run `torchrun --nnodes M --nproc-per-node N -m raigate audit ...` instead
    (docs/scale-out.md). --trust-code does what the plan's trust_code = true does;
    untrained models are allowed per model in the plan (random_init = true).
    --mlflow-uri logs the finished audit to MLflow (experiment raigate), from rank 0.
    --pdf also writes report.pdf (headless Chromium, signed with the rest)."""
    import os

    from raigate.audit.runner import prepare_out_dir, run_audit
    from raigate.config import load_plan

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if nproc > 1 and launched:
        raise ConfigError(
            "--nproc: this process already runs under torchrun "
            f"(WORLD_SIZE={os.environ['WORLD_SIZE']}); drop --nproc"
        )
    if mlflow_uri is not None and os.environ.get("RANK", "0") == "0":
        from raigate.reports.mlflow_log import check_store  # exit 2 before the audit, not after

        check_store(mlflow_uri)
    if os.environ.get("RANK", "0") == "0":  # before the plan is read: no old report survives
        from raigate._io import folder_lock

        with folder_lock(out) if out.is_dir() else contextlib.nullcontext():
            prepare_out_dir(out, create=False, keep_progress=resume)
    loaded = load_plan(plan)
    if trust_code:
        loaded = loaded.model_copy(update={"trust_code": True})
    if nproc > 1:
        _launch(nproc, plan, out, key, fail_on, device, trust_code, resume, quiet, mlflow_uri, pdf)
        return
    outcome = run_audit(
        loaded,
        out,
        key=key,
        fail_on=fail_on,
        device=resolve_device(device),
        progress=not quiet,
        echo=typer.echo,
        resume=resume,
        pdf=pdf,
    )
    if os.environ.get("RANK", "0") != "0":
        return  # rank 0 prints the verdict and sets the exit code
    print_verdict(outcome)
    if mlflow_uri is not None:
        from raigate.reports.mlflow_log import log_audit

        run_id = log_audit(outcome, outcome.out_dir, mlflow_uri)
        typer.echo(f"mlflow: logged run {run_id} to {mlflow_uri} (experiment raigate)")
    if not outcome.passed:
        raise GateFailed(
            f"audit verdict {outcome.report.verdict} under fail_on={outcome.report.fail_on}: "
            f"see {outcome.out_dir / 'report.html'}"
        )


def _launch(
    nproc: int,
    plan: Path,
    out: Path,
    key: Path | None,
    fail_on: str | None,
    device: str,
    trust_code: bool,
    resume: bool,
    quiet: bool,
    mlflow_uri: str | None = None,
    pdf: bool | None = None,
) -> None:
    """``raigate audit`` again, in ``nproc`` torchrun processes; exit as rank 0 does."""
    from raigate.parallel import launch

    argv = ["audit", str(plan), "--out", str(out), "--device", device]
    if key is not None:
        argv += ["--key", str(key)]
    if fail_on is not None:
        argv += ["--fail-on", fail_on]
    if trust_code:
        argv.append("--trust-code")
    if resume:
        argv.append("--resume")
    if quiet:
        argv.append("--quiet")
    if mlflow_uri is not None:  # rank 0 logs, after it wrote the bundle
        argv += ["--mlflow-uri", mlflow_uri]
    if pdf is not None:
        argv.append("--pdf" if pdf else "--no-pdf")
    typer.echo(f"audit: starting {nproc} processes with torchrun")
    code, message = launch(nproc, argv)
    if code:
        if message:
            from raigate.cli_common import echo_error

            echo_error(message)
        raise typer.Exit(code)


def print_verdict(outcome: object) -> None:
    """The verdict table (one row per gate) and where the bundle is."""
    report = outcome.report  # type: ignore[attr-defined]
    rows = [
        {
            "check": g["check"],
            "gate": g["id"],
            "result": g["severity"].upper(),
            "value": g["value"],
            "threshold": g["threshold"],
        }
        for g in report.gates
    ]
    typer.echo("")
    typer.echo(
        format_table(rows, ["check", "gate", "result", "value", "threshold"])
        if rows
        else "(no gates in this plan)"
    )
    # a check whose gates cover less than its name (robustness without a robustness gate)
    scoped = [(n, r) for n, r in report.checks.items() if r.verdict_scope]
    if scoped:
        typer.echo("")
    for name, result in scoped:
        typer.echo(f"{name}: {result.verdict_label}")
    typer.echo(
        f"\nverdict: {report.verdict.upper()} (fail_on={report.fail_on}: "
        f"{'PASSED' if report.passed else 'FAILED'})"
    )
    out = outcome.out_dir  # type: ignore[attr-defined]
    if outcome.signed:  # type: ignore[attr-defined]
        typer.echo(f"signed: {out / 'attestation.dsse.json'}")
        if (out / "model.sig").is_file():
            typer.echo(f"model signed (OpenSSF model signing): {out / 'model.sig'}")
    else:
        typer.echo("unsigned: no --key given, so no attestation was written")
    typer.echo(f"report: {out / 'report.html'}")


def verify_cmd(
    bundle: Annotated[Path, typer.Argument(help="report folder written by raigate audit")],
    key: Annotated[
        Path, typer.Option("--key", help="the signer's public key (raigate.pub, Ed25519 or EC)")
    ],
    model_root: Annotated[
        Path | None,
        typer.Option(
            "--model-root",
            help="folder the signed model files are named relative to (default: the plan's "
            "folder, as recorded relative to the bundle)",
        ),
    ] = None,
    skip_model_files: Annotated[
        bool,
        typer.Option(
            "--skip-model-files",
            help="verify the bundle alone and list the model files left unchecked",
        ),
    ] = False,
) -> None:
    """Offline: check the signature, that the folder holds only signed files, every signed
    file's sha256 and every model file's (found relative to the plan's folder or
    --model-root), and, when the bundle holds model.sig, the model's OpenSSF model signature
    with model_signing's verifier."""
    from raigate.audit.runner import verify_bundle
    from raigate.reports.attest import MODEL_PREFIX

    v = verify_bundle(bundle, key, model_root=model_root, skip_model_files=skip_model_files)
    pred = v.statement["predicate"]
    models = [n for n in v.checked if n.startswith(MODEL_PREFIX)]
    typer.echo(f"signature OK ({key})")
    typer.echo(
        f"{len(v.checked) - len(models)} signed files match their sha256; the folder holds "
        "nothing else"
    )
    if models:
        typer.echo(f"{len(models)} model files match their sha256 (under {v.model_root})")
    for name in v.skipped_model_files:
        typer.echo(f"not checked (--skip-model-files): {name}")
    if v.model_signature is not None:
        typer.echo(f"model.sig OK: OpenSSF model signature of {v.model_signature}")
    elif "model_signature" in pred:
        typer.echo("not checked (--skip-model-files): model.sig (OpenSSF model signature)")
    typer.echo(
        f"verdict signed: {str(pred.get('verdict', '?')).upper()}, model "
        f"{pred.get('model_digest')}, data {pred.get('data_manifest_digest')}"
    )
    for name, digest in (pred.get("variant_digests") or {}).items():
        typer.echo(f"variant {name} signed: {digest}")


def register(app: typer.Typer) -> None:
    """Add audit, verify and keys to the CLI."""
    app.command("audit")(handle_errors(audit_cmd))
    app.command("verify")(handle_errors(verify_cmd))
    app.add_typer(keys_app, name="keys")
