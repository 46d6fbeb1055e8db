"""The artifact that ships, audited two ways: white-box PGD vs black-box Square on ONNX.

Real model, real images: the public CIFAR-10 ResNet-20 (akamaster) exported to ONNX with
``torch.onnx.export``, and a seeded, class-stratified sample of the 10,000 CIFAR-10 test
JPEGs from the shared data folder (``--shared``, else ``RAIGATE_SHARED_DATA``, else
``../shared/data``). The same ONNX file is loaded as ``onnx:FILE`` twice:

* **white-box** (``--mode white-box``): raigate's torch conversion, checked against
  onnxruntime at load time; PGD (L-inf, 20 steps, 1 restart) and FGSM with gradients. Its
  clean and attacked accuracies are compared with the source torch model's on the same
  images (they must be identical);
* **black-box** (``--mode black-box``): onnxruntime only, no gradients; the score-based
  Square Attack (Andriushchenko et al. 2020) at query budgets of 100 and 1,000 per image,
  and the decision-based HopSkipJump at 1,000.

At the same ε, the black-box rows are upper bounds on robust accuracy at their query budget;
the gap to PGD is what a query-limited attacker has not found yet. Every row states its n,
ε, queries spent (mean and max per image) and CPU seconds. Everything goes through
raigate's library (``load_model``, ``audit.robustness.run``), i.e. what ``raigate robustness
--model onnx:resnet20.onnx --mode black-box --attacks square --query-budget 1000`` runs.

Run:  python experiments/onnx_blackbox.py            (writes docs/onnx.md's table + JSON)
      python experiments/onnx_blackbox.py --smoke    (tiny sizes, writes to /tmp)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import raigate
from raigate._io import write_atomic
from raigate.audit import robustness
from raigate.data.base import select
from raigate.models.onnx import export_onnx
from raigate.models.weights import apply_state_dict, load_state_dict_file
from raigate.values import parse_fraction
from raigate.zoo import resnet20

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def shared_root(arg: str | None) -> Path:
    root = Path(arg or os.environ.get("RAIGATE_SHARED_DATA") or REPO.parent / "shared" / "data")
    for need in ("cifar10-test-jpg", "weights/akamaster_resnet20-12fca82f.th"):
        if not (root / need).exists():
            sys.exit(f"onnx_blackbox: {root / need} not found; pass --shared DIR")
    return root


def export(root: Path, folder: Path) -> tuple[Path, torch.nn.Module]:
    net = resnet20(num_classes=10)
    w = root / "weights/akamaster_resnet20-12fca82f.th"
    apply_state_dict(net, load_state_dict_file(w), source=w)
    net.eval()
    path = folder / "resnet20.onnx"
    export_onnx(net, path)
    return path, net


def rows_of(result: Any, label: str, seconds: float) -> list[dict[str, Any]]:
    out = []
    for r in result.metrics["attacks"]:
        if r.get("model", "base") != "base":
            continue
        out.append(
            {
                "run": label,
                "mode": result.mode,
                "attack": r["attack"],
                "eps": r.get("eps"),
                "n": r.get("n"),
                "accuracy": r["accuracy"],
                "ci": [r.get("ci_low"), r.get("ci_high")],
                "queries_mean": r.get("queries_mean"),
                "queries_max": r.get("queries_max"),
                "seconds": round(seconds, 1),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=None)
    ap.add_argument("--n", type=int, default=200, help="test images (class-stratified)")
    ap.add_argument("--budgets", default="100,1000")
    ap.add_argument("--eps", default="1/255,2/255,8/255")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "onnx_blackbox.json")
    a = ap.parse_args(argv)
    if a.smoke:
        a.n, a.budgets, a.out = 20, "50", Path("/tmp/onnx_blackbox.json")
    torch.manual_seed(a.seed)
    root = shared_root(a.shared)
    eps = [parse_fraction(e) for e in a.eps.split(",")]
    budgets = [int(b) for b in a.budgets.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="raigate-onnx-exp-"))
    path, net = export(root, folder)
    data = select(raigate.load_data(f"folder:{root / 'cifar10-test-jpg'}"), sample=a.n,
                  seed=a.seed)  # fmt: skip
    common: dict[str, Any] = {"data": data, "mean": MEAN, "std": STD}
    white = raigate.load_model(f"onnx:{path}", mode="white-box", **common)
    black = raigate.load_model(f"onnx:{path}", mode="black-box", **common)
    source = raigate.wrap(net, class_names=data.class_names, input_shape=(3, 32, 32),
                          mean=MEAN, std=STD)  # fmt: skip
    conv = white.details["conversion"]
    print(f"conversion: largest |logit difference| vs onnxruntime {conv['max_abs_difference']:.3g}"
          f" (tolerance {conv['tolerance']:g})", flush=True)  # fmt: skip

    rows: list[dict[str, Any]] = []
    base = dict(norms=["linf"], eps=eps, pgd_steps=20, progress=False, seed=a.seed,
                large_eps_check=False, certify=False, max_samples=a.n)  # fmt: skip
    for label, model in (("torch source", source), ("onnx white-box", white)):
        t0 = time.perf_counter()
        res = robustness.run(model, data, robustness.RobustnessParams(attacks=["fgsm", "pgd"],
                                                                      **base))  # fmt: skip
        rows += rows_of(res, label, time.perf_counter() - t0)
        print(rows[-1], flush=True)
    for budget in budgets:
        t0 = time.perf_counter()
        res = robustness.run(black, data, robustness.RobustnessParams(
            attacks=["square"], query_budget=budget, **base))  # fmt: skip
        rows += rows_of(res, f"onnx black-box, Square, {budget} queries", time.perf_counter() - t0)
        print(rows[-1], flush=True)
    hsj_budget = max(budgets)
    t0 = time.perf_counter()
    res = robustness.run(black, data, robustness.RobustnessParams(
        attacks=["hsj"], query_budget=hsj_budget, **base))  # fmt: skip
    rows += rows_of(res, f"onnx black-box, HopSkipJump, {hsj_budget} queries",
                    time.perf_counter() - t0)  # fmt: skip
    doc = {
        "command": "python "
        + shlex.join(["experiments/onnx_blackbox.py", *(argv or sys.argv[1:])]),
        "n": a.n,
        "seed": a.seed,
        "conversion": conv,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads",
        "rows": rows,
    }
    write_atomic(a.out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
