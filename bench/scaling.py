"""Scaling of one audit's per-image work over processes (#15): CERTIFY and PGD throughput
with 1 and with N processes of one thread each, side by side in the same run, reported as
scaling efficiency ``(T_1 / T_N) / N`` (goal >= 0.85 at N = 2 on a 2-core machine).

Each measurement starts a fresh torch.distributed world (gloo, forked workers, the
environment torchrun sets) and times the same ``raigate.parallel.map_positions`` loop the
audit uses, between two barriers, on rank 0. Settings alternate (1, N, 1, N, ...) so
machine noise hits both alike; medians are reported. The outputs are checked to be equal
across settings, so the scaled run does the same work.

* ``certify[resnet20]``: CERTIFY (n0 = 64 selection + n estimation draws per image,
  per-image seeds) of K CIFAR-sized images, random-init ResNet-20, noise batch 1000.
* ``pgd[resnet20]``: 10-step L-inf PGD (eps 2/255, one random start) on batches of 32.

With ``--gpu`` (and CUDA) it instead measures certified images per second at
n = 100,000 for ResNet-20 and ResNet-56 on one GPU, plain fp32 (Cohen et al. report about
15 s per CIFAR-10 image for ResNet-110; the goal is <= 0.5 s per image).

``python bench/scaling.py [--nproc 2] [--rounds 3] [--images 8] [--n 1000]``
writes ``bench/scaling.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from dist_helpers import free_port  # noqa: E402
from raigate import parallel, wrap  # noqa: E402
from raigate.attacks import pgd_search  # noqa: E402
from raigate.defenses import SmoothedClassifier  # noqa: E402
from raigate.environment import collect_environment  # noqa: E402
from raigate.zoo import resnet20, resnet56  # noqa: E402

SIGMA = 0.25
FACTORIES = {"resnet20": resnet20, "resnet56": resnet56}


def _model(name: str, device: str = "cpu") -> Any:
    torch.manual_seed(0)
    net = FACTORIES[name](num_classes=10).eval()
    return wrap(net, class_names=[str(i) for i in range(10)], input_shape=(3, 32, 32)).to(device)


def _images(k: int) -> torch.Tensor:
    return torch.rand(k, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _certify_work(k: int, n: int, device: str = "cpu") -> Any:
    sm = SmoothedClassifier(_model("resnet20", device), SIGMA, batch_size=1000)
    x = _images(k).to(device)

    def fn(pos: np.ndarray) -> parallel.Arrays:
        seeds = [parallel.item_seed(0, "certify", int(i)) for i in pos]
        c = sm.certify(x[pos], 64, n, 0.001, seeds=seeds)
        return {"radius": c.radius.numpy(), "count": c.count.numpy()}

    return lambda: parallel.map_positions(k, 1, fn, stage="certify", seed=0)


def _pgd_work(k: int, steps: int = 10) -> Any:
    model = _model("resnet20")
    x = _images(k)
    y = model.logits(x).argmax(1).detach()

    def fn(pos: np.ndarray) -> parallel.Arrays:
        res = pgd_search(model, x[pos], y[pos], eps=2 / 255, norm="linf", steps=steps, seed=0)
        return {"ok": (model.logits(res.x_adv).argmax(1) == y[pos]).numpy()}

    return lambda: parallel.map_positions(k, 32, fn, stage="pgd", seed=0)


def _worker(rank: int, size: int, port: int, out: str, job: str, args: dict[str, Any]) -> None:
    import torch.distributed as dist

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    if size > 1:
        parallel.start("cpu")
    work = _certify_work(**args) if job == "certify" else _pgd_work(**args)
    world = parallel.current()
    world.barrier()
    t0 = time.perf_counter()
    result = work()
    world.barrier()
    seconds = time.perf_counter() - t0
    if rank == 0:
        Path(out).write_bytes(parallel.pack({**result, "__seconds__": np.asarray(seconds)}))
    if size > 1:
        dist.destroy_process_group()


def _time(job: str, size: int, args: dict[str, Any]) -> tuple[float, parallel.Arrays]:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp, "r.npz"))
        mp.start_processes(
            _worker, args=(size, free_port(), out, job, args), nprocs=size, join=True,
            start_method="fork",
        )  # fmt: skip
        arrays = parallel.unpack(Path(out).read_bytes())
    return float(arrays.pop("__seconds__")), arrays


def scaling(nproc: int, rounds: int, images: int, n: int) -> list[dict[str, Any]]:
    jobs = {
        "certify[resnet20]": ("certify", {"k": images, "n": n}, images * (64 + n), "passes"),
        "pgd[resnet20]": ("pgd", {"k": 16 * images}, 16 * images, "images"),
    }
    rows = []
    for name, (job, args, items, unit) in jobs.items():
        times: dict[int, list[float]] = {1: [], nproc: []}
        outputs: dict[int, parallel.Arrays] = {}
        for _ in range(rounds):
            for size in (1, nproc):
                t, arrays = _time(job, size, args)
                times[size].append(t)
                outputs[size] = arrays
        same = all(np.array_equal(outputs[1][k], outputs[nproc][k]) for k in outputs[1])
        t1, tn = statistics.median(times[1]), statistics.median(times[nproc])
        rows.append(
            {
                "benchmark": name,
                "processes": nproc,
                "threads_per_process": 1,
                "median_s_1": round(t1, 3),
                f"median_s_{nproc}": round(tn, 3),
                f"{unit}_per_s_1": round(items / t1, 1),
                f"{unit}_per_s_{nproc}": round(items / tn, 1),
                "speedup": round(t1 / tn, 3),
                "efficiency": round(t1 / tn / nproc, 3),
                "same_results": bool(same),
                "rounds": rounds,
                "params": args,
            }
        )
        print(
            f"{name:20s} 1 proc {t1:7.2f}s  {nproc} procs {tn:7.2f}s  speedup "
            f"{t1 / tn:5.2f}  efficiency {t1 / tn / nproc:5.2f}  same results: {same}",
            flush=True,
        )
    return rows


def gpu(n: int = 100_000, images: int = 10) -> list[dict[str, Any]]:
    rows = []
    for name in ("resnet20", "resnet56"):
        model = _model(name, "cuda")
        sm = SmoothedClassifier(model, SIGMA, batch_size=10_000)
        x = _images(images).to("cuda")
        sm.certify(x[:1], 100, 10_000, 0.001, seeds=[0])  # warm-up (cuDNN autotune)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        sm.certify(x, 100, n, 0.001, seeds=list(range(images)))
        torch.cuda.synchronize()
        per = (time.perf_counter() - t0) / images
        rows.append(
            {
                "benchmark": f"certify_gpu[{name}]",
                "n": n,
                "n0": 100,
                "images": images,
                "seconds_per_image": round(per, 4),
                "images_per_s": round(1 / per, 3),
                "device": torch.cuda.get_device_name(0),
                "goal_seconds_per_image": 0.5,
            }
        )
        print(f"certify_gpu[{name}]  n={n:,}  {per:.3f} s/image  ({1 / per:.2f} images/s)")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=8, help="CERTIFY images (PGD: 16x)")
    parser.add_argument("--n", type=int, default=1000, help="CERTIFY estimation draws")
    parser.add_argument("--gpu", action="store_true", help="the GPU section (needs CUDA)")
    parser.add_argument("--out", type=Path, default=HERE / "scaling.json")
    args = parser.parse_args(argv)
    if args.gpu:
        if not torch.cuda.is_available():
            parser.error("--gpu: no CUDA device here")
        rows = gpu()
    else:
        rows = scaling(args.nproc, args.rounds, args.images, args.n)
    payload = {"environment": collect_environment("cuda" if args.gpu else "cpu"), "rows": rows}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
