"""Sign and verify audit reports offline: an in-toto Statement v1 in a DSSE envelope,
signed with Ed25519 (the default) or ECDSA P-256 (pyca/cryptography).

Why this shape: DSSE (Dead Simple Signing Envelope, secure-systems-lab) signs the exact
payload bytes together with their type through the Pre-Authentication Encoding, so a
signature cannot be replayed onto another payload type; in-toto Statements are what
supply-chain tools (sigstore, SLSA verifiers) already read. Each subject is a file of the
report bundle (or a model file) with its sha256; the predicate carries the verdict.

Why two key types: Ed25519 is the default (small, deterministic, no curve or hash to pick).
An EC P-256 key (``generate_keys(..., key_type="ec")``) is the one kind OpenSSF model
signing (PyPI ``model-signing``) signs with offline, so one key pair can sign both the
audited model's files (:mod:`raigate.reports.model_signature`) and this attestation
(ECDSA with SHA-256, DER signatures, as sigstore's DSSE envelopes use); a verifier needs
only the one public key.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> priv, pub = generate_keys(d)
>>> _ = (d / "report.json").write_text("{}")
>>> env = sign_statement(statement([subject_for(d / "report.json", "report.json")],
...                                {"verdict": "pass"}), load_private_key(priv))
>>> verify_envelope(env, load_public_key(pub))["predicate"]["verdict"]
'pass'
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from raigate._io import sha256_file, write_atomic
from raigate.errors import ConfigError, VerificationFailed

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://raigate.dev/audit-report/v1"
PRIVATE_KEY_NAME = "raigate.key"
PUBLIC_KEY_NAME = "raigate.pub"
MODEL_PREFIX = "model:"  # subjects outside the bundle: model files, by plan-relative path
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
KeyType = Literal["ed25519", "ec"]
KEY_TYPES: tuple[KeyType, ...] = ("ed25519", "ec")
_KEYS_HINT = "create one with `raigate keys generate` (--type ec for EC P-256)"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding: ``DSSEv1 SP len(type) SP type SP len(body) SP body``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


# -- keys --------------------------------------------------------------------------------------
def generate_keys(
    out_dir: str | os.PathLike[str], *, overwrite: bool = False, key_type: KeyType = "ed25519"
) -> tuple[Path, Path]:
    """Write ``raigate.key`` (PKCS#8 PEM, mode 0600) and ``raigate.pub`` (SPKI PEM).

    ``key_type="ec"`` makes an EC P-256 (secp256r1) pair instead of Ed25519: the key that
    also signs the audited model with OpenSSF model signing (``model_signing verify key``
    reads these PEM files as they are)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if key_type not in KEY_TYPES:
        raise ConfigError(f"key type {key_type!r}: use one of {', '.join(KEY_TYPES)}")
    out = Path(out_dir)
    priv_path, pub_path = out / PRIVATE_KEY_NAME, out / PUBLIC_KEY_NAME
    if not overwrite and (priv_path.exists() or pub_path.exists()):
        raise ConfigError(
            f"{priv_path if priv_path.exists() else pub_path} already exists; choose another "
            "--out folder or delete the old key pair first"
        )
    key: Any = (
        ec.generate_private_key(ec.SECP256R1())
        if key_type == "ec"
        else Ed25519PrivateKey.generate()
    )
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_atomic(priv_path, priv, mode=0o600)
    write_atomic(pub_path, pub)
    return priv_path, pub_path


def _read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: {what} not found; create a pair with `raigate keys generate`"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a folder; give the {what} file itself") from None


def load_private_key(path: str | os.PathLike[str]) -> Any:
    """An Ed25519 or EC P-256 private key from a PEM file; anything else (another curve, RSA,
    an encrypted key) is a ConfigError naming it."""
    from cryptography.hazmat.primitives import serialization

    data = _read_pem(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if key_type_of(key) is None:
        raise ConfigError(f"{path}: not an Ed25519 or EC P-256 key; {_KEYS_HINT}")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Any:
    """An Ed25519 or EC P-256 public key from a PEM file; anything else is a ConfigError."""
    from cryptography.hazmat.primitives import serialization

    data = _read_pem(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM public key ({exc}); pass raigate.pub") from None
    if key_type_of(key) is None:
        raise ConfigError(f"{path}: not an Ed25519 or EC P-256 public key; pass raigate.pub")
    return key


def key_type_of(key: Any) -> KeyType | None:
    """``"ed25519"`` or ``"ec"`` (P-256 only) for a private or public key, else None.

    P-256 alone because its hash (SHA-256) is fixed by the curve in sigstore's and OpenSSF
    model signing's key rules; one curve keeps the attestation's algorithm unambiguous."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return "ec"
    return None


def key_id(public_key: Any) -> str:
    """Names the key in the envelope, hex sha256: for Ed25519 of the raw 32-byte key; for EC
    of the SPKI PEM, the hint OpenSSF model signing writes in its signature bundles, so the
    two signatures of one EC key carry the same key id."""
    from cryptography.hazmat.primitives import serialization

    if key_type_of(public_key) == "ec":
        pem = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(pem).hexdigest()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _sign(private_key: Any, message: bytes) -> bytes:
    """Ed25519 signs the message itself; EC signs ECDSA over SHA-256 (DER-encoded)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if key_type_of(private_key) == "ec":
        return private_key.sign(message, ec.ECDSA(hashes.SHA256()))
    return private_key.sign(message)


def _verify(public_key: Any, sig: bytes, message: bytes) -> None:
    """Raise InvalidSignature (or ValueError) unless ``sig`` signs ``message``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if key_type_of(public_key) == "ec":
        public_key.verify(sig, message, ec.ECDSA(hashes.SHA256()))
    else:
        public_key.verify(sig, message)


# -- statements --------------------------------------------------------------------------------
def subject_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a subject, or None when it can.

    A bundle file's name is a relative POSIX path, normalised (no empty or ``.`` parts, no
    backslash) and confined to the bundle (no ``..``). A model file's name is
    ``model:`` + a path relative to the folder it is resolved against (the plan's folder or
    ``--model-root``): the same rules, except that it may start with ``..`` parts (a model
    kept beside the plan's folder). Absolute names are never valid: a bundle must verify
    wherever it is copied.
    """
    if not isinstance(name, str) or not name:
        return "is not a non-empty string"
    external = name.startswith(MODEL_PREFIX)
    path = name[len(MODEL_PREFIX) :] if external else name
    if "\\" in path or "\x00" in path:
        return "holds a backslash or NUL; subject names are POSIX paths"
    if path.startswith("/"):
        return "is absolute; subject names are relative paths"
    parts = path.split("/")
    if any(part in ("", ".") for part in parts):
        return "is not a normalised path (empty or '.' parts)"
    ups = next((i for i, part in enumerate(parts) if part != ".."), len(parts))
    if ".." in parts[ups:] or (ups and not external):
        return "leads out of the bundle ('..')"
    if ups == len(parts):
        return "names no file"
    return None


def subject_for(path: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """An in-toto subject: ``{"name", "digest": {"sha256"}}`` for a file."""
    return {"name": name, "digest": {"sha256": sha256_file(path)}}


def statement(subjects: list[dict[str, Any]], predicate: dict[str, Any]) -> dict[str, Any]:
    """An in-toto Statement v1 with raigate's predicate type."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": sorted(subjects, key=lambda s: s["name"]),
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }


def sign_statement(stmt: dict[str, Any], private_key: Any) -> dict[str, Any]:
    """A DSSE envelope over the canonical JSON of ``stmt``."""
    payload = json.dumps(stmt, sort_keys=True, separators=(",", ":")).encode("utf-8")
    sig = _sign(private_key, pae(PAYLOAD_TYPE, payload))
    return {
        "payload": base64.b64encode(payload).decode("ascii"),
        "payloadType": PAYLOAD_TYPE,
        "signatures": [
            {
                "keyid": key_id(private_key.public_key()),
                "sig": base64.b64encode(sig).decode("ascii"),
            }
        ],
    }


def verify_envelope(envelope: object, public_key: Any) -> dict[str, Any]:
    """Check the DSSE signature with ``public_key``; return the decoded Statement.

    Anything malformed (not an object, a non-list ``signatures``, bad base64, a payload that
    is not a Statement) is a VerificationFailed with one line, never an internal error: an
    attestation is input from whoever handed over the bundle.
    """
    from cryptography.exceptions import InvalidSignature

    payload, payload_type, sigs = _envelope_parts(envelope)
    message = pae(payload_type, payload)
    for sig in sigs:
        try:
            _verify(public_key, sig, message)
        except (InvalidSignature, ValueError):
            continue
        return parse_statement(payload)
    raise VerificationFailed(
        "signature does not verify with this public key: the report was signed with another "
        "key or the attestation was changed"
    )


def _b64(value: object, field: str) -> bytes:
    if not isinstance(value, str):
        raise VerificationFailed(f"attestation {field} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error is a ValueError; so is non-ASCII text
        raise VerificationFailed(f"attestation {field} is not valid base64") from None


def _envelope_parts(envelope: object) -> tuple[bytes, str, list[bytes]]:
    """``(payload, payloadType, [signature bytes])`` of a well-formed DSSE envelope."""
    if not isinstance(envelope, dict):
        raise VerificationFailed(
            "attestation is not a DSSE envelope (a JSON object with payload, payloadType and "
            "signatures)"
        )
    payload = _b64(envelope.get("payload"), "payload")
    payload_type = envelope.get("payloadType")
    if payload_type != PAYLOAD_TYPE:
        raise VerificationFailed(
            f"attestation payloadType is {payload_type!r}, expected {PAYLOAD_TYPE}"
        )
    entries = envelope.get("signatures")
    if not isinstance(entries, list) or not entries:
        raise VerificationFailed("attestation signatures is not a non-empty list")
    sigs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise VerificationFailed(f"attestation signatures[{i}] is not an object")
        sigs.append(_b64(entry.get("sig"), f"signatures[{i}].sig"))
    return payload, payload_type, sigs


def parse_statement(payload: bytes) -> dict[str, Any]:
    """The signed in-toto Statement, checked for shape: ``_type``, ``predicateType`` (this
    predicate, nothing else), a predicate object, and a non-empty list of subjects, each a
    unique well-formed name (``subject_name_problem``) with a hex sha256."""
    try:
        stmt = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise VerificationFailed("signed payload is not JSON") from None
    if not isinstance(stmt, dict):
        raise VerificationFailed("signed payload is not a JSON object (an in-toto Statement)")
    if stmt.get("_type") != STATEMENT_TYPE:
        raise VerificationFailed(
            f"signed payload _type is {stmt.get('_type')!r}, expected {STATEMENT_TYPE}"
        )
    if stmt.get("predicateType") != PREDICATE_TYPE:
        raise VerificationFailed(
            f"signed predicateType is {stmt.get('predicateType')!r}, expected {PREDICATE_TYPE}"
        )
    if not isinstance(stmt.get("predicate"), dict):
        raise VerificationFailed("signed predicate is not a JSON object")
    subjects = stmt.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise VerificationFailed("signed subject is not a non-empty list")
    seen: set[str] = set()
    for i, subj in enumerate(subjects):
        name = subj.get("name") if isinstance(subj, dict) else None
        digest = subj.get("digest") if isinstance(subj, dict) else None
        sha = digest.get("sha256") if isinstance(digest, dict) else None
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise VerificationFailed(
                f"signed subject[{i}] is not {{name, digest: {{sha256: 64 hex digits}}}}"
            )
        problem = subject_name_problem(name)
        if problem is not None:
            raise VerificationFailed(f"signed subject[{i}] name {name!r} {problem}")
        if name in seen:
            raise VerificationFailed(f"signed subject[{i}] name {name!r} appears twice")
        seen.add(name)
    return stmt
