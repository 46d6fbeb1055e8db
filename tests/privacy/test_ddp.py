"""Distributed DP-SGD (Opacus' DPDDP, gloo, two CPU processes): the ledger equals the
single-process ledger of the same config, and the processes end with identical weights.

The default run forks two workers that call the library directly; the slow test runs the
real ``torchrun --nproc-per-node 2 -m raigate privacy train`` command line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from typer.testing import CliRunner

from raigate.cli import app
from raigate.privacy.ledger import Ledger
from raigate.privacy.train import PrivateTraining

ARGS = [
    "privacy",
    "train",
    "--model",
    "raigate.zoo:small_cnn",
    "--data",
    "demo:train",
    "--limit",
    "96",
    "--epochs",
    "1",
    "--batch-size",
    "16",
    "--accountant",
    "rdp",
    "--epsilon",
    "3",
    "--delta",
    "1e-4",
    "--device",
    "cpu",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker(rank: int, port: int, out: str) -> None:
    """One process of a 2-process run of the tiny setup (tests/privacy/conftest.py)."""
    import raigate
    from raigate.privacy.train import DPParams, run_private_training

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        tiny = {
            "epsilon": 3.0,
            "delta": 1e-4,
            "epochs": 1,
            "batch_size": 16,
            "accountant": "rdp",
            "lr": 0.5,
            "progress": False,
        }
        run = run_private_training(
            "raigate.zoo:small_cnn",
            raigate.load_data("demo:train", limit=96),
            DPParams(**tiny),
            kwargs={"norm": "group"},
            out_dir=out,
        )
        assert run.world_size == 2 and run.weights_in_sync
    finally:
        dist.destroy_process_group()


def test_two_workers_give_the_single_process_ledger(
    tiny_dp: PrivateTraining, tmp_path: Path
) -> None:
    # fork: the workers inherit the imported libraries instead of importing them again
    mp.start_processes(
        worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    two = Ledger.load(tmp_path)
    same = {"sampler": None}  # the budget is the same; the draws are each shard's own
    assert two.model_copy(update=same) == tiny_dp.ledger.model_copy(update=same)
    assert two.complete and two.epsilon <= 3.0
    # the realized-rate count sums both shards: 48 examples each, sample streams 100 and 101
    gens = [torch.Generator().manual_seed(100 + rank) for rank in (0, 1)]
    drawn = sum(int((torch.rand(48, generator=g) < 1 / 6).sum()) for _ in range(6) for g in gens)
    assert two.sampler is not None and two.sampler.plausible
    assert (two.sampler.examples_drawn, two.sampler.trials) == (drawn, 96 * 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt",
        "ledger.json",
        "model.json",
        "model.safetensors",
    ]


@pytest.mark.slow
def test_torchrun_command_line_matches_single_process_ledger(tmp_path: Path) -> None:
    single = CliRunner().invoke(app, [*ARGS, "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "raigate",
        *ARGS,
        "--out",
        str(tmp_path / "two"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 processes" in proc.stdout
    # only rank 0 reports (once) and writes
    assert proc.stdout.count("weights in sync across processes: yes") == 1
    two, one = Ledger.load(tmp_path / "two"), Ledger.load(tmp_path / "one")
    same = {"sampler": None}  # the draws are each shard's own (see the test above)
    assert two.model_copy(update=same) == one.model_copy(update=same)
    assert two.complete and two.epsilon <= 3.0 and two.sampler and two.sampler.plausible
