"""The sealed report bundle: the out folder raigate owns, the subjects it signs, and their
offline verification.

Every file in a bundle is either signed or refused: ``verify_bundle`` lists the folder and
fails on anything the attestation does not name. Names inside are relative, normalised
and confined to the folder; model files are named relative to the plan's folder, so a tree
moved whole (plan, models, bundle) verifies where it lands. ``raigate audit`` writes into
a folder only when it is new, empty or a bundle it wrote before (``raigate-bundle.json``),
and removes that earlier bundle first (:func:`prepare_out_dir`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raigate._io import write_atomic
from raigate.config import AuditPlan
from raigate.reports.attest import MODEL_PREFIX
from raigate.reports.model_signature import MODEL_SIGNATURE
from raigate.results import AuditReport, dumps

ATTESTATION = "attestation.dsse.json"
MARKER = "raigate-bundle.json"  # written first: marks a folder as raigate's to replace
BUNDLE_FILES = (
    MARKER,
    "report.json",
    "report.html",
    "model-card.md",
    "junit.xml",
    "model-manifest.json",
    "data-manifest.json",
    "mlbom.cdx.json",  # raigate.reports.mlbom.MLBOM_FILE
)
OPTIONAL_FILES = ("report.pdf",)  # raigate.reports.pdf.PDF_FILE: where Chromium is installed
"""Top-level files a bundle holds when they could be made; signed when present."""
PROGRESS = ".progress"  # raigate.parallel.PROGRESS: a run's per-batch progress until it ends
_TMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")  # write_atomic's temporary files
_CHECK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a plan's check table names


# -- the out folder ----------------------------------------------------------------------------
def prepare_out_dir(
    out: Path, checks: Sequence[str] = (), *, create: bool = True, keep_progress: bool = False
) -> None:
    """Make ``out`` an empty raigate bundle before anything else is written: a new or empty
    folder, or a bundle from an earlier run whose files are all removed here (so a run that
    fails later never leaves the previous run's PASS ``report.html`` or ``junit.xml``).
    ``create=False`` empties an existing bundle but makes no folder that is not there yet
    (the CLI's first call, before the plan is read: a bad plan leaves nothing behind).

    A folder is a raigate bundle when it holds ``raigate-bundle.json`` (``MARKER``), written
    here first on every run with the check folders the run may create. Only the known
    layout is removed: the top-level files of ``BUNDLE_FILES``, the attestation, their
    leftover temporary files, and ``checks/NAME`` for each NAME the marker lists. Anything
    else (a user's file, a folder the marker does not list, a symlink) is refused with a
    ConfigError naming it, and nothing is deleted.

    ``.progress`` (:data:`raigate.parallel.PROGRESS`, the per-batch progress of a run that
    did not finish) is removed too, unless ``keep_progress`` (``audit --resume``).
    """
    from raigate.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"{out}: --out names a file, not a folder; give a new or empty folder for the bundle"
        )
    if not create and not out.exists():
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{out}: cannot create the report folder ({exc.strerror}); give another --out"
        ) from None
    try:
        for path in _previous_run(out):
            if keep_progress and path.name == PROGRESS:
                continue
            if path.is_dir():
                shutil.rmtree(path)  # a listed check folder: never a symlink (checked)
            else:
                path.unlink()
        with contextlib.suppress(FileNotFoundError):
            (out / "checks").rmdir()  # empty now; absent on a first run
    except OSError as exc:
        raise ConfigError(
            f"{exc.filename or out}: cannot replace the earlier bundle ({exc.strerror}); "
            "give another --out"
        ) from None
    marker = {"format": "raigate audit bundle", "version": 1, "checks": sorted(checks)}
    write_atomic(out / MARKER, dumps(marker))


def _previous_run(out: Path) -> list[Path]:
    """What an earlier run wrote in ``out`` (every entry but the marker), or a ConfigError
    naming the first entry raigate did not write."""
    from raigate.errors import ConfigError

    entries = sorted(out.iterdir())
    if not entries:
        return []
    marker = out / MARKER
    if marker.is_symlink() or not marker.is_file():
        raise ConfigError(
            f"{out}: --out is not empty and is not a raigate report bundle (no {MARKER}); "
            "give a new or empty folder"
        )
    planned = _marker_checks(marker)
    owned: list[Path] = []
    for entry in entries:
        if entry.name == PROGRESS and entry.is_dir() and not entry.is_symlink():
            owned.append(entry)  # a killed run's per-batch progress (raigate.parallel)
        elif entry.name == "checks" and entry.is_dir() and not entry.is_symlink():
            for sub in sorted(entry.iterdir()):
                if sub.name not in planned or sub.is_symlink() or not sub.is_dir():
                    raise ConfigError(_foreign(sub, out))
                owned.append(sub)
        elif entry.name != MARKER:
            if not _is_bundle_file(entry):
                raise ConfigError(_foreign(entry, out))
            owned.append(entry)
    return owned


def _foreign(path: Path, out: Path) -> str:
    return (
        f"{path}: not written by raigate, inside the report bundle {out}, which `raigate audit` "
        "replaces; move it out of the folder or give another --out"
    )


def _is_bundle_file(path: Path) -> bool:
    """A top-level file raigate writes: a bundle file, or write_atomic's temporary for one."""
    known = {*BUNDLE_FILES, *OPTIONAL_FILES, ATTESTATION, MODEL_SIGNATURE}
    tmp = _TMP.match(path.name)
    return (
        path.is_file()
        and not path.is_symlink()
        and (path.name in known or (tmp is not None and tmp["name"] in known))
    )


def _marker_checks(marker: Path) -> set[str]:
    """The check folders an earlier run announced in its marker, each a plain folder name."""
    import json

    from raigate.errors import ConfigError

    try:
        doc = json.loads(marker.read_text(encoding="utf-8"))
        names = doc["checks"]
        if not isinstance(names, list) or not all(
            isinstance(n, str) and _CHECK_NAME.match(n) for n in names
        ):
            raise ValueError(names)
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"{marker}: not a raigate bundle marker; delete the folder or give another --out"
        ) from None
    return set(names)


def bundle_listing(out: Path) -> list[str]:
    """Every entry of the bundle folder that is not a folder, recursively, as sorted POSIX
    names relative to ``out``: files, hidden ones and temporary files included, and symlinks
    (a symlink to a folder is listed, not followed)."""
    from raigate.errors import VerificationFailed

    def fail(exc: OSError) -> None:
        raise VerificationFailed(f"{exc.filename}: cannot list the bundle ({exc.strerror})")

    names: list[str] = []
    for root, dirs, files in os.walk(out, onerror=fail):
        here = Path(root)
        links = [d for d in dirs if (here / d).is_symlink()]
        dirs[:] = [d for d in dirs if d not in links]
        names += [(here / f).relative_to(out).as_posix() for f in (*files, *links)]
    return sorted(names)


def _unsigned(out: Path, subjects: set[str]) -> str | None:
    """The first entry of ``out`` outside ``subjects`` (the attestation aside), said in one
    line with how many more there are; None when there is none."""
    extra = [n for n in bundle_listing(out) if n != ATTESTATION and n not in subjects]
    if not extra:
        return None
    first, why = extra[0], ""
    if (out / first).is_symlink():
        why = " (a symlink)"
    elif _TMP.match(first.rsplit("/", 1)[-1]):
        why = " (a temporary file left by an interrupted write)"
    more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
    return f"{first}{why}: in {out} but not a signed subject{more}"


# -- subjects, signing, verification -----------------------------------------------------------
def plan_folder(plan: AuditPlan) -> Path:
    """The folder model files are named relative to: the plan file's, or the current folder
    for a plan built in Python."""
    return Path(plan.source).resolve().parent if plan.source else Path.cwd().resolve()


def model_subject_name(path: str | os.PathLike[str], plan_dir: Path) -> str:
    """``model:`` + the model file's path relative to ``plan_dir``, POSIX, with ``..`` parts
    where the file lies outside it; folders are resolved (as ``load_plan`` resolves the plan's
    folder), the file's own name is kept (a symlinked weight file keeps its name)."""
    p = Path(path)
    p = p if p.is_absolute() else Path.cwd() / p
    p = p.parent.resolve() / p.name
    return MODEL_PREFIX + Path(os.path.relpath(p, plan_dir.resolve())).as_posix()


def bundle_subjects(
    out: Path, report: AuditReport, *, plan_dir: Path | None = None
) -> list[dict[str, Any]]:
    """Every file of the bundle (marker, report, renderings, manifests, per-check results and
    artifacts) plus the source files of the model and of every variant (named relative to
    ``plan_dir``, default the current folder), each with its sha256.

    Raises RaigateError (a check's bug, not the user's) for a name that is not a relative,
    normalised path inside the bundle or a file that is missing or leads out of it: such a
    thing is never signed.
    """
    from raigate.reports.attest import subject_for

    names = [*BUNDLE_FILES, *(n for n in OPTIONAL_FILES if (out / n).is_file())]
    for name, result in report.checks.items():
        names.append(f"checks/{name}/result.json")
        names += result.artifacts
    subjects = [subject_for(_signable(out, n), n) for n in dict.fromkeys(names)]
    base = plan_dir if plan_dir is not None else Path.cwd()
    for described in (report.model, *report.models.values()):
        for f in described.get("files", []):
            name = model_subject_name(f["path"], base)
            subjects.append({"name": name, "digest": {"sha256": f["sha256"]}})
    return list({subj["name"]: subj for subj in subjects}.values())  # variants may share files


def _signable(out: Path, name: str) -> Path:
    from raigate.errors import RaigateError
    from raigate.reports.attest import subject_name_problem

    problem = subject_name_problem(name)
    if problem is None and name.startswith(MODEL_PREFIX):
        problem = "looks like a model file's name"
    if problem is not None:
        raise RaigateError(f"{name!r}: a bundle file's name that {problem}; not signed")
    path = out / name
    if not path.resolve().is_relative_to(out.resolve()):
        raise RaigateError(f"{name}: a symlink that leads out of the bundle; not signed")
    if not path.is_file():
        raise RaigateError(f"{name}: listed in the report but not a file in {out}; not signed")
    return path


def sign_bundle(
    out: Path,
    report: AuditReport,
    private_key: Any,
    *,
    plan_dir: Path | None = None,
    key_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``attestation.dsse.json`` over the bundle's subjects. The predicate records
    where the plan's folder lies relative to the bundle (``plan_dir``, POSIX), so a tree
    moved whole (plan, models, bundle) verifies where it lands. Refuses (RaigateError) a
    bundle holding a file that is not a subject: a signed bundle is the whole folder.

    With an EC P-256 key (whose PEM file is ``key_path``: OpenSSF model signing reads the
    key from its file) the audited model's files are signed first with OpenSSF model
    signing into ``model.sig``, a subject like the other bundle files, and the predicate's
    ``model_signature`` names its sha256 (:mod:`raigate.reports.model_signature`)."""
    from raigate.errors import ConfigError, RaigateError
    from raigate.reports.attest import key_type_of, sign_statement, statement, subject_for

    base = plan_dir if plan_dir is not None else Path.cwd()
    model_signature = None
    if key_type_of(private_key) == "ec" and report.model.get("files"):
        from raigate.reports.model_signature import sign_model

        if key_path is None:
            raise ConfigError("an EC key signs the model files too: pass its PEM file, key_path")
        files = [f["path"] for f in report.model["files"]]
        model_signature = sign_model(out, files, key_path, plan_dir=base)
    subjects = bundle_subjects(out, report, plan_dir=base)
    if model_signature is not None:
        subjects.append(subject_for(out / MODEL_SIGNATURE, MODEL_SIGNATURE))
    unsigned = _unsigned(out, {s["name"] for s in subjects})
    if unsigned is not None:
        raise RaigateError(f"{unsigned}; a check wrote it without listing it as an artifact")
    predicate = {
        "verdict": report.verdict,
        "passed": report.passed,
        "fail_on": report.fail_on,
        "gates": [
            {"check": g["check"], "id": g["id"], "severity": g["severity"]} for g in report.gates
        ],
        "model_digest": report.model.get("digest"),
        "variant_digests": {k: v.get("digest") for k, v in report.models.items()},
        "data_manifest_digest": report.data.get("manifest_digest"),
        "synthetic_data": bool(report.data.get("synthetic")),
        "plan_dir": Path(os.path.relpath(base.resolve(), out.resolve())).as_posix(),
        "raigate_version": report.environment.get("raigate"),
        "created_at": report.created_at,
    }
    if model_signature is not None:
        predicate["model_signature"] = model_signature
    envelope = sign_statement(statement(subjects, predicate), private_key)
    return write_atomic(out / ATTESTATION, dumps(envelope))


@dataclass(frozen=True)
class Verification:
    """What ``verify_bundle`` checked: ``checked`` names every subject whose sha256 matched
    (bundle files, then model files found under ``model_root``); ``skipped_model_files`` the
    model files left unchecked on request; ``model_signature`` the model path OpenSSF model
    signing's verifier accepted ``model.sig`` for, when the bundle holds one and model files
    were checked."""

    statement: dict[str, Any]
    checked: list[str]
    skipped_model_files: list[str]
    model_root: Path | None
    model_signature: Path | None = None


def verify_bundle(
    out_dir: str | Path,
    public_key_path: str | Path,
    *,
    model_root: str | Path | None = None,
    skip_model_files: bool = False,
) -> Verification:
    """Offline verification, each failure a VerificationFailed naming the file: the DSSE
    signature with the public key and the Statement's shape; that the folder holds no file
    the attestation does not sign (itself excepted); every bundle file's sha256, inside the
    folder; then every model file's sha256, resolved against ``model_root`` or else the plan
    folder the attestation records (relative to the bundle). An absent model file fails
    unless ``skip_model_files``, which leaves every model file unchecked and says so. Last,
    when the predicate names a ``model_signature``, ``model.sig`` is checked with OpenSSF
    model signing's own verifier against the same public key and the model files."""
    from raigate.errors import DataError, VerificationFailed
    from raigate.reports.attest import load_public_key, verify_envelope

    out = Path(out_dir)
    if not out.is_dir():
        raise DataError(f"{out}: report folder not found")
    stmt = verify_envelope(_read_attestation(out), load_public_key(public_key_path))
    models = [s for s in stmt["subject"] if s["name"].startswith(MODEL_PREFIX)]
    files = [s for s in stmt["subject"] if not s["name"].startswith(MODEL_PREFIX)]
    unsigned = _unsigned(out, {s["name"] for s in files})
    if unsigned is not None:
        raise VerificationFailed(f"{unsigned}; a sealed bundle holds only signed files")
    checked: list[str] = []
    for subj in files:
        path = out / subj["name"]
        if not path.resolve().is_relative_to(out.resolve()):
            raise VerificationFailed(f"{subj['name']}: a symlink that leads out of {out}")
        checked.append(_matches(path, subj, f"signed file is missing from {out}"))
    if skip_model_files or not models:
        return Verification(stmt, checked, [s["name"] for s in models], None)
    root = _model_root(out, stmt["predicate"], model_root)
    hint = (
        "pass --model-root DIR where the models are kept, or --skip-model-files to verify "
        "the bundle alone"
    )
    for subj in models:
        path = root / subj["name"][len(MODEL_PREFIX) :]
        where = os.path.normpath(path)
        checked.append(_matches(path, subj, f"model file not found at {where}; {hint}"))
    signed_model = None
    if "model_signature" in stmt["predicate"]:
        from raigate.reports.model_signature import verify_model

        digests = {s["name"]: s["digest"]["sha256"] for s in files}
        entry = stmt["predicate"]["model_signature"]
        signed_model = verify_model(out, entry, digests, public_key_path, root)
    return Verification(stmt, checked, [], root, signed_model)


def _matches(path: Path, subj: dict[str, Any], missing: str) -> str:
    """The subject's name when ``path`` is a file with its sha256; else VerificationFailed."""
    from raigate._io import sha256_file
    from raigate.errors import VerificationFailed

    name = subj["name"]
    if not path.is_file():
        raise VerificationFailed(f"{name}: {missing}")
    if sha256_file(path) != subj["digest"]["sha256"]:
        raise VerificationFailed(f"{name}: contents changed since signing (sha256 differs)")
    return name


def _read_attestation(out: Path) -> object:
    import json

    from raigate.errors import VerificationFailed

    path = out / ATTESTATION
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VerificationFailed(
            f"{path}: no attestation; the report was not signed (run `raigate audit ... "
            "--key raigate.key`)"
        ) from None
    except OSError as exc:
        raise VerificationFailed(f"{path}: cannot read the attestation ({exc.strerror})") from None
    except (ValueError, RecursionError):
        raise VerificationFailed(f"{path}: attestation is not valid JSON") from None


def _model_root(out: Path, predicate: dict[str, Any], model_root: str | Path | None) -> Path:
    """Where model files are resolved: ``model_root``, or the signed plan folder."""
    from raigate.errors import ConfigError, VerificationFailed
    from raigate.reports.attest import subject_name_problem

    if model_root is not None:
        root = Path(model_root)
        if not root.is_dir():
            raise ConfigError(f"{root}: --model-root is not a folder")
        return root
    plan_dir = predicate.get("plan_dir")
    if plan_dir == ".":
        return out
    # a folder name follows the model-name rules: relative, normalised, leading '..' only
    if not isinstance(plan_dir, str) or subject_name_problem(f"{MODEL_PREFIX}{plan_dir}/f"):
        raise VerificationFailed(
            f"attestation records no valid plan folder (plan_dir {plan_dir!r}) to find its "
            "model files; pass --model-root DIR or --skip-model-files"
        )
    return out / plan_dir
