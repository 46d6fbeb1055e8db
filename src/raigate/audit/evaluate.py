"""Clean accuracy: overall, per class, per attribute value, with the confusion matrix.

The baseline every other check is read against. Intervals are Wilson score intervals at
95% (stated in ``params.interval``) so small classes and groups show their uncertainty.

>>> import raigate
>>> from raigate.audit import evaluate
>>> data = raigate.load_data("demo:test", limit=32)
>>> model = raigate.load_model("raigate.zoo:small_cnn", data=data, random_init=True)
>>> result = evaluate.run(model, data, evaluate.EvaluateParams(progress=False))
>>> sorted(result.metrics)[:3]
['accuracy', 'accuracy_ci_high', 'accuracy_ci_low']
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from raigate._io import write_atomic
from raigate.data.base import Dataset
from raigate.environment import collect_environment
from raigate.errors import ConfigError, DataError
from raigate.labels import LabelMap, align_classes
from raigate.models.base import Model
from raigate.results import CheckResult, DataRef, Finding, ModelRef
from raigate.sanity import accuracy_findings
from raigate.stats import wilson_interval
from raigate.values import Seed

NAME = "evaluate"


class EvaluateParams(BaseModel):
    """Parameters of the evaluate check."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    # resolved relative to the audit plan file (raigate.config); a label map may be a JSON file
    PLAN_PATH_FIELDS: ClassVar[dict[str, str]] = {"label_map": "path"}

    batch_size: int = Field(128, gt=0, description="images per forward pass")
    workers: int = Field(0, ge=0, description="DataLoader worker processes reading images")
    min_accuracy: float | None = Field(None, ge=0, le=1, description="gate: fail below this")
    label_map: LabelMap = Field(None, description="model class -> data label")
    device: str = "cpu"
    seed: Seed = 0
    progress: bool = True


def prepare(model: Model, data: Dataset) -> Dataset:
    """The dataset as the model wants it: through the model's deployed resize and crop (or
    resized to its input size), channels checked."""
    c, h, w = model.input_shape
    if data.channels != c:
        raise ConfigError(
            f"the model expects {c} input channels but {data.spec} has {data.channels}"
        )
    return data.transformed(getattr(model, "preprocess", None), (h, w))


def require_inputs(model: Model, data: Dataset) -> None:
    """What every check needs of a model and its data before any work: samples, and as
    many channels as the model takes (resizing is done for it; channels are not)."""
    if len(data) == 0:
        raise DataError(
            f"{data.spec}: no samples to audit (empty split or selection); check the data "
            "spec, --limit and --sample"
        )
    if data.channels != model.input_shape[0]:
        prepare(model, data)  # raises, naming both channel counts
    from raigate.models.postprocess import require_attributes

    require_attributes(model, data)  # a post-processed model reads the samples' attributes


def validate(model: Model, data: Dataset, params: EvaluateParams) -> None:
    """Plan preflight: what ``run`` would refuse, found before any check runs."""
    require_inputs(model, data)
    align_classes(model.class_names, data.class_names, params.label_map)


@torch.no_grad()
def predict(
    model: Model,
    data: Dataset,
    *,
    batch_size: int = 128,
    workers: int = 0,
    device: str = "cpu",
    progress: bool = True,
    desc: str = "predict",
) -> tuple[np.ndarray, np.ndarray]:
    """Model class indices and the softmax probability of the predicted class for every
    sample, in order. A post-processed model (``model.postprocess``) predicts from the
    logits and each sample's attributes (rows indexed by position) instead of the argmax."""
    from raigate.parallel import map_batches

    model.to(device)
    post = getattr(model, "postprocess", None)
    attrs = None
    if post is not None:
        from raigate.models.postprocess import require_attributes

        require_attributes(model, data)
        attrs = data.attributes

    def batch(x: torch.Tensor, _y: torch.Tensor, pos: np.ndarray) -> dict[str, np.ndarray]:
        logits = model.logits(x.to(device))
        probs = logits.softmax(dim=1)
        if attrs is None:
            p, k = probs.max(dim=1)
        else:
            k = torch.as_tensor(post.predict(logits, attrs.iloc[pos]), device=probs.device)
            p = probs.gather(1, k[:, None])[:, 0]
        return {"pred": k.cpu().numpy().astype(np.int64), "conf": p.cpu().numpy()}

    # split across torchrun ranks in fixed batches (raigate.parallel); alone, one loop
    out = map_batches(
        prepare(model, data),
        batch_size,
        batch,
        stage=desc,
        seed=0,
        workers=workers,
        desc=desc,
        unit="images",
        progress=progress,
    )
    return out["pred"], out["conf"].astype(np.float32)


