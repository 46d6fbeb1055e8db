"""The progress policy (raigate.progress): a tqdm bar on a terminal, plain periodic lines
elsewhere, nothing with --quiet; and the CLI's --quiet on a real command."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from tqdm import tqdm

from cli_helpers import invoke
from raigate import parallel, progress
from raigate.parallel import World

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(autouse=True)
def detected(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts from detection (no override, no RAIGATE_QUIET) and leaves it so."""
    monkeypatch.delenv("RAIGATE_QUIET", raising=False)
    progress.set_mode(None)
    monkeypatch.setattr(progress.Lines, "last_write", float("-inf"))
    yield
    progress.set_mode(None)
    assert progress.Lines.stack == []  # every bar a test opened was closed


class FakeClock:
    """A clock that says what the test sets."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_wait_then_print_at_most_every_interval_and_at_the_end() -> None:
    clock, out = FakeClock(), io.StringIO()
    lines = progress.Lines(128, "robustness", "images", file=out, clock=clock)
    for t in (1.0, 3.0, 5.0, 14.0):  # 16 images finish at each time
        clock.now = t
        lines.update(16)
    clock.now = 15.0
    lines.update(64)
    lines.close()
    lines.close()  # a second close writes nothing more
    # by hand: t=1 is before the 2 s delay; t=3 the first line; t=5 within 10 s of it;
    # t=14 is 11 s after it; t=15 (1 s later) only the final line
    assert out.getvalue().splitlines() == [
        f"robustness: 32/128 images ({32 / 3:.1f}/s, ETA 0:09)",  # 96 left at 32/3 per s
        f"robustness: 64/128 images ({64 / 14:.1f}/s, ETA 0:14)",  # 64 left at 64/14 per s
        f"robustness: 128/128 images in 0:15 ({128 / 15:.1f}/s)",
    ]
    assert out.getvalue().count("\r") == 0


def test_lines_of_a_short_step_print_nothing_and_slow_items_say_seconds_each() -> None:
    clock, out = FakeClock(), io.StringIO()
    with progress.Lines(10, "quick", "images", file=out, clock=clock) as quick:
        clock.now = 1.9
        quick.update(10)
    assert out.getvalue() == ""

    clock.now = 0.0
    with progress.Lines(4, "reference models", "models", file=out, clock=clock) as slow:
        clock.now = 95.0
        slow.update(1)
        clock.now = 190.0
    assert out.getvalue().splitlines() == [
        "reference models: 1/4 models (95 s each, ETA 4:45)",
        "reference models: 1/4 models in 3:10 (190 s each)",
    ]

    clock.now = 0.0
    with progress.Lines(None, "baseline steps", "steps", file=out, clock=clock, initial=5) as b:
        clock.now = 2.0
        b.update(5)
    assert out.getvalue().splitlines()[-2:] == [
        "baseline steps: 10 steps (2.5/s)",  # 5 done here in 2 s; the 5 before do not count
        "baseline steps: 10 steps in 0:02 (2.5/s)",
    ]


def _not_a_tty(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    return err


def test_mode_follows_the_terminal_the_env_the_flag_and_the_rank(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    monkeypatch.setattr("sys.stderr", tty)
    assert progress.mode() == "bar"
    b = progress.bar(3, "robustness", "images")
    assert isinstance(b, tqdm)
    b.update(3)
    b.close()
    shown = tty.getvalue()  # a redrawn bar (carriage returns) with count and rate, then wiped
    assert "\rrobustness:   0%|" in shown and "0/3 [00:00<?, ?images/s]" in shown, shown

    _not_a_tty(monkeypatch)
    assert progress.mode() == "lines"
    lines = progress.bar(3, "x")
    assert isinstance(lines, progress.Lines) and progress.Lines.stack == [lines]
    lines.close()
    assert progress.mode(show=False) == "quiet"
    monkeypatch.setenv("RAIGATE_QUIET", "1")
    assert progress.mode() == "quiet"
    monkeypatch.setenv("RAIGATE_QUIET", "0")
    assert progress.mode() == "lines"
    with progress.quieted():
        assert progress.mode() == "quiet"
    with progress.quieted(False):
        assert progress.mode() == "lines"
    assert progress.mode() == "lines"

    monkeypatch.setattr(parallel, "current", lambda: World(rank=1, size=2))
    progress.set_mode("bar")
    assert progress.mode() == "quiet"  # under torchrun only rank 0 speaks


def test_a_nested_bar_is_a_heartbeat_after_interval_of_silence_without_a_last_line() -> None:
    clock, out = FakeClock(), io.StringIO()
    with progress.Lines(2, "robustness", "images", file=out, clock=clock) as outer:
        clock.now = 3.0
        outer.update(1)  # the outer step's first line; every bar's clock starts again
        with progress.Lines(None, "attack rows", "rows", file=out, clock=clock) as inner:
            clock.now = 6.0
            inner.update(3)  # 3 s after the last line: silent
            clock.now = 14.0
            inner.update(3)  # 11 s of silence: a heartbeat
            clock.now = 15.0
        clock.now = 16.0
        outer.update(1)  # its own last line was 13 s ago
        clock.now = 20.0
    assert out.getvalue().splitlines() == [
        f"robustness: 1/2 images ({1 / 3:.1f}/s, ETA 0:03)",
        # 6 rows since the inner bar began at 3 s, said inside its outer step
        f"robustness: 1/2 images; attack rows: 6 rows ({6 / 11:.1f}/s)",
        f"robustness: 2/2 images ({2 / 16:.1f}/s, ETA 0:00)",
        f"robustness: 2/2 images in 0:20 ({2 / 20:.1f}/s)",
    ]


def test_quiet_and_show_false_print_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    err = _not_a_tty(monkeypatch)
    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setattr(progress, "INTERVAL", 0.0)
    progress.set_mode("quiet")
    for _ in progress.track(range(3), "quiet step"):
        pass
    with progress.bar(3, "quiet bar") as b:
        b.update(3)
    assert err.getvalue() == ""

    progress.set_mode(None)
    with progress.bar(2, "outer", "images", show=False) as outer:
        outer.update(2)
    assert err.getvalue() == ""


def test_parallel_map_reports_its_items(monkeypatch: pytest.MonkeyPatch) -> None:
    err = _not_a_tty(monkeypatch)
    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setattr(progress, "INTERVAL", 1e9)  # the first line and the last only
    out = parallel.map_positions(
        10, 4, lambda pos: {"x": pos * 1}, stage="t", seed=0, desc="demo", unit="images",
        progress=True,
    )  # fmt: skip
    assert out["x"].tolist() == list(range(10))
    lines = err.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"demo: 4/10 images \([\d.]+/s, ETA \d+:\d\d\)", lines[0]), lines
    assert re.fullmatch(r"demo: 10/10 images in \d+:\d\d \([\d.]+/s\)", lines[1]), lines

    err.truncate(0)
    parallel.map_positions(10, 4, lambda pos: {"x": pos}, stage="t", seed=0, progress=False)
    assert err.getvalue() == ""


def _progress_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.match(r"evaluate: \d+/\d+ images", ln)]


def test_cli_prints_plain_lines_without_a_terminal_and_none_with_quiet(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(progress, "DELAY", 0.0)  # a 16-image step counts as long here
    args = ["evaluate", "--model", "raigate.zoo:small_cnn", "--random-init", "--data",
            "demo:test", "--limit", "16", "--batch-size", "8", "--device", "cpu"]  # fmt: skip
    torch.manual_seed(0)  # --random-init draws from torch's global RNG
    code, text = invoke(*args, "--out", str(tmp_path / "a"))  # CliRunner: not a terminal
    assert code == 0, text
    lines = _progress_lines(text)
    assert lines[0].startswith("evaluate: 8/16 images (") and "ETA" in lines[0], text
    assert lines[-1].startswith("evaluate: 16/16 images in "), text

    torch.manual_seed(0)
    code, quiet = invoke(*args, "--out", str(tmp_path / "b"), "--quiet")
    assert code == 0, quiet
    assert _progress_lines(quiet) == []
    # the same report either way, and --quiet did not outlive its command
    same = [ln for ln in text.splitlines() if ln not in lines]
    assert same == quiet.replace(str(tmp_path / "b"), str(tmp_path / "a")).splitlines()
    assert progress.mode() == "lines"
    np.testing.assert_equal(
        (tmp_path / "a" / "predictions.csv").read_text(),
        (tmp_path / "b" / "predictions.csv").read_text(),
    )


def test_a_loop_that_raises_leaves_no_bar_open() -> None:
    """An open bar would make every later bar of the process a nested one (silent until
    10 s pass); the sharded loop, the noise draws and DP-SGD close theirs on any exit."""
    progress.set_mode("lines")

    def boom(pos: np.ndarray) -> parallel.Arrays:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        parallel.map_positions(4, 2, boom, stage="t", seed=0, desc="t", progress=True)
    assert progress.Lines.stack == []
