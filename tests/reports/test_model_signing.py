"""OpenSSF model signing with an EC P-256 key: `raigate keys generate --type ec` makes the
pair, `raigate audit --key` also writes model.sig over the audited model's files, the
attestation (ECDSA P-256) names its digest, and OpenSSF's own verifier (its Python API and
its `model_signing verify key` CLI) accepts it against the same public key and refuses a
tampered or extended model; `raigate verify` agrees. The Ed25519 path writes no model.sig.

Each bundle is a real `raigate audit` of a saved small_cnn on 32 demo images; the digests
are checked against hashlib and the attestation's ECDSA signature against cryptography
directly, not through raigate's code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import model_signing
import pytest
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from safetensors.torch import save_file
from typer.testing import CliRunner

from raigate.cli import app
from raigate.errors import ConfigError
from raigate.models.loaders import write_model_spec
from raigate.reports.model_signature import SIGNATURE_FORMAT, signing_target
from raigate.zoo import small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
DATA = '[data]\nspec = "demo:test"\nlimit = 32\n[checks.evaluate]\nmin_accuracy = 0.0\n'


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``tree/``: models/ (spec + safetensors, signed as a folder), weights/net.safetensors
    (a single-file model), keys/ (EC) and ed/ (Ed25519), and three bundles: out/ (spec
    model, EC key), single/ (weights file, EC key), out-ed/ (spec model, Ed25519 key)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("msign")
    (tmp / "models").mkdir()
    (tmp / "weights").mkdir()
    torch.manual_seed(5)
    state = {k: v.contiguous() for k, v in small_cnn(num_classes=2).state_dict().items()}
    save_file(state, tmp / "models" / "model.safetensors")
    save_file(state, tmp / "weights" / "net.safetensors")
    write_model_spec(
        tmp / "models" / "model.json", factory="raigate.zoo:small_cnn",
        kwargs={"num_classes": 2}, weights=tmp / "models" / "model.safetensors",
        class_names=["Male", "Female"], input_shape=[3, 32, 32], mean=[0.5] * 3, std=[0.5] * 3,
    )  # fmt: skip
    (tmp / "plan.toml").write_text(f'seed = 3\n[model]\nspec = "models/model.json"\n{DATA}')
    (tmp / "single.toml").write_text(
        'seed = 3\n[model]\nspec = "raigate.zoo:small_cnn"\nweights = "weights/net.safetensors"\n'
        f'class_names = ["Male", "Female"]\ninput_size = [3, 32, 32]\n{DATA}'
    )
    for folder, extra in (("keys", ["--type", "ec"]), ("ed", [])):
        res = runner.invoke(app, ["keys", "generate", "--out", str(tmp / folder), *extra])
        assert res.exit_code == 0, res.output
    for plan, out, key in (("plan", "out", "keys"), ("single", "single", "keys"),
                           ("plan", "out-ed", "ed")):  # fmt: skip
        res = audit(tmp / f"{plan}.toml", tmp / out, tmp / key / "raigate.key")
        assert res.exit_code == 0, res.output
    torch.set_num_threads(before)
    yield tmp


def audit(plan: Path, out: Path, key: Path) -> Any:
    return runner.invoke(app, ["audit", str(plan), "--out", str(out), "--key", str(key)])


def verify(bundle: Path, pub: Path, *args: str) -> Any:
    return runner.invoke(app, ["verify", str(bundle), "--key", str(pub), *args])


def envelope_and_statement(bundle: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    envelope = json.loads((bundle / "attestation.dsse.json").read_text())
    return envelope, json.loads(base64.b64decode(envelope["payload"]))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def openssf_cli(model: Path, sig: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    """The library's own command line, as a person receiving the model would run it."""
    cmd = [sys.executable, "-m", "model_signing", "verify", "key", "--signature", str(sig),
           "--public_key", str(pub), str(model)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def openssf_api(model: Path, sig: Path, pub: Path) -> None:
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(model, sig)


# -- keys --------------------------------------------------------------------------------------
def test_keys_generate_type_ec_writes_a_p256_pair(tree: Path) -> None:
    priv = load_pem_private_key((tree / "keys" / "raigate.key").read_bytes(), password=None)
    pub = load_pem_public_key((tree / "keys" / "raigate.pub").read_bytes())
    assert isinstance(priv, ec.EllipticCurvePrivateKey)
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert priv.curve.name == pub.curve.name == "secp256r1"
    assert priv.public_key().public_numbers() == pub.public_numbers()  # one pair
    assert stat.S_IMODE((tree / "keys" / "raigate.key").stat().st_mode) == 0o600
    # the default stays Ed25519
    ed = load_pem_private_key((tree / "ed" / "raigate.key").read_bytes(), password=None)
    assert isinstance(ed, Ed25519PrivateKey)


def test_keys_generate_refuses_an_unknown_type(tmp_path: Path) -> None:
    res = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path), "--type", "rsa"])
    assert res.exit_code == 2 and not list(tmp_path.iterdir())


