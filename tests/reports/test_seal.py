"""The seal covers the whole bundle: verify refuses unsigned files, symlinks that lead out and
malformed envelopes; model files are named relative to the plan, so a tree moved whole still
verifies; `raigate audit` replaces only its own bundles and leaves no earlier report behind.

Every bundle here is made by a real `raigate audit` of a saved small_cnn on 32 demo images.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from typer.testing import CliRunner

from model_helpers import saved_small_cnn
from raigate.audit import CHECKS, evaluate
from raigate.audit.runner import bundle_subjects, run_audit, sign_bundle, verify_bundle
from raigate.cli import app
from raigate.config import load_plan
from raigate.errors import DataError, RaigateError, VerificationFailed
from raigate.reports.attest import load_private_key, subject_name_problem
from raigate.results import AuditReport

runner = CliRunner()
MODEL_NAMES = ["model:models/model.json", "model:models/model.safetensors"]


def plan_text(*checks: str) -> str:
    tables = "".join(f"[checks.{c}]\ncheck = 'evaluate'\nmin_accuracy = 0.0\n" for c in checks)
    return (
        'seed = 3\n[model]\nspec = "models/model.json"\n'
        f'[data]\nspec = "demo:test"\nlimit = 32\n{tables}'
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tree/``: plan.toml, models/ (spec + safetensors), keys/, out/ (the signed bundle)."""
    tmp = tmp_path_factory.mktemp("tree")
    saved_small_cnn(tmp / "models" / "model.json")
    (tmp / "plan.toml").write_text(plan_text("evaluate"))
    assert runner.invoke(app, ["keys", "generate", "--out", str(tmp / "keys")]).exit_code == 0
    res = audit(tmp / "plan.toml", tmp / "out", tmp / "keys" / "raigate.key")
    assert res.exit_code == 0, res.output
    return tmp


def audit(plan: Path, out: Path, key: Path | None = None) -> Any:
    args = ["audit", str(plan), "--out", str(out), *(["--key", str(key)] if key else [])]
    return runner.invoke(app, args)


def verify(bundle: Path, pub: Path, *args: str) -> Any:
    return runner.invoke(app, ["verify", str(bundle), "--key", str(pub), *args])


def one_line_error(res: Any) -> str:
    assert "Traceback" not in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("raigate: error: "), res.output
    return lines[0]


def statement(bundle: Path) -> dict[str, Any]:
    envelope = json.loads((bundle / "attestation.dsse.json").read_text())
    return json.loads(base64.b64decode(envelope["payload"]))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- model files, relative to the plan ---------------------------------------------------------
def test_model_files_are_named_relative_to_the_plan(tree: Path) -> None:
    stmt = statement(tree / "out")
    models = {s["name"]: s["digest"]["sha256"] for s in stmt["subject"] if ":" in s["name"]}
    assert sorted(models) == MODEL_NAMES
    for name, digest in models.items():
        assert digest == sha256(tree / name.removeprefix("model:"))
    assert stmt["predicate"]["plan_dir"] == ".."  # the plan's folder, seen from the bundle
    assert not any(s["name"].startswith("/") for s in stmt["subject"])
    res = verify(tree / "out", tree / "keys" / "raigate.pub")
    assert res.exit_code == 0, res.output
    assert "2 model files match their sha256" in res.output


