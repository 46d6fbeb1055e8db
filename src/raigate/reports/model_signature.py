"""Sign the audited model's own files with OpenSSF model signing (PyPI ``model-signing``),
so that whoever receives the released model can check it with that project's tool alone:
``model_signing verify key --signature model.sig --public_key raigate.pub MODEL_PATH``.

Why beside the raigate attestation: the attestation ties the audit's verdict to the model
files' sha256, but a model hub or a deployment pipeline reads OpenSSF model signatures, not
raigate bundles. With an EC P-256 key, ``raigate audit --key`` writes ``model.sig`` (a
sigstore bundle whose DSSE payload lists every model file's sha256) into the bundle; the
attestation signs it as a bundle file and names its digest in the predicate
(``model_signature``), so both signatures describe the same digests under one key.

What is signed (:func:`signing_target`): the model's files as the report lists them (the
weights; a spec file and its weights; a Hugging Face folder's files). One file is signed as
that file. Several are signed as their deepest common folder with every other entry of
that folder (and of the folders on the way to a model file) recorded as ignored, so the
signature covers exactly the model's files and a file added next to them later is reported
by the verifier as an extra file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raigate._io import atomic_path, sha256_file
from raigate.errors import ConfigError, MissingDependencyError, VerificationFailed

MODEL_SIGNATURE = "model.sig"
SIGNATURE_FORMAT = "OpenSSF model signing v1 (sigstore bundle)"
_MAX_MESSAGE = 300  # the library's mismatch messages print raw digests; one line stays short


@dataclass(frozen=True)
class SigningTarget:
    """What ``model_signing`` signs: ``path`` (a file or a folder), the entries under it it
    ignores (relative POSIX paths) and whether a model file is a symlink (then the library
    must be told to follow symlinks, at signing and at ``verify key --allow_symlinks``)."""

    path: Path
    ignored: tuple[str, ...]
    allow_symlinks: bool


def _model_signing() -> Any:
    try:
        import model_signing
    except ImportError as exc:  # model-signing 1.1.1 also imports pyOpenSSL undeclared
        package = "pyopenssl" if getattr(exc, "name", "") == "OpenSSL" else "model-signing"
        raise MissingDependencyError(package, "OpenSSF model signing (an EC --key)") from None
    return model_signing


def _as_found(path: str | os.PathLike[str]) -> Path:
    """Absolute, folders resolved, the file's own name kept (as the attestation names it)."""
    p = Path(path)
    p = p if p.is_absolute() else Path.cwd() / p
    return p.parent.resolve() / p.name


def signing_target(files: list[str | os.PathLike[str]]) -> SigningTarget:
    """The file or folder to sign for a model made of ``files`` (see the module docstring).

    A ConfigError when there is nothing to sign or the files share only the filesystem root
    (signing ``/`` would walk the whole disk)."""
    paths = list(dict.fromkeys(_as_found(f) for f in files))
    if not paths:
        raise ConfigError("the model has no files to sign (a factory without weights)")
    symlinks = any(p.is_symlink() for p in paths)
    if len(paths) == 1:
        return SigningTarget(paths[0], (), symlinks)
    root = Path(os.path.commonpath([p.parent for p in paths]))
    if root.parent == root:
        raise ConfigError(
            f"the model's files share no folder but {root}; keep a spec file and its weights "
            "under one folder to sign them with OpenSSF model signing"
        )
    rel = {p.relative_to(root) for p in paths}
    on_the_way = {parent for r in rel for parent in r.parents}  # Path(".") included
    ignored = [
        entry.relative_to(root).as_posix()
        for folder in sorted(on_the_way)
        for entry in sorted((root / folder).iterdir())
        if entry.relative_to(root) not in rel | on_the_way
    ]
    return SigningTarget(root, tuple(ignored), symlinks)


