"""``mlbom.cdx.json``: the audit as a CycloneDX 1.6 ML-BOM, for supply-chain tools that read
CycloneDX rather than raigate's own report.

One ``machine-learning-model`` component per audited model (the plan's ``[model]`` and each
``[models.NAME]``), its hash the weights digest of ``report.json`` and one ``file``
sub-component per source file with that file's sha256, named as the attestation names it
(``models/model.safetensors``, relative to the plan's folder), so the attestation, the BOM
and ``report.json`` state the same digests. One ``data`` component per data set a check read
(the audited data, a privacy check's members, non-members and reference population), its
hash the data manifest digest. Each model's ``modelCard`` carries the audit's numbers
(``quantitativeAnalysis.performanceMetrics``, confidence intervals where the report has
them) from the check tables that ran on it, and ``considerations`` from the plan's ``[card]``
and the audit's own findings.

cyclonedx-python-lib (11.x) models components, hashes, licenses and metadata, but not
``modelCard`` or ``componentData`` (left as TODO in its ``Component``): those two are
added to the library's JSON output here, and the tests check the whole document against
the library's strict 1.6 JSON schema.

>>> import json, tempfile
>>> from raigate.audit.runner import run_audit
>>> from raigate.config import AuditPlan
>>> plan = AuditPlan.model_validate({"model": {"spec": "raigate.zoo:small_cnn",
...     "random_init": True}, "data": {"spec": "demo:test", "limit": 8},
...     "checks": {"evaluate": {"min_accuracy": 0.0}}})
>>> out = run_audit(plan, tempfile.mkdtemp(), progress=False, echo=lambda _: None)
>>> bom = json.loads(build_mlbom(out.report, plan))
>>> [c["type"] for c in bom["components"]]
['data', 'machine-learning-model']
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from raigate.config import PRIMARY, AuditPlan
from raigate.reports.bundle import model_subject_name, plan_folder
from raigate.results import AuditReport, CheckResult

__all__ = ["MLBOM_FILE", "SPEC_VERSION", "build_mlbom"]

MLBOM_FILE = "mlbom.cdx.json"
SPEC_VERSION = "1.6"
_TPR = re.compile(r"^tpr_at_fpr_[0-9.]+$")  # privacy attack rows: TPR at each low FPR
_PROP = "raigate:"  # CycloneDX property taxonomy prefix for raigate's own names

Metric = dict[str, Any]


def build_mlbom(report: AuditReport, plan: AuditPlan) -> str:
    """The ML-BOM of ``report`` as CycloneDX 1.6 JSON text (deterministic: the same report
    gives the same bytes; the serial number derives from its digests and time)."""
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.tool import ToolRepository
    from cyclonedx.output.json import JsonV1Dot6

    datasets = _datasets(report)
    models = {PRIMARY: report.model, **dict(sorted(report.models.items()))}
    card = plan.card.model_dump()
    components = [_data_component(d) for d in datasets.values()]
    components += [
        _model_component(name, described, plan_folder(plan), card if name == PRIMARY else {})
        for name, described in models.items()
    ]
    tool = Component(
        type=ComponentType.APPLICATION,
        name="raigate",
        version=str(report.environment.get("raigate") or "unknown"),
    )
    seed = f"{report.created_at}|{report.model.get('digest')}|{report.data.get('manifest_digest')}"
    bom = Bom(
        components=components,
        serial_number=uuid.uuid5(uuid.NAMESPACE_URL, "raigate-mlbom:" + seed),
        metadata=BomMetaData(
            tools=ToolRepository(components=[tool]),
            timestamp=datetime.fromisoformat(report.created_at.replace("Z", "+00:00")),
            properties=_properties(
                verdict=report.verdict,
                fail_on=report.fail_on,
                report="report.json",
                checks=", ".join(sorted(report.checks)),
            ),
        ),
    )
    doc = json.loads(JsonV1Dot6(bom).output_as_string())
    by_ref = {c["bom-ref"]: c for c in doc.get("components", [])}
    for ref, d in datasets.items():
        by_ref[ref]["data"] = [_component_data(d)]
    for name in models:
        refs = [ref for ref, d in datasets.items() if name in d["models"]]
        by_ref[_model_ref(name)]["modelCard"] = _model_card(
            report, name, refs, card if name == PRIMARY else {}
        )
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# -- components (cyclonedx-python-lib) ---------------------------------------------------------
def _model_ref(name: str) -> str:
    return f"model/{name}"


def _model_component(
    name: str, described: dict[str, Any], plan_dir: Path, card: dict[str, Any]
) -> Any:
    """A ``machine-learning-model`` component: the weights digest as its hash, each source
    file a ``file`` sub-component with its own sha256 (the attestation's subjects)."""
    from cyclonedx.contrib.license.factories import LicenseFactory
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.contact import OrganizationalContact

    files = [
        Component(
            type=ComponentType.FILE,
            name=model_subject_name(f["path"], plan_dir).split(":", 1)[1],
            bom_ref=f"{_model_ref(name)}/file/{i}",
            hashes=_hashes(f["sha256"]),
            properties=_properties(bytes=f.get("bytes")),
        )
        for i, f in enumerate(described.get("files") or [])
    ]
    role = "the audited model" if name == PRIMARY else f"variant [models.{name}]"
    return Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=str(described.get("spec")),
        bom_ref=_model_ref(name),
        description=f"{role} of the raigate audit plan",
        hashes=_hashes(described.get("digest")),
        components=files,
        licenses=[LicenseFactory().make_from_string(card["license"])]
        if card.get("license")
        else [],
        authors=[OrganizationalContact(name=card["owners"])] if card.get("owners") else [],
        properties=_properties(
            plan_name=name,
            digest_of="the weight tensors (raigate state_digest), not a file",
            source=described.get("source"),
            mode=described.get("mode"),
            random_init=described.get("random_init"),
            num_parameters=described.get("num_parameters"),
            pipeline=described.get("pipeline"),
        ),
    )


