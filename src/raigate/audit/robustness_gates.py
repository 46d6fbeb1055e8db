"""Robustness gates: a minimum robust accuracy per attack, norm and ε, and a minimum
certified accuracy at an L2 radius, decided as statistical statements on the sample.

Without a gate the robustness check only says whether the attacks were *sound* (the
gradient-masking findings of :mod:`raigate.audit.robustness_findings`); its verdict then
carries the scope :data:`NOT_GATED`, so no report shows a bare PASS for robustness.

**Rules.** One rule per gate, in the plan or on the command line, in the same words::

    min_robust_accuracy = [{attack = "pgd", norm = "linf", eps = "8/255", min = 0.4},
                           "smoothed:pgd:linf:8/255=0.5"]      # the CLI form works too
    min_certified_accuracy = [{radius = 0.25, min = 0.6}, "0.5=0.3"]

    --min-robust-accuracy pgd:linf:8/255=0.4   --min-certified-accuracy 0.25=0.6

A robust-accuracy rule gates the ``attacks`` row of that model (``base``, the default, or
``smoothed``), attack, norm and ε; a rule naming something the run does not measure is a
configuration error before any attack runs. A certified-accuracy rule gates CERTIFY's
certified accuracy at that radius (Cohen et al. 2019) and needs smoothing with certification.

**Decision** (:func:`decide`). For each of the ``m`` gates of the check, the accuracy's
two-sided exact Clopper–Pearson interval (Clopper & Pearson 1934) at confidence
``1 - gate_alpha/m`` (Bonferroni over the gates) is compared with the rule's minimum:

* FAIL when the whole interval lies below the minimum;
* WARN when it straddles the minimum (the sample cannot tell);
* PASS when the whole interval lies at or above it.

Each interval misses its true value on a given side with probability at most
``gate_alpha/(2m)`` for every n and accuracy, so the chance that *any* gate FAILs while
every true accuracy meets its minimum is at most ``gate_alpha/2`` (≤ ``gate_alpha``), and
likewise for a PASS whose true accuracy is below its minimum. The "true accuracy" is that
of the population the data was sampled from, under this attack with these settings.

What the numbers bound: accuracy under an attack is an **upper** bound on the true robust
accuracy (a stronger attack could find more), so PASS means "this attack did not push the
accuracy below the minimum", never "robust"; certified accuracy is a **lower** bound on the
smoothed model's accuracy under any L2 perturbation within the radius (each certificate
holds with probability at least ``1 - alpha`` of CERTIFY).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy.stats import beta as beta_dist

from raigate.results import Finding
from raigate.stats import clopper_pearson
from raigate.values import Fraction

NOT_GATED = "attack soundness checked; robustness not gated"
"""The verdict scope of a robustness check with no robustness gate."""

SEVERITIES = ("pass", "warn", "fail")
INTERVAL = "two-sided exact Clopper-Pearson"
ADJUSTMENT = "Bonferroni over the m robustness gates of the check"
_MODELS = ("base", "smoothed")
_NORM_TEXT = {"linf": "L-inf", "l2": "L2"}

__all__ = [
    "NOT_GATED",
    "CertifiedAccuracyRule",
    "RobustAccuracyRule",
    "check_certified_rules",
    "check_robust_rules",
    "decide",
    "detectable_shortfall",
    "gate_findings",
    "match_eps",
]


def _text(x: float) -> str:
    """``8/255`` for whole 1/255 steps, else the shortest float text."""
    k = x * 255
    if 0 < x < 1 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{x:g}"


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{field}: {msg}" if field else msg


class RobustAccuracyRule(BaseModel):
    """Gate: accuracy under ``attack`` at ``norm``/``eps`` on ``model`` is at least ``min``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attack: str = Field(description="fgsm, pgd, square, hsj or art:NAME (one of the run's attacks)")
    norm: Literal["linf", "l2"]
    eps: Fraction = Field(ge=0, description="a budget of the run's eps list; 8/255 strings allowed")
    min: Fraction = Field(ge=0, le=1, description="minimum accuracy under the attack")
    model: Literal["base", "smoothed"] = Field(
        "base", description="base: the audited model; smoothed: the randomized-smoothing defense"
    )

    @classmethod
    def from_text(cls, text: str) -> RobustAccuracyRule:
        """``[base:|smoothed:]ATTACK:NORM:EPS=MIN``, e.g. ``pgd:linf:8/255=0.4`` or
        ``smoothed:art:SquareAttack:l2:0.5=0.3``; ValueError says what is missing."""
        lhs, eq, rhs = text.strip().rpartition("=")
        parts = [p.strip() for p in lhs.split(":")] if eq else []
        model = parts.pop(0) if parts and parts[0] in _MODELS else "base"
        if len(parts) < 3 or not all(parts) or not rhs.strip():
            raise ValueError(
                f"{text!r} is not ATTACK:NORM:EPS=MIN (e.g. pgd:linf:8/255=0.4, optionally "
                "prefixed smoothed: for the smoothed model)"
            )
        try:
            return cls(
                attack=":".join(parts[:-2]), norm=parts[-2], eps=parts[-1], min=rhs, model=model
            )
        except ValidationError as exc:
            raise ValueError(f"{text!r}: {_one_line(exc)}") from None

    @property
    def text(self) -> str:
        """The rule in its command-line form (the model prefix only when smoothed)."""
        prefix = "" if self.model == "base" else f"{self.model}:"
        return f"{prefix}{self.attack}:{self.norm}:{_text(self.eps)}={self.min:g}"

    @property
    def key(self) -> tuple[str, str, str, float]:
        return (self.model, self.attack, self.norm, self.eps)


