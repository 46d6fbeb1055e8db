"""One audit over two torchrun processes gives the single-process report (#15), and a run
killed with SIGKILL in the middle of CERTIFY resumes (``--resume``) to the same result.

Both go through the real command line: ``raigate audit PLAN --nproc 2`` (torchrun, two
gloo processes on CPU) and a ``raigate audit`` subprocess killed from outside."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from model_helpers import saved_small_cnn
from raigate.cli import app

runner = CliRunner()

PLAN = """seed = 4
[model]
spec = "model.json"
[data]
spec = "demo:test"
limit = 48
[checks.evaluate]
min_accuracy = 0.0
[checks.fairness]
sensitive = ["race", "gender"]
n_boot = 200
batch_size = 16
[checks.robustness]
attacks = ["fgsm", "pgd"]
eps = ["2/255"]
pgd_steps = 2
pgd_restarts = 1
large_eps_check = false
batch_size = 16
smoothing_sigma = 0.25
eot_samples = 2
predict_n = 8
certify_n = 64
certify_n0 = 8
certify_max_samples = 12
smoothing_batch_size = 128
[checks.explanations]
methods = ["saliency", "integrated-gradients", "smoothgrad"]
n_samples = 6
n_steps = 8
batch_size = 4
smoothgrad_samples = 4
curve_steps = 5
infidelity_perturbations = 4
[checks.privacy]
members = "demo:train"
members_limit = 24
attacks = ["loss", "lira_offline"]
population = "demo:train"
population_sample = 32
reference_models = 3
reference_epochs = 1
batch_size = 8
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("scale")
    saved_small_cnn(tmp / "model.json")
    (tmp / "plan.toml").write_text(PLAN)
    return tmp


RUN_METADATA = {"timing_s", "created_at", "environment", "directory"}
"""What may differ between two runs of one plan: timings, the clock, the run's environment
(threads, world size, devices) and where the out folder is (two runs, two folders)."""


def comparable(obj: Any) -> Any:
    """A report without the run's metadata (:data:`RUN_METADATA`, any ``*seconds*``)."""
    if isinstance(obj, dict):
        return {
            k: comparable(v) for k, v in obj.items() if k not in RUN_METADATA and "seconds" not in k
        }
    if isinstance(obj, list):
        return [comparable(v) for v in obj]
    return obj


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "raigate", *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip


def test_two_processes_write_the_single_process_report(work: Path) -> None:
    torch.set_num_threads(1)
    one = runner.invoke(app, ["audit", str(work / "plan.toml"), "--out", str(work / "one")])
    assert one.exit_code == 0, one.output
    two = cli("audit", str(work / "plan.toml"), "--out", str(work / "two"), "--nproc", "2")
    assert two.returncode == 0, two.stdout + two.stderr
    assert "audit: 2 processes (gloo), devices cpu, cpu" in two.stdout
    assert two.stdout.count("[1/5] evaluate …") == 1  # rank 0 alone speaks
    r1 = json.loads((work / "one" / "report.json").read_text())
    r2 = json.loads((work / "two" / "report.json").read_text())
    assert r2["environment"]["distributed"] == {
        "world_size": 2, "backend": "gloo", "devices": ["cpu", "cpu"],
    }  # fmt: skip
    assert r1["environment"]["distributed"]["world_size"] == 1
    assert comparable(r2) == comparable(r1)
    assert r1["checks"]["robustness"]["metrics"]["certified_n"] == 12
    # the same files, and no progress left in either bundle
    files = {p.relative_to(work / "one").as_posix() for p in (work / "one").rglob("*")}
    assert files == {p.relative_to(work / "two").as_posix() for p in (work / "two").rglob("*")}
    assert not any(f.startswith(".progress") for f in files)


def test_nproc_relays_a_bad_plan_once_with_exit_2(work: Path) -> None:
    (work / "bad.toml").write_text(PLAN.replace("sensitive = [", "sensitive = ['nope', "))
    res = cli("audit", str(work / "bad.toml"), "--out", str(work / "bad"), "--nproc", "2")
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.count("nope") == 1, res.stderr
    assert "Traceback" not in res.stderr