def _data_component(d: dict[str, Any]) -> Any:
    """A ``data`` component: the data manifest digest (over every file's sha256) as its hash."""
    from cyclonedx.model.component import Component, ComponentType

    return Component(
        type=ComponentType.DATA,
        name=d["spec"],
        bom_ref=d["ref"],
        description="; ".join(d["roles"]),
        hashes=_hashes(d["digest"]),
        properties=_properties(
            digest_of="the data manifest (every file with its sha256; data-manifest.json for "
            "the audited data)",
            n=d.get("n"),
            synthetic=d.get("synthetic"),
        ),
    )


def _hashes(digest: str | None) -> list[Any]:
    from cyclonedx.model import HashAlgorithm, HashType

    if not digest:
        return []
    return [HashType(alg=HashAlgorithm.SHA_256, content=digest.removeprefix("sha256:"))]


def _properties(**values: Any) -> list[Any]:
    """``raigate:NAME`` properties for the values that are set (booleans as true/false)."""
    from cyclonedx.model import Property

    return [
        Property(name=_PROP + k, value=json.dumps(v) if isinstance(v, bool) else str(v))
        for k, v in values.items()
        if v is not None and v != ""
    ]


# -- data sets ---------------------------------------------------------------------------------
def _datasets(report: AuditReport) -> dict[str, dict[str, Any]]:
    """Every data set the audit read, by bom-ref (one per manifest digest), with the roles it
    played and the plan models whose checks read it."""
    found: dict[str, dict[str, Any]] = {}

    def add(spec: Any, digest: Any, role: str, model: str, **extra: Any) -> None:
        if not spec or not digest:
            return
        ref = "data/" + str(digest).removeprefix("sha256:")
        entry = found.setdefault(
            ref, {"ref": ref, "spec": str(spec), "digest": digest, "roles": [], "models": []}
        )
        entry.update({k: v for k, v in extra.items() if v is not None and k not in entry})
        if role not in entry["roles"]:
            entry["roles"].append(role)
        if model not in entry["models"]:
            entry["models"].append(model)

    d = report.data
    attrs = sorted(k for k in d.get("counts", {}) if k != "label")
    add(
        d.get("spec"),
        d.get("manifest_digest"),
        "audited data (evaluation)",
        PRIMARY,
        n=d.get("n"),
        synthetic=d.get("synthetic"),
        attributes=attrs,
    )
    for name in sorted(report.models):
        add(d.get("spec"), d.get("manifest_digest"), "audited data (evaluation)", name)
    for table, result in sorted(report.checks.items()):
        if result.check != "privacy":
            continue
        on, cd = _model_of(report, table), result.data.model_dump()
        add(
            cd.get("spec"),
            cd.get("manifest_digest"),
            f"privacy check {table}: non-members",
            on,
            n=cd.get("n"),
            synthetic=cd.get("synthetic"),
        )
        add(
            cd.get("members_spec"),
            cd.get("members_manifest_digest"),
            f"privacy check {table}: members (training data)",
            on,
            n=result.metrics.get("n_members"),
        )
        ref_run = result.params.get("reference_run") or {}
        add(
            ref_run.get("population"),
            ref_run.get("population_digest"),
            f"privacy check {table}: population of the reference models",
            on,
            n=ref_run.get("population_n"),
        )
    return found