class CertifiedAccuracyRule(BaseModel):
    """Gate: certified accuracy (CERTIFY) at L2 ``radius`` is at least ``min``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    radius: Fraction = Field(ge=0, description="L2 radius in pixel units of [0,1] images")
    min: Fraction = Field(ge=0, le=1, description="minimum certified accuracy at the radius")

    @classmethod
    def from_text(cls, text: str) -> CertifiedAccuracyRule:
        """``RADIUS=MIN``, e.g. ``0.25=0.6``."""
        radius, eq, minimum = text.strip().partition("=")
        if not eq or not radius.strip() or not minimum.strip():
            raise ValueError(f"{text!r} is not RADIUS=MIN (e.g. 0.25=0.6)")
        try:
            return cls(radius=radius, min=minimum)
        except ValidationError as exc:
            raise ValueError(f"{text!r}: {_one_line(exc)}") from None

    @property
    def text(self) -> str:
        return f"{self.radius:g}={self.min:g}"


def coerce_rules(cls: type[Any], values: Any) -> list[Any]:
    """Plan or API values to rule objects: each entry a table/dict, a rule, or the CLI's
    ``"..."`` form (so a plan accepts whatever the command line accepts)."""
    if values is None:
        return []
    if isinstance(values, str):  # one rule, as one --min-... option gives it
        values = [values]
    if not isinstance(values, list | tuple):
        raise ValueError('give a list of rules, e.g. [{...}, ...] or ["..."]')
    return [cls.from_text(v) if isinstance(v, str) else v for v in values]


def match_eps(eps: float, measured: Iterable[float]) -> float | None:
    """The measured ε equal to ``eps`` up to float text round-off (``0.0314`` is not
    ``8/255``; ``0.03137254901960784`` is), or None."""
    for m in measured:
        if math.isclose(eps, m, rel_tol=1e-9, abs_tol=1e-12):
            return m
    return None


def check_robust_rules(
    rules: Sequence[RobustAccuracyRule],
    *,
    attacks: Sequence[str],
    norms: Sequence[str],
    eps: Sequence[float],
    smoothing: bool,
    base_only: Sequence[str] = (),
) -> list[RobustAccuracyRule]:
    """The rules with ε snapped to the measured value; ValueError names a rule that asks
    for a row this run will not measure, and what the run does measure. ``base_only``:
    attacks that run on the base model only (no smoothed rows)."""
    eps_list = ", ".join(_text(e) for e in eps)
    out: list[RobustAccuracyRule] = []
    seen: set[tuple[str, str, str, float]] = set()
    for r in rules:
        where = f"rule {r.text}"
        if r.attack not in attacks:
            raise ValueError(
                f"{where}: attack {r.attack} is not run (attacks: {', '.join(attacks)})"
            )
        if r.norm not in norms:
            raise ValueError(f"{where}: norm {r.norm} is not run (norms: {', '.join(norms)})")
        snapped = match_eps(r.eps, eps)
        if snapped is None:
            raise ValueError(f"{where}: eps {_text(r.eps)} is not measured (eps: {eps_list})")
        if r.model == "smoothed" and not smoothing:
            raise ValueError(f"{where}: no smoothed model without smoothing_sigma")
        if r.model == "smoothed" and r.attack in base_only:
            raise ValueError(f"{where}: {r.attack} attacks the base model only")
        r = r.model_copy(update={"eps": snapped})
        if r.key in seen:
            raise ValueError(f"{where}: given twice")
        seen.add(r.key)
        out.append(r)
    return out


def check_certified_rules(
    rules: Sequence[CertifiedAccuracyRule], *, certifies: bool, top: float, settings: str
) -> list[CertifiedAccuracyRule]:
    """The rules, checked against what certification can measure: ``certifies`` (smoothing
    with CERTIFY on) and ``top``, the largest radius CERTIFY can give at ``settings``
    (beyond it certified accuracy is 0 whatever the model, so such a gate tests nothing)."""
    if rules and not certifies:
        raise ValueError(
            f"rule {rules[0].text} gates certified accuracy, which needs smoothing_sigma "
            "(--smoothing-sigma) with certification on"
        )
    radii = [r.radius for r in rules]
    for r in rules:
        if r.radius > top and r.min > 0:
            raise ValueError(
                f"rule {r.text}: radius {r.radius:g} cannot be certified with {settings} "
                f"(largest certifiable radius {top:.4f}); raise certify_n or gate a smaller "
                "radius"
            )
        if radii.count(r.radius) > 1:
            raise ValueError(f"rule {r.text}: radius {r.radius:g} given twice")
    return list(rules)


def decide(
    successes: np.ndarray | int, n: np.ndarray | int, minimum: np.ndarray | float, alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Severity codes (0 pass, 1 warn, 2 fail; index :data:`SEVERITIES`) and the interval
    ``(lo, hi)`` at confidence ``1 - alpha`` (pass the Bonferroni-adjusted alpha/m).

    >>> codes, lo, hi = decide([10, 30, 50], [50, 50, 50], 0.6, 0.05)
    >>> [SEVERITIES[c] for c in codes]
    ['fail', 'warn', 'pass']
    """
    lo, hi = clopper_pearson(successes, n, alpha)
    minimum = np.asarray(minimum, dtype=np.float64)
    codes = np.where(hi < minimum, 2, np.where(lo >= minimum, 0, 1))
    return codes.astype(np.int64), lo, hi


