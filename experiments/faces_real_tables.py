"""Tables for docs/faces_real.md from the result.json files the experiment's CLI runs wrote.

The experiment itself is a sequence of raigate commands (listed in docs/faces_real.md);
this script only reads what they wrote and prints Markdown: overall accuracy, per race and
the worst race x gender group with Wilson intervals, and the largest accuracy gap per
attribute with its simultaneous interval from the fairness gates.

    python experiments/faces_real_tables.py DIR   (DIR holds fair2-*/ and priv2-*/ folders)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _cell(name: str) -> str:
    return name.replace("|", "\\|")  # race+gender names hold a '|'; escape it in tables


def _fmt(v: float, ci: list[float]) -> str:
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def fairness_row(label: str, path: Path) -> dict[str, Any]:
    m = json.loads((path / "result.json").read_text())["metrics"]
    groups = [g for g in m["by_group"] if not g["insufficient_data"]]
    race = {g["group"]: g for g in groups if g["attribute"] == "race"}
    rg = [g for g in groups if g["attribute"] == "race+gender"]
    worst = min(rg, key=lambda g: g["accuracy"])
    gaps = {
        s["attribute"]: s
        for s in m["summary"]
        if s["measure"] == "accuracy_difference" and s["attribute"] in ("race", "race+gender")
    }
    return {
        "label": label,
        "overall": _fmt(m["accuracy"], [m["accuracy_ci_low"], m["accuracy_ci_high"]]),
        "race": race,
        "worst": f"{_cell(worst['group'])} {_fmt(worst['accuracy'], worst['accuracy_wilson_ci'])}",
        "gap_race": gaps["race"],
        "gap_rg": gaps["race+gender"],
    }


def _gap(s: dict[str, Any]) -> str:
    return (f"{s['value']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}] "
            f"({_cell(s['group_low'])} vs {_cell(s['group_high'])}, {s['severity']})")  # fmt: skip


def main(root: Path) -> None:
    runs = [(label, root / name) for label, name in (
        ("(a) non-private", "fair2-baseline"), ("(c) DP-SGD ε=2", "fair2-dp"),
        ("(b) control: plain fine-tune, 2 epochs", "fair2-control"),
        ("(b) reweight over race", "fair2-reweight"), ("(b) Group DRO over race", "fair2-dro"),
        ("(b) threshold (equalized odds over race)", "fair2-threshold"),
        ("(d) non-private, balanced over race×gender", "fair2-bal-rg"),
        ("(d) DP ε=2 + balance over race×gender", "fair2-dpbal-rg"),
        ("(d) DP ε=2 + balance over race", "fair2-dpbal-r"),
        ("(d) DP ε=2 + threshold over race (held-out faces)", "fair2-dpthreshold"),
    ) if (root / name / "result.json").is_file()]  # fmt: skip
    rows = [fairness_row(label, path) for label, path in runs]
    print("| model | accuracy (n=3,000) | worst race×gender group | race gap | race×gender gap |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['overall']} | {r['worst']} | {_gap(r['gap_race'])} | "
              f"{_gap(r['gap_rg'])} |")  # fmt: skip
    names = list(rows[0]["race"])
    print("\n| model | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for r in rows:
        cells = [f"{r['race'][n]['accuracy']:.3f}" for n in names]
        print(f"| {r['label']} | " + " | ".join(cells) + " |")
    for name in ("priv2-baseline", "priv2-dp", "priv2-dpbal-rg"):
        p = root / name / "result.json"
        if p.is_file():
            m = json.loads(p.read_text())["metrics"]
            print(f"\n{name}: " + json.dumps({k: m[k] for k in m if not isinstance(m[k], list)}))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
