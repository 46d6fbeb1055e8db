"""Render an :class:`~raigate.results.AuditReport` for people and for CI: one
self-contained ``report.html`` (plots embedded, no network), ``model-card.md`` (Mitchell et
al. 2019 sections with Hugging Face front matter) and ``junit.xml`` (one test case per gate).

Rendering is generic over ``CheckResult``: scalar metrics become a summary table, every
table metric a table, every PNG artifact an embedded figure, so a new check shows up in the
report without touching this module. The HTML itself lives in jinja2 templates
(``reports/templates``), filled by :mod:`raigate.reports.html_report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from raigate.results import RANDOM_INIT_MARK, AuditReport, CheckResult

SEVERITIES = ("pass", "warn", "fail")

_TITLES = {
    "evaluate": "Accuracy",
    "fairness": "Bias (fairness across groups)",
    "robustness": "Robustness (adversarial attacks and certified defense)",
    "privacy": "Privacy (DP-SGD and membership leakage)",
    "explanations": "Explanations (attributions and their faithfulness)",
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "–"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _shown(model: dict[str, Any]) -> str:
    """A model's spec as a reader sees it: an untrained network says so, and so does a
    variant that predicts from the samples' sensitive attributes."""
    post = model.get("postprocess")
    needs = (
        f" (post-processed by {'+'.join(post.get('attributes', []))}: needs the sensitive "
        "attribute at prediction time)"
        if isinstance(post, dict)
        else ""
    )
    return f"{model.get('spec')}{RANDOM_INIT_MARK if model.get('random_init') else ''}{needs}"


def _worst(result: CheckResult) -> str:
    """The most severe gate of a check, as ``id = value (threshold t)``."""
    rank = {"pass": 0, "warn": 1, "fail": 2}
    if not result.findings:
        return "no gates"
    f = max(result.findings, key=lambda f: rank[f.severity])
    counts = {k: sum(g.severity == k for g in result.findings) for k in ("fail", "warn")}
    tally = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "all pass"
    worst = "" if f.severity == "pass" else f"; worst {f.id} = {_fmt(f.value)}"
    if worst and f.threshold is not None:
        # faithfulness gates compare with a random pixel order, not a chosen threshold
        what = "random baseline" if f.id.startswith("explanations.faithfulness.") else "threshold"
        worst += f" ({what} {_fmt(f.threshold)})"
    return f"{len(result.findings)} gates: {tally}{worst}"


def _robustness_line(result: CheckResult) -> str | None:
    """Clean accuracy and the strongest attack's, undefended and smoothed when both ran."""
    m = result.metrics
    clean = m.get("clean_accuracy")
    rows = m.get("smoothed_vs_base") or []
    base = [r for r in (m.get("attacks") or []) if r["model"] == "base" and r["attack"] != "clean"]
    if isinstance(rows, list) and rows and isinstance(clean, float | int):
        r = max(
            (r for r in rows if r["attack"] != "clean"),
            key=lambda r: (r["eps"] or 0, r["attack"] == "pgd"),
        )
        return (
            f"clean {clean:.3f}; under {r['attack'].upper()} {r['norm']} "
            f"eps={r['eps_text']}: {r['base_accuracy']:.3f} undefended, "
            f"{r['smoothed_accuracy']:.3f} with randomized smoothing (sigma={r['sigma']})"
        )
    if base and isinstance(clean, float | int):
        r = min(base, key=lambda r: r["accuracy"])
        budget = f", at most {r['query_budget']} queries" if r.get("query_budget") else ""
        return (
            f"clean {clean:.3f}; lowest under attack {r['accuracy']:.3f} "
            f"({r['attack'].upper()} {r['norm']} eps={r['eps_text']}{budget})"
        )
    return None