def detectable_shortfall(
    n: np.ndarray | int, minimum: np.ndarray | float, alpha: float, power: float = 0.8
) -> np.ndarray:
    """How far below ``minimum`` the true accuracy must lie for the gate to FAIL with
    probability ``power`` at sample size ``n``: the gate's power, exactly (binomial, no
    simulation). NaN where no outcome at this n can FAIL (e.g. a minimum near 0).

    FAIL means k <= k_fail, the largest count whose interval lies below the minimum, and
    P(Bin(n, p) <= k) >= power exactly when p <= the ``1 - power`` quantile of
    Beta(k + 1, n - k)."""
    n_arr, min_arr = np.broadcast_arrays(np.asarray(n), np.asarray(minimum, dtype=np.float64))
    out = np.full(n_arr.shape, np.nan)
    for i in np.ndindex(n_arr.shape):
        size, mn = int(n_arr[i]), float(min_arr[i])
        k = np.arange(size + 1)
        _, hi = clopper_pearson(k, size, alpha)
        fails = np.flatnonzero(hi < mn)
        if fails.size and fails[-1] < size:
            out[i] = mn - float(beta_dist.ppf(1 - power, fails[-1] + 1, size - fails[-1]))
        elif fails.size:
            out[i] = 0.0
    return out


_RELATION = {"fail": "lies wholly below", "warn": "straddles", "pass": "lies at or above"}
_BOUND = {
    "robust_accuracy": "accuracy under an attack is an upper bound on true robust accuracy (a "
    "stronger attack could lower it)",
    "certified_accuracy": "certified accuracy is a lower bound on the smoothed model's accuracy "
    "under any L2 perturbation within the radius (each certificate holds with probability "
    "1 - CERTIFY's alpha)",
}


