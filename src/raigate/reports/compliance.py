"""Which clauses each check's evidence speaks to. References for a reviewer, not legal
advice: a mapping says "this test produces evidence relevant to that clause", never that
the clause is satisfied.

Sources: Regulation (EU) 2024/1689 (AI Act) Art. 10(2)(f), Art. 15 and Annex IV 2(g);
NIST AI 100-1 AI RMF 1.0, MEASURE 2.5/2.7/2.9/2.10/2.11; ISO/IEC 42001:2023 Annex A.6.2.4.
"""

from __future__ import annotations

from typing import Any

CLAUSES: dict[str, str] = {
    "EU AI Act Annex IV 2(g)": (
        "validation and testing procedures; test logs and reports, dated and signed"
    ),
    "EU AI Act Art. 10(2)(f)": "examination of data sets in view of possible biases",
    "EU AI Act Art. 15": "accuracy, robustness and cybersecurity of high-risk AI systems",
    "NIST AI RMF MEASURE 2.5": "the AI system is demonstrated to be valid and reliable",
    "NIST AI RMF MEASURE 2.7": "AI system security and resilience are evaluated and documented",
    "NIST AI RMF MEASURE 2.9": "the AI model is explained, validated and documented",
    "NIST AI RMF MEASURE 2.10": "privacy risk of the AI system is examined and documented",
    "NIST AI RMF MEASURE 2.11": "fairness and bias are evaluated and results are documented",
    "ISO/IEC 42001 A.6.2.4": "AI system verification and validation",
}

# check name -> clauses its evidence is relevant to (every check is testing evidence,
# hence Annex IV 2(g) and ISO/IEC 42001 A.6.2.4 everywhere)
_BY_CHECK: dict[str, tuple[str, ...]] = {
    "evaluate": ("EU AI Act Art. 15", "NIST AI RMF MEASURE 2.5"),
    "fairness": ("EU AI Act Art. 10(2)(f)", "NIST AI RMF MEASURE 2.11"),
    "robustness": ("EU AI Act Art. 15", "NIST AI RMF MEASURE 2.7"),
    "privacy": ("EU AI Act Art. 15", "NIST AI RMF MEASURE 2.10"),
    "explanations": ("NIST AI RMF MEASURE 2.9",),
}
_ALWAYS = ("EU AI Act Annex IV 2(g)", "ISO/IEC 42001 A.6.2.4")


def clauses_for(check: str) -> list[str]:
    """Clause references for a check (unknown checks get the general testing clauses)."""
    return [*_BY_CHECK.get(check, ()), *_ALWAYS]


def compliance_table(gates: list[dict[str, Any]], checks: dict[str, str]) -> list[dict[str, Any]]:
    """One record per (clause, check table): which gates evidence it and their worst severity.

    ``checks`` maps each check table's name to the check it ran.
    A check with no gates still evidences its clauses (its tables are in the report); its
    status is ``"reported"``.
    """
    rank = {"pass": 0, "warn": 1, "fail": 2}
    rows: list[dict[str, Any]] = []
    for name, kind in checks.items():
        mine = [g for g in gates if g["check"] == name]
        worst = max(mine, key=lambda g: rank[g["severity"]])["severity"] if mine else "reported"
        for clause in clauses_for(kind):
            rows.append(
                {
                    "clause": clause,
                    "clause_text": CLAUSES[clause],
                    "check": name,
                    "gates": [g["id"] for g in mine],
                    "status": worst,
                }
            )
    return sorted(rows, key=lambda r: (r["clause"], r["check"]))
