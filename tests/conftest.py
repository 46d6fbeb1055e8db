"""Shared test fixtures.

Real third-party data (FairFace faces, CIFAR-10 JPEGs, pretrained weights) lives outside
the project, in ``../shared/data`` beside the checkout or wherever ``RAIGATE_SHARED_DATA``
points; tests that need it skip, with the reason, where it is absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_shared_data() -> Path | None:
    """The shared real-data folder, or None where this machine has none."""
    env = os.environ.get("RAIGATE_SHARED_DATA")
    path = Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared real-data folder; skips the test where it is absent."""
    path = find_shared_data()
    if path is None:
        where = os.environ.get("RAIGATE_SHARED_DATA") or str(REPO_ROOT.parent / "shared/data")
        pytest.skip(f"real test data not found at {where} (set RAIGATE_SHARED_DATA)")
    return path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models and small batches run fastest on one intra-op thread, and two threads on
    a shared 2-core machine spin against each other; a module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