def sign_model(
    out: Path,
    files: list[str | os.PathLike[str]],
    private_key_path: str | os.PathLike[str],
    *,
    plan_dir: Path,
) -> dict[str, Any]:
    """Write ``out/model.sig`` over the model's ``files`` with the EC private key at
    ``private_key_path``; return the attestation's ``model_signature`` entry: the file, its
    sha256, the format and ``model_path``, the signed file or folder relative to
    ``plan_dir`` (POSIX) as the model files' subject names are, so ``raigate verify`` finds
    it where it finds them."""
    ms = _model_signing()
    target = signing_target(files)
    hashing = ms.hashing.Config().set_ignored_paths(paths=list(target.ignored))
    hashing.set_allow_symlinks(target.allow_symlinks)
    config = ms.signing.Config().set_hashing_config(hashing)
    config.use_elliptic_key_signer(private_key=Path(private_key_path))
    with atomic_path(out / MODEL_SIGNATURE) as tmp:
        try:
            config.sign(target.path, tmp)
        except (ValueError, OSError) as exc:  # a symlink or special file under the folder
            raise ConfigError(
                f"{target.path}: OpenSSF model signing refused the model ({_short(exc)}); "
                "keep the model's files in a folder of their own"
            ) from None
    signature = out / MODEL_SIGNATURE
    entry: dict[str, Any] = {
        "file": MODEL_SIGNATURE,
        "sha256": sha256_file(signature),
        "format": SIGNATURE_FORMAT,
        "model_path": Path(os.path.relpath(target.path, plan_dir.resolve())).as_posix(),
    }
    if target.allow_symlinks:
        entry["allow_symlinks"] = True
    return entry


def verify_model(
    out: Path,
    entry: object,
    subjects: dict[str, str],
    public_key_path: str | os.PathLike[str],
    model_root: Path,
) -> Path:
    """Check ``out/model.sig`` with model_signing's own verifier against the public key and
    the model at ``model_root / model_path``; return that path.

    ``entry`` is the signed predicate's ``model_signature`` and ``subjects`` the signed
    bundle files' sha256 by name: the entry must name ``model.sig`` with the digest the
    attestation signs it under, so the two signatures cannot be paired with another's.
    Every failure is a VerificationFailed in one line."""
    from raigate.reports.attest import MODEL_PREFIX, subject_name_problem

    if not isinstance(entry, dict) or entry.get("file") != MODEL_SIGNATURE:
        raise VerificationFailed(
            f"attestation's model_signature is not {{file: {MODEL_SIGNATURE!r}, sha256, ...}}"
        )
    if subjects.get(MODEL_SIGNATURE) != entry.get("sha256"):
        raise VerificationFailed(
            f"{MODEL_SIGNATURE}: the attestation's model_signature sha256 is not the signed "
            "subject's"
        )
    model_path = entry.get("model_path")
    if not isinstance(model_path, str) or (
        model_path != "." and subject_name_problem(MODEL_PREFIX + model_path)
    ):
        raise VerificationFailed(
            f"attestation's model_signature.model_path {model_path!r} is not a relative path"
        )
    ms = _model_signing()
    target = model_root / model_path
    config = ms.verifying.Config()
    try:
        config.use_elliptic_key_verifier(public_key=Path(public_key_path))
    except (ValueError, AttributeError):  # not an EC key on a curve the library supports
        raise VerificationFailed(
            f"{MODEL_SIGNATURE}: an OpenSSF model signature needs the EC public key "
            f"(raigate.pub of `raigate keys generate --type ec`); {public_key_path} is not one"
        ) from None
    if not target.exists():
        raise VerificationFailed(
            f"{MODEL_SIGNATURE}: the signed model {os.path.normpath(target)} is not there; pass "
            "--model-root DIR where the models are kept, or --skip-model-files"
        )
    try:
        config.verify(target, out / MODEL_SIGNATURE)
    except Exception as exc:  # the library raises ValueError, InvalidSignature, KeyError...
        raise VerificationFailed(
            f"{MODEL_SIGNATURE}: OpenSSF model signature does not verify for "
            f"{os.path.normpath(target)}: {_short(exc)}"
        ) from None
    return target


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"
