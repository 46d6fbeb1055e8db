"""Atomic writes: unique temporary names, fsync before the rename, nothing left on error."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import pytest
import torch

from raigate._io import atomic_path, write_atomic
from raigate.models.weights import load_state_dict_file, save_safetensors
from raigate.zoo import small_cnn


def _spy_mkstemp(monkeypatch: pytest.MonkeyPatch, barrier: threading.Barrier | None = None):
    """Record every temporary name; with a barrier, hold each writer until all have one."""
    names: list[str] = []
    real = tempfile.mkstemp

    def spy(*args: object, **kwargs: object) -> tuple[int, str]:
        fd, name = real(*args, **kwargs)  # type: ignore[call-overload]
        names.append(name)
        if barrier is not None:
            barrier.wait(timeout=30)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    return names


def test_fsync_comes_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (log.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (log.append("replace"), real_replace(a, b))[1])
    write_atomic(tmp_path / "r.json", "{}")
    # the file, then the rename, then the folder (so the rename itself is durable)
    assert log == ["fsync", "replace", "fsync"]
    assert (tmp_path / "r.json").read_text() == "{}"


def test_error_inside_atomic_path_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "plot.png"
    write_atomic(target, b"old")
    with pytest.raises(RuntimeError, match="renderer crashed"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a pl")
        raise RuntimeError("renderer crashed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


def test_concurrent_writers_use_unique_names_and_one_wins_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.json"
    payloads = [bytes([65 + i]) * (1 << 20) for i in range(2)]
    names = _spy_mkstemp(monkeypatch, threading.Barrier(2))  # both temp files exist at once
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            write_atomic(target, data)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(names) == 2 and len(set(names)) == 2
    assert target.read_bytes() in payloads  # one writer's bytes, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_save_safetensors_error_keeps_old_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model.safetensors"
    old = small_cnn(2)
    save_safetensors(old, target)

    def crash(tensors: dict[str, torch.Tensor], filename: str) -> None:
        Path(filename).write_bytes(b"\x00" * 10)  # a partial file, then the failure
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors(small_cnn(2), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    loaded = load_state_dict_file(target)
    assert all(torch.equal(loaded[k], v) for k, v in old.state_dict().items())


def test_two_save_safetensors_at_once_do_not_share_a_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fixed temp name (".model.safetensors.tmp") makes the second rename fail here.
    target = tmp_path / "model.safetensors"
    nets = [small_cnn(2), small_cnn(2)]
    names = _spy_mkstemp(monkeypatch, threading.Barrier(2))
    errors: list[BaseException] = []

    def save(net: torch.nn.Module) -> None:
        try:
            save_safetensors(net, target)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(n,)) for n in nets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(names)) == 2
    loaded = load_state_dict_file(target)
    assert any(all(torch.equal(loaded[k], v) for k, v in n.state_dict().items()) for n in nets)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
