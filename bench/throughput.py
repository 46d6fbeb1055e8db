"""Throughput options (``raigate.throughput``) against the plain float32 eager loop.

* ``throughput_certify[NET]``: CERTIFY on one 3x32x32 image (n0 selection + n estimation
  draws, streamed) through the plain model (the reference) and through each option:
  ``--channels-last``, ``--compile``, ``--bf16`` (only where this CPU has native bf16;
  otherwise the option is refused and the case left out, said in ``params``), the
  combinations, and the plain model at the autotuned noise batch. Items are noisy forward
  passes. Before timing, every option's certificate is checked against the float32 one:
  the option's count must lie in the float32 count's two-sided (1 - alpha) Clopper-Pearson
  interval (the gate of tests/test_throughput.py); the counts go in ``params``.
* ``throughput_pgd[resnet20]``: PGD (5 steps, L-inf 8/255) on a batch of 64 through each
  option; items are images. Compile time is spent in warm-up, never timed.

``python bench/run.py throughput`` runs both (a cold inductor compile adds about a minute).
"""

from __future__ import annotations

from typing import Any

import torch

from harness import Benchmark, Case
from raigate import wrap
from raigate.attacks import pgd_search
from raigate.defenses import SmoothedClassifier
from raigate.errors import ConfigError
from raigate.stats import clopper_pearson
from raigate.throughput import Throughput, accelerate, autotune_batch_size
from raigate.zoo import resnet20, small_cnn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIGMA, ALPHA = 0.25, 0.001
OPTIONS = {
    "channels_last": Throughput(channels_last=True),
    "compile": Throughput(compile=True),
    "bf16": Throughput(bf16=True),
    "channels_last+bf16": Throughput(channels_last=True, bf16=True),
    "compile+bf16": Throughput(compile=True, bf16=True),
}


def _model(factory: Any) -> Any:
    torch.manual_seed(0)
    net = factory(num_classes=10).eval()
    return wrap(net, class_names=[str(i) for i in range(10)], input_shape=(3, 32, 32),
                mean=MEAN, std=STD)  # fmt: skip


def _variants(model: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Each option's model, or why it was left out (refused here)."""
    made, skipped = {}, {}
    for label, opts in OPTIONS.items():
        try:
            made[label] = accelerate(model, opts, device="cpu")
        except ConfigError as e:
            skipped[label] = str(e)
    return made, skipped


def _certify_bench(name: str, factory: Any, n: int, n0: int, batch: int, rounds: int) -> Benchmark:
    model = _model(factory)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    variants, skipped = _variants(model)
    tuned = autotune_batch_size(model, device="cpu")

    def certify(m: Any, size: int = batch) -> Any:
        return SmoothedClassifier(m, SIGMA, batch_size=size, seed=0).certify(x, n0, n, ALPHA)

    ref = certify(model)
    lo, hi = clopper_pearson(int(ref.count[0]), n, ALPHA)
    agreement = {"fp32": int(ref.count[0]), "band": [int(n * lo), int(n * hi) + 1]}
    for label, m in [*variants.items(), ("autotuned batch", model)]:
        got = int(certify(m, tuned.size if label == "autotuned batch" else batch).count[0])
        agreement[label] = got
        if not n * lo <= got <= n * hi:
            raise RuntimeError(f"{label}: count {got} outside the fp32 CP band {agreement}")
    cases = [Case("fp32 eager (reference)", lambda: certify(model))]
    cases += [Case(label, lambda m=m: certify(m)) for label, m in variants.items()]
    cases.append(Case(f"fp32 eager, autotuned batch {tuned.size}",
                      lambda: certify(model, tuned.size)))  # fmt: skip
    return Benchmark(
        name=f"throughput_certify[{name}]",
        description=f"CERTIFY one 3x32x32 image, n0={n0} + n={n:,} draws, {batch} per forward, "
        f"sigma={SIGMA}, CPU; items = noisy forward passes",
        reference="fp32 eager (reference)",
        cases=cases,
        items=n0 + n,
        rounds=rounds,
        warmup=1,
        params={
            "n": n, "n0": n0, "batch": batch, "threads": torch.get_num_threads(),
            "counts_same_seed": agreement, "skipped": skipped, "autotune": tuned.as_dict(),
        },
    )  # fmt: skip


def _pgd_bench(batch: int = 64, steps: int = 5, rounds: int = 5) -> Benchmark:
    model = _model(resnet20)
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = model.predict(x)
    variants, skipped = _variants(model)
    variants = {k: v for k, v in variants.items() if "compile" not in k or k == "compile"}

    def pgd(m: Any) -> Any:
        return pgd_search(m, x, y, eps=8 / 255, norm="linf", steps=steps, seed=0)

    cases = [Case("fp32 eager (reference)", lambda: pgd(model))]
    cases += [Case(label, lambda m=m: pgd(m)) for label, m in variants.items()]
    return Benchmark(
        name="throughput_pgd[resnet20]",
        description=f"PGD L-inf 8/255, {steps} steps, batch {batch}x3x32x32, CPU; items = images",
        reference="fp32 eager (reference)",
        cases=cases,
        items=batch,
        rounds=rounds,
        warmup=1,
        params={
            "batch": batch,
            "steps": steps,
            "threads": torch.get_num_threads(),
            "skipped": skipped,
        },
    )


def build(scale: float = 1.0) -> list[Benchmark]:
    """``scale`` shrinks the draws for a quick look (``scale=0.2``: a fifth of them)."""
    small = _certify_bench("small_cnn", small_cnn, n=int(5000 * scale), n0=100, batch=1000,
                           rounds=5)  # fmt: skip
    resnet = _certify_bench("resnet20", resnet20, n=int(2000 * scale), n0=100, batch=500,
                            rounds=3)  # fmt: skip
    return [small, resnet, _pgd_bench()]


if __name__ == "__main__":
    import argparse
    import json
    from pathlib import Path

    from harness import format_table, run_benchmark

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the draws")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    args = parser.parse_args()
    results = {}
    for bench in build(args.scale):
        res = run_benchmark(bench)
        print(format_table(res), flush=True)
        print(json.dumps(res["params"].get("counts_same_seed", {})), flush=True)
        results[bench.name] = res
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