def headline(result: CheckResult) -> str:
    """One sentence with the check's key numbers, for readers who will not open the tables;
    every number also appears, with its definition, in the check's section."""
    m = result.metrics

    def num(key: str) -> float | None:
        v = m.get(key)
        return None if v is None or isinstance(v, list) else float(v)

    if result.check in ("evaluate", "fairness") and num("accuracy") is not None:
        text = (
            f"accuracy {num('accuracy'):.3f} (95% CI {num('accuracy_ci_low'):.3f}–"
            f"{num('accuracy_ci_high'):.3f}, n={m.get('n')})"
        )
        return text if result.check == "evaluate" else f"{text}; {_worst(result)}"
    if result.check == "robustness":
        text = _robustness_line(result)
        gates = [f for f in result.findings if f.id.startswith("robustness.min_")]
        if text and gates:
            worst = max(gates, key=lambda f: SEVERITIES.index(f.severity))
            text += (
                f"; {len(gates)} robustness gate(s), worst {worst.id} {worst.severity.upper()} "
                f"({_fmt(worst.value)} vs min {_fmt(worst.threshold)})"
            )
        if text:
            return text
    if result.check == "privacy" and num("auc") is not None:
        claimed = num("claimed_epsilon")
        return (
            f"membership inference AUC {num('auc'):.3f} (0.5 = chance); empirical epsilon "
            f">= {num('eps_lower'):.3f}"
            + (f" against a claimed {claimed:.3f}" if claimed is not None else ", no DP claim")
        )
    return _worst(result)


def _model_of(report: AuditReport, name: str) -> str:
    """The plan's name of the model check table ``name`` ran on (``model``: the primary)."""
    table = (report.plan.get("checks") or {}).get(name) or {}
    return str(table.get("model", "model"))


def _models_used(report: AuditReport, name: str) -> str:
    """The model a check table ran on, plus a variant it smoothed (robustness)."""
    on = _model_of(report, name)
    table = (report.plan.get("checks") or {}).get(name) or {}
    extra = table.get("smoothing_model")
    return f"{on} + {extra} (smoothed)" if extra else on


def render_html(report: AuditReport, bundle: Path, *, key_id: str | None = None) -> str:
    """One self-contained HTML page from the jinja2 templates in ``reports/templates``
    (autoescaped, plots embedded, no network). The first screen holds the verdict, what was
    audited, the signature status and one line per area; each area follows with its summary,
    key plot and gates, details collapsed. ``key_id``: the signing key's id when the bundle
    will be signed (the signature itself is made after this page is written)."""
    from raigate.reports.html_report import build_page

    return build_page(report, bundle, key_id=key_id)


def render_model_card(report: AuditReport, card: dict[str, Any]) -> str:
    """``model-card.md``: Mitchell et al. 2019's sections, Hugging Face front matter."""
    m, d = report.model, report.data
    unstated = "_Not stated in the audit plan (`[card]`); fill in before release._"
    lines = [
        "---",
        "library_name: pytorch",
        f"license: {card.get('license') or 'other'}",
        "tags:",
        "- image-classification",
        "- raigate-audit",
        "pipeline_tag: image-classification",
        "---",
        "",
        f"# Model card: `{_shown(m)}`",
        "",
        f"Generated by raigate {report.environment.get('raigate', '?')} on {report.created_at} "
        f"from a raigate audit (verdict **{report.verdict}**, gate policy fail_on="
        f"{report.fail_on}).",
        "",
        "## Model details",
        f"- Weights digest: `{m.get('digest')}` (sha256 over the weight tensors)",
        f"- Classes ({len(m.get('class_names', []))}): {', '.join(m.get('class_names', []))}",
        f"- Input: {'x'.join(map(str, m.get('input_shape', [])))} pixels in [0, 1]",
        f"- Parameters: {m.get('num_parameters', '?'):,}"
        if isinstance(m.get("num_parameters"), int)
        else "- Parameters: ?",
        f"- Owners: {card.get('owners') or unstated}",
        *(
            f"- Variant `{k}` audited alongside: `{_shown(v)}` (weights digest `{v.get('digest')}`)"
            for k, v in report.models.items()
        ),
        "",
        "## Intended use",
        card.get("intended_use") or unstated,
        "",
        "Out of scope: " + (card.get("out_of_scope_use") or unstated),
        "",
        "## Factors",
    ]
    attrs = [k for k in d.get("counts", {}) if k != "label"]
    lines.append(
        f"Groups examined: {', '.join(attrs)} (and intersections where the fairness check ran)."
        if attrs
        else "The evaluation data carries no group attributes."
    )
    lines += ["", "## Metrics"]
    for name, result in report.checks.items():
        on = _model_of(report, name)
        label = name if on == "model" else f"{name}` on variant `{on}"
        if result.verdict_scope:
            lines.append(f"- `{label}`: **{result.verdict_label}**")
        if result.mode == "black-box":
            lines.append(f"- `{label}`: audited **black-box** (queries only)")
        for f in result.findings:
            lines.append(f"- `{label}` · {f.id}: **{f.severity}** — {f.message}")
        if not result.findings:
            lines.append(f"- `{label}`: reported without gates (see report.html)")
    ev = report.checks.get("evaluate")
    lines += [
        "",
        "## Evaluation data",
        f"- `{d.get('spec')}`: {d.get('n')} samples, manifest `{d.get('manifest_digest')}`"
        + (" — **synthetic** built-in data" if d.get("synthetic") else ""),
        "",
        "## Training data",
        card.get("training_data") or unstated,
        "",
        "## Quantitative analyses",
    ]
    if ev is not None:
        lines.append(
            f"Clean accuracy {ev.metrics.get('accuracy', float('nan')):.4f} (95% Wilson CI "
            f"{ev.metrics.get('accuracy_ci_low', float('nan')):.4f}–"
            f"{ev.metrics.get('accuracy_ci_high', float('nan')):.4f}, n={ev.metrics.get('n')})."
        )
        per_attr = ev.metrics.get("per_attribute") or []
        if isinstance(per_attr, list) and per_attr:
            lines += ["", "| attribute | group | n | accuracy |", "|---|---|---|---|"]
            lines += [
                f"| {r['attribute']} | {r['value']} | {r['n']} | "
                f"{'–' if r['accuracy'] is None else format(r['accuracy'], '.4f')} |"
                for r in per_attr
            ]
    for name, result in report.checks.items():
        on = _model_of(report, name)
        if result.check != "evaluate" or on == "model":
            continue
        r = result.metrics
        lines += [
            "",
            f"Variant `{on}` (`{name}`): clean accuracy {r.get('accuracy', float('nan')):.4f} "
            f"(95% Wilson CI {r.get('accuracy_ci_low', float('nan')):.4f}–"
            f"{r.get('accuracy_ci_high', float('nan')):.4f}, n={r.get('n')}).",
        ]
    lines += [
        "",
        "Full tables per check are in report.html and report.json.",
        "",
        "## Ethical considerations",
    ]
    kinds = {r.check for r in report.checks.values()}
    if "fairness" not in kinds:
        lines.append("No fairness check was run in this audit; group disparities are not assessed.")
    else:
        lines.append("See the fairness findings above and the per-group tables in report.html.")
    lines += ["", "## Caveats and recommendations"]
    if d.get("synthetic"):
        lines.append("- The audit data is synthetic: results demonstrate the tooling only.")
    lines.append(
        "- Every number holds for the data and settings named in report.json; "
        "re-audit after retraining or when the deployment population changes."
    )
    missing = [c for c in ("fairness", "robustness", "privacy", "explanations") if c not in kinds]
    if missing:
        lines.append(f"- Not assessed in this audit: {', '.join(missing)}.")
    return "\n".join(lines) + "\n"


