"""How often do raigate's fairness gates fail a fair model, and how often do they catch an
unfair one? Measured by simulation, beside the rule they replaced.

Each simulated audit has 14 race x gender groups (FairFace's 7 races x 2 genders) of ``n``
faces, half of each group labelled 1; a prediction is right with its group's true accuracy
whatever the label, so selection rates, TPR and FPR are equal across groups exactly when
accuracies are. The audit is what ``raigate fairness --sensitive race,gender
--intersections race+gender`` decides after predicting (:func:`raigate.audit.fairness.analyse`,
default thresholds, alpha 0.05, B = 1000).

``extremes`` is the rule raigate used before: take the best and worst group by point
estimate, bootstrap that pair as if it had been chosen in advance, fail when its percentile
interval lies above the threshold (re-implemented here on the same replicates).

    python experiments/fairness_gate_simulation.py [--runs 1000] [--out docs/fairness_gates.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from raigate._io import write_atomic
from raigate.audit import fairness
from raigate.audit import fairness_stats as fs
from raigate.data.fairface import RACES

COLUMNS = [("race",), ("gender",), ("race", "gender")]
SCENARIOS: list[tuple[str, list[float], int]] = [
    ("fair: 14 groups at 0.85, n=40", [0.85] * 14, 40),
    ("fair: 14 groups at 0.85, n=80", [0.85] * 14, 80),
    ("fair: 14 groups at 0.85, n=3000", [0.85] * 14, 3000),
    ("fair: 14 groups at 0.85, n=6000", [0.85] * 14, 6000),
    ("at the threshold: 7 groups at 0.85, 7 at 0.80, n=40", [0.85, 0.80] * 7, 40),
    ("at the threshold: 7 groups at 0.85, 7 at 0.80, n=200", [0.85, 0.80] * 7, 200),
    ("one group 0.40 worse (0.45), n=80", [0.85] * 5 + [0.45] + [0.85] * 8, 80),
    ("one group 0.20 worse (0.65), n=80", [0.85] * 5 + [0.65] + [0.85] * 8, 80),
    ("one group 0.20 worse (0.65), n=200", [0.85] * 5 + [0.65] + [0.85] * 8, 200),
    ("one group 0.10 worse (0.75), n=500", [0.85] * 5 + [0.75] + [0.85] * 8, 500),
]


def draw(acc: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    g = len(acc)
    group = np.repeat(np.arange(g), n)
    y = np.tile(np.arange(n) % 2, g)
    pred = np.where(rng.random(g * n) < acc[group], y, 1 - y)
    return y, pred, group


def extremes_rule(a: fairness.Analysis, params: fairness.FairnessParams) -> bool:
    """The replaced rule, accuracy and equalized odds, on the analysis' own replicates."""
    th = params.thresholds
    for s in a.stats:
        series = [(s.point["accuracy"], s.boot["accuracy"], th.accuracy_difference)]
        if not s.label_defined:
            for c in range(2):
                for rate in ("tpr", "fpr"):
                    series.append(
                        (s.point[rate][:, c], s.boot[rate][:, :, c], th.equalized_odds_difference)
                    )
        for values, reps, t in series:
            ok = np.flatnonzero(s.eligible & np.isfinite(values))
            if ok.size < 2:
                continue
            lo, hi = ok[np.argmin(values[ok])], ok[np.argmax(values[ok])]
            low, _ = fs.percentile_interval(reps[:, hi] - reps[:, lo], params.alpha)
            if low > t:
                return True
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    print(f"{'scenario':58} {'fail':>6} {'warn':>6} {'pass':>6} {'extremes fail':>14}")
    for name, acc, n in SCENARIOS:
        t0 = time.perf_counter()
        rng = np.random.default_rng(2026)
        counts = {"fail": 0, "warn": 0, "pass": 0}
        old = 0
        for r in range(args.runs):
            y, pred, group = draw(np.array(acc), n, rng)
            attrs = pd.DataFrame(
                {
                    "race": pd.Categorical.from_codes(group // 2, RACES),
                    "gender": pd.Categorical.from_codes(group % 2, ["Male", "Female"]),
                }
            )
            params = fairness.FairnessParams(progress=False, plots=False, seed=r)
            a = fairness.analyse(y, pred, attrs, COLUMNS, ["0", "1"], params)
            counts[a.verdict] += 1
            old += extremes_rule(a, params)
        share = {k: v / args.runs for k, v in counts.items()}
        rows.append({"scenario": name, "n_per_group": n, "runs": args.runs, **share,
                     "extremes_rule_fail": old / args.runs,
                     "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
        print(
            f"{name:58} {share['fail']:6.3f} {share['warn']:6.3f} {share['pass']:6.3f} "
            f"{old / args.runs:14.3f}",
            flush=True,
        )
    if args.out:
        write_atomic(args.out, json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
