"""Atomic file writes: a reader sees the old file or the complete new one, never half of it.

Reports are evidence; a crash mid-write must not leave a truncated file that looks complete.
Every file raigate writes goes through :func:`atomic_path` (libraries that want a file name:
safetensors, matplotlib, torch) or :func:`write_atomic` (bytes or text already in memory):
a unique temporary name in the target's folder (two writers never share one), fsync, then
a rename over the target, and the folder fsynced so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from raigate.errors import ConfigError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def make_folder(folder: Path) -> None:
    """``mkdir -p``; a path that is a file (or not writable) is the user's to fix, so it is a
    ConfigError naming it rather than an internal error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(
            f"{folder}: a file is in the way of this output folder; choose another --out"
        ) from None
    except PermissionError:
        raise ConfigError(f"{folder}: no permission to create this output folder") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; write the file there. On a normal exit
    the file is fsynced, given ``mode`` and renamed onto ``path``; on any error it is removed
    and ``path`` keeps its old contents.

    The file gets ``mode`` (e.g. 0o600 for a private key) or else the usual 0o666 less the
    umask; mkstemp alone would leave every report readable by its owner only.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "weights.bin"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_bytes(b"abc")
    >>> target.read_bytes(), sorted(p.name for p in target.parent.iterdir())
    (b'abc', ['weights.bin'])
    """
    target = Path(path)
    make_folder(target.parent)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)  # by name: a library may have replaced the file
        try:
            os.fchmod(fd, mode if mode is not None else 0o666 & ~_umask())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def write_atomic(
    path: str | os.PathLike[str], data: bytes | str, *, mode: int | None = None
) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(target, mode=mode) as tmp, open(tmp, "wb") as fh:
        fh.write(payload)
    return target


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large weights stay out of memory."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def folder_lock(folder: Path, what: str = "raigate audit") -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``folder`` while the block runs, or
    raise a ConfigError at once when another process holds it: two audits writing one
    ``--out`` (or a resumed run racing the workers of a killed one that still run) would
    remove and overwrite each other's files. The lock goes with the process, however it
    ends. Where ``flock`` is unavailable (not POSIX) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"{folder}: another {what} is writing this folder (or the workers of one "
                "that was killed still run); wait for it to end, stop it, or give another --out"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock
