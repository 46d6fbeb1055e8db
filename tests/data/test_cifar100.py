"""CIFAR-100 loader on pickles generated in the official ``cifar-100-python`` structure,
including the refusal of pickles that would run code."""

from __future__ import annotations

import builtins
import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from raigate.data import load_data
from raigate.errors import ConfigError, DataError

FINE = [f"fine_{k}" for k in range(100)]
COARSE = [f"coarse_{k}" for k in range(20)]


def make_split(n: int, seed: int) -> dict[bytes, Any]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[:, 1024:2048] = 255 - data[:, :1024]  # G plane differs from R: catches transposes
    return {
        b"batch_label": b"testing batch 1 of 1",
        b"filenames": [f"img_{seed}_{k}.png".encode() for k in range(n)],
        b"fine_labels": rng.integers(0, 100, size=n).tolist(),
        b"coarse_labels": rng.integers(0, 20, size=n).tolist(),
        b"data": data,
    }


def dump(obj: Any, path: Path, protocol: int = 2) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    dump(make_split(7, 1), folder / "train")
    dump(make_split(5, 2), folder / "test")
    dump(
        {
            b"fine_label_names": [n.encode() for n in FINE],
            b"coarse_label_names": [n.encode() for n in COARSE],
        },
        folder / "meta",
    )
    return tmp_path


def test_pixels_labels_and_names_round_trip(cifar_root: Path) -> None:
    expected = make_split(7, 1)
    data = load_data(f"cifar100:{cifar_root}:train")
    assert len(data) == 7 and data.class_names == tuple(FINE) and data.task == "fine"
    assert data.shape == (3, 32, 32)
    planes = expected[b"data"].reshape(7, 3, 32, 32)
    for i in range(7):
        x, y, _ = data[i]
        back = np.rint(x.numpy() * 255).astype(np.uint8)
        np.testing.assert_array_equal(back, planes[i])
        np.testing.assert_array_equal(back[0], expected[b"data"][i, :1024].reshape(32, 32))
        np.testing.assert_array_equal(back[1], expected[b"data"][i, 1024:2048].reshape(32, 32))
        assert y == expected[b"fine_labels"][i]
    attrs = data.attributes
    assert list(attrs.columns) == ["coarse_label", "filename"]
    assert list(attrs["coarse_label"]) == [COARSE[k] for k in expected[b"coarse_labels"]]
    assert list(attrs["filename"]) == [f.decode() for f in expected[b"filenames"]]


def test_default_split_both_root_forms_and_coarse(cifar_root: Path) -> None:
    a = load_data(f"cifar100:{cifar_root}")
    b = load_data(f"cifar100:{cifar_root / 'cifar-100-python'}:test")
    assert len(a) == len(b) == 5
    np.testing.assert_array_equal(a[3][0].numpy(), b[3][0].numpy())
    assert a.manifest.digest == b.manifest.digest
    coarse = load_data(f"cifar100:{cifar_root}", task="coarse")
    assert coarse.class_names == tuple(COARSE)
    assert list(coarse.labels) == make_split(5, 2)[b"coarse_labels"]
    assert "fine_label" in coarse.attributes.columns
    with pytest.raises(ConfigError, match="fine, coarse"):
        load_data(f"cifar100:{cifar_root}", task="superclass")


def test_str_keys_and_resize(cifar_root: Path) -> None:
    folder = cifar_root / "cifar-100-python"
    record = {k.decode(): v for k, v in make_split(5, 2).items()}
    dump(record, folder / "test", protocol=4)
    data = load_data(f"cifar100:{cifar_root}").resized((64, 48))
    assert tuple(data[0][0].shape) == (3, 64, 48)
    assert float(data[0][0].min()) >= 0 and float(data[0][0].max()) <= 1


def test_manifest_lists_the_pickles(cifar_root: Path) -> None:
    data = load_data(f"cifar100:{cifar_root}:train", limit=3)
    files = data.manifest.files
    assert [f["path"] for f in files] == ["train", "meta"]
    for entry in files:
        raw = (cifar_root / "cifar-100-python" / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(raw).hexdigest()
    assert "selected_rows" in data.manifest.extra


class SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class OpenCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (str(self.marker), "w"))


@pytest.mark.parametrize("payload", [SystemCall, OpenCall])
@pytest.mark.parametrize("victim", ["test", "meta"])
def test_malicious_pickle_is_refused(cifar_root: Path, payload: type, victim: str) -> None:
    marker = cifar_root / "pwned"
    record = make_split(5, 2)
    record[b"data"] = payload(marker)
    dump(record, cifar_root / "cifar-100-python" / victim)
    with pytest.raises(DataError, match="refusing to unpickle") as err:
        load_data(f"cifar100:{cifar_root}")
    assert victim in str(err.value) and "only arrays and lists" in str(err.value)
    assert not marker.exists()


def test_shape_and_length_mismatches(cifar_root: Path) -> None:
    folder = cifar_root / "cifar-100-python"
    record = make_split(5, 2)
    record[b"data"] = record[b"data"][:, :3000]
    dump(record, folder / "test")
    with pytest.raises(DataError, match=r"\[N, 3072\]"):
        load_data(f"cifar100:{cifar_root}")
    record = make_split(5, 2)
    record[b"fine_labels"] = record[b"fine_labels"][:4]
    dump(record, folder / "test")
    with pytest.raises(DataError, match="fine_labels"):
        load_data(f"cifar100:{cifar_root}")
    record = make_split(5, 2)
    del record[b"coarse_labels"]
    dump(record, folder / "test")
    with pytest.raises(DataError, match="coarse_labels"):
        load_data(f"cifar100:{cifar_root}")


def test_missing_and_truncated_files(tmp_path: Path, cifar_root: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no CIFAR-100 pickles"):
        load_data(f"cifar100:{tmp_path / 'empty'}")
    (cifar_root / "cifar-100-python" / "test").write_bytes(b"\x80\x02}q\x00(")
    with pytest.raises(DataError, match="not a readable CIFAR-100 pickle"):
        load_data(f"cifar100:{cifar_root}")
