"""Membership inference on real images: loss, ART, LiRA (online, offline) and RMIA side by side.

Real data: the 10,000 CIFAR-10 test JPEGs in ``../shared/data/cifar10-test-jpg`` (YoongiKim
copy of Krizhevsky 2009), split by a seeded, class-stratified permutation into members,
non-members and a population. Real weights: the public ResNet-20 of
akamaster/pytorch_resnet_cifar10, trained on the CIFAR-10 *training* split, so none of these
images was seen by it before.

The audited model is that ResNet-20 fine-tuned on the members (SGD, momentum 0.9, flips).
The reference models repeat the recipe exactly (:func:`raigate.privacy.reference.fit_recipe`,
from the same pretrained weights, ``--reference-init``) on random halves of members +
non-members + population; members are half of that pool, so every reference model trains
on as many images as the audited one, and every example is IN for K/2 of them. Reported per
attack: AUC, TPR at FPR 0.1% and 1% with Clopper-Pearson intervals, and the empirical epsilon
lower bound (95% jointly over the attacks, Bonferroni); and the CPU seconds per reference
model.

``--dp``: the audited model is the same ResNet-20 fine-tuned on the members with DP-SGD at
epsilon 2, delta 1e-5 (BatchNorm folded into the convolutions, as run (b) of
docs/privacy_real.md; SGD, momentum 0.9, Poisson batches, clipping norm 1), and the reference
models repeat that DP recipe (``ReferenceRecipe(dp=...)``, what ``--reference-recipe-from``
builds from a ``raigate privacy train`` folder) from the same pretrained weights. The table
then also names each reference model's spent epsilon.

Seeded end to end; one thread by default. Prints its table.

    python experiments/lira_real.py [--shared DIR] [--members 1000] [--k 8] [--dp] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import raigate
from raigate.data.base import Dataset
from raigate.models.base import Model
from raigate.privacy.mia import art_blackbox_scores, model_outputs, score_attack
from raigate.privacy.reference import (
    Pool,
    ReferenceRecipe,
    build_pool,
    fit_recipe,
    reference_attack_scores,
    train_reference,
)
from raigate.privacy.reference_dp import DP_RECIPE_FIELDS
from raigate.privacy.train import DPParams, run_private_training

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "weights/akamaster_resnet20-12fca82f.th"
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
ATTACKS = ("loss", "art_blackbox", "lira_online", "lira_offline", "rmia")


def stratified(labels: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Disjoint class-stratified parts of ``sizes[i]`` per class each."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in sizes]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for i, n in enumerate(sizes):
            parts[i].append(idx[start : start + n])
            start += n
    return [np.sort(np.concatenate(p)) for p in parts]


def dp_target(
    args: argparse.Namespace, members: Dataset, weights: Path, pool: Pool, out: Path
) -> tuple[Model, ReferenceRecipe]:
    """The audited model fine-tuned on the members with DP-SGD (BatchNorm folded), and the
    reference recipe that repeats it: its DPParams fields, BatchNorm as its ledger says."""
    params = DPParams(
        epsilon=args.epsilon,
        delta=args.delta,
        epochs=args.epochs,
        batch_size=args.dp_batch_size,
        max_grad_norm=1.0,
        optimizer="sgd",
        lr=args.lr,
        momentum=0.9,
        accountant="prv",
        batchnorm="fold",
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    c0 = time.process_time()
    # saved to out and reloaded from its spec (run.model), as an audit would load it
    run = run_private_training(
        "raigate.zoo:resnet20", members, params, weights=weights, mean=MEAN, std=STD, out_dir=out
    )
    model, led = run.model, run.ledger
    acc = float(
        (model.logits(pool.x[: pool.n_members]).argmax(1) == pool.y[: pool.n_members])
        .float()
        .mean()
    )
    print(
        f"audited model: DP-SGD fine-tuned in {time.process_time() - c0:.0f} CPU s, train "
        f"accuracy {acc:.4f}; N={led.dataset_size}, q={led.sample_rate:.4f}, steps {led.steps}, "
        f"sigma {led.noise_multiplier:.4f}, spent epsilon {led.epsilon:.4f} (target "
        f"{args.epsilon:g}, delta {args.delta:g}), BatchNorm {led.batchnorm}",
        flush=True,
    )
    dp = {k: getattr(params, k) for k in DP_RECIPE_FIELDS}
    dp["batchnorm"] = led.batchnorm
    return model, ReferenceRecipe(dp=dp, init=str(weights))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", help="shared data (default RAIGATE_SHARED_DATA or ../shared/data)")
    ap.add_argument("--members", type=int, default=1000, help="members (fine-tuning set)")
    ap.add_argument("--k", type=int, default=8, help="reference models")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dp", action="store_true", help="DP-SGD target and reference models")
    ap.add_argument("--epsilon", type=float, default=2.0, help="--dp: target epsilon")
    ap.add_argument("--delta", type=float, default=1e-5, help="--dp: target delta")
    ap.add_argument("--dp-batch-size", type=int, default=256, help="--dp: expected batch")
    ap.add_argument("--smoke", action="store_true", help="tiny configuration for development")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.members, args.k, args.epochs = 100, 2, 1
        args.dp_batch_size = min(args.dp_batch_size, 32)
    shared = Path(
        args.shared or os.environ.get("RAIGATE_SHARED_DATA") or REPO.parent / "shared/data"
    )
    images, weights = shared / "cifar10-test-jpg", shared / WEIGHTS
    if not images.is_dir() or not weights.is_file():
        sys.exit(f"CIFAR-10 JPEGs or ResNet-20 weights not found under {shared}; pass --shared")
    cpu0 = time.process_time()
    full = raigate.load_data(f"folder:{images}")
    per_class = args.members // len(full.class_names)
    # non-members and population each a quarter of the pool: members are the other half
    m_idx, n_idx, p_idx = stratified(
        full.labels, [per_class, per_class // 2, per_class // 2], args.seed
    )
    members, non_members, population = (full.subset(i) for i in (m_idx, n_idx, p_idx))
    model = raigate.load_model(
        "raigate.zoo:resnet20", weights=weights, data=full, mean=MEAN, std=STD
    )
    pool = build_pool(model, members, non_members, population)
    print(
        f"data: {len(members)} members, {len(non_members)} non-members, "
        f"{len(pool.population)} population real CIFAR-10 JPEGs "
        f"({pool.dropped} population images equal to a target dropped)",
        flush=True,
    )
    if args.dp:
        work = Path(tempfile.mkdtemp(prefix="lira-real-dp-"))  # the DP run's files
        model, recipe = dp_target(args, members, weights, pool, work)
    else:
        recipe = ReferenceRecipe(
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            optimizer="sgd",
            momentum=0.9,
            flip=True,
            init=str(weights),
        )
        c0 = time.process_time()
        torch.manual_seed(args.seed)
        acc = fit_recipe(
            model.net, model.transform, pool.x[: pool.n_members], pool.y[: pool.n_members],
            recipe, args.seed, "cpu",
        )  # fmt: skip
        target_cpu = time.process_time() - c0
        print(f"audited model: fine-tuned in {target_cpu:.0f} CPU s, train accuracy {acc:.4f}")
    refs = train_reference(
        model, pool, k=args.k, fraction=0.5, recipe=recipe, seed=args.seed + 1,
        progress=sys.stderr.isatty(),
    )  # fmt: skip
    cpu = refs.cpu_seconds
    ref_acc = np.mean([m["train_accuracy"] for m in refs.manifest["models"]])
    print(
        f"reference models: {args.k}, {np.mean(cpu):.1f} CPU s each (min {min(cpu):.1f}, max "
        f"{max(cpu):.1f}), train accuracy {ref_acc:.4f}",
        flush=True,
    )
    if refs.ledgers:
        eps = [led.epsilon for led in refs.ledgers]
        sig = [led.noise_multiplier for led in refs.ledgers]
        print(
            f"reference models' ledgers: epsilon {min(eps):.4f}-{max(eps):.4f} (target "
            f"{args.epsilon:g}), sigma {min(sig):.4f}-{max(sig):.4f}, steps "
            f"{min(led.steps for led in refs.ledgers)}-{max(led.steps for led in refs.ledgers)}",
            flush=True,
        )
    mo = model_outputs(model, members, progress=False)
    no = model_outputs(model, non_members, progress=False)
    c0 = time.process_time()
    ref_scores = reference_attack_scores(model, pool, refs, list(ATTACKS[2:]), queries=2)
    query_cpu = time.process_time() - c0
    nm, nt = pool.n_members, pool.n_targets
    scores = {
        "loss": (-mo.loss, -no.loss),
        "art_blackbox": art_blackbox_scores(model, mo, no, seed=args.seed),
        **{k: (v[:nm], v[nm:nt]) for k, v in ref_scores.items()},
    }
    each = 0.05 / len(scores)
    print(
        f"\naccuracy: members {(mo.probs.argmax(1) == mo.labels).mean():.4f}, non-members "
        f"{(no.probs.argmax(1) == no.labels).mean():.4f}; queries per example 2 (image, "
        f"mirror), {query_cpu:.0f} CPU s for all forward passes of the reference attacks\n"
    )
    print(
        f"| attack | AUC | TPR @ 0.1% FPR [95% CI] | TPR @ 1% FPR [95% CI] | "
        f"eps lower (95% joint, each {1 - each:.1%}) | models |"
    )
    print("|---|---|---|---|---|---|")
    for name, (sm, sn) in scores.items():
        cost = {"reference_models": args.k, "queries": 2} if name in ref_scores else {}
        r = score_attack(name, sm, sn, delta=1e-5, alpha=each, seed=args.seed, **cost)
        lo1, hi1 = r.tpr_ci["0.001"]
        lo2, hi2 = r.tpr_ci["0.01"]
        print(
            f"| {name} | {r.auc:.4f} | {r.tpr['0.001']:.4f} [{lo1:.3f}, {hi1:.3f}] | "
            f"{r.tpr['0.01']:.4f} [{lo2:.3f}, {hi2:.3f}] | {r.epsilon['eps_lower']:.3f} | "
            f"{r.reference_models} |"
        )
    print(f"\ntotal {time.process_time() - cpu0:.0f} CPU s ({args.threads} thread(s))")
    if args.dp:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
