"""The data behind ``report.html``: everything the templates in ``reports/templates`` show,
computed here so the templates hold layout only and a designer can edit the page without
reading Python.

Three rules shape the page. Paths are shown relative to the bundle (a report copied to
another machine must not name the auditor's disk). Plots are re-encoded for the page (at
most :data:`PLOT_WIDTH` pixels wide, a 128-colour palette, optimized PNG; an area's first
plot is its key plot, the others are smaller and collapsed): the signed files in
``checks/`` keep their full resolution, and the page stays small enough to mail (the demo's
under 1 MB). Detail tables are collapsed, so the printed page holds the decisions and the
tables stay one click away.
"""

from __future__ import annotations

import base64
import functools
import io
import os
from pathlib import Path
from typing import Any

from raigate.reports.gates import BADGE_COLORS, SEVERITY_ORDER, gate_row
from raigate.reports.render import (
    _TITLES,
    _fmt,
    _model_of,
    _models_used,
    _shown,
    headline,
)
from raigate.results import AuditReport, CheckResult

MAX_ROWS = 50
"""Rows shown per detail table; the rest are in report.json (the page states how many)."""
PLOT_WIDTH = 720
"""Widest key plot in pixels: readable on screen and on an A4 page."""
MORE_PLOT_WIDTH = 600
"""Widest of an area's further plots (collapsed): an overview; checks/ holds full size."""


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    """The jinja2 environment, built once: autoescape on for every template, so a class
    name or a data spec reaches the page as text, never as markup; undefined names raise
    instead of rendering empty."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("raigate.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.globals["badge_colors"] = BADGE_COLORS
    return env


def build_page(report: AuditReport, bundle: Path, *, key_id: str | None = None) -> str:
    """``report.html``'s text (see :func:`raigate.reports.render.render_html`)."""
    template = _environment().get_template("report.html.j2")
    return template.render(**page_context(report, bundle, key_id=key_id))