def _rate_records(
    key_name: str, keys: np.ndarray, correct: np.ndarray, order: list[str] | None = None
) -> list[dict[str, Any]]:
    frame = pd.DataFrame({"key": keys, "correct": correct})
    grouped = frame.groupby("key", sort=False)["correct"].agg(["sum", "count"])
    names = order if order is not None else sorted(grouped.index.astype(str))
    records = []
    for name in names:
        s, n = (
            (int(grouped.loc[name, "sum"]), int(grouped.loc[name, "count"]))
            if name in grouped.index
            else (0, 0)
        )
        lo, hi = wilson_interval(s, n)
        records.append(
            {
                key_name: name,
                "n": n,
                "accuracy": (s / n) if n else None,
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    return records


def run(
    model: Model,
    data: Dataset,
    params: EvaluateParams | None = None,
    *,
    out_dir: str | Path | None = None,
) -> CheckResult:
    """Evaluate clean accuracy of ``model`` on ``data``; see the module docstring.

    With ``out_dir``, also writes ``predictions.csv`` there (one row per sample: label,
    prediction, confidence, attributes) and lists it in ``artifacts``; ``result.json`` is
    the caller's to write (``result.write(out_dir)``).
    """
    params = params or EvaluateParams()
    start = time.perf_counter()
    require_inputs(model, data)
    mapping = align_classes(model.class_names, data.class_names, params.label_map)
    preds_model, conf = predict(
        model,
        data,
        batch_size=params.batch_size,
        workers=params.workers,
        device=params.device,
        progress=params.progress,
        desc="evaluate",
    )
    preds = mapping[preds_model]  # -1 where the model predicted a class the data lacks
    labels = data.labels
    correct = preds == labels
    n = len(labels)
    acc = float(correct.mean()) if n else float("nan")
    lo, hi = wilson_interval(int(correct.sum()), n)
    names = np.asarray(data.class_names, dtype=object)
    per_class = _rate_records("class", names[labels], correct, list(data.class_names))

    per_attribute: list[dict[str, Any]] = []
    attrs = data.attributes
    for col in attrs.columns:
        if col in {"file", "path", "filename"}:
            continue
        series = attrs[col]
        values = series.astype(str).to_numpy()
        if len(set(values)) > 200:  # an identifier, not a group
            continue
        order = (
            [str(c) for c in series.cat.categories]
            if isinstance(series.dtype, pd.CategoricalDtype)
            else None
        )
        for rec in _rate_records("value", values, correct, order):
            per_attribute.append({"attribute": str(col), **rec})

    k = len(data.class_names)
    other = "(other model class)"
    pred_names = np.where(preds >= 0, names[np.clip(preds, 0, k - 1)], other)
    cm = pd.crosstab(pd.Series(names[labels], name="true"), pd.Series(pred_names, name="pred"))
    confusion = [
        {"true": t, "predicted": p, "count": int(cm.loc[t, p])}
        for t in cm.index
        for p in cm.columns
        if int(cm.loc[t, p]) > 0
    ]

    findings: list[Finding] = []
    if params.min_accuracy is not None:
        ok = acc >= params.min_accuracy
        findings.append(
            Finding(
                id="evaluate.min_accuracy",
                severity="pass" if ok else "fail",
                metric="accuracy",
                value=acc,
                threshold=params.min_accuracy,
                message=(
                    f"clean accuracy {acc:.4f} (95% Wilson CI {lo:.4f}-{hi:.4f}, n={n}) is "
                    f"{'at or above' if ok else 'below'} the required {params.min_accuracy:.4f}"
                ),
            )
        )

    findings += accuracy_findings(
        NAME, model, data, correct, device=params.device, batch_size=params.batch_size
    )

    artifacts: list[str] = []
    if out_dir is not None:
        frame = pd.DataFrame(
            {
                "index": np.arange(n),
                "label": names[labels],
                "predicted": np.asarray(model.class_names, dtype=object)[preds_model],
                "confidence": np.round(conf.astype(np.float64), 6),
            }
        )
        frame = pd.concat([frame, attrs.reset_index(drop=True)], axis=1)
        write_atomic(Path(out_dir) / "predictions.csv", frame.to_csv(index=False))
        artifacts.append("predictions.csv")

    return CheckResult(
        check=NAME,
        artifacts=artifacts,
        params={**params.model_dump(exclude={"progress"}), "interval": "Wilson score, 95%", "n": n},
        metrics={
            "accuracy": acc,
            "accuracy_ci_low": lo,
            "accuracy_ci_high": hi,
            "error_rate": 1 - acc if n else None,
            "n": n,
            "per_class": per_class,
            "per_attribute": per_attribute,
            "confusion_matrix": confusion,
        },
        findings=findings,
        seed=params.seed,
        environment=collect_environment(params.device),
        model=ModelRef.of(model),
        data=DataRef.of(data, n),
        timing_s=round(time.perf_counter() - start, 3),
    )