def test_a_tree_moved_whole_verifies_where_it_lands(tree: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(tree, moved)
    res = verify(moved / "out", moved / "keys" / "raigate.pub")
    assert res.exit_code == 0, res.output
    assert f"under {moved / 'out' / '..'}" in res.output
    # the moved tree's own weights are what is checked: change them and verify names them
    weights = moved / "models" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    res = verify(moved / "out", moved / "keys" / "raigate.pub")
    assert res.exit_code == 1
    assert "model:models/model.safetensors: contents changed" in one_line_error(res)


def test_absent_model_files_fail_unless_skipped(tree: Path, tmp_path: Path) -> None:
    alone = tmp_path / "alone"
    shutil.copytree(tree / "out", alone)
    pub = tree / "keys" / "raigate.pub"
    res = verify(alone, pub)
    assert res.exit_code == 1
    line = one_line_error(res)
    assert "model:models/model.json: model file not found at" in line
    assert "--model-root" in line and "--skip-model-files" in line
    res = verify(alone, pub, "--skip-model-files")
    assert res.exit_code == 0, res.output
    for name in MODEL_NAMES:
        assert f"not checked (--skip-model-files): {name}" in res.output
    v = verify_bundle(alone, pub, skip_model_files=True)
    assert v.skipped_model_files == MODEL_NAMES and v.model_root is None
    assert not any(n.startswith("model:") for n in v.checked)
    with pytest.raises(VerificationFailed, match="model file not found"):
        verify_bundle(alone, pub)


def test_model_root_finds_models_kept_elsewhere(tree: Path, tmp_path: Path) -> None:
    shutil.copytree(tree / "out", tmp_path / "bundles" / "out")
    shutil.copytree(tree / "models", tmp_path / "store" / "models")
    pub = tree / "keys" / "raigate.pub"
    res = verify(tmp_path / "bundles" / "out", pub, "--model-root", str(tmp_path / "store"))
    assert res.exit_code == 0, res.output
    assert f"2 model files match their sha256 (under {tmp_path / 'store'})" in res.output
    v = verify_bundle(tmp_path / "bundles" / "out", pub, model_root=tmp_path / "store")
    assert set(MODEL_NAMES) <= set(v.checked) and v.model_root == tmp_path / "store"
    res = verify(tmp_path / "bundles" / "out", pub, "--model-root", str(tmp_path))
    assert res.exit_code == 1 and "model:models/model.json" in one_line_error(res)
    res = verify(tmp_path / "bundles" / "out", pub, "--model-root", str(tmp_path / "nope"))
    assert res.exit_code == 2 and "--model-root is not a folder" in one_line_error(res)


# -- every file in the folder is signed --------------------------------------------------------
@pytest.mark.parametrize(
    "extra",
    [
        "extra.html",
        "checks/fake/result.json",
        ".DS_Store",
        "checks/evaluate/.result.json.k2j3h4_x.tmp",  # what a crash mid-write leaves
    ],
)
def test_a_file_the_attestation_does_not_sign_fails(tree: Path, tmp_path: Path, extra: str) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tree / "out", copy)
    (copy / extra).parent.mkdir(parents=True, exist_ok=True)
    (copy / extra).write_text("{}")
    res = verify(copy, tree / "keys" / "raigate.pub", "--skip-model-files")
    assert res.exit_code == 1
    line = one_line_error(res)
    assert f"error: {extra}" in line and "not a signed subject" in line
    if extra.endswith(".tmp"):
        assert "interrupted write" in line


def test_symlinks_that_lead_out_fail(tree: Path, tmp_path: Path) -> None:
    pub = tree / "keys" / "raigate.pub"
    copy = tmp_path / "b"
    shutil.copytree(tree / "out", copy)
    # the same bytes, but outside the bundle: the digest matches, confinement does not
    outside = tmp_path / "outside.json"
    shutil.copy(copy / "checks" / "evaluate" / "result.json", outside)
    (copy / "checks" / "evaluate" / "result.json").unlink()
    (copy / "checks" / "evaluate" / "result.json").symlink_to(outside)
    res = verify(copy, pub, "--skip-model-files")
    assert res.exit_code == 1
    assert "checks/evaluate/result.json: a symlink that leads out of" in one_line_error(res)

    copy2 = tmp_path / "c"
    shutil.copytree(tree / "out", copy2)
    (copy2 / "checks" / "linked").symlink_to(tmp_path, target_is_directory=True)
    res = verify(copy2, pub, "--skip-model-files")
    assert res.exit_code == 1
    assert "checks/linked (a symlink): in" in one_line_error(res)


# -- malformed envelopes: exit 1, one line ------------------------------------------------------
def resign(tree: Path, payload: bytes) -> dict[str, Any]:
    """A DSSE envelope over arbitrary bytes, signed with the tree's key (written here from
    the DSSE spec, not with raigate's signer)."""
    key = load_pem_private_key((tree / "keys" / "raigate.key").read_bytes(), password=None)
    ptype = b"application/vnd.in-toto+json"
    pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(payload), payload)
    return {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": ptype.decode(),
        "signatures": [{"keyid": "k", "sig": base64.b64encode(key.sign(pae)).decode()}],  # type: ignore[union-attr,call-arg]
    }


def edited_statement(tree: Path, **changes: Any) -> bytes:
    return json.dumps({**statement(tree / "out"), **changes}).encode()


SHA = "0" * 64
ENVELOPE_EDITS: dict[str, tuple[Any, str]] = {
    # unsigned structure: rejected before any signature is checked
    "not an object": (lambda e, t: [e], "not a DSSE envelope"),
    "signatures a string": (lambda e, t: {**e, "signatures": "abc"}, "non-empty list"),
    "signatures an object": (lambda e, t: {**e, "signatures": {"sig": "x"}}, "non-empty list"),
    "signatures empty": (lambda e, t: {**e, "signatures": []}, "non-empty list"),
    "signature not an object": (lambda e, t: {**e, "signatures": ["x"]}, "is not an object"),
    "sig not text": (lambda e, t: {**e, "signatures": [{"sig": 5}]}, "not a base64 string"),
    "sig bad base64": (lambda e, t: {**e, "signatures": [{"sig": "%%"}]}, "not valid base64"),
    "payload bad base64": (lambda e, t: {**e, "payload": "é!"}, "payload is not valid base64"),
    "payload missing": (lambda e, t: {k: v for k, v in e.items() if k != "payload"}, "payload"),
    "payloadType": (lambda e, t: {**e, "payloadType": "text/plain"}, "payloadType is"),
    # signed, but not a raigate Statement
    "payload not JSON": (lambda e, t: resign(t, b"\xff not json"), "payload is not JSON"),
    "payload a list": (lambda e, t: resign(t, b"[1, 2]"), "not a JSON object"),
    "predicateType": (
        lambda e, t: resign(t, edited_statement(t, predicateType="https://x.dev/v1")),
        "predicateType is 'https://x.dev/v1'",
    ),
    "_type": (lambda e, t: resign(t, edited_statement(t, _type="x")), "_type is 'x'"),
    "predicate a list": (lambda e, t: resign(t, edited_statement(t, predicate=[])), "predicate"),
    "subject an object": (lambda e, t: resign(t, edited_statement(t, subject={})), "subject"),
    "subject without digest": (
        lambda e, t: resign(t, edited_statement(t, subject=[{"name": "report.json"}])),
        "subject[0] is not",
    ),
    "subject ../x": (
        lambda e, t: resign(
            t, edited_statement(t, subject=[{"name": "../x", "digest": {"sha256": SHA}}])
        ),
        "leads out of the bundle",
    ),
    "subject absolute": (
        lambda e, t: resign(
            t, edited_statement(t, subject=[{"name": "model:/etc/x", "digest": {"sha256": SHA}}])
        ),
        "is absolute",
    ),
    "subject twice": (
        lambda e, t: resign(
            t, edited_statement(t, subject=[{"name": "a", "digest": {"sha256": SHA}}] * 2)
        ),
        "appears twice",
    ),
}


@pytest.mark.parametrize("edit", sorted(ENVELOPE_EDITS))
def test_a_malformed_envelope_exits_1_with_one_line(tree: Path, tmp_path: Path, edit: str) -> None:
    make, needle = ENVELOPE_EDITS[edit]
    copy = tmp_path / "b"
    shutil.copytree(tree / "out", copy)
    envelope = json.loads((copy / "attestation.dsse.json").read_text())
    (copy / "attestation.dsse.json").write_text(json.dumps(make(envelope, tree)))
    res = verify(copy, tree / "keys" / "raigate.pub")
    assert res.exit_code == 1, res.output
    assert needle in one_line_error(res)


