"""Signed bundles: checked with an independent DSSE verifier written here (PAE + Ed25519
from cryptography), tamper detection per file, wrong keys, deterministic reports."""

from __future__ import annotations

import base64
import json
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from typer.testing import CliRunner

from raigate.cli import app

runner = CliRunner()


def write_plan(tmp: Path, min_accuracy: float = 0.0, extra: str = "") -> Path:
    plan = tmp / "plan.toml"
    plan.write_text(
        f"""
seed = 3
[model]
spec = "raigate.zoo:small_cnn"
random_init = true
[data]
spec = "demo:test"
limit = 64
[checks.evaluate]
min_accuracy = {min_accuracy}
{extra}
"""
    )
    return plan


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("audit")
    res = runner.invoke(app, ["keys", "generate", "--out", str(tmp / "keys")])
    assert res.exit_code == 0, res.output
    out = tmp / "bundle"
    res = runner.invoke(
        app,
        [
            "audit",
            str(write_plan(tmp)),
            "--out",
            str(out),
            "--key",
            str(tmp / "keys" / "raigate.key"),
        ],
    )
    assert res.exit_code == 0, res.output
    # the untrained small_cnn is at chance on 64 demo images: raigate warns, the gate passes
    assert "verdict: WARN (fail_on=fail: PASSED)" in res.output
    return out, tmp / "keys"


def independent_verify(envelope: dict, pub: Ed25519PublicKey) -> dict:
    """DSSE v1 by the spec, not raigate's code: sig over PAE(payloadType, payload)."""
    payload = base64.b64decode(envelope["payload"])
    ptype = envelope["payloadType"].encode()
    pae = (
        b"DSSEv1 "
        + str(len(ptype)).encode()
        + b" "
        + ptype
        + b" "
        + str(len(payload)).encode()
        + b" "
        + payload
    )
    pub.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae)  # raises if bad
    return json.loads(payload)


