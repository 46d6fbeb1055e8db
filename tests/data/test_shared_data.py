"""Loaders against the real third-party files in the shared data folder (skipped where the
folder is absent): 3,000 FairFace validation faces and the CIFAR-10 test JPEGs."""

from __future__ import annotations

from pathlib import Path

import pytest

from raigate.data import load_data


@pytest.fixture(scope="module")
def fairface_root(shared_data_dir: Path) -> Path:
    root = shared_data_dir / "fairface-val3k"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    return root


def test_fairface_val3k(fairface_root: Path) -> None:
    data = load_data(f"fairface:{fairface_root}:val")
    assert len(data) == 3000
    assert data.counts()["race"] == {
        "White": 571,
        "Black": 474,
        "East Asian": 435,
        "Latino_Hispanic": 418,
        "Southeast Asian": 396,
        "Indian": 392,
        "Middle Eastern": 314,
    }
    x, y, _ = data[0]
    assert tuple(x.shape) == (3, 224, 224) and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert data.class_names[y] == data.attributes["gender"][0]
    small = data.resized((32, 32))
    assert tuple(small[0][0].shape) == (3, 32, 32)


def test_fairface_val3k_manifest(fairface_root: Path) -> None:
    data = load_data(f"fairface:{fairface_root}:val")
    files = data.manifest.files
    assert len(files) == 3001 and files[0]["path"] == "fairface_label_val.csv"


def test_fairface_full_label_files(shared_data_dir: Path) -> None:
    root = shared_data_dir / "fairface-labels"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    assert len(load_data(f"fairface:{root}:train", task="race")) == 86744
    assert len(load_data(f"fairface:{root}", task="age")) == 10954


def test_cifar10_test_jpegs(shared_data_dir: Path) -> None:
    root = shared_data_dir / "cifar10-test-jpg"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    data = load_data(f"folder:{root}")
    assert len(data) == 10000
    assert data.class_names == (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    )
    assert set(data.counts()["label"].values()) == {1000}
    assert tuple(data[0][0].shape) == (3, 32, 32)