def test_an_attestation_that_is_not_json_exits_1(tree: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tree / "out", copy)
    (copy / "attestation.dsse.json").write_bytes(b"\x00{not json")
    res = verify(copy, tree / "keys" / "raigate.pub")
    assert res.exit_code == 1 and "not valid JSON" in one_line_error(res)


# -- subject names -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,ok",
    [
        ("report.json", True),
        ("checks/evaluate/predictions.csv", True),
        ("model:models/model.safetensors", True),
        ("model:../../models/w.safetensors", True),  # a model beside the plan's folder
        ("../x", False),
        ("checks/evaluate/../../x", False),
        ("/etc/passwd", False),
        ("model:/abs/w.safetensors", False),
        ("model:models/../w", False),
        ("model:..", False),
        ("./report.json", False),
        ("checks//x", False),
        ("checks\\x", False),
        ("", False),
        (None, False),
    ],
)
def test_subject_names_are_relative_normalised_and_confined(name: Any, ok: bool) -> None:
    assert (subject_name_problem(name) is None) is ok


def test_signing_refuses_names_and_symlinks_that_leave_the_bundle(
    tree: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tree / "out", copy)
    (copy / "attestation.dsse.json").unlink()
    report = AuditReport.load(copy / "report.json")
    key = load_private_key(tree / "keys" / "raigate.key")
    (tmp_path / "x").write_text("outside")
    (copy / "checks" / "evaluate" / "link.csv").symlink_to(tmp_path / "x")
    for artifact, needle in [
        ("checks/evaluate/../../x", "leads out of the bundle"),
        ("../x", "leads out of the bundle"),
        (str(tmp_path / "x"), "is absolute"),
        ("checks/evaluate/link.csv", "a symlink that leads out of the bundle"),
        ("checks/evaluate/absent.csv", "not a file"),
    ]:
        report.checks["evaluate"].artifacts = ["checks/evaluate/predictions.csv", artifact]
        with pytest.raises(RaigateError, match=needle):
            bundle_subjects(copy, report, plan_dir=tree)
        with pytest.raises(RaigateError, match=needle):
            sign_bundle(copy, report, key, plan_dir=tree)
        assert not (copy / "attestation.dsse.json").exists()  # never signed
    # a file in the folder that no subject names is refused too
    (copy / "checks" / "evaluate" / "link.csv").unlink()
    (copy / "checks" / "evaluate" / "stray.png").write_bytes(b"png")
    report.checks["evaluate"].artifacts = ["checks/evaluate/predictions.csv"]
    with pytest.raises(RaigateError, match=r"checks/evaluate/stray\.png"):
        sign_bundle(copy, report, key, plan_dir=tree)
    assert not (copy / "attestation.dsse.json").exists()


# -- the --out folder --------------------------------------------------------------------------
def test_out_naming_a_file_or_a_foreign_folder_is_refused(tree: Path, tmp_path: Path) -> None:
    plan = tree / "plan.toml"
    (tmp_path / "file.txt").write_text("mine")
    res = audit(plan, tmp_path / "file.txt")
    assert res.exit_code == 2 and "file.txt: --out names a file" in one_line_error(res)
    assert (tmp_path / "file.txt").read_text() == "mine"

    foreign = tmp_path / "foreign"
    (foreign / "checks").mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    res = audit(plan, foreign)
    assert res.exit_code == 2
    assert "not a raigate report bundle (no raigate-bundle.json)" in one_line_error(res)
    assert sorted(p.name for p in foreign.iterdir()) == ["checks", "notes.txt"]