def relative(path: str, bundle: Path) -> str:
    """``path`` as seen from the bundle folder: relative when both are on one drive, else
    the file name alone (never an absolute local path)."""
    p = Path(path)
    if not p.is_absolute():
        p = Path.cwd() / p
    try:
        return Path(os.path.relpath(p.resolve(), bundle.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return p.name


def relative_spec(spec: str, bundle: Path) -> str:
    """A model or data spec with every absolute path in it made relative to the bundle
    (``fairface:/data/ff`` -> ``fairface:../data/ff``, ``/src/nets.py:build`` ->
    ``../src/nets.py:build``); other parts unchanged."""
    return ":".join(
        relative(part, bundle) if part.startswith("/") else part for part in spec.split(":")
    )


def table(
    records: list[dict[str, Any]], caption: str | None = None, *, bundle: Path | None = None
) -> dict[str, Any]:
    """A table for the templates: the union of the records' columns in first-seen order,
    cells formatted (with ``bundle``, absolute paths in text cells made relative to it), at
    most :data:`MAX_ROWS` rows with the remainder counted. A confusion matrix (``true``,
    ``predicted``, ``count`` records) becomes a grid."""
    cols: list[str] = []
    for r in records:
        cols += [c for c in r if c not in cols]
    if set(cols) == {"true", "predicted", "count"}:
        return _grid(records, caption)
    return {
        "caption": caption,
        "cols": cols,
        "rows": [[_cell(r.get(c), bundle) for c in cols] for r in records[:MAX_ROWS]],
        "more": max(0, len(records) - MAX_ROWS),
        "grid": False,
    }


def _cell(value: Any, bundle: Path | None) -> str:
    """A formatted cell; a text cell naming an absolute path shows it relative to the bundle."""
    if bundle is not None and isinstance(value, str) and "/" in value:
        return " ".join(relative_spec(word, bundle) for word in value.split(" "))
    return _fmt(value)


def _grid(records: list[dict[str, Any]], caption: str | None) -> dict[str, Any]:
    """A confusion matrix as rows of true classes and columns of predicted ones (0 where a
    pair never occurred: the records list only non-zero cells)."""
    trues = list(dict.fromkeys(str(r["true"]) for r in records))
    preds = list(dict.fromkeys(str(r["predicted"]) for r in records))
    count = {(str(r["true"]), str(r["predicted"])): r["count"] for r in records}
    return {
        "caption": caption or "rows: true class, columns: predicted class",
        "cols": ["true \\ predicted", *preds],
        "rows": [[t, *(_fmt(count.get((t, p), 0)) for p in preds)] for t in trues],
        "more": 0,
        "grid": True,
    }


def plot_uri(path: Path, *, width: int = PLOT_WIDTH, colors: int = 128) -> str:
    """A PNG as a data URI, re-encoded for the page: scaled to at most ``width`` pixels, a
    palette of ``colors`` (plots have few colours), optimized; the original bytes when they
    are smaller."""
    from PIL import Image

    raw = path.read_bytes()
    with Image.open(io.BytesIO(raw)) as im:
        rgb = im.convert("RGB")
    if rgb.width > width:
        height = max(1, round(rgb.height * width / rgb.width))
        rgb = rgb.resize((width, height), Image.Resampling.BOX)
    small = rgb.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=0)
    buf = io.BytesIO()
    small.save(buf, format="PNG", optimize=True)
    data = min(raw, buf.getvalue(), key=len)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _located(row: dict[str, Any], bundle: Path) -> dict[str, Any]:
    """A gate row whose sentence names paths relative to the bundle (a model's spec)."""
    return {**row, "message": _cell(row["message"], bundle)}


def _area_title(check: str) -> str:
    """The area's name in a release board's words (``Bias``, ``Robustness``)."""
    return _TITLES.get(check, check).split(" (")[0]


def _section(name: str, result: CheckResult, bundle: Path, on: str) -> dict[str, Any]:
    """One check table's section: summary, key plot, gates, then collapsed details."""
    title = _TITLES.get(result.check, result.check)
    if name != result.check:
        title += f" · {name}"
    pngs = [r for r in result.artifacts if r.lower().endswith(".png") and (bundle / r).is_file()]
    plots = [
        {
            "uri": plot_uri(bundle / rel)
            if i == 0
            else plot_uri(bundle / rel, width=MORE_PLOT_WIDTH, colors=64),
            "caption": rel,
        }
        for i, rel in enumerate(pngs)
    ]
    scalars = [
        {"metric": k, "value": v}
        for k, v in sorted(result.metrics.items())
        if not isinstance(v, list)
    ]
    mode = None
    if result.mode is not None:
        mode = {
            "name": result.mode,
            "how": "input gradients available: gradient attacks and attributions"
            if result.mode == "white-box"
            else "queries only: score- and decision-based attacks (upper bounds on robust "
            "accuracy at their query budget), perturbation explanations",
        }
    return {
        "name": name,
        "title": title,
        "verdict": result.verdict,
        "scope": result.verdict_scope,
        "check": result.check,
        "variant": None if on == "model" else on,
        "model": relative_spec(_shown(result.model.model_dump()), bundle),
        "digest": result.model.digest[:19],
        "data": relative_spec(result.data.spec, bundle),
        "synthetic": result.data.synthetic,
        "seed": result.seed,
        "timing": f"{result.timing_s:.1f}",
        "mode": mode,
        "summary": headline(result),
        "key_plot": plots[0] if plots else None,
        "more_plots": plots[1:],
        "gates": [_located(gate_row(f.model_dump(), name), bundle) for f in result.findings],
        "scalars": table(scalars) if scalars else None,
        "tables": [
            {"key": k, "table": table(v, bundle=bundle)}
            for k, v in sorted(result.metrics.items())
            if isinstance(v, list)
        ],
        "files": [a for a in result.artifacts if not a.lower().endswith(".png")],
        "params": table(
            [{"param": k, "value": v} for k, v in sorted(result.params.items())], bundle=bundle
        ),
    }


def _audited(report: AuditReport, bundle: Path) -> dict[str, Any]:
    """What was audited, for the first screen: model files and digest, data and manifest."""
    m, d = report.model, report.data
    return {
        "model": relative_spec(_shown(m), bundle),
        "model_digest": m.get("digest"),
        "model_files": [
            {"path": relative(f["path"], bundle), "sha256": f.get("sha256")}
            for f in m.get("files", [])
        ],
        "data": relative_spec(str(d.get("spec")), bundle),
        "n": d.get("n"),
        "manifest_digest": d.get("manifest_digest"),
        "synthetic": bool(d.get("synthetic")),
    }


def page_context(report: AuditReport, bundle: Path, *, key_id: str | None) -> dict[str, Any]:
    """Every value the templates show, computed up front."""
    m, d = report.model, report.data
    areas = [
        {
            "name": name,
            "title": _area_title(r.check),
            "model": _models_used(report, name),
            "verdict": r.verdict,
            "scope": r.verdict_scope,
            "line": headline(r),
        }
        for name, r in report.checks.items()
    ]
    details = [
        {"item": "classes", "value": ", ".join(m.get("class_names", []))},
        {"item": "input shape", "value": "x".join(map(str, m.get("input_shape", [])))},
        {"item": "deployed preprocessing", "value": m.get("pipeline", "-")},
        {"item": "mode", "value": m.get("mode", "white-box")},
        *(
            {
                "item": f"variant {k}",
                "value": f"{relative_spec(_shown(v), bundle)} (digest {v.get('digest')})",
            }
            for k, v in report.models.items()
        ),
    ]
    env = report.environment
    gates = [_located(gate_row(g, g["check"]), bundle) for g in report.gates]
    return {
        "title": relative_spec(str(m.get("spec")), bundle),
        "created_at": report.created_at,
        "raigate": str(env.get("raigate", "?")),
        "seed": report.seed,
        "verdict": report.verdict,
        "fail_on": report.fail_on,
        "status": "PASSED" if report.passed else "FAILED",
        "audited": _audited(report, bundle),
        "signature": {"key_id": key_id, "folder": bundle.name or "."},
        "areas": areas,
        "gates": gates,
        "gate_counts": {s: sum(g["severity"] == s for g in gates) for s in SEVERITY_ORDER},
        "details": table(details, bundle=bundle),
        "sections": [
            _section(name, r, bundle, _model_of(report, name)) for name, r in report.checks.items()
        ],
        "compliance": table(
            bundle=bundle,
            records=[{k: v for k, v in r.items() if k != "gates"} for r in report.compliance],
        ),
        "env": table(
            [
                {"item": k, "value": env.get(k)}
                for k in ("python", "platform", "device", "torch_threads", "cuda_available")
            ]
        ),
        "packages": table(
            [{"package": k, "version": v} for k, v in sorted(env.get("packages", {}).items())]
        ),
        "samples": d.get("n"),
    }
