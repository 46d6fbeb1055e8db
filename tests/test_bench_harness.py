"""The bench harness computes medians and ratios to the reference (no timing asserts)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from harness import Benchmark, Case, format_table, run_benchmark


def test_ratios_are_relative_to_the_reference_case() -> None:
    calls = {"a": 0, "b": 0}

    def a() -> None:
        calls["a"] += 1

    def b() -> None:
        calls["b"] += 1

    res = run_benchmark(
        Benchmark("t", "test", "a", [Case("a", a), Case("b", b)], rounds=5, warmup=1)
    )
    assert calls == {"a": 6, "b": 6}  # warmup + rounds, interleaved
    rows = {r["case"]: r for r in res["rows"]}
    assert rows["a"]["ratio_to_reference"] == 1.0
    assert rows["b"]["ratio_to_reference"] == rows["b"]["median_s"] / rows["a"]["median_s"]
    assert "ratio" in format_table(res)


def test_peak_memory_sees_a_transient_allocation_in_a_subprocess() -> None:
    """A 64 MiB buffer touched and freed inside the call shows up as >= 60 MiB of peak
    growth in a fresh subprocess (as the benchmarks run it), and an empty call as ~0."""
    import subprocess

    code = (
        "import sys; sys.path.insert(0, {!r})\n"
        "import numpy as np\n"
        "from harness import peak_rss_growth_kib\n"
        "def big():\n"
        "    a = np.ones(64 * 2**20, dtype=np.uint8); a.sum(); del a\n"
        "print(peak_rss_growth_kib(big), peak_rss_growth_kib(lambda: None))\n"
    ).format(str(Path(__file__).resolve().parents[1] / "bench"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown, idle = (int(v) for v in out.stdout.split())
    assert grown >= 60 * 1024, out.stdout
    assert idle < 8 * 1024, out.stdout
