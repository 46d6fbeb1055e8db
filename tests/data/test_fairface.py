"""FairFace loader on a tiny fixture written in exactly the official layout."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raigate.data import load_data
from raigate.data.fairface import AGES, GENDERS, RACES
from raigate.errors import ConfigError, DataError, SpecError

COLUMNS = ["file", "age", "gender", "race", "service_test"]
VAL_ROWS = [
    ("3-9", "Male", "East Asian", "False"),
    ("50-59", "Female", "East Asian", "True"),
    ("30-39", "Male", "White", "True"),
    ("20-29", "Female", "Latino_Hispanic", "True"),
    ("more than 70", "Male", "Southeast Asian", "False"),
    ("0-2", "Female", "Black", "True"),
    ("10-19", "Male", "Indian", "False"),
    ("60-69", "Female", "Middle Eastern", "True"),
]


def write_csv(path: Path, rows: list[list[str]], header: list[str] = COLUMNS) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def write_split(root: Path, split: str, labels: list[tuple[str, str, str, str]]) -> list[Path]:
    rng = np.random.default_rng(len(labels))
    (root / split).mkdir(parents=True, exist_ok=True)
    rows, files = [], []
    for k, (age, gender, race, service) in enumerate(labels, start=1):
        rel = f"{split}/{k}.jpg"
        pixels = rng.integers(0, 256, size=(24 + k, 20 + 2 * k, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / rel, quality=90)
        rows.append([rel, age, gender, race, service])
        files.append(root / rel)
    write_csv(root / f"fairface_label_{split}.csv", rows)
    return files


@pytest.fixture
def fairface_root(tmp_path: Path) -> Path:
    root = tmp_path / "fairface"
    write_split(root, "val", VAL_ROWS)
    write_split(root, "train", VAL_ROWS[:3])
    return root


def pil_pixels(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """PIL's own decode as float32 [C,H,W] (float32 division, as the loader does)."""
    im = Image.open(path).convert("RGB")
    if size is not None:
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=None)
    return (np.asarray(im).astype(np.float32) / np.float32(255)).transpose(2, 0, 1)


def test_pixels_round_trip_exactly_against_pil(fairface_root: Path) -> None:
    data = load_data(f"fairface:{fairface_root}:val")
    assert len(data) == len(VAL_ROWS)
    for i in range(len(data)):
        x, _, index = data[i]
        path = fairface_root / f"val/{i + 1}.jpg"
        assert index == i and x.dtype == torch.float32
        np.testing.assert_array_equal(x.numpy(), pil_pixels(path))
        reference = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1) / 255
        np.testing.assert_allclose(x.numpy(), reference, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "task,column,vocab",
    [
        ("gender", 2, GENDERS),
        ("age", 1, AGES),
        ("race", 3, RACES),
    ],
)
def test_labels_round_trip_for_every_task(
    fairface_root: Path, task: str, column: int, vocab: tuple[str, ...]
) -> None:
    data = load_data(f"fairface:{fairface_root}:val", task=task)
    assert data.task == task and data.class_names == vocab
    names = [data.class_names[y] for y in data.labels]
    assert names == [(None, *row)[column] for row in VAL_ROWS]
    assert [data.class_names[data[i][1]] for i in range(len(data))] == names


def test_attributes_keep_all_labels(fairface_root: Path) -> None:
    data = load_data(f"fairface:{fairface_root}", task="race")  # default split: val
    attrs = data.attributes
    assert list(attrs.columns) == ["file", "race", "gender", "age", "service_test"]
    assert list(attrs["file"]) == [f"val/{k}.jpg" for k in range(1, len(VAL_ROWS) + 1)]
    assert list(attrs["gender"]) == [r[1] for r in VAL_ROWS]
    assert list(attrs["age"]) == [r[0] for r in VAL_ROWS]
    assert list(attrs["service_test"]) == [r[3] for r in VAL_ROWS]
    assert data.counts()["race"]["East Asian"] == 2


