"""FGSM and CERTIFY side by side with the raw torch work they consist of, and with ART.

* ``fgsm[resnet20]``: our ``fgsm`` vs one forward + one backward + the signed step in raw
  torch (the reference; goal <= 1.1) vs ART's ``FastGradientMethod`` on the same model.
* ``certify[NET]``: our CERTIFY (n0 selection + n estimation draws, streamed) vs the same
  number of raw batched noisy forward passes (reference; goal <= 1.15), and
  ``certify_art[NET]``: ART's ``PyTorchRandomizedSmoothing.certify`` (``sample_size`` = n0)
  vs the same raw reference, in a benchmark of its own (ART's large allocations slow
  whatever runs right after them in a round).
* ``square[small_cnn]`` (benchmark ``square_attack``): our Square Attack (L-inf, native
  torch, one query per candidate) vs ART's ``SquareAttack`` at the same number of
  candidates (ART's ``max_iter`` = budget - 2) vs the raw batched forward passes those
  candidates need (the reference). Items are candidate evaluations (our queries); ε is
  small enough that no image is fooled, so every image spends the whole budget in both
  (checked before timing). ART evaluates three batches per iteration, so its queries are
  about three times the items.
* Peak memory of CERTIFY at n = 100,000 on one 3x32x32 image, ours (also at n = 10,000, to
  show it does not grow with n) vs ART, each measured in a fresh subprocess as the peak
  resident set during the call minus the resident set just before it (model built, a
  small warm-up certify done; ``harness.peak_rss_growth_kib``).

``python bench/robustness.py --peak ours|art [--n N]`` runs one memory measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness import Benchmark, Case, peak_rss_growth_kib
from raigate import wrap
from raigate.attacks import fgsm, square_attack, to_art_classifier
from raigate.defenses import SmoothedClassifier
from raigate.zoo import resnet20, small_cnn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIGMA = 0.25
PEAK_N = 100_000


def _model(factory: Any) -> Any:
    torch.manual_seed(0)
    net = factory(num_classes=10).eval()
    return wrap(net, class_names=[str(i) for i in range(10)], input_shape=(3, 32, 32),
                mean=MEAN, std=STD)  # fmt: skip


def _art_smoothing(model: Any, n0: int, batch: int) -> Any:
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    return PyTorchRandomizedSmoothing(
        model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
        clip_values=(0.0, 1.0), device_type="cpu", sample_size=n0, scale=SIGMA, alpha=0.001,
    )  # fmt: skip


def _fgsm_bench(batch: int = 128, eps: float = 8 / 255) -> Benchmark:
    from art.attacks.evasion import FastGradientMethod

    model = _model(resnet20)
    net, norm = model.net, model.normalize
    torch.manual_seed(1)
    x = torch.rand(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    x_np, y_np = x.numpy(), np.eye(10, dtype=np.float32)[y.numpy()]
    art = FastGradientMethod(to_art_classifier(model), norm=np.inf, eps=eps, batch_size=batch)

    def raw() -> None:
        xg = x.clone().requires_grad_(True)
        loss = F.cross_entropy(net(norm(xg)), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
        (x + eps * g.sign()).clamp_(0, 1)

    return Benchmark(
        name="fgsm[resnet20]",
        description=f"L-inf FGSM eps=8/255, batch {batch}x3x32x32, CPU",
        reference="raw torch: 1 forward + 1 backward + step",
        cases=[
            Case("raw torch: 1 forward + 1 backward + step", raw),
            Case("raigate attacks.fgsm", lambda: fgsm(model, x, y, eps=eps, norm="linf")),
            Case("ART FastGradientMethod.generate", lambda: art.generate(x_np, y=y_np)),
        ],
        items=batch,
        rounds=11,
        warmup=2,
        params={"batch": batch, "eps": eps, "threads": torch.get_num_threads()},
    )


def _square_bench(batch: int = 64, budget: int = 100, eps: float = 0.25 / 255) -> Benchmark:
    from art.attacks.evasion import SquareAttack

    model = _model(small_cnn)
    net, norm = model.net, model.normalize
    torch.manual_seed(3)
    x = torch.rand(batch, 3, 32, 32)
    y = model.predict(x)
    res = square_attack(model, x, y, eps=eps, query_budget=budget)
    if int(res.queries.min()) != budget:
        raise RuntimeError("an image was fooled: the cases would not do the same work")
    art = SquareAttack(
        to_art_classifier(model), norm=np.inf, eps=eps, max_iter=budget - 2, p_init=0.05,
        batch_size=batch, verbose=False,
    )  # fmt: skip
    x_np, y_np = x.numpy(), np.eye(10, dtype=np.float32)[y.numpy()]

    @torch.inference_mode()
    def raw() -> None:
        for _ in range(budget):
            net(norm(x)).argmax(1)

    def ours() -> None:
        square_attack(model, x, y, eps=eps, query_budget=budget)

    def art_square() -> None:
        np.random.seed(0)
        art.generate(x_np, y=y_np)

    return Benchmark(
        name="square[small_cnn]",
        description=f"L-inf Square Attack eps=0.25/255, {budget} queries x {batch} images "
        "(no image fooled), items = candidate evaluations, CPU",
        reference="raw torch: budget batched forward passes",
        cases=[
            Case("raw torch: budget batched forward passes", raw),
            Case("raigate attacks.square_attack", ours),
            Case("ART SquareAttack.generate", art_square),
        ],
        items=batch * budget,
        rounds=5,
        warmup=1,
        params={
            "batch": batch,
            "query_budget": budget,
            "eps": eps,
            "art_max_iter": budget - 2,
            "threads": torch.get_num_threads(),
        },
    )


def _certify_bench(
    name: str, factory: Any, n: int, n0: int, batch: int, rounds: int
) -> list[Benchmark]:
    model = _model(factory)
    net, norm = model.net, model.normalize
    torch.manual_seed(2)
    x = torch.rand(1, 3, 32, 32)
    ours = SmoothedClassifier(model, SIGMA, batch_size=batch, seed=0)
    art = _art_smoothing(model, n0, batch)
    x_np = x.numpy()
    gen = torch.Generator().manual_seed(0)

    def ours_certify() -> None:
        ours.certify(x, n0, n, 0.001)

    def art_certify() -> None:
        art.certify(x_np, n, batch)

    @torch.inference_mode()
    def raw() -> None:
        for total in (n0, n):
            for start in range(0, total, batch):
                b = min(batch, total - start)
                noisy = torch.randn((b, 3, 32, 32), generator=gen).mul_(SIGMA).add_(x[0])
                net(norm(noisy)).argmax(1)

    params = {"n": n, "n0": n0, "batch": batch, "sigma": SIGMA, "threads": torch.get_num_threads()}
    what = f"CERTIFY one 3x32x32 image, n0={n0} + n={n:,} draws, {batch} per forward, sigma={SIGMA}"
    raw_case = Case("raw torch: n0+n noisy forward passes", raw)
    # Two benchmarks, not one: ART allocates and frees hundreds of MB per call, which slows
    # whichever case runs right after it in a round; each contender gets its own reference.
    return [
        Benchmark(
            name=f"certify[{name}]",
            description=f"{what}, raigate vs raw, CPU",
            reference=raw_case.label,
            cases=[raw_case, Case("raigate SmoothedClassifier.certify", ours_certify)],
            items=n0 + n,
            rounds=rounds,
            warmup=1,
            params=params,
        ),
        Benchmark(
            name=f"certify_art[{name}]",
            description=f"{what}, ART vs raw, CPU",
            reference=raw_case.label,
            cases=[raw_case, Case("ART PyTorchRandomizedSmoothing.certify", art_certify)],
            items=n0 + n,
            rounds=rounds,
            warmup=1,
            params=params,
        ),
    ]


def peak(which: str, n: int = PEAK_N, batch: int = 1000) -> dict[str, float]:
    """Peak-RSS growth (MB) of one CERTIFY call at ``n`` draws, in this process."""
    model = _model(small_cnn)
    x = torch.rand(1, 3, 32, 32)
    if which == "ours":
        sm = SmoothedClassifier(model, SIGMA, batch_size=batch, seed=0)
        sm.certify(x, 100, 2000, 0.001)  # warm-up: allocator pools, lazy imports

        def call() -> None:
            sm.certify(x, 100, n, 0.001)
    else:
        art = _art_smoothing(model, 100, batch)
        art.certify(x.numpy(), 2000, batch)

        def call() -> None:
            art.certify(x.numpy(), n, batch)

    return {"growth_mb": round(peak_rss_growth_kib(call) / 1024, 1)}


def _peaks() -> dict[str, Any]:
    out: dict[str, Any] = {
        "how": "peak RSS (VmHWM, reset just before) minus RSS before one certify call, "
        "own subprocess"
    }
    for which, n in (("ours", 10_000), ("ours", PEAK_N), ("art", PEAK_N)):
        res = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--peak", which, "--n", str(n)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        out[f"{which}_n{n}"] = json.loads(res.stdout.strip().splitlines()[-1])
    print(
        "CERTIFY peak memory (one 3x32x32 image, small_cnn, 1000 draws per forward; growth of "
        f"peak RSS over the call): raigate {out['ours_n10000']['growth_mb']:.1f} MB at n=10,000 "
        f"and {out[f'ours_n{PEAK_N}']['growth_mb']:.1f} MB at n={PEAK_N:,}; ART "
        f"{out[f'art_n{PEAK_N}']['growth_mb']:.1f} MB at n={PEAK_N:,}",
        flush=True,
    )
    return out


def build() -> list[Benchmark]:
    small = _certify_bench("small_cnn", small_cnn, n=10_000, n0=100, batch=1000, rounds=7)
    small[0].params["peak_memory_n100000"] = _peaks()
    resnet = _certify_bench("resnet20", resnet20, n=2_000, n0=100, batch=500, rounds=5)
    return [_fgsm_bench(), *small, *resnet]


def build_square() -> list[Benchmark]:
    """``python bench/run.py square_attack``: the Square Attack case alone."""
    return [_square_bench()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peak", choices=["ours", "art"], required=True)
    parser.add_argument("--n", type=int, default=PEAK_N)
    args = parser.parse_args()
    print(json.dumps(peak(args.peak, args.n)))
