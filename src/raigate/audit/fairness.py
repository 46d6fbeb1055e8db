"""Fairness: disaggregated, intersectional accuracy and error rates with honest statistics.

For every sensitive attribute (``race``, ``gender``, ``age`` on FairFace) and every
requested intersection (``race+gender``), the check reports per group: ``n``, accuracy,
error rate, per-class selection rate, one-vs-rest TPR and FPR, the confusion matrix, and
for the ordinal age task the mean absolute error in bins and off-by-one accuracy; then the
disparities between groups and to the overall value (difference and ratio), demographic
parity difference/ratio and equalized-odds difference (Hardt et al. 2016; one-vs-rest for
multiclass tasks), with the worst and best group by name.

Statistics, stated in ``params``:

* **Point estimates** are fairlearn's: ``MetricFrame`` with its metric functions per
  attribute and intersection, ``.difference()``/``.ratio()`` between groups, and
  ``demographic_parity_*``/``equalized_odds_*`` in the ``parity`` table. On every run they
  are checked against the confusion-matrix values that the bootstrap and the gates use
  (:mod:`raigate.audit.fairness_fairlearn`).
* **Intervals**: percentile bootstrap (Efron & Tibshirani 1993), *stratified by group*:
  each group is resampled at its own size, ``n_boot`` times, seeded. Differences and
  ratios between groups are computed replicate by replicate, so their intervals come from
  the joint bootstrap. See :mod:`raigate.audit.fairness_stats`.
* **Small groups**: a group with fewer than ``min_group_size`` samples is reported with
  its ``n`` and ``insufficient_data: true``; it never enters a gate, a worst/best choice
  or a comparison. A TPR (FPR) enters the equalized-odds gate only when its own
  denominator (the group's positives, negatives) reaches ``min_group_size`` too.
* **Gates** (``FairnessThresholds``): accuracy difference, four-fifths selection-rate
  ratio, equalized-odds difference, each between the worst and best eligible groups. A
  finding is ``fail`` only when the whole interval lies beyond the threshold, ``warn`` when
  the interval straddles it, ``pass`` when it lies entirely on the good side.
* **Multiple comparisons**: every pair of eligible groups within an attribute is compared
  on accuracy with a two-sided pooled two-proportion z-test, and the p-values are
  Holm-adjusted over all ``m`` comparisons of the run (Holm 1979); ``m`` is in the
  metrics and in each accuracy finding.

Model classes are matched to data labels by name (:func:`raigate.labels.align_classes`),
never by index; a prediction of a model class the data lacks counts as an error.

>>> import raigate
>>> from raigate.audit import fairness
>>> data = raigate.load_data("demo:test", limit=200)
>>> model = raigate.load_model("raigate.zoo:small_cnn", data=data, random_init=True)
>>> params = fairness.FairnessParams(n_boot=200, progress=False, plots=False)
>>> result = fairness.run(model, data, params)
>>> sorted(result.table("by_group")["attribute"].unique())
['age', 'gender', 'race', 'race+gender']
"""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from raigate._io import write_atomic
from raigate.audit import fairness_gates as fg
from raigate.audit import fairness_stats as fs
from raigate.audit import fairness_tables as ft
from raigate.audit.evaluate import predict, require_inputs
from raigate.data.base import Dataset
from raigate.environment import collect_environment
from raigate.errors import ConfigError, DataError
from raigate.labels import LabelMap, align_classes
from raigate.models.base import Model
from raigate.results import CheckResult, DataRef, Finding, ModelRef
from raigate.sanity import accuracy_findings
from raigate.values import Listed, Seed

NAME = "fairness"
FAIRFACE_ATTRIBUTES: tuple[str, ...] = ("race", "gender", "age")