def test_train_split_and_resize(fairface_root: Path) -> None:
    train = load_data(f"fairface:{fairface_root}:train")
    assert len(train) == 3 and train.native_size is None
    small = train.resized((16, 12))
    x, _, _ = small[2]
    assert tuple(x.shape) == (3, 16, 12) and small.shape == (3, 16, 12)
    np.testing.assert_array_equal(x.numpy(), pil_pixels(fairface_root / "train/3.jpg", (16, 12)))
    batch = next(iter(small.loader(batch_size=3)))
    assert tuple(batch[0].shape) == (3, 3, 16, 12)


def test_manifest_names_csv_and_images(fairface_root: Path) -> None:
    data = load_data(f"fairface:{fairface_root}:val", limit=2)
    files = data.manifest.files
    assert [f["path"] for f in files] == ["fairface_label_val.csv", "val/1.jpg", "val/2.jpg"]
    for entry in files:
        raw = (fairface_root / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(raw).hexdigest()
        assert entry["bytes"] == len(raw)
    assert data.manifest.extra["split"] == "val"
    again = load_data(f"fairface:{fairface_root}:val", limit=2)
    assert again.manifest.digest == data.manifest.digest


def test_missing_root_and_csv(tmp_path: Path, fairface_root: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        load_data(f"fairface:{tmp_path / 'nowhere'}")
    (fairface_root / "fairface_label_val.csv").unlink()
    with pytest.raises(DataError, match=r"fairface_label_val\.csv"):
        load_data(f"fairface:{fairface_root}:val")


def test_missing_column(fairface_root: Path) -> None:
    csv_path = fairface_root / "fairface_label_val.csv"
    write_csv(
        csv_path,
        [["val/1.jpg", "3-9", "Male", "False"]],
        header=["file", "age", "gender", "service_test"],
    )
    with pytest.raises(DataError) as err:
        load_data(f"fairface:{fairface_root}:val")
    msg = str(err.value)
    assert str(csv_path) in msg and "race" in msg and "file,age,gender,race,service_test" in msg


def test_unknown_race_value(fairface_root: Path) -> None:
    csv_path = fairface_root / "fairface_label_val.csv"
    rows = [[f"val/{k}.jpg", *r[:3], r[3]] for k, r in enumerate(VAL_ROWS, start=1)]
    rows[2][3] = "Latino"
    write_csv(csv_path, rows)
    with pytest.raises(DataError) as err:
        load_data(f"fairface:{fairface_root}:val")
    msg = str(err.value)
    for part in (str(csv_path), "line 4", "'race'", "'Latino'", "Latino_Hispanic", "East Asian"):
        assert part in msg


@pytest.mark.parametrize("corrupted", ["9-Mar", "2019-03-09", "Oct-19", "19-Oct", "3/9/2019"])
def test_date_corrupted_ages(fairface_root: Path, corrupted: str) -> None:
    csv_path = fairface_root / "fairface_label_val.csv"
    rows = [[f"val/{k}.jpg", *r] for k, r in enumerate(VAL_ROWS, start=1)]
    rows[0][1] = corrupted
    write_csv(csv_path, rows)
    with pytest.raises(DataError) as err:
        load_data(f"fairface:{fairface_root}:val")
    msg = str(err.value)
    assert str(csv_path) in msg and "spreadsheet" in msg and "3-9" in msg and "line 2" in msg
    assert "\n" not in msg


def test_missing_image_fails_at_read_time(fairface_root: Path) -> None:
    (fairface_root / "val/2.jpg").unlink()
    data = load_data(f"fairface:{fairface_root}:val")  # labels load; images are lazy
    data[0]
    with pytest.raises(DataError, match=r"val/2\.jpg: cannot read image"):
        data[1]


def test_corrupt_image_names_the_file(fairface_root: Path) -> None:
    (fairface_root / "val/3.jpg").write_bytes(b"not a jpeg")
    data = load_data(f"fairface:{fairface_root}:val")
    with pytest.raises(DataError, match=r"val/3\.jpg: cannot read image"):
        data[2]


def test_unknown_task_and_split(fairface_root: Path) -> None:
    with pytest.raises(ConfigError, match="gender, age, race"):
        load_data(f"fairface:{fairface_root}", task="emotion")
    with pytest.raises(SpecError, match="train, val"):
        load_data(f"fairface:{fairface_root}:test")
