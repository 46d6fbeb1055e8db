"""Run named benchmarks side by side and record them: ``python bench/run.py [NAME...]``.

Prints a table of medians and ratios to each benchmark's reference case and merges the
results into ``bench/results.json`` (keyed by benchmark name, with the environment)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import Benchmark, format_table, run_benchmark  # noqa: E402
from raigate.environment import collect_environment  # noqa: E402


def _adapter_forward() -> list[Benchmark]:
    import adapter_forward

    return adapter_forward.build()


def _fairness_bootstrap() -> list[Benchmark]:
    import fairness_bootstrap

    return fairness_bootstrap.build()


def _explain_ig() -> list[Benchmark]:
    import explain_ig

    return explain_ig.build()


def _robustness() -> list[Benchmark]:
    import robustness

    return robustness.build()


def _square_attack() -> list[Benchmark]:
    import robustness

    return robustness.build_square()


def _dp_step() -> list[Benchmark]:
    import dp_step

    return dp_step.build()


def _dp_resnet() -> list[Benchmark]:
    import dp_resnet

    return dp_resnet.build()


def _throughput() -> list[Benchmark]:
    import throughput

    return throughput.build()


def _onnx_forward() -> list[Benchmark]:
    import onnx_forward

    return onnx_forward.build()


# name -> builder; a builder returns one or more benchmarks (e.g. one per network)
BENCHMARKS: dict[str, Callable[[], list[Benchmark]]] = {
    "adapter_forward": _adapter_forward,
    "fairness_bootstrap": _fairness_bootstrap,
    "explain_ig": _explain_ig,
    "robustness": _robustness,
    "square_attack": _square_attack,
    "dp_step": _dp_step,
    "dp_resnet": _dp_resnet,
    "onnx_forward": _onnx_forward,
    "throughput": _throughput,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; have {list(BENCHMARKS)}")
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    results = existing.get("benchmarks", {})
    for name in names:
        for bench in BENCHMARKS[name]():
            res = run_benchmark(bench)
            print(format_table(res), flush=True)
            print()
            results[bench.name] = {
                **res,
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
    payload = {"environment": collect_environment("cpu"), "benchmarks": results}
    args.out.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
