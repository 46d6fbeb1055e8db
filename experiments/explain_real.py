"""Are the attribution maps of a real, trained CIFAR-10 ResNet-20 faithful and sane?

Runs raigate's explanations check (:mod:`raigate.audit.explanations`) on the public
ResNet-20 of akamaster/pytorch_resnet_cifar10 (``../shared/data/weights``, BSD-2-Clause)
and 200 real CIFAR-10 test images (``../shared/data/cifar10-test-jpg``, 20 per class, a
seeded stratified sample), with all five methods, and writes the result, the faithfulness
and sanity tables (Markdown) and the figures to ``docs/explain_real/``. Seeded end to end;
several minutes on 2 CPU cores.

Randomization tests only mean something on a trained model: this is the run that shows
which maps depend on what ResNet-20 learned.

    python experiments/explain_real.py [--shared DIR] [--out docs/explain_real]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

import raigate
from raigate._io import write_atomic
from raigate.audit import explanations

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "weights/akamaster_resnet20-12fca82f.th"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# Sized to stay under ~10 minutes on 2 shared CPU cores; every value is in result.json.
PARAMS: dict[str, Any] = {
    "n_samples": 200,
    "n_steps": 50,  # IG, Gauss-Legendre
    "smoothgrad_samples": 16,
    "smoothgrad_stdev": 0.15,
    "occlusion_window": 4,  # px on 32x32, non-overlapping: 64 occluded passes per image
    "occlusion_stride": 4,
    "curve_steps": 16,  # deletion/insertion: 64 pixels per step on 32x32
    "infidelity_perturbations": 8,  # square removal, 8x8 px squares (default for 32x32)
    "sensitivity_samples": 16,
    "sensitivity_perturbations": 4,
    "sanity_samples": 32,
    "sanity_layers": 5,
    "grid_samples": 10,
    "batch_size": 256,
    "seed": 0,
}


def shared_dir(arg: str | None) -> Path:
    path = Path(arg or os.environ.get("RAIGATE_SHARED_DATA") or REPO.parent / "shared" / "data")
    if not (path / "cifar10-test-jpg").is_dir() or not (path / WEIGHTS).is_file():
        sys.exit(
            f"cifar10-test-jpg or {WEIGHTS} not found under {path}; pass --shared or set "
            "RAIGATE_SHARED_DATA"
        )
    return path


def markdown(records: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else "**no**"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in records]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", help="shared real-data folder (default ../shared/data)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "explain_real")
    parser.add_argument("--n-samples", type=int, default=PARAMS["n_samples"])
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)
    shared = shared_dir(args.shared)
    torch.manual_seed(0)
    start = time.perf_counter()
    cpu_start = time.process_time()

    data = raigate.load_data(f"folder:{shared / 'cifar10-test-jpg'}")
    model = raigate.load_model(
        "raigate.zoo:resnet20", weights=shared / WEIGHTS, mean=MEAN, std=STD, data=data
    )
    params = explanations.ExplainParams(
        **{**PARAMS, "n_samples": args.n_samples}, progress=args.progress
    )
    result = explanations.run(model, data, params, out_dir=args.out)
    result.write(args.out)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start

    m = result.metrics
    faith_cols = [
        "method",
        "deletion_auc",
        "random_deletion_auc",
        "deletion_wilcoxon_p",
        "insertion_auc",
        "random_insertion_auc",
        "insertion_wilcoxon_p",
        "infidelity",
        "sensitivity_max",
    ]
    sanity_cols = ["method", "layer", "layers_randomized", "spearman", "spearman_std", "passed"]
    faith_md = markdown(m["faithfulness"], faith_cols)
    sanity_md = markdown(m["sanity"], sanity_cols)
    write_atomic(args.out / "faithfulness.md", faith_md)
    write_atomic(args.out / "sanity.md", sanity_md)

    deltas = [r["relative_delta"] for r in m["ig_delta"] if r["relative_delta"] is not None]
    deltas.sort()
    command = "python experiments/explain_real.py" + (
        f" --n-samples {args.n_samples}" if args.n_samples != PARAMS["n_samples"] else ""
    )
    settings = result.params["methods_settings"]
    alpha = params.alpha
    final = [r for r in m["sanity"] if r["all_randomized"]]
    beats_ins = [
        r["method"]
        for r in m["faithfulness"]
        if r["insertion_auc"] > r["random_insertion_auc"]
        and (r["insertion_wilcoxon_p"] or 1) < alpha
    ]
    beats_del = [
        r["method"]
        for r in m["faithfulness"]
        if r["deletion_auc"] < r["random_deletion_auc"] and (r["deletion_wilcoxon_p"] or 1) < alpha
    ]
    over = sum(1 for d in deltas if d > params.ig_delta_tolerance)
    summary = [
        f"- Sanity: {sum(r['passed'] for r in final)} of {len(final)} methods pass the "
        "cascading randomization test; Spearman after all layers are re-initialized: "
        + ", ".join(f"{r['method']} {r['spearman']:.3f}" for r in final)
        + f" (fail at >= {params.sanity_max_spearman}).",
        f"- Insertion: better than a random pixel order (p < {alpha}): "
        f"{', '.join(beats_ins) or 'none'}.",
        f"- Deletion: better than a random pixel order (p < {alpha}): "
        f"{', '.join(beats_del) or 'none'}.",
        f"- Integrated Gradients: {over} of {len(deltas)} images have a completeness gap above "
        f"{params.ig_delta_tolerance:g} of |f(x) - f(baseline)| at n_steps={params.n_steps}.",
    ]
    body = [
        "# Explanations of a real CIFAR-10 ResNet-20: faithful? sane?",
        "",
        f"Made by `{command}` (raigate {raigate.__version__}, {seconds / 60:.1f} min wall "
        f"clock, {cpu_seconds / 60:.1f} min of CPU time, {torch.get_num_threads()} torch "
        f"threads on {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the end "
        "from other jobs on the machine). Model: `raigate.zoo:resnet20` with the public "
        f"akamaster weights (`{WEIGHTS}`, digest `{result.model.digest}`), mean {MEAN}, "
        f"std {STD}. Data: {m['n']} real CIFAR-10 test JPEGs, a seeded sample stratified by "
        f"class (manifest `{result.data.manifest_digest}`). Target: the predicted class.",
        "",
        "Settings: "
        + ", ".join(f"{k}={v}" for k, v in PARAMS.items() if k != "n_samples")
        + "; per method: "
        + "; ".join(f"{name} {s}" for name, s in settings.items() if s)
        + "; insertion starts from a Gaussian blur with sigma "
        + f"{result.params['blur_sigma_px']:g} px.",
        "",
        "## Summary (computed from the tables below)",
        "",
        *summary,
        "",
        "## Faithfulness",
        "",
        "Deletion/insertion AUC of the target-class probability (Petsiuk et al. 2018) against "
        "a random pixel order on the same images; p: one-sided Wilcoxon signed-rank over the "
        f"{m['n']} images. Infidelity: Captum, square removal ("
        f"{result.params['infidelity_square_px']} px squares set to black), normalized, on all "
        "images. Max-sensitivity: "
        f"Captum, L-inf radius {result.params['sensitivity_radius']}, on the first "
        f"{min(params.sensitivity_samples, m['n'])} images.",
        "",
        faith_md,
        "## Sanity: cascading model-parameter randomization",
        "",
        "Mean Spearman correlation (over "
        f"{min(params.sanity_samples, m['n'])} images) between the absolute maps of the trained "
        "model and of a copy whose parameter layers are re-initialized from the top (`linear`) "
        f"down to `layer` (Adebayo et al. 2018). `passed`: below {params.sanity_max_spearman}.",
        "",
        sanity_md,
        "## Integrated Gradients completeness",
        "",
        f"|delta| / |f(x) - f(baseline)| over {len(deltas)} images: median "
        f"{deltas[len(deltas) // 2]:.2g}, worst {deltas[-1]:.2g}."
        if deltas
        else "(no Integrated Gradients rows)",
        "",
        "## Findings",
        "",
        *[f"- **{f.severity}** {f.message}" for f in result.findings],
        "",
        "## Figures",
        "",
        "![image + overlay per method](explanations_grid.png)",
        "",
        "![cascading randomization](sanity_cascade.png)",
        "",
    ]
    write_atomic(args.out / "README.md", "\n".join(body))
    print(faith_md)
    print(sanity_md)
    print(f"wrote {args.out} in {seconds:.0f}s; command: {shlex.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