def _cases(
    rules: Sequence[RobustAccuracyRule],
    cert_rules: Sequence[CertifiedAccuracyRule],
    rows: Sequence[Mapping[str, Any]],
    certified: Mapping[float, tuple[int, int]],
    cert_text: str,
) -> list[tuple[str, str, int, int, float, str]]:
    """(finding id, metric, successes, n, minimum, what was measured) per rule."""
    by_key = {(r["model"], r["attack"], r["norm"], r["eps"]): r for r in rows}
    cases = []
    for r in rules:
        row = by_key[r.key]
        what = "the base model" if r.model == "base" else "the smoothed model (EOT attack)"
        budget = row.get("query_budget")
        queries = (
            f" (at most {budget} queries per image; an upper bound on robust accuracy at "
            f"{budget} queries)"
            if budget
            else ""
        )
        cases.append(
            (
                f"robustness.min_robust_accuracy[{r.text.rpartition('=')[0]}]",
                "robust_accuracy",
                int(row["correct"]),
                int(row["n"]),
                r.min,
                f"{r.attack.upper()} {_NORM_TEXT[r.norm]} eps={_text(r.eps)} on {what}"
                f"{queries}: accuracy under attack is",
            )
        )
    for c in cert_rules:
        k, n = certified[c.radius]
        cases.append(
            (
                f"robustness.min_certified_accuracy[r={c.radius:g}]",
                "certified_accuracy",
                k,
                n,
                c.min,
                f"certified accuracy at L2 radius {c.radius:g} of the smoothed model "
                f"({cert_text}) is",
            )
        )
    return cases


def gate_findings(
    rules: Sequence[RobustAccuracyRule],
    cert_rules: Sequence[CertifiedAccuracyRule],
    rows: Sequence[Mapping[str, Any]],
    certified: Mapping[float, tuple[int, int]],
    *,
    alpha: float,
    cert_text: str,
) -> tuple[list[dict[str, Any]], list[Finding]]:
    """One ``gates`` record and one finding per rule. ``rows`` are the check's ``attacks``
    records (``correct`` of ``n``); ``certified`` maps each gated radius to (certified
    correctly, samples certified); ``cert_text`` names CERTIFY's settings for messages."""
    cases = _cases(rules, cert_rules, rows, certified, cert_text)
    if not cases:
        return [], []
    m = len(cases)
    each = alpha / m
    level = f"{100 * (1 - each):.4g}%"
    k, n, mins = (np.array([c[i] for c in cases]) for i in (2, 3, 4))
    codes, lo, hi = decide(k, n, mins, each)
    short = detectable_shortfall(n, mins, each)
    records: list[dict[str, Any]] = []
    findings: list[Finding] = []
    for i, (fid, metric, ki, ni, mn, say) in enumerate(cases):
        sev = SEVERITIES[codes[i]]
        power = (
            f"at n={ni} a FAIL is 80% likely once the true value is {short[i]:.3f} below the "
            "minimum"
            if np.isfinite(short[i])
            else f"at n={ni} no outcome can FAIL this minimum"
        )
        findings.append(
            Finding(
                id=fid,
                severity=sev,  # type: ignore[arg-type]
                metric=metric,
                value=ki / ni,
                threshold=mn,
                message=(
                    f"{say} {ki / ni:.4f} ({ki} of n={ni}); its {level} {INTERVAL} interval "
                    f"[{lo[i]:.4f}, {hi[i]:.4f}] (Bonferroni: alpha={alpha:g} over m={m} "
                    f"gate{'s' * (m > 1)}) "
                    f"{_RELATION[sev]} the minimum {mn:g}: {sev.upper()}; {_BOUND[metric]}; "
                    f"{power}"
                ),
            )
        )
        records.append(
            {
                "gate": fid,
                "metric": metric,
                "correct": ki,
                "n": ni,
                "accuracy": ki / ni,
                "min": mn,
                "confidence": 1 - each,
                "ci_low": float(lo[i]),
                "ci_high": float(hi[i]),
                "severity": sev,
                "shortfall_80": float(short[i]) if np.isfinite(short[i]) else None,
            }
        )
    return records, findings


def gate_params(rules: Sequence[Any], cert_rules: Sequence[Any], alpha: float) -> dict[str, Any]:
    """What ``params.gates`` of the result says about the rule (also in the docs)."""
    m = len(rules) + len(cert_rules)
    return {
        "m": m,
        "alpha": alpha,
        "alpha_per_gate": alpha / m if m else None,
        "interval": f"{INTERVAL}, confidence 1 - alpha/m per gate",
        "adjustment": ADJUSTMENT,
        "decision": "FAIL: whole interval below the minimum; WARN: it straddles the minimum; "
        "PASS: whole interval at or above it. P(any FAIL | every true accuracy >= its minimum) "
        "<= alpha/2",
        "bounds": "robust accuracy under an attack: upper bound on true robust accuracy; "
        "certified accuracy: lower bound (CERTIFY's alpha per sample)",
        "shortfall_80": "per gate: how far below the minimum the true value must be for a FAIL "
        "with probability 0.8 at this n (exact binomial)",
        "rules": [r.text for r in (*rules, *cert_rules)],
    }
