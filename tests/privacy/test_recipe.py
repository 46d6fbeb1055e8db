"""The CIFAR-100 recipe, scaled down, on generated pickles in the official layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from raigate.cli import app
from raigate.privacy.ledger import Ledger
from raigate.privacy.recipe import CIFAR100_RECIPE, recipe_options


def write_cifar100(root: Path, n_train: int, n_test: int) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        split = {
            b"batch_label": f"{name} batch".encode(),
            b"filenames": [f"{name}_{k}.png".encode() for k in range(n)],
            b"fine_labels": rng.integers(0, 100, size=n).tolist(),
            b"coarse_labels": rng.integers(0, 20, size=n).tolist(),
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(split, fh, protocol=2)
    meta = {
        b"fine_label_names": [f"fine_{k}".encode() for k in range(100)],
        b"coarse_label_names": [f"coarse_{k}".encode() for k in range(20)],
    }
    with open(folder / "meta", "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return root


def test_recipe_runs_on_official_format_pickles(tmp_path: Path) -> None:
    root = write_cifar100(tmp_path / "c100", 60, 20)
    # the recipe with its batch, epochs and augmentation scaled to 60 images
    opts = recipe_options(
        batch_size=20, physical_batch_size=20, epochs=1, augmult=2, delta=1e-3, accountant="rdp"
    )
    res = CliRunner().invoke(
        app,
        [
            "privacy",
            "train",
            "--model",
            "raigate.privacy.recipe:cifar100_resnet20",
            "--data",
            f"cifar100:{root}:train",
            "--eval-data",
            f"cifar100:{root}:test",
            *opts,
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert res.exit_code == 0, res.output
    led = Ledger.load(tmp_path / "out")
    assert led.augmult == 2 and led.sample_rate == 20 / 60 and led.epsilon <= 2.0
    assert led.dataset_spec == f"cifar100:{root}:train"
    assert CIFAR100_RECIPE["augmult"] == 16 and CIFAR100_RECIPE["batch_size"] == 4096