def test_another_curve_is_refused_as_a_signing_key(tree: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    (tmp_path / "p384.key").write_bytes(pem)
    res = audit(tree / "plan.toml", tmp_path / "out", tmp_path / "p384.key")
    assert res.exit_code == 2 and "not an Ed25519 or EC P-256 key" in res.output


# -- the signed bundle -------------------------------------------------------------------------
def test_attestation_is_ecdsa_p256_and_names_the_model_signature(tree: Path) -> None:
    out = tree / "out"
    envelope, stmt = envelope_and_statement(out)
    # ECDSA P-256 / SHA-256 over DSSE's PAE, checked with cryptography directly
    payload = base64.b64decode(envelope["payload"])
    ptype = envelope["payloadType"].encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(payload), payload)
    pub = load_pem_public_key((tree / "keys" / "raigate.pub").read_bytes())
    sig = base64.b64decode(envelope["signatures"][0]["sig"])
    pub.verify(sig, pae, ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg,union-attr]
    entry = stmt["predicate"]["model_signature"]
    subjects = {s["name"]: s["digest"]["sha256"] for s in stmt["subject"]}
    assert entry == {
        "file": "model.sig",
        "sha256": sha256(out / "model.sig"),
        "format": SIGNATURE_FORMAT,
        "model_path": "models",
    }
    assert subjects["model.sig"] == entry["sha256"]  # a signed subject of the bundle too
    # one key id for both signatures: sha256 of the SPKI PEM, model_signing's own hint
    bundle = json.loads((out / "model.sig").read_text())
    pem = pub.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    hint = bundle["verificationMaterial"]["publicKey"]["hint"]
    assert envelope["signatures"][0]["keyid"] == hint == hashlib.sha256(pem).hexdigest()


def test_both_signatures_describe_the_same_model_digests(tree: Path) -> None:
    _, stmt = envelope_and_statement(tree / "out")
    bundle = json.loads((tree / "out" / "model.sig").read_text())
    signed = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    resources = {r["name"]: r["digest"] for r in signed["predicate"]["resources"]}
    files = ["model.json", "model.safetensors"]
    assert resources == {f: sha256(tree / "models" / f) for f in files}
    assert signed["predicate"]["serialization"]["hash_type"] == "sha256"
    attested = {s["name"]: s["digest"]["sha256"] for s in stmt["subject"]}
    assert {f"model:models/{f}": resources[f] for f in files}.items() <= attested.items()


def test_openssf_verifier_accepts_the_signature_api_and_cli(tree: Path) -> None:
    sig, pub = tree / "out" / "model.sig", tree / "keys" / "raigate.pub"
    openssf_api(tree / "models", sig, pub)  # raises on failure
    done = openssf_cli(tree / "models", sig, pub)
    assert done.returncode == 0, done.stderr
    assert "Verification succeeded" in done.stdout
    res = verify(tree / "out", pub)
    assert res.exit_code == 0, res.output
    assert f"model.sig OK: OpenSSF model signature of {tree / 'out' / '..' / 'models'}" in (
        res.output
    )
    n = 11 + (tree / "out" / "report.pdf").is_file()  # report.pdf where Chromium is installed
    assert f"{n + 1} signed files" not in res.output and f"{n} signed files match" in res.output


def test_a_single_weights_file_is_signed_as_that_file(tree: Path) -> None:
    _, stmt = envelope_and_statement(tree / "single")
    assert stmt["predicate"]["model_signature"]["model_path"] == "weights/net.safetensors"
    bundle = json.loads((tree / "single" / "model.sig").read_text())
    signed = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    digests = [r["digest"] for r in signed["predicate"]["resources"]]
    assert digests == [sha256(tree / "weights" / "net.safetensors")]
    sig, pub = tree / "single" / "model.sig", tree / "keys" / "raigate.pub"
    openssf_api(tree / "weights" / "net.safetensors", sig, pub)
    done = openssf_cli(tree / "weights" / "net.safetensors", sig, pub)
    assert done.returncode == 0, done.stderr
    assert verify(tree / "single", pub).exit_code == 0


def test_a_tampered_weight_file_fails_every_verifier(tree: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tree"
    shutil.copytree(tree, copy)
    weights = copy / "models" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    sig, pub = copy / "out" / "model.sig", copy / "keys" / "raigate.pub"
    with pytest.raises(ValueError, match=r"Hash mismatch for \W*model\.safetensors"):
        openssf_api(copy / "models", sig, pub)
    done = openssf_cli(copy / "models", sig, pub)
    assert done.returncode == 1 and "Verification failed" in done.stderr
    res = verify(copy / "out", pub)
    assert res.exit_code == 1 and "model:models/model.safetensors: contents changed" in res.output


def test_a_file_added_beside_the_model_fails_on_the_model_signature(
    tree: Path, tmp_path: Path
) -> None:
    """raigate's own subjects still match; only the OpenSSF manifest says the model folder
    holds a file it did not sign (a folder model is signed whole)."""
    copy = tmp_path / "tree"
    shutil.copytree(tree, copy)
    (copy / "models" / "adapter.safetensors").write_bytes(b"extra")
    pub = copy / "keys" / "raigate.pub"
    res = verify(copy / "out", pub)
    assert res.exit_code == 1, res.output
    assert "model.sig: OpenSSF model signature does not verify" in res.output
    assert "Extra files found in model 'models': adapter.safetensors" in res.output
    assert "Traceback" not in res.output
    assert openssf_cli(copy / "models", copy / "out" / "model.sig", pub).returncode == 1


def test_a_swapped_model_signature_fails_on_its_digest(tree: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tree"
    shutil.copytree(tree, copy)
    shutil.copyfile(copy / "single" / "model.sig", copy / "out" / "model.sig")  # same key
    res = verify(copy / "out", copy / "keys" / "raigate.pub")
    assert res.exit_code == 1 and "model.sig: contents changed since signing" in res.output


def test_skip_model_files_says_the_model_signature_was_not_checked(tree: Path) -> None:
    res = verify(tree / "out", tree / "keys" / "raigate.pub", "--skip-model-files")
    assert res.exit_code == 0, res.output
    assert "not checked (--skip-model-files): model.sig (OpenSSF model signature)" in res.output


def test_wrong_key_type_fails_on_the_signature(tree: Path) -> None:
    res = verify(tree / "out", tree / "ed" / "raigate.pub")
    assert res.exit_code == 1 and "does not verify with this public key" in res.output
    res = verify(tree / "out-ed", tree / "keys" / "raigate.pub")
    assert res.exit_code == 1 and "does not verify with this public key" in res.output


def test_an_ed25519_key_writes_no_model_signature(tree: Path) -> None:
    out = tree / "out-ed"
    assert not (out / "model.sig").exists()
    _, stmt = envelope_and_statement(out)
    assert "model_signature" not in stmt["predicate"]
    assert "model.sig" not in {s["name"] for s in stmt["subject"]}
    res = verify(out, tree / "ed" / "raigate.pub")
    assert res.exit_code == 0 and "model.sig" not in res.output


def test_a_rerun_with_an_ed25519_key_removes_the_old_model_signature(
    tree: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "tree"
    shutil.copytree(tree, copy)
    res = audit(copy / "plan.toml", copy / "out", copy / "ed" / "raigate.key")
    assert res.exit_code == 0, res.output
    assert not (copy / "out" / "model.sig").exists()
    assert verify(copy / "out", copy / "ed" / "raigate.pub").exit_code == 0


# -- what is signed ----------------------------------------------------------------------------
def test_signing_target_ignores_everything_but_the_model_files(tmp_path: Path) -> None:
    m = tmp_path / "m"
    (m / "sub").mkdir(parents=True)
    (m / "other").mkdir()
    for name in ("spec.json", "sub/w.bin", "sub/notes.txt", "other/x", "readme"):
        (m / name).write_text(name)
    target = signing_target([m / "spec.json", m / "sub" / "w.bin"])
    assert target.path == m.resolve()
    assert target.ignored == ("other", "readme", "sub/notes.txt")
    assert not target.allow_symlinks
    one = signing_target([m / "sub" / "w.bin"])
    assert (one.path, one.ignored) == (m.resolve() / "sub" / "w.bin", ())
    (tmp_path / "link.bin").symlink_to(m / "sub" / "w.bin")
    assert signing_target([tmp_path / "link.bin"]).allow_symlinks
    with pytest.raises(ConfigError, match="no files to sign"):
        signing_target([])
