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
