"""Side-by-side timing: every case of a benchmark runs in the same process, interleaved
round by round, so machine noise hits all of them alike; we report medians and the ratio of
each case to the benchmark's reference case."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Case:
    """One contender: ``fn()`` does one unit of work (e.g. one batched forward)."""

    label: str
    fn: Callable[[], Any]


@dataclass
class Benchmark:
    """Cases compared against ``reference`` (a case label); ``items`` per call for throughput."""

    name: str
    description: str
    reference: str
    cases: list[Case]
    items: int = 1
    rounds: int = 15
    warmup: int = 3
    params: dict[str, Any] = field(default_factory=dict)


def run_benchmark(b: Benchmark) -> dict[str, Any]:
    """Time every case ``rounds`` times, interleaved; return medians, ratios, throughput."""
    for case in b.cases:
        for _ in range(b.warmup):
            case.fn()
    samples: dict[str, list[float]] = {c.label: [] for c in b.cases}
    for _ in range(b.rounds):
        for case in b.cases:
            t0 = time.perf_counter()
            case.fn()
            samples[case.label].append(time.perf_counter() - t0)
    ref = statistics.median(samples[b.reference])
    rows = []
    for case in b.cases:
        med = statistics.median(samples[case.label])
        rows.append(
            {
                "case": case.label,
                "median_s": med,
                "min_s": min(samples[case.label]),
                "ratio_to_reference": med / ref,
                "items_per_s": b.items / med,
            }
        )
    return {
        "name": b.name,
        "description": b.description,
        "reference": b.reference,
        "rounds": b.rounds,
        "items": b.items,
        "params": b.params,
        "rows": rows,
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['name']}: {result['description']}",
        f"  reference = {result['reference']}; {result['rounds']} interleaved rounds, medians",
        f"  {'case':<40} {'median ms':>10} {'ratio':>7} {'items/s':>10}",
    ]
    for r in result["rows"]:
        lines.append(
            f"  {r['case']:<40} {r['median_s'] * 1e3:>10.2f} {r['ratio_to_reference']:>7.3f} "
            f"{r['items_per_s']:>10.0f}"
        )
    return "\n".join(lines)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_growth_kib(fn: Callable[[], object]) -> int:
    """Peak resident set during ``fn()`` minus the resident set just before it, in KiB.

    The peak is reset first (``5`` into ``/proc/self/clear_refs``, Linux >= 4.0): plain
    ``ru_maxrss`` would not do, because Linux carries the parent's high-water mark across
    the fork+exec of a subprocess, so a small call in a child of a big parent shows no
    growth at all. Without ``clear_refs`` it falls back to ``ru_maxrss`` (an upper bound on
    the peak, so the growth can only be understated; said in the result's ``how``)."""
    import resource

    before = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        fn()
        return _status_kib("VmHWM") - before
    except OSError:
        fn()
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) - before
