"""Render an :class:`~raigate.results.AuditReport` for people and for CI: one
self-contained ``report.html`` (plots embedded, no network), ``model-card.md`` (Mitchell et
al. 2019 sections with Hugging Face front matter) and ``junit.xml`` (one test case per gate).

Rendering is generic over ``CheckResult``: scalar metrics become a summary table, every
table metric a table, every PNG artifact an embedded figure, so a new check shows up in the
report without touching this module.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from raigate.results import RANDOM_INIT_MARK, AuditReport, CheckResult

SEVERITIES = ("pass", "warn", "fail")

_MAX_ROWS = 200
_BADGE = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "reported": "#57606a"}
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


def _table(records: list[dict[str, Any]], caption: str | None = None) -> str:
    if not records:
        return "<p class='muted'>(empty)</p>"
    cols: list[str] = []
    for r in records:
        cols += [c for c in r if c not in cols]
    shown = records[:_MAX_ROWS]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
        for r in shown
    )
    more = (
        f"<p class='muted'>{len(records) - _MAX_ROWS} more rows in report.json</p>"
        if len(records) > _MAX_ROWS
        else ""
    )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _badge(severity: str) -> str:
    color = _BADGE.get(severity, "#57606a")
    return f"<span class='badge' style='background:{color}'>{html.escape(severity.upper())}</span>"


def _verdict(result: CheckResult) -> str:
    """The check's badge, followed by what it covers when that is less than its name says
    (robustness without a robustness gate): never a bare PASS for an ungated area."""
    scope = result.verdict_scope
    note = f" <span class='scope'>({html.escape(scope)})</span>" if scope else ""
    return _badge(result.verdict) + note


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


def _section(name: str, result: CheckResult, bundle: Path, on: str = "model") -> str:
    """One check table's section; ``on`` is the plan's name of the model it ran on."""
    title = _TITLES.get(result.check, result.check)
    if name != result.check:
        title += f" · {name}"
    parts = [
        f"<section id='check-{html.escape(name)}'><h2>{html.escape(title)} {_verdict(result)}</h2>"
    ]
    data_note = " — <strong>SYNTHETIC data</strong>" if result.data.synthetic else ""
    variant = "" if on == "model" else f"variant <strong>{html.escape(on)}</strong> "
    parts.append(
        f"<p class='muted'>check <code>{html.escape(result.check)}</code> on {variant}"
        f"<code>{html.escape(_shown(result.model.model_dump()))}</code> "
        f"({html.escape(result.model.digest[:19])}"
        f"…), data <code>{html.escape(result.data.spec)}</code>{data_note}, seed "
        f"{result.seed}, {result.timing_s:.1f}s</p>"
    )
    if result.mode is not None:
        how = (
            "input gradients available: gradient attacks and attributions"
            if result.mode == "white-box"
            else "queries only: score- and decision-based attacks (upper bounds on robust "
            "accuracy at their query budget), perturbation explanations"
        )
        parts.append(
            f"<p class='mode'>mode <strong>{html.escape(result.mode)}</strong> "
            f"<span class='muted'>({how})</span></p>"
        )
    if result.findings:
        items = "".join(
            f"<li>{_badge(f.severity)} <code>{html.escape(f.id)}</code> "
            f"{html.escape(f.message)}</li>"
            for f in result.findings
        )
        parts.append(f"<h3>Findings</h3><ul class='findings'>{items}</ul>")
    scalars = [
        {"metric": k, "value": v}
        for k, v in sorted(result.metrics.items())
        if not isinstance(v, list)
    ]
    if scalars:
        parts.append("<h3>Summary</h3>" + _table(scalars))
    for key, value in sorted(result.metrics.items()):
        if isinstance(value, list):
            parts.append(f"<h3>{html.escape(key)}</h3>" + _table(value))
    for rel in result.artifacts:
        path = bundle / rel
        if path.suffix.lower() == ".png" and path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img alt='{html.escape(rel)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(rel)}</figcaption></figure>"
            )
    other = [a for a in result.artifacts if not a.lower().endswith(".png")]
    if other:
        parts.append(
            "<p class='muted'>files: "
            + ", ".join(f"<code>{html.escape(a)}</code>" for a in other)
            + "</p>"
        )
    params = [{"param": k, "value": v} for k, v in sorted(result.params.items())]
    parts.append(
        "<details><summary>Parameters and definitions</summary>"
        + _table(params)
        + "</details></section>"
    )
    return "".join(parts)


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
        worst += f" (threshold {_fmt(f.threshold)})"
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


_CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;
padding:0 1rem;color:#1f2328}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.3rem;margin-top:2.5rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:13px;display:block;
max-width:100%;overflow-x:auto}
td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left}th{background:#f6f8fa}
.badge{color:#fff;border-radius:4px;padding:1px 7px;font-size:12px;font-weight:600}
.muted{color:#57606a}.verdict{font-size:1.4rem;margin:1rem 0}
figure{margin:1rem 0}img{max-width:100%;border:1px solid #d0d7de}
code{background:#f6f8fa;padding:0 3px;border-radius:3px}
.scope{color:#9a6700;font-size:13px;font-weight:600}
.synthetic{background:#fff8c5;border:1px solid #d4a72c;padding:.5rem 1rem;border-radius:6px}
"""


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


def _glance(report: AuditReport) -> str:
    rows = "".join(
        f"<tr><td><a href='#check-{html.escape(name)}'>"
        f"{html.escape(_TITLES.get(r.check, r.check).split(' (')[0])}</a></td>"
        f"<td><code>{html.escape(name)}</code></td><td>{html.escape(_models_used(report, name))}"
        f"</td><td>{_verdict(r)}</td><td>{html.escape(headline(r))}</td></tr>"
        for name, r in report.checks.items()
    )
    return (
        "<table><thead><tr><th>area</th><th>check</th><th>model</th><th>verdict</th>"
        f"<th>in one line</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def render_html(report: AuditReport, bundle: Path) -> str:
    """One self-contained HTML page: verdict first, then each area, then compliance."""
    m, d = report.model, report.data
    gate_rows = [
        {
            "check": g["check"],
            "gate": g["id"],
            "severity": g["severity"],
            "value": g["value"],
            "threshold": g["threshold"],
            "message": g["message"],
        }
        for g in report.gates
    ]
    status = "PASSED" if report.passed else "FAILED"
    synthetic = (
        "<p class='synthetic'>This audit ran on <strong>synthetic</strong> built-in data: "
        "the numbers demonstrate the tool, not the behaviour of a model on real people.</p>"
        if d.get("synthetic")
        else ""
    )
    body = [
        f"<h1>raigate audit report</h1><p class='muted'>created {html.escape(report.created_at)}"
        f" · raigate {html.escape(str(report.environment.get('raigate', '?')))} · seed "
        f"{report.seed}</p>",
        f"<div class='verdict' id='verdict'>Verdict: {_badge(report.verdict)} — gate policy "
        f"<code>fail_on={report.fail_on}</code>: <strong>{status}</strong></div>",
        synthetic,
        "<h2 id='glance'>At a glance</h2><p class='muted'>One line per check; the sections "
        "below give each number's definition, its tables and its caveats.</p>" + _glance(report),
        "<h2>Gates</h2>" + _table(gate_rows) if gate_rows else "<h2>Gates</h2><p>No gates.</p>",
        "<h2>What was audited</h2>"
        + _table(
            [
                {"item": "model", "value": _shown(m)},
                {"item": "model digest (sha256 over weight tensors)", "value": m.get("digest")},
                *(
                    {"item": f"variant {k}", "value": f"{_shown(v)} (digest {v.get('digest')})"}
                    for k, v in report.models.items()
                ),
                {"item": "classes", "value": ", ".join(m.get("class_names", []))},
                {"item": "input shape", "value": "x".join(map(str, m.get("input_shape", [])))},
                {"item": "deployed preprocessing", "value": m.get("pipeline", "-")},
                {"item": "mode", "value": m.get("mode", "white-box")},
                {"item": "data", "value": d.get("spec")},
                {"item": "samples", "value": d.get("n")},
                {"item": "data manifest digest", "value": d.get("manifest_digest")},
                {"item": "synthetic data", "value": d.get("synthetic")},
            ]
        ),
    ]
    for name, result in report.checks.items():
        body.append(_section(name, result, bundle, _model_of(report, name)))
    body.append(
        "<h2 id='compliance'>Compliance mapping</h2><p class='muted'>Each row says which "
        "clause a check's evidence is relevant to. References for reviewers, not legal "
        "advice and not a statement that a clause is met.</p>"
        + _table([{k: v for k, v in r.items() if k != "gates"} for r in report.compliance])
    )
    env = report.environment
    pkgs = [{"package": k, "version": v} for k, v in sorted(env.get("packages", {}).items())]
    body.append(
        "<h2>Environment</h2>"
        + _table(
            [
                {"item": k, "value": env.get(k)}
                for k in ("python", "platform", "device", "torch_threads", "cuda_available")
            ]
        )
        + _table(pkgs)
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>raigate audit: {html.escape(str(m.get('spec')))}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


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
