"""``folder:`` and ``csv:`` loaders with lossless PNGs, so pixels must match exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raigate.data import load_data
from raigate.errors import ConfigError, DataError


def write_png(path: Path, seed: int, size: tuple[int, int] = (9, 7)) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def as_uint8(x: torch.Tensor) -> np.ndarray:
    return np.rint(x.numpy() * 255).astype(np.uint8).transpose(1, 2, 0)


@pytest.fixture
def image_folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "images"
    pixels = {
        "cat/b.png": write_png(root / "cat/b.png", 1),
        "cat/a.PNG": write_png(root / "cat/a.PNG", 2),
        "bird/z.png": write_png(root / "bird/z.png", 3),
        "bird/nested/y.png": write_png(root / "bird/nested/y.png", 4),
    }
    (root / "cat/notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    return root, pixels


def test_folder_round_trip(image_folder: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, pixels = image_folder
    data = load_data(f"folder:{root}")
    assert data.class_names == ("bird", "cat")
    paths = list(data.attributes["path"])
    assert paths == ["bird/nested/y.png", "bird/z.png", "cat/a.PNG", "cat/b.png"]
    assert list(data.labels) == [0, 0, 1, 1]
    for i, rel in enumerate(paths):
        np.testing.assert_array_equal(as_uint8(data[i][0]), pixels[rel])
    assert [f["path"] for f in data.manifest.files] == paths


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="folder not found"):
        load_data(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        load_data(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_data(f"folder:{tmp_path / 'empty'}")
    write_png(tmp_path / "ok/cat/1.png", 0)
    with pytest.raises(ConfigError, match="one label"):
        load_data(f"folder:{tmp_path / 'ok'}", task="race")


def test_csv_round_trip(tmp_path: Path) -> None:
    a = write_png(tmp_path / "imgs/a.png", 1)
    b = write_png(tmp_path / "imgs/b.png", 2)
    c = write_png(tmp_path / "elsewhere/c.png", 3)
    csv_path = tmp_path / "list" / "labels.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(
        "path,label,skin,site\n"
        "../imgs/a.png,dog,III,01\n"
        f"{tmp_path / 'elsewhere/c.png'},10,V,02\n"
        "../imgs/b.png,2,I,01\n"
    )
    data = load_data(f"csv:{csv_path}")
    assert data.class_names == ("10", "2", "dog")  # sorted as strings
    assert [data.class_names[y] for y in data.labels] == ["dog", "10", "2"]
    attrs = data.attributes
    assert list(attrs.columns) == ["path", "skin", "site"]
    assert list(attrs["site"]) == ["01", "02", "01"]  # strings, leading zero kept
    for i, expected in enumerate((a, c, b)):
        np.testing.assert_array_equal(as_uint8(data[i][0]), expected)
    assert data.manifest.files[0]["path"] == "labels.csv"
    assert data.resized((4, 5))[0][0].shape == (3, 4, 5)


def test_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="CSV file not found"):
        load_data(f"csv:{tmp_path / 'none.csv'}")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: the CSV file is empty"):
        load_data(f"csv:{empty}")
    header_only = tmp_path / "header.csv"
    header_only.write_text("path,label\n")
    with pytest.raises(DataError, match="no rows"):
        load_data(f"csv:{header_only}")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("file,class\na.png,cat\n")
    with pytest.raises(DataError) as err:
        load_data(f"csv:{wrong}")
    msg = str(err.value)
    assert "wrong.csv" in msg and "path, label" in msg and "file, class" in msg
    blank = tmp_path / "blank.csv"
    blank.write_text("path,label\na.png,\n")
    with pytest.raises(DataError, match="line 2, column 'label' is empty"):
        load_data(f"csv:{blank}")


def test_csv_task_picks_the_label_column(tmp_path: Path) -> None:
    for i in range(4):
        write_png(tmp_path / f"{i}.png", i)
    csv_path = tmp_path / "faces.csv"
    csv_path.write_text(
        "path,gender,race,label\n"
        "0.png,Male,Black,x\n1.png,Female,White,y\n2.png,Female,Black,x\n3.png,Male,Indian,y\n"
    )
    data = load_data(f"csv:{csv_path}", task="gender")
    assert data.task == "gender" and data.class_names == ("Female", "Male")
    assert list(data.labels) == [1, 0, 0, 1]
    # the task column stays an attribute (fairness groups by it); "label" is renamed
    assert list(data.attributes["gender"]) == ["Male", "Female", "Female", "Male"]
    assert list(data.attributes["race"]) == ["Black", "White", "Black", "Indian"]
    assert list(data.attributes["csv_label"]) == ["x", "y", "x", "y"]
    assert data.counts()["label"] == {"Female": 2, "Male": 2}
    by_race = load_data(f"csv:{csv_path}", task="race")
    assert by_race.class_names == ("Black", "Indian", "White")
    default = load_data(f"csv:{csv_path}")
    assert default.class_names == ("x", "y") and "label" not in default.attributes
    with pytest.raises(DataError, match=r"missing column.*age.*--task age names the label"):
        load_data(f"csv:{csv_path}", task="age")
    with pytest.raises(ConfigError, match="path column cannot be the label"):
        load_data(f"csv:{csv_path}", task="path")
