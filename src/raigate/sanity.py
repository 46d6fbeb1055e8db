"""Warnings with their likely cause, for inputs that run but give wrong answers silently.

An audit of a mis-normalized model, or of the first 50 images of a folder sorted by class,
runs to the end and exits 0 unless something says so. Each function here returns a ``warn``
:class:`~raigate.results.Finding` (and issues it as a :class:`RaigateWarning`, which the CLI
prints as one ``raigate: warning: ...`` line on stderr). Models and datasets keep theirs in
``.warnings``; :class:`~raigate.results.CheckResult` copies those into its findings, so
``result.json``, ``report.json`` and the report show them next to the gates.

The rules and why they are set where they are:

* **Chance-level accuracy** (:func:`chance_findings`): chance ``c = max(1/K, majority-class
  share)`` is what a constant answer scores. The bar is ``c + m (1 - c)`` with
  :data:`CHANCE_MARGIN` ``m = 0.1``: the model must close a tenth of the gap between a
  constant answer and a perfect one (Cohen's kappa of 0.1, the bottom of "slight"
  agreement): 0.55 for 2 balanced classes, 0.19 for 10, 0.91 when one class holds 90%. Being
  relative to the gap, the bar stays below 1, so a perfect model on unbalanced data is never
  flagged. The warning fires when the upper end of the 95% Wilson interval of accuracy lies
  below the bar: the data rule out, at 97.5% one-sided confidence, that the model reaches
  it, so a model that truly does is flagged at most ~2.5% of the time, and a model at chance
  once n is large enough to tell (about 380 samples for 2 balanced classes, 80 for 10).
  Data with a single class present have no chance level to beat and are not judged.
* **0-255 normalization** (:func:`normalization_findings`): raigate feeds pixels in [0, 1],
  whose per-channel mean lies in [0, 1] and whose std is at most 0.5 (Popoviciu's
  inequality). A mean above 1 or a std above 1 (1 is the identity default) cannot describe
  such pixels; 0-255 statistics (ImageNet: 123.7 / 58.4) exceed both by far.
* **Input scale unlike training** (:func:`input_scale_findings`, models with BatchNorm): the
  first BatchNorm layer to run keeps the variance of its inputs during training. On the
  audited images, the median over channels of (input variance / running variance) should be
  near 1: measured 0.74-0.79 for the public ResNet-20/56 on CIFAR-10 JPEGs with the right
  mean/std, 0.58 for ResNet-20 on FairFace faces (other data, right normalization), but
  0.047 without ``--mean/--std`` (accuracy 0.27 instead of 0.81), 0.07 with 0-255 statistics
  and 0.16 with mean = std = 0.5 (accuracy 0.62). Outside [1/4, 4] (the input's scale off by
  a factor 2) is flagged. Forgetting the normalization leaves accuracy well above chance,
  so only this rule catches it.
* **--limit missing classes** (:func:`limit_findings`): the first N samples of the data hold
  fewer classes than the whole of it (a folder listed class by class).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from raigate.results import Finding
from raigate.stats import wilson_interval

if TYPE_CHECKING:
    from raigate.data.base import Dataset
    from raigate.models.base import Model

CHANCE_MARGIN = 0.1
"""The share of the gap between chance and perfect accuracy that a model which learned
anything closes at least (a Cohen's kappa of 0.1)."""

_MAX_MEAN = 1.0
_MAX_STD = 1.0
SCALE_RATIO = 4.0
"""The first BatchNorm's input variance may differ from its running variance by this factor."""
SCALE_SAMPLES = 256


class RaigateWarning(UserWarning):
    """A likely mistake in the input that does not stop the run; the message names the
    cause and the fix."""


def warn(finding: Finding) -> Finding:
    """Issue ``finding`` as a :class:`RaigateWarning` and hand it back."""
    warnings.warn(finding.message, RaigateWarning, stacklevel=3)
    return finding


def _fmt(values: Sequence[float]) -> str:
    return ",".join(f"{v:.4g}" for v in values)


def normalization_findings(spec: str, mean: Sequence[float], std: Sequence[float]) -> list[Finding]:
    """A warning when ``mean``/``std`` look like 0-255 statistics (see the module docstring).

    >>> [f.id for f in normalization_findings("m", [123.7, 116.3, 103.5], [58.4, 57.1, 57.4])]
    ['model.normalization_scale']
    >>> normalization_findings("m", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    []
    """
    if max(mean) <= _MAX_MEAN and max(std) <= _MAX_STD:
        return []
    fixed_mean = [round(v / 255, 4) for v in mean]
    fixed_std = [round(v / 255, 4) for v in std]
    return [
        warn(
            Finding(
                id="model.normalization_scale",
                severity="warn",
                metric="normalization_max",
                value=float(max(*mean, *std)),
                threshold=_MAX_MEAN,
                message=(
                    f"model {spec}: --mean {_fmt(mean)} / --std {_fmt(std)} look like statistics "
                    "of 0-255 pixels, but raigate feeds the model pixels in [0,1] (a mean must "
                    "lie in [0,1], a std at most 0.5): divide both by 255, i.e. --mean "
                    f"{_fmt(fixed_mean)} --std {_fmt(fixed_std)} (or, if the deployed model "
                    "takes 0-255 values, say so with --preprocess value_scale=255)"
                ),
            )
        )
    ]


def chance_findings(
    check: str, correct: np.ndarray, labels: np.ndarray, n_classes: int
) -> list[Finding]:
    """A warning when clean accuracy is at (or below) chance (see the module docstring).

    ``correct`` and ``labels`` are per sample (data label indices); ``check`` names the
    finding (``evaluate.chance_level``).

    >>> labels = np.arange(1000) % 10
    >>> [f.id for f in chance_findings("evaluate", labels == 0, labels, 10)]  # 10% right
    ['evaluate.chance_level']
    >>> chance_findings("evaluate", labels < 3, labels, 10)  # 30% right: above the bar 0.19
    []
    """
    n = len(labels)
    counts = np.bincount(labels, minlength=n_classes)
    if n == 0 or np.count_nonzero(counts) < 2:
        return []
    hits = int(np.count_nonzero(correct))
    _, high = wilson_interval(hits, n)
    majority = float(counts.max()) / n
    chance = max(1.0 / n_classes, majority)
    bar = chance + CHANCE_MARGIN * (1.0 - chance)
    if high >= bar:
        return []
    acc = hits / n
    what = "the majority-class share" if majority > 1 / n_classes else f"1/{n_classes}"
    return [
        warn(
            Finding(
                id=f"{check}.chance_level",
                severity="warn",
                metric="accuracy_ci_high",
                value=high,
                threshold=bar,
                message=(
                    f"accuracy {acc:.2f} is at chance for {n_classes} classes (95% Wilson upper "
                    f"bound {high:.3f} < {bar:.3f}, a tenth of the way from chance {chance:.3f} "
                    f"({what}) to 1; n={n}): check --mean/--std, --class-names order and "
                    "--label-map"
                ),
            )
        )
    ]


def limit_findings(
    spec: str, limit: int, chosen: np.ndarray, everything: np.ndarray, class_names: Sequence[str]
) -> list[Finding]:
    """A warning when the first ``limit`` labels (``chosen``) miss classes that the whole
    data (``everything``) has.

    >>> limit_findings("folder:x", 2, np.array([0, 0]), np.array([0, 0, 1, 1]), ["a", "b"])[0].id
    'data.limit_misses_classes'
    """
    present = np.unique(everything)
    kept = np.unique(chosen)
    missing = [str(class_names[c]) for c in present if c not in set(kept.tolist())]
    if not missing:
        return []
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return [
        warn(
            Finding(
                id="data.limit_misses_classes",
                severity="warn",
                metric="classes_present",
                value=float(len(kept)),
                threshold=float(len(present)),
                message=(
                    f"{spec}: the first {len(chosen)} samples (--limit {limit}) hold "
                    f"{len(kept)} of its {len(present)} classes, missing {shown} (the data "
                    f"is probably sorted by class): use --sample {limit} for a seeded sample "
                    "stratified by label"
                ),
            )
        )
    ]


def _first_batchnorm_variance(
    model: Model, data: Dataset, *, device: str, batch_size: int
) -> tuple[str, float] | None:
    """(name, median over channels of input variance / running variance) of the first
    BatchNorm layer to run, over up to :data:`SCALE_SAMPLES` evenly spread images."""
    from raigate.audit.evaluate import prepare

    layers = {
        m: name
        for name, m in model.net.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None
    }
    if not layers or len(data) == 0:
        return None
    sums: dict[str, Any] = {}

    def record(module: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
        if sums.setdefault("layer", module) is not module:
            return  # a later BatchNorm: only the first one sees the preprocessed input
        t = inputs[0].detach().double().transpose(0, 1).flatten(1)  # channels x values
        sums["n"] = sums.get("n", 0) + t.shape[1]
        sums["s"] = sums.get("s", 0) + t.sum(1)
        sums["q"] = sums.get("q", 0) + (t * t).sum(1)

    hooks = [m.register_forward_hook(record) for m in layers]
    positions = np.unique(np.linspace(0, len(data) - 1, SCALE_SAMPLES).astype(np.int64))
    try:
        with torch.no_grad():
            for x, _, _ in prepare(model, data.subset(positions)).loader(batch_size):
                model.logits(x.to(device))
    finally:
        for h in hooks:
            h.remove()
    layer = sums["layer"]
    n = sums["n"]
    var = (sums["q"] - sums["s"] ** 2 / n) / max(n - 1, 1)
    ratio = var / (layer.running_var.double() + layer.eps)
    return layers[layer], float(ratio.median())


def input_scale_findings(
    check: str, model: Model, data: Dataset, *, device: str = "cpu", batch_size: int = 128
) -> list[Finding]:
    """A warning when the first BatchNorm layer sees inputs at a scale unlike training (see
    the module docstring); ``[]`` for models without BatchNorm running statistics."""
    measured = _first_batchnorm_variance(model, data, device=device, batch_size=batch_size)
    if measured is None:
        return []
    name, ratio = measured
    if 1 / SCALE_RATIO <= ratio <= SCALE_RATIO:
        return []
    return [
        warn(
            Finding(
                id=f"{check}.input_scale",
                severity="warn",
                metric="batchnorm_variance_ratio",
                value=ratio,
                threshold=SCALE_RATIO if ratio > SCALE_RATIO else 1 / SCALE_RATIO,
                message=(
                    f"the model's first BatchNorm layer ({name}) sees inputs with {ratio:.2g}x "
                    f"the variance it was trained on (median over channels; 1/{SCALE_RATIO:g} "
                    f"to {SCALE_RATIO:g} is usual): the images reach the network scaled unlike "
                    "its training data; check --mean/--std (missing or wrong normalization) "
                    "and that the data are the kind the model was trained on"
                ),
            )
        )
    ]


def accuracy_findings(
    check: str,
    model: Model,
    data: Dataset,
    correct: np.ndarray,
    *,
    device: str = "cpu",
    batch_size: int = 128,
) -> list[Finding]:
    """What a check that measures clean accuracy on ``data`` adds: accuracy at chance, and
    an input scale unlike training (``correct``: per sample of ``data``)."""
    return [
        *chance_findings(check, correct, data.labels, len(data.class_names)),
        *input_scale_findings(check, model, data, device=device, batch_size=batch_size),
    ]