SLOW = """seed = 4
[model]
spec = "model.json"
[data]
spec = "demo:test"
limit = 16
[checks.robustness]
attacks = ["fgsm"]
eps = ["2/255"]
large_eps_check = false
batch_size = 16
smoothing_sigma = 0.25
eot_samples = 1
predict_n = 4
certify_n = 4000
certify_n0 = 8
certify_max_samples = 10
smoothing_batch_size = 4000
"""  # one image per certify batch (4000 draws), a fraction of a second each


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # the command name may hold spaces: the parent pid follows the last ")"
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_in_certify_then_resume_gives_the_same_result(work: Path) -> None:
    """``--nproc 2`` killed with SIGKILL in the middle of CERTIFY: its workers end with it
    (they would go on writing), and ``--resume`` (here in one process: batches do not
    depend on the number of processes) loads every finished batch and gives the result of
    an uninterrupted run."""
    (work / "slow.toml").write_text(SLOW)
    torch.set_num_threads(1)
    ref = runner.invoke(app, ["audit", str(work / "slow.toml"), "--out", str(work / "ref")])
    assert ref.exit_code == 0, ref.output
    out = work / "killed"
    cmd = ["audit", str(work / "slow.toml"), "--out", str(out), "--nproc", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "raigate", *cmd], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )  # fmt: skip
    certify = out / ".progress" / "robustness" / "certify"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(certify.glob("b*.npz"))) < 3:
        assert proc.poll() is None, "the audit ended before it could be killed"
        time.sleep(0.01)
    workers = children(proc.pid)
    assert len(workers) == 2
    proc.send_signal(signal.SIGKILL)  # the launcher only, as `kill -9 PID` would
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(alive(w) for w in workers):
        time.sleep(0.05)
    assert not any(alive(w) for w in workers), "workers outlived their launcher"
    done = sorted(certify.glob("b*.npz"))
    kept = list((out / ".progress" / "robustness").rglob("b*.npz"))  # attacks + certify
    assert 3 <= len(done) < 10, "killed in the middle of CERTIFY"
    assert not (out / "report.json").exists()
    # resumed: every finished batch is loaded (each rank redoes the one it was in)
    res = runner.invoke(app, ["audit", str(work / "slow.toml"), "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    robust = [ln for ln in res.output.splitlines() if ln.startswith("[1/1] robustness:")]
    assert robust and f"; {len(kept)} batches resumed from .progress" in robust[0], res.output
    got = json.loads((out / "checks" / "robustness" / "result.json").read_text())
    want = json.loads((work / "ref" / "checks" / "robustness" / "result.json").read_text())
    assert comparable(got) == comparable(want)
    assert not (out / ".progress").exists()


def test_a_second_audit_into_a_busy_folder_exits_2(work: Path) -> None:
    from raigate._io import folder_lock

    out = work / "busy"
    out.mkdir()
    with folder_lock(out):  # another audit writing it
        res = runner.invoke(app, ["audit", str(work / "slow.toml"), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "another raigate audit is writing this folder" in res.output
    assert sorted(out.iterdir()) == []  # nothing touched


def test_corrupt_progress_is_refused_with_exit_2(work: Path) -> None:
    out = work / "corrupt"
    plan = work / "evaluate.toml"
    plan.write_text(PLAN[: PLAN.index("[checks.fairness]")])
    res = runner.invoke(app, ["audit", str(plan), "--out", str(out)])
    assert res.exit_code == 0, res.output
    # a run that died after its first batch: fake it from the finished bundle's layout
    batch = out / ".progress" / "evaluate" / "evaluate" / "b000000.npz"
    batch.parent.mkdir(parents=True)
    batch.write_bytes(b"PK\x03\x04 not a zip")
    res = runner.invoke(app, ["audit", str(plan), "--out", str(out), "--resume"])
    assert res.exit_code == 2, res.output
    assert "b000000.npz: corrupt progress file" in res.output
    assert "Traceback" not in res.output
    # without --resume the stale progress is simply removed
    res = runner.invoke(app, ["audit", str(plan), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert not (out / ".progress").exists()
