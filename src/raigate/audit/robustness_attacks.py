"""Which attacks the robustness check runs on which model, and what query-only attacks
mean in its result.

A white-box model (input gradients) is attacked with FGSM and PGD by default; a black-box
one (an ONNX session, a served predictor: ``Model.mode == "black-box"``) can only be
queried, so its default is the score-based Square Attack, and an attack that needs
gradients is a configuration error that names the attacks that do work. ``square`` and
``hsj`` (HopSkipJump, decision-based) also run on white-box models, where a query-only
attack that beats the gradient attacks is a sign of masked gradients.

A query attack's accuracy is an upper bound on robust accuracy *at its query budget*: the
rows record the budget and the queries actually spent, and the check says so in a finding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raigate.attacks import BLACK_BOX_ATTACKS, DEFAULT_P_INIT, is_black_box
from raigate.audit.robustness_findings import eps_text
from raigate.errors import ConfigError
from raigate.results import Finding

GRADIENT_ATTACKS = ("fgsm", "pgd")
"""Native attacks that need input gradients."""
QUERY_ATTACKS = ("square", "hsj")
"""Native (square) and ART-run (hsj) attacks under the check's ``query_budget``."""
NATIVE_ATTACKS = (*GRADIENT_ATTACKS, *QUERY_ATTACKS)
DEFAULT_ATTACKS = {"white-box": ["fgsm", "pgd"], "black-box": ["square"]}
_NORM_TEXT = {"linf": "L-inf", "l2": "L2"}

Record = dict[str, Any]

__all__ = [
    "DEFAULT_ATTACKS",
    "GRADIENT_ATTACKS",
    "NATIVE_ATTACKS",
    "QUERY_ATTACKS",
    "attack_order",
    "check_attacks_for",
    "query_definitions",
    "query_findings",
    "query_only",
    "skipped_without_gradients",
]


def attack_order(name: str) -> int:
    """FGSM first (PGD counts the FGSM row's points among its candidates), then PGD, the
    query attacks, and ART's in the order given."""
    return NATIVE_ATTACKS.index(name) if name in NATIVE_ATTACKS else len(NATIVE_ATTACKS)


def query_only(name: str) -> bool:
    """Whether the attack only queries the model (no gradients)."""
    return name in QUERY_ATTACKS or (name.startswith("art:") and is_black_box(name))


def _query_only_names() -> str:
    return ", ".join([*QUERY_ATTACKS, *(f"art:{a}" for a in sorted(BLACK_BOX_ATTACKS))])


def check_attacks_for(attacks: Sequence[str], mode: str, model_name: str) -> None:
    """ConfigError, in one line, when a black-box model is given an attack that needs
    gradients."""
    if mode != "black-box":
        return
    bad = [a for a in attacks if not query_only(a)]
    if bad:
        raise ConfigError(
            f"{model_name} is a black-box model (queries only, no gradients): "
            f"{', '.join(bad)} cannot attack it; attacks that only query it: "
            f"{_query_only_names()}"
        )


def skipped_without_gradients(smoothing: bool) -> dict[str, str]:
    """What a black-box model's robustness result leaves out, and why (``params.skipped``)."""
    out = {
        "large_eps_check": "PGD at a huge eps needs input gradients",
        "masking.single_step": "compares FGSM with PGD, both gradient attacks",
        "masking.black_box": "compares query-only attacks with gradient attacks",
    }
    if smoothing:
        out["smoothed_attacks"] = (
            "the EOT attacks on the smoothed model need gradients; its PREDICT and CERTIFY "
            "rows only query the base model and still run"
        )
    return out


def query_definitions(attacks: Sequence[str], budget: int, seed: int) -> dict[str, str]:
    """``params.definitions`` entries for the query attacks that ran."""
    bound = f"accuracy under it is an upper bound on robust accuracy at {budget} queries per image"
    d: dict[str, str] = {}
    if "square" in attacks:
        d["square"] = (
            "Square Attack (Andriushchenko et al. 2020), score-based random search on the "
            "margin of log-probabilities (native; the reference implementation's p schedule, "
            f"p_init {DEFAULT_P_INIT['linf']:g} linf / {DEFAULT_P_INIT['l2']:g} l2, seed {seed}), "
            f"at most {budget} queries per image, "
            f"stopping at the first misclassification; base model only; {bound}"
        )
    if "hsj" in attacks:
        d["hsj"] = (
            "HopSkipJump (Chen et al. 2020) through ART, decision-based, minimal perturbation; "
            f"at most {budget} queries per image, counted by an oracle that refuses any more "
            "(ART's max_iter, max_eval and init_eval follow from the budget: "
            "raigate.attacks.hsj_schedule; start: the nearest batch image of another class, "
            "else a random one); one run per norm serves every eps: a sample is "
            "broken at eps when the closest misclassified point found lies within eps, else "
            f"the clean image is kept; base model only; {bound}"
        )
    if d:
        d["queries"] = (
            "queries_mean / queries_max: images sent to the model per audited image by the "
            "row's attack, its clean query included; query_budget: the most it may send"
        )
    return d


def query_findings(rows: Sequence[Record], budget: int) -> list[Finding]:
    """One finding per query attack: queries spent and the bound its accuracy gives."""
    out: list[Finding] = []
    for attack in QUERY_ATTACKS:
        mine = [r for r in rows if r["model"] == "base" and r["attack"] == attack]
        if not mine:
            continue
        low = min(mine, key=lambda r: r["accuracy"])
        mean = max(r["queries_mean"] for r in mine)
        top = max(r["queries_max"] for r in mine)
        out.append(
            Finding(
                id=f"robustness.query_budget.{attack}",
                severity="pass",
                metric="queries_max",
                value=float(top),
                threshold=float(budget),
                message=(
                    f"{attack.upper()} (queries only) spent at most {top} of its {budget} "
                    f"queries per image (mean up to {mean:.1f} over its rows); its lowest "
                    f"accuracy, {low['accuracy']:.4f} at {_NORM_TEXT[low['norm']]} "
                    f"eps={eps_text(low['eps'])} (n={low['n']}), is an upper bound on robust "
                    f"accuracy at {budget} queries: more queries or a white-box attack can "
                    "only find more"
                ),
            )
        )
    return out
