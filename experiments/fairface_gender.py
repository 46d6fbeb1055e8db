"""What raigate's fairness check says about a real model on real faces.

Trains a small gender classifier (``raigate.zoo.small_cnn``, BatchNorm, 32x32 input) on
2,000 of the 3,000 real FairFace validation faces in ``../shared/data/fairface-val3k``
(Kärkkäinen & Joo, WACV 2021; CC BY 4.0), then audits it on the other 1,000 with
``raigate.audit.fairness``, and writes the result, the plots and a Markdown summary to
``docs/fairface_gender/``. Seeded end to end; a few minutes on 2 CPU cores.

The split is a seeded random permutation of the 3,000 faces (first 2,000 train, last
1,000 audit), so the audit set has FairFace's own group mix, not a balanced one.

    python experiments/fairface_gender.py [--shared DIR] [--out docs/fairface_gender]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import raigate
from raigate._io import write_atomic
from raigate.audit import fairness
from raigate.data.base import Dataset
from raigate.models.base import Normalize
from raigate.training import fit
from raigate.zoo import small_cnn

REPO = Path(__file__).resolve().parents[1]


class InMemory(Dataset):
    """Training images decoded and resized once, kept as uint8: epochs do not re-read JPEGs."""

    def __init__(self, source: Dataset, size: int) -> None:
        super().__init__(
            spec=f"{source.spec} (train rows, cached {size}x{size})",
            labels=source.labels,
            class_names=source.class_names,
            attributes=source.attributes,
            task=source.task,
            native_size=(size, size),
        )
        view = source.resized((size, size))
        self._x = torch.stack(
            [(view[i][0] * 255).round().to(torch.uint8) for i in range(len(view))]
        )
        self._source = source

    def _read(self, row: int, size: tuple[int, int] | None) -> Tensor:
        return self._x[row].to(torch.float32) / 255.0

    def _manifest_files(self, rows: np.ndarray) -> list[dict[str, Any]]:
        return self._source.manifest.files


def flip_and_jitter(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random horizontal flip and +-10% brightness: cheap augmentation for 2,000 faces."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    scale = 1 + (torch.rand(x.shape[0], 1, 1, 1, generator=gen) - 0.5) * 0.2
    return (x * scale).clamp(0, 1)


def shared_dir(arg: str | None) -> Path:
    path = Path(arg or os.environ.get("RAIGATE_SHARED_DATA") or REPO.parent / "shared" / "data")
    if not (path / "fairface-val3k" / "fairface_label_val.csv").is_file():
        sys.exit(f"fairface-val3k not found under {path}; pass --shared or RAIGATE_SHARED_DATA")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", help="the shared data folder (holds fairface-val3k/)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "fairface_gender")
    ap.add_argument("--size", type=int, default=32, help="input size (pixels, square)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    root = shared_dir(args.shared) / "fairface-val3k"

    data = raigate.load_data(f"fairface:{root}:val", task="gender")
    order = np.random.default_rng(args.seed).permutation(len(data))
    train_rows, audit_rows = np.sort(order[: args.n_train]), np.sort(order[args.n_train :])
    train = InMemory(data.subset(train_rows), args.size)
    audit = data.subset(audit_rows)
    print(f"{len(train)} train / {len(audit)} audit real FairFace faces; caching took "
          f"{time.perf_counter() - start:.0f}s", flush=True)  # fmt: skip

    torch.manual_seed(args.seed)
    net = small_cnn(num_classes=2, norm="batch")
    report = fit(
        net,
        train,
        normalize=Normalize([0.5] * 3, [0.5] * 3),
        epochs=args.epochs,
        lr=2e-3,
        weight_decay=1e-4,
        batch_size=64,
        seed=args.seed,
        augment=flip_and_jitter,
        progress=sys.stderr.isatty(),
    )
    print(f"trained {args.epochs} epochs in {report.seconds:.0f}s, final train accuracy "
          f"{report.accuracies[-1]:.3f}", flush=True)  # fmt: skip
    model = raigate.wrap(
        net,
        class_names=data.class_names,
        input_shape=(3, args.size, args.size),
        mean=0.5,
        std=0.5,
    )
    model.spec = "raigate.zoo:small_cnn(norm=batch), trained by experiments/fairface_gender.py"

    params = fairness.FairnessParams(
        intersections=["race+gender", "race+gender+age"],
        n_boot=args.n_boot,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    out = args.out
    result = fairness.run(model, audit, params, out_dir=out)
    result.write(out)
    command = "python experiments/fairface_gender.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    text = summary_markdown(result, report, args, command.strip(), time.perf_counter() - start)
    write_atomic(out / "README.md", text)
    print(text)
    return 0


def _ci(ci: list[float | None] | None) -> str:
    if not ci or ci[0] is None:
        return "-"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _md(text: object) -> str:
    """A Markdown table cell: intersection groups are joined by '|', which ends a cell."""
    return str(text).replace("|", "\\|")


def _v(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def summary_markdown(
    result: Any, report: Any, args: argparse.Namespace, command: str, seconds: float
) -> str:
    m = result.metrics
    lines = [
        "# raigate fairness on real faces: a small gender classifier on FairFace",
        "",
        "Generated by `experiments/fairface_gender.py`; do not edit by hand. Command (from the",
        "repository root, with the shared data at `../shared/data`):",
        "",
        f"    {command}",
        "",
        f"* **Data**: {m['n']} real FairFace validation "
        f"faces audited (`fairface-val3k`, the {m['n']} not used for training; seeded split, "
        f"seed {args.seed}); manifest `{result.data.manifest_digest}`.",
        f"* **Model**: `raigate.zoo.small_cnn` with BatchNorm, {args.size}x{args.size} input, "
        f"trained from scratch on the other {args.n_train} faces for {args.epochs} epochs "
        f"(Adam, flips and brightness jitter); final training accuracy "
        f"{report.accuracies[-1]:.3f}; weights digest `{result.model.digest}`.",
        f"* **Statistics**: {result.params['interval']}; {result.params['p_values']}; groups "
        f"with n < {result.params['min_group_size']} are reported, never gated.",
        f"* Runtime {seconds:.0f}s on this machine's CPU.",
        "",
        f"**Overall accuracy {m['accuracy']:.3f}** (95% CI [{m['accuracy_ci_low']:.3f}, "
        f"{m['accuracy_ci_high']:.3f}], n={m['n']}); verdict **{result.verdict}**.",
        "",
        "## Gates",
        "",
        f"One family of {m['gate_contrasts']} between-group contrasts; simultaneous 95% "
        f"intervals by bootstrap max-T (critical value {m['gate_critical_value']:.2f}); `p` is "
        "the gate's adjusted p-value (fail exactly when p <= 0.05); `detectable` is the gap "
        "(ratio) that would fail with 80% power.",
        "",
        "| attribute | measure | value | simultaneous 95% CI | p | detectable | threshold "
        "| groups (low / high) | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in m["summary"]:
        if r.get("note"):
            continue
        pair = f"{_md(r.get('group_low', '-'))} / {_md(r.get('group_high', '-'))}"
        if r.get("class"):
            rate = r.get("rate") if r.get("rate") in ("tpr", "fpr") else None
            pair += f" (class {r['class']}{', ' + rate.upper() if rate else ''})"
        p = r.get("p_value")
        p_text = "-" if p is None else (f"<{1 / m['n_boot']:.2g}" if p == 0 else f"{p:.2g}")
        lines.append(
            f"| {r['attribute']} | {r['measure']} | {_v(r['value'])} | {_ci(r['ci'])} | "
            f"{p_text} | {_v(r.get('detectable_gap_80'))} | "
            f"{'-' if r['threshold'] is None else r['threshold']} | {pair} | "
            f"{r['severity'] or '-'} |"
        )
    lines += [
        "",
        f"{m['n_comparisons']} pairwise accuracy comparisons (descriptive z-tests); "
        f"{m['comparisons_significant_holm']} significant after Holm's correction at 0.05. "
        f"{m['groups_insufficient']} of {m['groups']} groups have fewer than "
        f"{result.params['min_group_size']} samples ({m['groups_empty']} empty).",
        "",
        "## Accuracy by group",
        "",
        "| attribute | group | n | accuracy | 95% bootstrap CI | 95% Wilson CI | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in m["by_group"]:
        if r["attribute"] == "race+gender+age" or r["n"] == 0:
            continue
        note = "insufficient data" if r["insufficient_data"] else ""
        lines.append(
            f"| {r['attribute']} | {_md(r['group'])} | {r['n']} | {_v(r['accuracy'])} | "
            f"{_ci(r['accuracy_ci'])} | {_ci(r['accuracy_wilson_ci'])} | {note} |"
        )
    lines += [
        "",
        "(The race+gender+age groups are in `result.json`; most have fewer than 30 faces.)",
        "",
        "## Findings",
        "",
    ]
    lines += [f"* **{f.severity.upper()}** {f.message}" for f in result.findings]
    lines += [
        "",
        "Intervals and gates for every attribute are in `result.json` (`summary`, `disparities`,",
        "`comparisons`); per-sample predictions in `predictions.csv`.",
    ]
    lines += ["", "## Plots", ""]
    lines += [f"![{a}]({a})" for a in result.artifacts if a.endswith(".png")]
    lines += [
        "",
        "## Caveats",
        "",
        "* A small CNN trained on 2,000 faces is a weak model; this shows what the audit",
        "  reports about a real model on real faces, not how good gender classification can be.",
        "* FairFace's labels are annotators' perceptions of race, gender and age; a binary",
        "  gender label does not describe everyone.",
        "* Selection-rate ratios compare how often each group is *predicted* Female or Male,",
        "  which differs between groups whenever their label mix differs; read them beside",
        "  `base_rate` in `selection_rates`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