def _component_data(d: dict[str, Any]) -> dict[str, Any]:
    """CycloneDX ``componentData`` of one data set (not modelled by cyclonedx-python-lib)."""
    props = [{"name": "role", "value": role} for role in d["roles"]]
    for key in ("n", "synthetic"):
        if d.get(key) is not None:
            props.append({"name": key, "value": json.dumps(d[key])})
    out: dict[str, Any] = {"type": "dataset", "name": d["spec"], "contents": {"properties": props}}
    if d.get("attributes"):
        out["sensitiveData"] = [f"group attribute: {a}" for a in d["attributes"]]
    return out


# -- model cards -------------------------------------------------------------------------------
def _model_of(report: AuditReport, table: str) -> str:
    """The plan's name of the model check table ``table`` ran on."""
    return str(((report.plan.get("checks") or {}).get(table) or {}).get("model", PRIMARY))


def _model_card(
    report: AuditReport, name: str, data_refs: list[str], card: dict[str, Any]
) -> dict[str, Any]:
    """CycloneDX ``modelCard`` of one plan model (not modelled by cyclonedx-python-lib)."""
    described = report.model if name == PRIMARY else report.models[name]
    shape = "x".join(map(str, described.get("input_shape", [])))
    classes = described.get("class_names", [])
    datasets: list[dict[str, Any]] = [{"ref": ref} for ref in data_refs]
    if card.get("training_data"):
        datasets.append(
            {
                "type": "dataset",
                "name": "training data (as the plan's [card] states it)",
                "contents": {
                    "properties": [{"name": "description", "value": card["training_data"]}]
                },
            }
        )
    params: dict[str, Any] = {
        "approach": {"type": "supervised"},
        "task": "image classification"
        + (f" ({report.data['task']})" if report.data.get("task") else ""),
        "datasets": datasets,
        "inputs": [{"format": f"image tensor {shape}, pixels in [0, 1]"}],
        "outputs": [{"format": f"logits over {len(classes)} classes: {', '.join(classes)}"}],
    }
    metrics = _metrics(report, name)
    out: dict[str, Any] = {"bom-ref": f"{_model_ref(name)}/card", "modelParameters": params}
    if metrics:
        out["quantitativeAnalysis"] = {"performanceMetrics": metrics}
    out["considerations"] = _considerations(report, name, card)
    return out


def _metrics(report: AuditReport, name: str) -> list[Metric]:
    """Every number of the check tables that ran on model ``name``, by table name; the
    smoothed rows and certified accuracy of a robustness table go to the model it smoothed
    (``smoothing_model``, default the table's own model)."""
    out: list[Metric] = []
    for table, result in sorted(report.checks.items()):
        on = _model_of(report, table)
        smoothed = str(result.params.get("smoothing_model") or on)
        if result.check == "robustness" and name in (on, smoothed):
            out += _robustness(table, result, base=name == on, smoothed=name == smoothed)
        elif on == name and result.check in _BY_CHECK:
            out += _BY_CHECK[result.check](table, result)
    return out


def _metric(kind: str, value: Any, slice_: str, low: Any = None, high: Any = None) -> Metric | None:
    """One ``performanceMetric``; numbers as Python's shortest round-trip text. None for a
    value the report could not measure (null)."""
    if value is None:
        return None
    m: Metric = {"type": kind, "value": repr(float(value)), "slice": slice_}
    if low is not None and high is not None:
        m["confidenceInterval"] = {"lowerBound": repr(float(low)), "upperBound": repr(float(high))}
    return m


def _pair(ci: Any) -> tuple[Any, Any]:
    """An interval ``[low, high]`` of the report, or (None, None) where it has none."""
    return (ci[0], ci[1]) if isinstance(ci, list | tuple) and len(ci) == 2 else (None, None)


def _keep(metrics: list[Metric | None]) -> list[Metric]:
    return [m for m in metrics if m is not None]


def _evaluate(table: str, r: CheckResult) -> list[Metric]:
    m = r.metrics
    return _keep(
        [
            _metric(
                "accuracy",
                m.get("accuracy"),
                f"{table}: {r.data.spec} (n={m.get('n')}), 95% Wilson interval",
                m.get("accuracy_ci_low"),
                m.get("accuracy_ci_high"),
            )
        ]
    )


def _fairness(table: str, r: CheckResult) -> list[Metric]:
    """The gap of each gated measure (worst vs best eligible group) per attribute, with its
    bootstrap interval; attributes without two eligible groups have no value and are left
    out (report.json says why)."""
    level = f"{1 - float(r.params.get('alpha', 0.05)):.0%}"
    rows = r.metrics.get("summary") or []
    return _keep(
        [
            _metric(
                row["measure"],
                row.get("value"),
                f"{table}: {row['attribute']}, worst vs best eligible group, {level} bootstrap "
                "interval",
                *_pair(row.get("ci")),
            )
            for row in rows
        ]
    )