def test_keys_are_private_and_envelope_verifies_independently(signed: tuple[Path, Path]) -> None:
    out, keys = signed
    assert stat.S_IMODE((keys / "raigate.key").stat().st_mode) == 0o600
    envelope = json.loads((out / "attestation.dsse.json").read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    pub = load_pem_public_key((keys / "raigate.pub").read_bytes())
    stmt = independent_verify(envelope, pub)  # type: ignore[arg-type]
    assert stmt["_type"] == "https://in-toto.io/Statement/v1"
    names = {s["name"] for s in stmt["subject"]}
    assert {
        "report.json",
        "report.html",
        "model-card.md",
        "junit.xml",
        "data-manifest.json",
        "model-manifest.json",
        "mlbom.cdx.json",
        "checks/evaluate/result.json",
    } <= names
    import hashlib

    for s in stmt["subject"]:
        assert hashlib.sha256((out / s["name"]).read_bytes()).hexdigest() == s["digest"]["sha256"]
    report = json.loads((out / "report.json").read_text())
    assert stmt["predicate"]["verdict"] == report["verdict"] == "warn"
    assert [g["id"] for g in stmt["predicate"]["gates"]] == [g["id"] for g in report["gates"]]
    assert stmt["predicate"]["model_digest"] == report["model"]["digest"]
    assert "PRIVATE KEY" not in "".join(
        p.read_text()
        for p in out.rglob("*")
        if p.is_file() and p.suffix in {".json", ".html", ".md", ".xml"}
    )


def test_verify_passes_then_names_each_tampered_file(
    signed: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil

    out, keys = signed
    res = runner.invoke(app, ["verify", str(out), "--key", str(keys / "raigate.pub")])
    assert res.exit_code == 0, res.output
    assert "signature OK" in res.output
    stmt = json.loads(
        base64.b64decode(json.loads((out / "attestation.dsse.json").read_text())["payload"])
    )
    for subject in stmt["subject"]:
        copy = tmp_path / subject["name"].replace("/", "_")
        shutil.copytree(out, copy)
        target = copy / subject["name"]
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01  # flip one bit
        target.write_bytes(bytes(data))
        res = runner.invoke(app, ["verify", str(copy), "--key", str(keys / "raigate.pub")])
        assert res.exit_code == 1, (subject["name"], res.output)
        assert subject["name"] in res.output and "Traceback" not in res.output


def test_wrong_key_fails_and_a_private_key_is_refused(
    signed: tuple[Path, Path], tmp_path: Path
) -> None:
    out, _ = signed
    assert runner.invoke(app, ["keys", "generate", "--out", str(tmp_path)]).exit_code == 0
    res = runner.invoke(app, ["verify", str(out), "--key", str(tmp_path / "raigate.pub")])
    assert res.exit_code == 1 and "does not verify with this public key" in res.output
    res = runner.invoke(app, ["verify", str(out), "--key", str(tmp_path / "raigate.key")])
    assert res.exit_code == 2 and "raigate.key" in res.output  # a private key is not a public key


def test_edited_payload_or_signature_fails_only_on_the_signature(
    signed: tuple[Path, Path], tmp_path: Path
) -> None:
    """A signed FAIL turned into PASS (or the reverse) keeps every subject digest true, so
    nothing but the signature check can catch it: the edited payload below is a well-formed
    Statement whose subjects all match the files, and verify must still exit 1."""
    import hashlib
    import shutil

    out, keys = signed
    envelope = json.loads((out / "attestation.dsse.json").read_text())
    stmt = json.loads(base64.b64decode(envelope["payload"]))
    edited_stmt = {**stmt, "predicate": {**stmt["predicate"], "verdict": "fail", "passed": False}}
    assert edited_stmt != stmt
    for s in edited_stmt["subject"]:  # the files still match what the edited payload claims
        if not s["name"].startswith("model:"):
            assert (
                hashlib.sha256((out / s["name"]).read_bytes()).hexdigest() == s["digest"]["sha256"]
            )
    payload = json.dumps(edited_stmt, sort_keys=True, separators=(",", ":")).encode()
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[0] ^= 0x01
    edits = {
        "payload": {**envelope, "payload": base64.b64encode(payload).decode()},
        "signature": {
            **envelope,
            "signatures": [{**envelope["signatures"][0], "sig": base64.b64encode(sig).decode()}],
        },
    }
    for what, edited in edits.items():
        assert edited != envelope
        copy = tmp_path / what
        shutil.copytree(out, copy)
        (copy / "attestation.dsse.json").write_text(json.dumps(edited))
        res = runner.invoke(app, ["verify", str(copy), "--key", str(keys / "raigate.pub")])
        assert res.exit_code == 1, (what, res.output)
        assert "does not verify with this public key" in res.output, (what, res.output)


def test_same_plan_same_bytes_apart_from_timestamps(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    texts = []
    for name in ("a", "b"):
        res = runner.invoke(app, ["audit", str(plan), "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        text = (tmp_path / name / "report.json").read_text()
        text = re.sub(r'"(created_at|timing_s)": [^,\n]+', r'"\1": X', text)
        texts.append(text)
    assert texts[0] == texts[1]


def test_exit_codes_for_gates_and_bad_plans(tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["audit", str(write_plan(tmp_path, 1.0)), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 1 and "verdict: FAIL" in res.output
    junit = (tmp_path / "o" / "junit.xml").read_text()
    assert 'failures="1"' in junit and "evaluate.min_accuracy" in junit
    assert not (tmp_path / "o" / "attestation.dsse.json").exists()  # unsigned without --key

    bad = write_plan(tmp_path, extra="[checks.bias]\nx = 1")
    res = runner.invoke(app, ["audit", str(bad), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "unknown check [checks.bias]" in res.output
    bad.write_text('[data]\nspec = "demo"\n')
    res = runner.invoke(app, ["audit", str(bad), "--out", str(tmp_path / "o3")])
    assert res.exit_code == 2 and "plan.toml: model: Field required" in res.output
    bad.write_text(
        '[model]\nspec = "raigate.zoo:small_cnn"\nrandom_init = true\n[data]\nspec = "demo"\n'
        "[checks.evaluate]\nmin_accuracy = 2\n"
    )
    res = runner.invoke(app, ["audit", str(bad), "--out", str(tmp_path / "o4")])
    assert res.exit_code == 2 and "checks.evaluate.min_accuracy" in res.output


def test_fail_on_warn_policy() -> None:
    from raigate.results import AuditReport

    base = {
        "plan": {},
        "model": {},
        "data": {},
        "gates": [{"check": "c", "id": "g", "severity": "warn"}],
        "verdict": "warn",
    }
    assert AuditReport(**base, fail_on="fail").passed is True
    assert AuditReport(**base, fail_on="warn").passed is False


def test_fail_on_warn_turns_a_warning_into_exit_1(tmp_path: Path) -> None:
    """A gate that can only warn (too few samples per group to evaluate it): exit 0 under the
    default policy, 1 with --fail-on warn or fail_on = "warn" in the plan; the CLI wins."""
    warn_only = (
        '[checks.fairness]\nsensitive = ["gender"]\nmin_group_size = 100000\nn_boot = 100\n'
        '[checks.fairness.thresholds]\nselection_rate_ratio = "off"\n'
        'equalized_odds_difference = "off"\n'
    )
    plan = write_plan(tmp_path, extra=warn_only)
    res = runner.invoke(app, ["audit", str(plan), "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "verdict: WARN (fail_on=fail: PASSED)" in res.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    warns = [g["severity"] for g in report["gates"] if g["check"] == "fairness"]
    assert warns and set(warns) == {"warn"}
    assert 'failures="0"' in (tmp_path / "a" / "junit.xml").read_text()

    res = runner.invoke(
        app, ["audit", str(plan), "--out", str(tmp_path / "b"), "--fail-on", "warn"]
    )
    assert res.exit_code == 1, res.output
    assert "verdict: WARN (fail_on=warn: FAILED)" in res.output
    junit = (tmp_path / "b" / "junit.xml").read_text()
    assert f'failures="{len(warns)}"' in junit and 'type="warn"' in junit

    plan.write_text('fail_on = "warn"\n' + plan.read_text())
    assert runner.invoke(app, ["audit", str(plan), "--out", str(tmp_path / "c")]).exit_code == 1
    res = runner.invoke(
        app, ["audit", str(plan), "--out", str(tmp_path / "d"), "--fail-on", "fail"]
    )
    assert res.exit_code == 0, res.output
