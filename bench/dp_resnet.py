"""DP-SGD step time and peak memory on ResNet-20, against a non-private step.

ResNet-20 (``raigate.zoo.resnet20``, 10 classes, random init) two ways: with GroupNorm,
and with BatchNorm folded into the convolutions (``raigate.privacy.fold.rebuild(net,
"fold")``: the convolutions gain biases, no norm layer is left), at batch 256 and 500 on
32x32 images. One step = zero_grad, forward, cross-entropy, backward, optimizer step.
Cases, each a ratio to the non-private SGD step measured side by side:

* raigate ``bk`` (:mod:`raigate.privacy.bookkeeping`, what ``--grad-sample-mode auto``
  picks) and ``fast`` (:mod:`raigate.privacy.grad_sample`);
* Opacus ``hooks`` (its default) and ghost clipping (``grad_sample_mode="ghost"``,
  ``DPOptimizerFastGradientClipping``, ``DPLossFastGradientClipping``: two backward passes).

All DP cases clip to C=1 and add noise with sigma=1. Goal (issue #14): at most 1.3x the
non-private step. ``tests/privacy/test_bookkeeping.py`` proves ``bk``'s update equals
Opacus' DPOptimizer fed per-example autograd gradients.

Peak memory: each case runs 2 steps in a fresh process, and we report the growth of its
peak resident set over the state before the first step (``harness.peak_rss_growth_kib``;
CPU has no allocator statistics like ``torch.cuda.max_memory_allocated``). It counts
every allocation of the step: activations, per-sample buffers, allocator slack.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable

import torch
from torch import nn

from harness import Benchmark, Case, peak_rss_growth_kib

CASES = (
    "non-private SGD",
    "raigate bk (auto)",
    "raigate fast",
    "opacus hooks",
    "opacus ghost",
)
SETUPS = (("gn", 256), ("gn", 500), ("bnfold", 256), ("bnfold", 500))


def make_net(norm: str, seed: int = 0) -> nn.Module:
    """ResNet-20 with GroupNorm (``gn``) or with folded BatchNorm (``bnfold``)."""
    from raigate.privacy.fold import rebuild
    from raigate.zoo import resnet20

    torch.manual_seed(seed)
    if norm == "gn":
        return resnet20(num_classes=10, norm="group").train()
    net, _ = rebuild(resnet20(num_classes=10, norm="batch").eval(), "fold")
    return net.train()


def step_fn(label: str, norm: str, batch: int, seed: int = 0) -> Callable[[], None]:
    """A closure doing one training step of ``label`` on a fixed model and batch (the step
    code is ``dp_step.dp_case``, shared with the small-CNN bench)."""
    from dp_step import dp_case

    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    return dp_case(label, make_net(norm, seed), x, y)


def _peak_growth(label: str, norm: str, batch: int, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    torch.set_num_threads(1)
    fn = step_fn(label, norm, batch)

    def steps() -> None:
        for _ in range(2):
            fn()

    queue.put(peak_rss_growth_kib(steps))


def peak_memory_mib(norm: str, batch: int) -> dict[str, float]:
    """Peak resident-set growth (MiB) of 2 steps of each case, each in a fresh process."""
    ctx = mp.get_context("spawn")
    out: dict[str, float] = {}
    for label in CASES:
        queue = ctx.Queue()
        proc = ctx.Process(target=_peak_growth, args=(label, norm, batch, queue))
        proc.start()
        out[label] = round(queue.get(timeout=900) / 1024, 1)
        proc.join()
    return out


def build(threads: int = 1) -> list[Benchmark]:
    # One thread, as in dp_step.py: on the shared 2-core machine two threads spin against
    # other load; both sides of every ratio run under the same setting.
    torch.set_num_threads(threads)
    out = []
    for norm, batch in SETUPS:
        memory = peak_memory_mib(norm, batch)
        print(f"resnet20 {norm} batch {batch}: peak resident-set growth over 2 steps (MiB):")
        for label, mib in memory.items():
            print(f"  {label:<24} {mib:>8.1f}")
        out.append(
            Benchmark(
                name=f"dp_step[resnet20_{norm}_b{batch}]",
                description=f"DP-SGD step vs non-private step, ResNet-20 "
                f"{'GroupNorm' if norm == 'gn' else 'BatchNorm folded'}, batch {batch}, CPU",
                reference="non-private SGD",
                cases=[Case(label, step_fn(label, norm, batch)) for label in CASES],
                items=batch,
                rounds=7,
                warmup=1,
                params={
                    "batch": batch,
                    "net": f"make_net({norm!r}) = resnet20(10) "
                    + ("norm='group'" if norm == "gn" else "with BatchNorm folded"),
                    "max_grad_norm": 1.0,
                    "noise_multiplier": 1.0,
                    "threads": torch.get_num_threads(),
                    "peak_rss_growth_mib": memory,
                    "goal": "raigate bk <= 1.3x non-private",
                },
            )
        )
    return out
