"""Shared test fixtures.

Real third-party data (FairFace faces, CIFAR-10 JPEGs, pretrained weights) lives outside
the project, in ``../shared/data`` beside the checkout or wherever ``RAIGATE_SHARED_DATA``
points; tests that need it skip, with the reason, where it is absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="module")
def trained() -> Any:
    """``small_cnn`` trained for a few seconds on the synthetic demo data (gender task): a
    model far from chance, for tests that need one that works."""
    import torch

    import raigate
    from raigate.models.base import Normalize
    from raigate.training import fit
    from raigate.zoo import small_cnn

    train = raigate.load_data("demo:train", limit=600)
    torch.manual_seed(0)
    net = small_cnn(num_classes=2)
    fit(net, train, normalize=Normalize([0.5] * 3, [0.5] * 3), epochs=3, lr=3e-3, progress=False)
    return raigate.wrap(
        net.eval(), class_names=train.class_names, input_shape=(3, 32, 32), mean=0.5, std=0.5
    )


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh working directory (and a private ``sys.path``); modules imported from it are
    forgotten afterwards, so one test's ``trustmod`` never leaks into the next."""
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        origin = getattr(sys.modules.get(name), "__file__", None) or ""
        if origin.startswith(str(tmp_path)):
            sys.modules.pop(name, None)
