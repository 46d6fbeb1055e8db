"""Fixtures for the privacy tests: tiny DP-SGD runs on demo data (a few seconds each)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import raigate
from raigate.privacy.train import DPParams, PrivateTraining, run_private_training

TINY = {
    "epsilon": 3.0,
    "delta": 1e-4,
    "epochs": 1,
    "batch_size": 16,
    "accountant": "rdp",
    "lr": 0.5,
    "progress": False,
}
"""96 demo images, small GroupNorm CNN, q = 1/6: 6 DP-SGD steps."""

Runner = Callable[..., PrivateTraining]


def _run(
    out: Path | None = None,
    resume: Path | None = None,
    sampler: object = None,
    **overrides: object,
) -> PrivateTraining:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_private_training(
            "raigate.zoo:small_cnn",
            raigate.load_data("demo:train", limit=96),
            DPParams(**{**TINY, **overrides}),  # type: ignore[arg-type]
            kwargs={"norm": "group"},
            out_dir=out,
            resume=resume,
            sampler=sampler,
        )


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and two threads on a shared, busy CPU spin
    against each other (measured 40x slower here); restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def dp_runner() -> Runner:
    """``dp_runner(out=None, resume=None, sampler=None, **param_overrides)`` runs the tiny
    DP-SGD setup."""
    return _run


@pytest.fixture(scope="session")
def tiny_dp(tmp_path_factory: pytest.TempPathFactory) -> PrivateTraining:
    return _run(tmp_path_factory.mktemp("tiny_dp"))