class FairnessThresholds(BaseModel):
    """Gate thresholds; ``None`` turns a gate off. Defaults and why:

    * ``accuracy_difference`` 0.05: best minus worst group accuracy; five points is a gap a
      deployer would have to explain, and is well above the noise of a group of a few
      hundred.
    * ``selection_rate_ratio`` 0.8: the "four-fifths rule" of the US EEOC Uniform
      Guidelines (29 CFR 1607.4(D)), lowest over highest group selection rate, applied to
      every class and gated on the worst class.
    * ``equalized_odds_difference`` 0.1: largest between-group gap in one-vs-rest TPR or
      FPR (Hardt et al. 2016), the tolerance commonly used with fairlearn's
      ``equalized_odds_difference``.
    """

    model_config = ConfigDict(extra="forbid")

    accuracy_difference: float | None = Field(0.05, ge=0, le=1)
    selection_rate_ratio: float | None = Field(0.8, gt=0, le=1)
    equalized_odds_difference: float | None = Field(0.1, ge=0, le=1)

    @field_validator("*", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        # TOML has no null: `selection_rate_ratio = "off"` (or false) turns a gate off
        if value is False or (isinstance(value, str) and value.strip().lower() in {"off", "none"}):
            return None
        return value


class FairnessParams(BaseModel):
    """Parameters of the fairness check (see the module docstring for the statistics)."""

    model_config = ConfigDict(extra="forbid")
    # resolved relative to the audit plan file (raigate.config): the files the CLI takes
    PLAN_PATH_FIELDS: ClassVar[dict[str, str]] = {"label_map": "path", "thresholds": "path"}

    sensitive: Annotated[list[str], Listed] | None = Field(
        None, description="attribute columns; default: race, gender, age where present"
    )
    intersections: list[list[str]] | None = Field(
        None,
        description='column combinations: [["race", "gender"]], or the CLI\'s text '
        '"race+gender,age+gender" ("none": no intersections); default race+gender',
    )
    n_boot: int = Field(1000, ge=100, description="bootstrap replicates")
    min_group_size: int = Field(30, ge=1, description="smaller groups: insufficient data")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="intervals are 1 - alpha")
    thresholds: FairnessThresholds = Field(
        default_factory=FairnessThresholds,
        description="gates: accuracy_difference, selection_rate_ratio, "
        'equalized_odds_difference ("off" disables one)',
    )
    label_map: LabelMap = Field(None, description="model class -> data label")
    ordinal: bool | None = Field(None, description="ordered classes; default: task is age")
    batch_size: int = Field(128, gt=0)
    workers: int = Field(0, ge=0)
    device: str = "cpu"
    seed: Seed = 0
    plots: bool = True
    progress: bool = True

    @field_validator("thresholds", mode="before")
    @classmethod
    def _thresholds_file(cls, value: Any) -> Any:
        # thresholds = "gates.toml": the file --thresholds takes
        if not isinstance(value, str):
            return value
        try:
            return load_thresholds(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("intersections", mode="before")
    @classmethod
    def _split_plus(cls, value: Any) -> Any:
        # "race+gender" is how the CLI and the docs spell an intersection
        if value is None:
            return None
        if isinstance(value, str):
            if value.strip().lower() == "none":  # --intersections none: no intersections
                return []
            value = [v for v in value.split(",") if v.strip()]
        return [[c.strip() for c in v.split("+")] if isinstance(v, str) else v for v in value]


def params_from_options(**options: Any) -> FairnessParams:
    """``FairnessParams(**options)`` with a one-line ConfigError naming the bad field."""
    try:
        return FairnessParams(**options)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = "--" + str(err["loc"][0]).replace("_", "-")
        raise ConfigError(f"{field}: {err['msg']} (got {err.get('input')!r})") from None


def load_thresholds(path: str | Path) -> FairnessThresholds:
    """Gate thresholds from a JSON or TOML file (top level or a ``[thresholds]`` table)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: --thresholds file not found")
    text = p.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "TOML" if p.suffix.lower() == ".toml" else "JSON"
        raise ConfigError(f"{p}: --thresholds is not valid {kind} ({exc})") from None
    if isinstance(raw, dict) and isinstance(raw.get("thresholds"), dict):
        raw = raw["thresholds"]
    allowed = list(FairnessThresholds.model_fields)
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: --thresholds must be a table with keys {allowed}")
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(f"{p}: unknown threshold(s) {unknown}; allowed: {allowed}")
    try:
        return FairnessThresholds(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{p}: threshold {err['loc'][0]!r}: {err['msg']}") from None


def resolve_groups(
    data: Dataset, sensitive: list[str] | None, intersections: list[list[str]] | None
) -> list[tuple[str, ...]]:
    """The attribute column tuples to audit, validated against ``data.attributes``."""
    available = data.attribute_columns
    if sensitive is None:
        sensitive = [c for c in FAIRFACE_ATTRIBUTES if c in available]
        if not sensitive:
            raise ConfigError(
                f"{data.spec} has none of the default sensitive attributes race, gender, age; "
                f"pass --sensitive with some of its attribute columns {available}"
            )
    data.require_attribute_columns(sensitive, "--sensitive")
    if intersections is None:
        intersections = [["race", "gender"]] if {"race", "gender"} <= set(available) else []
    out: list[tuple[str, ...]] = [(c,) for c in dict.fromkeys(sensitive)]
    for combo in intersections:
        cols = tuple(c.strip() for c in combo if c.strip())
        if len(cols) < 2 or len(set(cols)) != len(cols):
            raise ConfigError(
                f"--intersections: {'+'.join(combo)!r} must join two or more different columns "
                "with '+', e.g. race+gender"
            )
        data.require_attribute_columns(cols, "--intersections", f" in {'+'.join(cols)}")
        if cols not in out:
            out.append(cols)
    return out


# -- the check ---------------------------------------------------------------------------------
def validate(model: Model, data: Dataset, params: FairnessParams) -> None:
    """Plan preflight: samples, channels, the attribute columns and the class names, checked
    before any check of the plan runs (e.g. fairness on data without attributes)."""
    require_inputs(model, data)
    resolve_groups(data, params.sensitive, params.intersections)
    align_classes(model.class_names, data.class_names, params.label_map)


@dataclass(frozen=True)
class Analysis:
    """Group statistics, the gates' calibrated family, the summary rows and findings."""

    stats: list[ft.SpecStats]
    family: fg.Family
    summary: list[dict[str, Any]]
    findings: list[Finding]

    @property
    def verdict(self) -> str:
        sev = {f.severity for f in self.findings}
        return "fail" if "fail" in sev else ("warn" if "warn" in sev else "pass")


def analyse(
    y: np.ndarray,
    pred: np.ndarray,
    attrs: pd.DataFrame,
    columns: list[tuple[str, ...]],
    classes: list[str],
    params: FairnessParams,
    *,
    ordinal: bool = False,
    task: str | None = None,
) -> Analysis:
    """Everything the gates decide, from labels and predictions (data class indices, ``-1``
    for a model class the data lacks) alone: no model, no images. :func:`run` calls it
    after predicting; the gate simulation calls it directly."""
    specs = [ft.group_spec(attrs, cols) for cols in columns]
    k = len(classes)
    stats = ft.all_spec_stats(specs, y, pred, k, params, ordinal=ordinal, task=task)
    family = fg.build_family(stats, k, params)
    summary: list[dict[str, Any]] = []
    findings: list[Finding] = []
    for si, s in enumerate(stats):
        rows, found = fg.gate_rows(si, s, family, classes, params, ft.group_counts(s))
        summary += rows
        findings += found
    return Analysis(stats=stats, family=family, summary=summary, findings=findings)


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def run(
    model: Model,
    data: Dataset,
    params: FairnessParams | None = None,
    *,
    out_dir: str | Path | None = None,
) -> CheckResult:
    """Audit ``model`` on ``data`` group by group; see the module docstring.

    With ``out_dir``, writes the plots and ``predictions.csv`` there and lists them in
    ``artifacts``; ``result.json`` is the caller's to write (``result.write(out_dir)``).
    """
    params = params or FairnessParams()
    start = time.perf_counter()
    if len(data) == 0:
        raise DataError(
            f"{data.spec}: no samples to audit (empty split or selection); check the data "
            "spec, --limit and --sample"
        )
    columns = resolve_groups(data, params.sensitive, params.intersections)
    mapping = align_classes(model.class_names, data.class_names, params.label_map)
    attrs = data.attributes
    preds_model, conf = predict(
        model,
        data,
        batch_size=params.batch_size,
        workers=params.workers,
        device=params.device,
        progress=params.progress,
        desc="fairness",
    )
    pred = mapping[preds_model]  # -1: a model class the data lacks (an error)
    y = data.labels
    classes = list(data.class_names)
    k = len(classes)
    ordinal = params.ordinal if params.ordinal is not None else data.task == "age"
    a = analyse(y, pred, attrs, columns, classes, params, ordinal=ordinal, task=data.task)
    # the reported point values are fairlearn's, checked equal to those the gates used
    from raigate.audit import fairness_fairlearn as ffl

    stats = [ffl.attach(s, y, pred, k, params.min_group_size) for s in a.stats]
    family = a.family

    # overall: a plain (unstratified) bootstrap of all samples
    overall_conf = fs.confusion_by_group(
        y, pred, np.zeros(len(y), np.int64), n_groups=1, n_classes=k
    )
    overall_boot = fs.bootstrap_confusions(
        overall_conf, n_boot=params.n_boot, rng=ft.stream(params.seed, "")
    )
    overall = stats[0].overall  # fairlearn's MetricFrame.overall: all samples
    acc_lo, acc_hi = fs.percentile_interval(
        fs.rates_from_confusion(overall_boot[:, 0])["accuracy"], params.alpha
    )

    comps = ft.comparisons(stats, params.alpha)
    by_group, selection, tpr_fpr, confusion, disparities, parity = [], [], [], [], [], []
    for s in stats:
        by_group += ft.by_group_rows(s, params)
        sel_rows, rate_rows = ft.class_rows(s, classes, params)
        selection += sel_rows
        tpr_fpr += rate_rows
        confusion += ft.confusion_rows(s, classes)
        disparities += ft.disparity_rows(s, classes, params)
        parity += ffl.parity_rows(s, classes)
    findings = a.findings + accuracy_findings(
        NAME, model, data, pred == y, device=params.device, batch_size=params.batch_size
    )

    n = len(y)
    metrics: dict[str, Any] = {
        "n": n,
        "accuracy": float(overall["accuracy"]),
        "accuracy_ci_low": float(acc_lo),
        "accuracy_ci_high": float(acc_hi),
        "error_rate": 1 - float(overall["accuracy"]),
        "n_boot": params.n_boot,
        "groups": sum(len(s.spec.levels) for s in stats),
        "groups_insufficient": sum(int((~s.eligible).sum()) for s in stats),
        "groups_empty": sum(int((s.point["n"] == 0).sum()) for s in stats),
        "gate_contrasts": family.size,
        "gate_critical_value": _finite(family.critical),
        "n_comparisons": len(comps),
        "comparisons_significant_holm": sum(r["significant_holm"] for r in comps),
        "predicted_other": int((pred < 0).sum()),
        "by_group": by_group,
        "selection_rates": selection,
        "tpr_fpr": tpr_fpr,
        "confusion_by_group": confusion,
        "disparities": disparities,
        "parity": parity,
        "summary": a.summary,
        "comparisons": comps,
    }
    if ordinal:
        ordinal_all = fs.ordinal_from_confusion(overall_conf[0])
        metrics["mae_bins"] = float(ordinal_all["mae"])
        metrics["off_by_one_accuracy"] = float(ordinal_all["off_by_one"])

    artifacts: list[str] = []
    if out_dir is not None:
        out = Path(out_dir)
        artifacts.append(_write_predictions(out, data, model, preds_model, conf, attrs))
        if params.plots:
            from raigate.audit import fairness_plots

            artifacts += fairness_plots.write_plots(
                out,
                stats,
                classes,
                float(overall["accuracy"]),
                params.alpha,
                params.min_group_size,
            )

    return CheckResult(
        check=NAME,
        artifacts=artifacts,
        params={
            **params.model_dump(exclude={"progress", "sensitive", "intersections"}),
            "sensitive": [c[0] for c in columns if len(c) == 1],
            "intersections": ["+".join(c) for c in columns if len(c) > 1],
            "ordinal": ordinal,
            "n": n,
            "point_estimates": ffl.describe(),
            "interval": (
                f"per group: percentile bootstrap, {1 - params.alpha:.0%}, stratified (every "
                "combination of the audited attributes resampled at its own size), "
                f"B={params.n_boot}, seed={params.seed}; gates: simultaneous "
                f"{1 - params.alpha:.0%} max-T intervals from the same replicates; overall: "
                "unstratified bootstrap"
            ),
            "p_values": (
                "gates: bootstrap max-T adjusted p-value of 'this gap is within the threshold', "
                f"over all {family.size} between-group contrasts the gates examine (every pair "
                "of eligible groups, every class, TPR and FPR, every attribute and "
                "intersection); comparisons table: two-sided pooled two-proportion z-test of "
                f"equal accuracy, Holm-adjusted over its {len(comps)} pairs (descriptive)"
            ),
            "gate_rule": (
                "fail: some contrast's simultaneous interval lies entirely beyond the "
                "threshold (equivalently its adjusted p <= alpha); pass: every contrast's "
                "simultaneous interval lies within the threshold; warn: otherwise, or fewer "
                f"than 2 groups have n>={params.min_group_size}"
            ),
            "power": (
                f"detectable_gap_80: the gap that fails with {fg.POWER:.0%} probability for the "
                "least precise contrast of a gate; equal_groups_pass: whether groups with equal "
                "true rates would pass in about 1 - alpha of audits at this n (the widest "
                "simultaneous half-width is at most half the threshold); samples_to_pass: the "
                "group size at which they would"
            ),
        },
        metrics=metrics,
        findings=findings,
        seed=params.seed,
        environment=collect_environment(params.device),
        model=ModelRef.of(model),
        data=DataRef.of(data, n),
        timing_s=round(time.perf_counter() - start, 3),
    )


def _write_predictions(
    out: Path,
    data: Dataset,
    model: Model,
    preds_model: np.ndarray,
    conf: np.ndarray,
    attrs: pd.DataFrame,
) -> str:
    names = np.asarray(data.class_names, dtype=object)
    frame = pd.DataFrame(
        {
            "index": np.arange(len(data)),
            "label": names[data.labels],
            "predicted": np.asarray(model.class_names, dtype=object)[preds_model],
            "confidence": np.round(conf.astype(np.float64), 6),
        }
    )
    frame = pd.concat([frame, attrs.reset_index(drop=True)], axis=1)
    write_atomic(out / "predictions.csv", frame.to_csv(index=False))
    return "predictions.csv"