def render_junit(report: AuditReport) -> str:
    """JUnit XML: a test suite per check, a test case per gate; ``fail`` is a failure, and
    ``warn`` is one too under ``fail_on=warn``. A check whose verdict covers less than its
    name (``verdict_scope``: robustness without a robustness gate) gets one more test case,
    ``NAME.scope``, marked skipped with that scope as its message, so CI shows the area as
    not gated rather than passed."""
    suites = ET.Element("testsuites", name="raigate audit")
    total_fail = total_tests = total_skipped = 0
    for name, result in report.checks.items():
        cases = result.findings
        failing = [
            f
            for f in cases
            if f.severity == "fail" or (f.severity == "warn" and report.fail_on == "warn")
        ]
        scoped = int(result.verdict_scope is not None)
        total_fail += len(failing)
        total_tests += len(cases) + scoped
        total_skipped += scoped
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=name,
            tests=str(len(cases) + scoped),
            failures=str(len(failing)),
            errors="0",
            skipped=str(scoped),
            time=f"{result.timing_s:.3f}",
        )
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="verdict", value=result.verdict_label)
        if result.verdict_scope is not None:
            case = ET.SubElement(
                suite, "testcase", classname=f"raigate.{name}", name=f"{name}.scope", time="0"
            )
            ET.SubElement(case, "skipped", message=result.verdict_scope)
        for f in cases:
            case = ET.SubElement(
                suite, "testcase", classname=f"raigate.{name}", name=f.id, time="0"
            )
            if f in failing:
                fail = ET.SubElement(case, "failure", message=f.message, type=f.severity)
                fail.text = f"{f.metric}={f.value} threshold={f.threshold}"
            else:
                out = ET.SubElement(case, "system-out")
                out.text = f"[{f.severity}] {f.message}"
    suites.set("tests", str(total_tests))
    suites.set("failures", str(total_fail))
    suites.set("skipped", str(total_skipped))
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )
