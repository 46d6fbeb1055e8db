"""DP-SGD step time against a non-private step on the same model and batch.

One step = zero_grad, forward, cross-entropy, backward, optimizer step, on the small
GroupNorm CNN (``raigate.zoo.small_cnn(norm="group")``, 10 classes) and a batch of 128
32x32 images. The reference is the non-private SGD step; the DP cases add per-sample
gradients, flat clipping to C=1 and Gaussian noise (sigma=1) through Opacus' DPOptimizer:

* Opacus ``hooks`` (its default), ``ew`` (ExpandedWeights), ``functorch``, ``ghost``;
* raigate ``fast`` (:mod:`raigate.privacy.grad_sample`; goal: at most 1.6x the
  non-private step) and ``bk`` (book-keeping, :mod:`raigate.privacy.bookkeeping`), what
  ``--grad-sample-mode auto`` picks for this model. ResNet-20: ``bench/dp_resnet.py``.

``tests/privacy/test_grad_sample.py`` proves the clipped, noised gradients of ``fast``
equal those of Opacus' hooks mode. Peak memory: each case runs 3 steps in a fresh
process, and we report the growth of its peak resident set over the state before the
first step (CPU has no allocator statistics like ``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import multiprocessing as mp
import warnings
from collections.abc import Callable

import torch
from torch import nn

from harness import Benchmark, Case, peak_rss_growth_kib
from raigate.zoo import small_cnn

BATCH = 128
CASES = (
    "non-private SGD",
    "opacus hooks",
    "opacus ew",
    "opacus functorch",
    "opacus ghost",
    "raigate fast",
    "raigate bk (auto)",
)


def _step_fn(label: str, seed: int = 0) -> Callable[[], None]:
    """A closure doing one training step of ``label`` on a fixed model and batch."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(BATCH, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (BATCH,), generator=gen)
    torch.manual_seed(seed)
    return dp_case(label, small_cnn(num_classes=10, norm="group"), x, y)


def dp_case(label: str, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One training step of ``label`` (a name in :data:`CASES`) on ``net`` and the batch
    ``(x, y)``: SGD at lr 0.1; the DP cases clip to C=1 and add noise with sigma=1. Shared
    with ``bench/dp_resnet.py``, so both benches time the same step code."""
    from opacus.grad_sample.utils import prepare_module
    from opacus.optimizers import DPOptimizer
    from opacus.optimizers.optimizer_fast_gradient_clipping import (
        DPOptimizerFastGradientClipping,
    )
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    from raigate.privacy.bookkeeping import BookKeeping, bookkeeping_optimizer
    from raigate.privacy.grad_sample import FastGradSample

    warnings.filterwarnings("ignore")
    crit = nn.CrossEntropyLoss()
    dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": len(y)}
    if label == "non-private SGD":
        opt = torch.optim.SGD(net.parameters(), lr=0.1)

        def plain() -> None:
            opt.zero_grad(set_to_none=True)
            crit(net(x), y).backward()
            opt.step()

        return plain
    if label == "opacus ghost":
        gsm = prepare_module(
            net,
            grad_sample_mode="ghost",
            batch_first=True,
            loss_reduction="mean",
            max_grad_norm=1.0,
        )
        gopt = DPOptimizerFastGradientClipping(torch.optim.SGD(gsm.parameters(), lr=0.1), **dp)
        gcrit = DPLossFastGradientClipping(gsm, gopt, nn.CrossEntropyLoss(), "mean")

        def ghost() -> None:
            gopt.zero_grad(set_to_none=True)
            gcrit(gsm(x), y).backward()
            gopt.step()

        return ghost
    if label.startswith("opacus"):
        mode = label.split()[1]
        module: nn.Module = prepare_module(
            net, grad_sample_mode=mode, batch_first=True, loss_reduction="mean"
        )
        dopt = DPOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), **dp)

        def opacus_step() -> None:
            dopt.zero_grad(set_to_none=True)
            crit(module(x), y).backward()
            dopt.step()

        return opacus_step
    engine: FastGradSample | BookKeeping
    if label.startswith("raigate bk"):
        engine = BookKeeping(net)
        fopt = bookkeeping_optimizer(DPOptimizer, engine)(
            torch.optim.SGD(net.parameters(), lr=0.1), **dp
        )
    else:
        engine = FastGradSample(net)
        fopt = DPOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), **dp)

    def fast() -> None:
        fopt.zero_grad(set_to_none=True)
        crit(engine.forward(net, x), y).backward()
        fopt.step()

    return fast


def _peak_growth(label: str, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    """Peak RSS over 3 steps minus the RSS before them (``harness.peak_rss_growth_kib``)."""
    torch.set_num_threads(1)
    fn = _step_fn(label)

    def steps() -> None:
        for _ in range(3):
            fn()

    queue.put(peak_rss_growth_kib(steps))


def peak_memory_mib() -> dict[str, float]:
    """Peak resident-set growth (MiB) of 3 steps of each case, each in a fresh process."""
    ctx = mp.get_context("spawn")
    out: dict[str, float] = {}
    for label in CASES:
        queue = ctx.Queue()
        proc = ctx.Process(target=_peak_growth, args=(label, queue))
        proc.start()
        out[label] = round(queue.get(timeout=300) / 1024, 1)
        proc.join()
    return out


def build(threads: int = 1) -> list[Benchmark]:
    # One thread: on a shared 2-core machine two OpenMP threads spin against other load and
    # the timings scatter by 10x; both sides of every ratio run under the same setting.
    torch.set_num_threads(threads)
    memory = peak_memory_mib()
    print("peak resident-set growth over 3 steps (MiB, fresh process each):")
    for label, mib in memory.items():
        print(f"  {label:<24} {mib:>8.1f}")
    return [
        Benchmark(
            name="dp_step[small_cnn_gn]",
            description=f"DP-SGD step vs non-private step, small_cnn GroupNorm, batch {BATCH}, "
            "CPU; ratio = DP step time / non-private step time",
            reference="non-private SGD",
            cases=[Case(label, _step_fn(label)) for label in CASES],
            items=BATCH,
            rounds=15,
            warmup=3,
            params={
                "batch": BATCH,
                "net": "small_cnn(num_classes=10, norm='group')",
                "max_grad_norm": 1.0,
                "noise_multiplier": 1.0,
                "threads": torch.get_num_threads(),
                "peak_rss_growth_mib": memory,
                "goal": "raigate fast <= 1.6x non-private",
            },
        )
    ]