@pytest.mark.parametrize(
    "user_file", ["notes.txt", ".hidden", "checks/mine.txt", "checks/other/result.json"]
)
def test_a_user_file_in_a_bundle_is_refused_and_nothing_is_deleted(
    tree: Path, tmp_path: Path, user_file: str
) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tree / "out", copy)
    (copy / user_file).parent.mkdir(parents=True, exist_ok=True)
    (copy / user_file).write_text("mine")
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    res = audit(tree / "plan.toml", copy)
    assert res.exit_code == 2
    first = user_file.split("/")[:2] if user_file.startswith("checks/") else [user_file]
    assert f"{copy / '/'.join(first)}: not written by raigate" in one_line_error(res)
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_a_rerun_with_another_plan_removes_the_earlier_runs_files(
    tree: Path, tmp_path: Path
) -> None:
    work = tmp_path / "w"
    shutil.copytree(tree, work)
    (work / "two.toml").write_text(plan_text("evaluate", "second"))
    key, pub = work / "keys" / "raigate.key", work / "keys" / "raigate.pub"
    assert audit(work / "two.toml", work / "out", key).exit_code == 0
    assert (work / "out" / "checks" / "second" / "result.json").is_file()
    # a crash in an earlier write left a temporary file: raigate's own, removed too
    (work / "out" / ".report.html.ab12cd_3.tmp").write_text("half")
    res = audit(work / "plan.toml", work / "out", key)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (work / "out" / "checks").iterdir()) == ["evaluate"]
    assert not (work / "out" / ".report.html.ab12cd_3.tmp").exists()
    assert json.loads((work / "out" / "raigate-bundle.json").read_text())["checks"] == ["evaluate"]
    res = verify(work / "out", pub)
    assert res.exit_code == 0, res.output


def boom(model: Any, data: Any, params: Any, out_dir: Path | None = None) -> Any:
    """A check that writes part of its output, then meets bad input."""
    assert out_dir is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "partial.csv").write_text("a,b\n")
    raise DataError("boom.csv: a data file this check cannot read")


def test_a_failed_run_leaves_nothing_of_the_previous_report(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "w"
    shutil.copytree(tree, work)
    out = work / "out"
    assert (out / "report.html").is_file() and (out / "junit.xml").is_file()
    monkeypatch.setitem(CHECKS, "boom", (boom, evaluate.EvaluateParams))
    (work / "boom.toml").write_text(plan_text("evaluate") + "[checks.boom]\n")
    res = audit(work / "boom.toml", out, work / "keys" / "raigate.key")
    assert res.exit_code == 2 and "boom.csv" in res.output, res.output
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert left == [
        ".progress/evaluate/evaluate/b000000.npz",  # what `audit --resume` would reuse
        "checks/boom/partial.csv",
        "checks/evaluate/predictions.csv",
        "checks/evaluate/result.json",
        "raigate-bundle.json",
    ]  # this run's partial output; no report.html, junit.xml, report.json or attestation
    res = verify(out, work / "keys" / "raigate.pub")
    assert res.exit_code == 1 and "no attestation" in res.output
    # and the crashed run's partial bundle is raigate's: the next run replaces it
    monkeypatch.delitem(CHECKS, "boom")
    assert audit(work / "plan.toml", out, work / "keys" / "raigate.key").exit_code == 0
    assert not (out / "checks" / "boom").exists()
    assert verify(out, work / "keys" / "raigate.pub").exit_code == 0

    # a plan that fails before any check runs leaves no earlier report either
    (work / "bad.toml").write_text(plan_text("evaluate").replace("models/", "missing/"))
    res = audit(work / "bad.toml", out)
    assert res.exit_code == 2 and "missing" in one_line_error(res)
    assert [p.name for p in out.iterdir()] == ["raigate-bundle.json"]


def test_run_audit_from_python_names_models_relative_to_the_plan(
    tree: Path, tmp_path: Path
) -> None:
    outcome = run_audit(
        load_plan(tree / "plan.toml"),
        tmp_path / "py",
        key=tree / "keys" / "raigate.key",
        progress=False,
        echo=lambda _: None,
    )
    stmt = statement(outcome.out_dir)
    assert sorted(s["name"] for s in stmt["subject"] if ":" in s["name"]) == MODEL_NAMES
    v = verify_bundle(outcome.out_dir, tree / "keys" / "raigate.pub")
    assert set(MODEL_NAMES) <= set(v.checked)
    assert v.model_root is not None and (v.model_root / "plan.toml").samefile(tree / "plan.toml")
