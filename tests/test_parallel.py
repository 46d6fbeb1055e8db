"""raigate.parallel: fixed batches over ranks, seeds per batch, gathering without pickles,
and per-batch progress that a killed run resumes from (and refuses when it is damaged)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dist_helpers import in_processes, same_arrays
from raigate import parallel
from raigate.errors import DataError
from raigate.parallel import Arrays, map_positions, pack, unpack


def noisy(pos: np.ndarray) -> Arrays:
    """Depends on the global RNG, which each batch gets seeded from (seed, stage, batch)."""
    draw = torch.randn(len(pos), dtype=torch.float64).numpy()
    return {"pos": pos, "draw": draw, "tag": np.asarray([f"p{p}" for p in pos])}


def sharded(n: int, batch: int) -> Arrays:
    world = parallel.current()
    out = map_positions(n, batch, noisy, stage="t", seed=7)
    return {**out, "rank": np.asarray([world.rank]), "size": np.asarray([world.size])}


def test_single_process_batches_are_seeded_per_batch_not_by_history() -> None:
    before = torch.get_rng_state()
    out = map_positions(10, 3, noisy, stage="t", seed=7)
    assert torch.equal(before, torch.get_rng_state())  # the loop leaves the global RNG alone
    assert out["pos"].tolist() == list(range(10))
    assert out["tag"].tolist() == [f"p{i}" for i in range(10)]
    # batch 2 (positions 6..8) alone gives the same draws as inside the full loop
    torch.manual_seed(parallel.batch_seed(7, "t", 2))
    assert np.array_equal(torch.randn(3, dtype=torch.float64).numpy(), out["draw"][6:9])
    other = map_positions(10, 3, noisy, stage="other", seed=7)
    assert not np.array_equal(other["draw"], out["draw"])


def test_two_processes_gather_the_single_process_result(tmp_path: Path) -> None:
    one = map_positions(11, 2, noisy, stage="t", seed=7)
    ranks = in_processes(sharded, 11, 2, tmp=tmp_path)
    assert [int(r["rank"][0]) for r in ranks] == [0, 1]
    assert all(int(r["size"][0]) == 2 for r in ranks)
    for r in ranks:
        assert same_arrays({k: r[k] for k in one}, one)


def test_pack_refuses_objects_and_unpack_never_unpickles() -> None:
    with pytest.raises(TypeError, match="pickle"):
        pack({"x": np.asarray([{"a": 1}], dtype=object)})
    buf = __import__("io").BytesIO()
    np.savez(buf, x=np.asarray([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        unpack(buf.getvalue())


def counting(calls: list[int]):  # type: ignore[no-untyped-def]
    def fn(pos: np.ndarray) -> Arrays:
        calls.append(int(pos[0]))
        if len(calls) == 3 and fail_once:
            fail_once.pop()
            raise KeyboardInterrupt  # killed in the third batch
        return {"sq": pos**2}

    fail_once = [True]
    return fn


def test_progress_resumes_after_a_kill_redoing_one_batch(tmp_path: Path) -> None:
    calls: list[int] = []
    fn = counting(calls)
    with (
        parallel.run_scope(tmp_path / ".progress", "run-a"),
        parallel.check_scope("c"),
        pytest.raises(KeyboardInterrupt),
    ):
        map_positions(10, 2, fn, stage="s", seed=0)
    assert calls == [0, 2, 4]
    files = sorted(p.name for p in (tmp_path / ".progress" / "c" / "s").iterdir())
    assert files == ["b000000.npz", "b000001.npz"]  # the interrupted batch left nothing
    with parallel.run_scope(tmp_path / ".progress", "run-a"), parallel.check_scope("c") as sc:
        out = map_positions(10, 2, fn, stage="s", seed=0)
    assert calls == [0, 2, 4, 4, 6, 8]  # batch 2 redone, 0 and 1 loaded
    assert out["sq"].tolist() == [i * i for i in range(10)]
    assert sc is not None and sc.reused == {"s": 2}


def test_corrupt_or_foreign_progress_is_refused(tmp_path: Path) -> None:
    root = tmp_path / ".progress"
    with parallel.run_scope(root, "run-a"), parallel.check_scope("c"):
        map_positions(4, 2, lambda p: {"v": p * 1.0}, stage="s", seed=0)
    path = root / "c" / "s" / "b000001.npz"
    with (
        parallel.run_scope(root, "run-b"),
        parallel.check_scope("c"),
        pytest.raises(DataError, match="different run"),
    ):
        map_positions(4, 2, lambda p: {"v": p * 1.0}, stage="s", seed=0)
    good = path.read_bytes()
    # same arrays, one value changed: the checksum no longer matches
    arrays = unpack(good)
    arrays["v"] = arrays["v"] + 1
    path.write_bytes(pack(arrays))
    with (
        parallel.run_scope(root, "run-a"),
        parallel.check_scope("c"),
        pytest.raises(DataError, match=r"b000001\.npz: corrupt progress file \(checksum"),
    ):
        map_positions(4, 2, lambda p: {"v": p * 1.0}, stage="s", seed=0)
    path.write_bytes(good[: len(good) // 2])  # truncated
    with (
        parallel.run_scope(root, "run-a"),
        parallel.check_scope("c"),
        pytest.raises(DataError, match="corrupt progress file"),
    ):
        map_positions(4, 2, lambda p: {"v": p * 1.0}, stage="s", seed=0)
