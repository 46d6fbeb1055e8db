"""How long steps report progress: one policy for every loop, decided here.

A long run should never sit silent, yet progress must not bury a CI log or a piped
``--json`` in carriage returns. So every loop asks :func:`bar` (or :func:`track`) instead of
calling tqdm itself, and the mode is chosen once, here:

* ``"bar"``: stderr is a terminal; a tqdm bar with the count, rate and ETA.
* ``"lines"``: stderr is not a terminal (CI, a pipe, a log file); a plain line such as
  ``robustness: 64/128 images (12.3/s, ETA 0:05)`` once a step has run :data:`DELAY`
  seconds, then at most every :data:`INTERVAL` seconds, and a last line when it ends. A step
  shorter than :data:`DELAY` prints nothing, so quick commands keep a clean stderr. A bar
  opened inside another (the attack rows of one robustness batch, CERTIFY's noise draws of
  one image, a reference model's epochs) only speaks when no line at all came for
  :data:`INTERVAL` seconds, and has no last line: a heartbeat inside a long item, not a
  line per image or model.
* ``"quiet"``: nothing (``--quiet``, ``RAIGATE_QUIET=1``, a caller's ``progress=False``, or
  a rank other than 0 under ``torchrun``: one process speaks for the run).

>>> set_mode("quiet")
>>> with bar(3, "demo", "images") as b:
...     b.update(3)
>>> set_mode(None)
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Literal, Protocol, TextIO, TypeVar

__all__ = [
    "DELAY",
    "INTERVAL",
    "Bar",
    "Lines",
    "Mode",
    "bar",
    "mode",
    "quieted",
    "set_mode",
    "track",
]

Mode = Literal["bar", "lines", "quiet"]
T = TypeVar("T")

DELAY = 2.0
"""Seconds a step runs before its first plain line: shorter steps need no reassurance."""
INTERVAL = 10.0
"""Least seconds between two plain lines: often enough to show life, rare enough for a log."""

_override: Mode | None = None


class Bar(Protocol):
    """What a loop may do with its progress: count what it finished, and end."""

    def update(self, n: int = 1) -> object: ...

    def close(self) -> None: ...

    def __enter__(self) -> Bar: ...

    def __exit__(self, *exc: object) -> None: ...


def set_mode(value: Mode | None) -> None:
    """Fix the mode for this process (e.g. ``"quiet"`` in a notebook, ``"lines"`` in a
    test); ``None`` goes back to detecting it from ``RAIGATE_QUIET`` and the terminal."""
    global _override
    _override = value


@contextlib.contextmanager
def quieted(on: bool = True) -> Iterator[None]:
    """No progress inside (a command's ``--quiet``), even from a loop that got no
    ``progress`` flag; the mode before is put back after, so one CLI call under a test
    runner never silences the next. ``on=False`` changes nothing."""
    global _override
    before = _override
    if on:
        _override = "quiet"
    try:
        yield
    finally:
        _override = before


def mode(show: bool = True) -> Mode:
    """The mode a bar opened now gets; ``show=False`` (a ``progress=False`` parameter) and
    every rank but 0 are always quiet."""
    if not show:
        return "quiet"
    from raigate.parallel import current  # lazy: parallel imports torch

    if not current().main:
        return "quiet"
    if _override is not None:
        return _override
    if os.environ.get("RAIGATE_QUIET", "").strip() not in ("", "0"):
        return "quiet"
    isatty = getattr(sys.stderr, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def bar(
    total: int | None,
    desc: str,
    unit: str = "it",
    *,
    show: bool = True,
    initial: int = 0,
) -> Bar:
    """A progress counter for a loop of ``total`` ``unit`` (None: unknown), shown as the
    process-wide :func:`mode` says; ``initial`` counts work done before (a resumed run)."""
    chosen = mode(show)
    if chosen == "quiet":
        return _Null()
    if chosen == "lines":
        return Lines(total, desc, unit, initial=initial)
    from tqdm import tqdm

    return tqdm(  # type: ignore[return-value]
        total=total, desc=desc, unit=unit, initial=initial, leave=False, file=sys.stderr
    )


def track(
    items: Iterable[T],
    desc: str,
    unit: str = "it",
    *,
    total: int | None = None,
    show: bool = True,
) -> Iterator[T]:
    """Yield ``items``, counting each in a :func:`bar` (``total`` defaults to ``len``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total, desc, unit, show=show) as b:
        for item in items:
            yield item
            b.update(1)


class _Null:
    """The quiet mode's bar: counts nothing, prints nothing."""

    def update(self, n: int = 1) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class Lines:
    """Plain progress lines for a stderr that is not a terminal: no carriage returns, so a
    CI log shows each line once. ``clock`` and ``file`` are there for tests; the file is
    looked up at each write, so a redirected ``sys.stderr`` (CliRunner) gets the lines."""

    stack: list[Lines] = []  # noqa: RUF012 (shared on purpose: the open bars of the process)
    """The bars open now, outermost first: one opened while another is open is nested."""
    last_write = float("-inf")
    """When any of them last wrote a line (a nested one waits :data:`INTERVAL` after it)."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        *,
        initial: int = 0,
        file: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit = total, desc or "progress", unit
        self.n = self.initial = initial
        self._file, self._clock = file, clock
        self._start = clock()
        self._last: float | None = None  # when the last line was written
        self._closed = False
        self._parent = Lines.stack[-1] if Lines.stack else None
        Lines.stack.append(self)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._closed:
            return
        now = self._clock()
        if now - self._start < DELAY:
            return
        if self._parent is not None and now - Lines.last_write < INTERVAL:
            return
        if self._last is None or now - self._last >= INTERVAL:
            self._write(self._line(now, final=False))
            self._last = now

    def close(self) -> None:
        """The last line: only for an outermost step that ran at least :data:`DELAY` s."""
        if self._closed:
            return
        self._closed = True
        if self in Lines.stack:
            Lines.stack.remove(self)
        now = self._clock()
        if now - self._start >= DELAY and self._parent is None:
            self._write(self._line(now, final=True))

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self, now: float, *, final: bool) -> str:
        elapsed = max(now - self._start, 1e-9)
        rate = (self.n - self.initial) / elapsed
        speed = _rate(rate, self.unit)
        if final:
            return f"{self._head()} in {_clock(elapsed)} ({speed})"
        if self.total is None or rate <= 0:
            return f"{self._head()} ({speed})"
        eta = max(self.total - self.n, 0) / rate
        return f"{self._head()} ({speed}, ETA {_clock(eta)})"

    def _head(self) -> str:
        """``robustness: 16/64 images``; a nested bar's line starts with its outer bars',
        so a heartbeat says which step it is inside."""
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        head = f"{self.desc}: {count} {self.unit}"
        return head if self._parent is None else f"{self._parent._head()}; {head}"

    def _write(self, line: str) -> None:
        file = self._file if self._file is not None else sys.stderr
        file.write(line + "\n")
        file.flush()
        Lines.last_write = self._clock()


def _rate(rate: float, unit: str) -> str:
    """``12.3/s``, or seconds per item when items are slow (a reference model, an epoch)."""
    if rate >= 0.1:
        return f"{rate:.1f}/s"
    if rate <= 0:
        return "0/s"
    return f"{1 / rate:.0f} s each"


def _clock(seconds: float) -> str:
    """``0:05``, ``12:34``, ``1:02:03``, as tqdm prints durations."""
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