def _robustness(table: str, r: CheckResult, *, base: bool, smoothed: bool) -> list[Metric]:
    """Accuracy under each attack (base and smoothed rows, with the report's 95% Wilson
    intervals) and certified accuracy at each L2 radius (CERTIFY, Cohen et al. 2019)."""
    m, out = r.metrics, []
    sigma = r.params.get("smoothing_sigma")
    for row in m.get("attacks") or []:
        is_smoothed = row.get("model") == "smoothed"
        if (is_smoothed and not smoothed) or (not is_smoothed and not base):
            continue
        kind = "accuracy" if row["attack"] == "clean" else "robust_accuracy"
        how = f"randomized smoothing sigma={sigma}" if is_smoothed else "base model"
        attack = (
            row["attack"]
            if row["attack"] == "clean"
            else (f"{row['attack']} {row.get('norm')} eps={row.get('eps_text', row.get('eps'))}")
        )
        out.append(
            _metric(
                kind,
                row.get("accuracy"),
                f"{table}: {attack}, {how} (n={row.get('n')}), 95% Wilson interval",
                row.get("ci_low"),
                row.get("ci_high"),
            )
        )
    if smoothed:
        for row in m.get("certification") or []:
            out.append(
                _metric(
                    "certified_accuracy",
                    row.get("certified_accuracy"),
                    f"{table}: L2 radius >= {row['radius']}, randomized smoothing sigma={sigma}, "
                    f"CERTIFY (n={row.get('n')})",
                )
            )
    return _keep(out)


def _privacy(table: str, r: CheckResult) -> list[Metric]:
    """The claimed epsilon (a DP-SGD ledger or the plan's ``epsilon``) and, per attack, the
    measured leakage: AUC, TPR at low FPR (intervals as the report gives them) and the
    empirical epsilon lower bound (Clopper-Pearson bounds on TPR and FPR, see
    :mod:`raigate.privacy.mia`)."""
    m, p = r.metrics, r.params
    delta = m.get("delta")
    out = [
        _metric(
            "epsilon",
            m.get("claimed_epsilon"),
            f"{table}: claimed ({p.get('claim_source')}), delta={delta}",
        )
    ]
    conf = f"{1 - float(p.get('alpha', 0.05)):.0%}"
    for row in m.get("attacks") or []:
        a = f"{table}: attack {row['attack']} ({row.get('n_members')} members vs " + (
            f"{row.get('n_non_members')} non-members)"
        )
        out.append(
            _metric("membership_inference_auc", row.get("auc"), a, *_pair(row.get("auc_ci")))
        )
        for key in sorted(k for k in row if _TPR.match(k)):  # tpr_at_fpr_0.001, _0.01
            out.append(_metric(key, row[key], a, *_pair(row.get(f"{key}_ci"))))
        out.append(
            _metric(
                "empirical_epsilon_lower_bound",
                row.get("eps_lower"),
                f"{a}, one-sided lower bound at {conf} confidence jointly over attacks, "
                f"delta={delta}",
            )
        )
    return _keep(out)


_BY_CHECK = {"evaluate": _evaluate, "fairness": _fairness, "privacy": _privacy}


def _considerations(report: AuditReport, name: str, card: dict[str, Any]) -> dict[str, Any]:
    """Intended use and limitations from the plan's ``[card]`` (the primary model's), and
    each warn/fail finding of a fairness or privacy table on this model as an ethical
    consideration; areas the audit did not assess are a limitation."""
    out: dict[str, Any] = {}
    if card.get("intended_use"):
        out["useCases"] = [card["intended_use"]]
    limits = []
    if card.get("out_of_scope_use"):
        limits.append(f"Out of scope: {card['out_of_scope_use']}")
    if report.data.get("synthetic"):
        limits.append("The audit data is synthetic: its numbers demonstrate the tooling only.")
    ran = {r.check for t, r in sorted(report.checks.items()) if _model_of(report, t) == name}
    missing = [c for c in ("fairness", "robustness", "privacy", "explanations") if c not in ran]
    if missing:
        limits.append(f"Not assessed on this model in this audit: {', '.join(missing)}.")
    if limits:
        out["technicalLimitations"] = limits
    risks = [
        {"name": f"{f.id} ({f.severity}): {f.message}"}
        for t, r in sorted(report.checks.items())
        if _model_of(report, t) == name and r.check in ("fairness", "privacy")
        for f in r.findings
        if f.severity != "pass"
    ]
    if risks:
        out["ethicalConsiderations"] = risks
    return out
