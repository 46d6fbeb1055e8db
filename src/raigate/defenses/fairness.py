"""``raigate harden fairness``: turn a model into a variant with smaller group gaps.

Four methods over the groups of one sensitive attribute or intersection
(:mod:`raigate.defenses.groups`):

``reweight``
    Fine-tune with weighted cross-entropy, ``mean_i w_i * CE_i`` over each batch, with
    group-balanced weights ``w_i = n / (G * n_g(i))`` (mean 1, every group the same total):
    the objective is the unweighted mean of the groups' mean losses.
``resample``
    Fine-tune with plain cross-entropy on batches drawn with replacement with probability
    proportional to the same weights (``WeightedRandomSampler``'s draw, seeded per epoch):
    every group is drawn equally often in expectation.
``group-dro``
    Group DRO (Sagawa et al. 2020, "Distributionally Robust Neural Networks", Algorithm 1):
    per batch, each group's mean loss ``l_g``, then ``q_g <- q_g exp(eta l_g)``, normalised,
    and the step minimises ``sum_g q_g l_g``; ``q`` starts uniform, ``eta`` = 0.01 as in the
    paper's code, the paper's group adjustments are omitted. The final ``q`` is recorded.
``threshold``
    No training: fairlearn's ``ThresholdOptimizer`` picks per-group randomized thresholds on
    the positive-class probability of a binary model (:mod:`raigate.defenses.thresholds`).
    **The variant needs every sample's sensitive attribute to predict.** It works on a
    black-box model (forward passes only), and is audited by the accuracy and fairness checks;
    the robustness, explanations and privacy checks refuse it (audit the base model).

The training methods fine-tune a copy of a white-box model built from a factory or a model
spec and write ``NAME.safetensors`` + ``NAME.json``; ``threshold`` writes ``NAME.json`` naming
the base model and ``NAME-group-thresholds.json``. Every method writes ``harden.json``: the
method and its parameters, the groups with their sizes and weights (or final ``q``, or rules),
the data's manifest digest and the fit curve. Fit on training or validation data, never on the
test data you audit the variant with.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from raigate._io import write_atomic
from raigate.data.base import Dataset
from raigate.defenses.groups import Groups, balanced_sampler, balanced_weights, groups_of
from raigate.defenses.harden import (
    _factory_of,
    base_record,
    data_record,
    labels_in_model_order,
    save_variant,
)
from raigate.errors import ConfigError
from raigate.models.base import Model, require_plain, require_white_box
from raigate.results import dumps
from raigate.training import FitReport, Objective, Sampler, cross_entropy, fit

__all__ = ["METHODS", "FairHardenResult", "GroupDRO", "harden_fairness", "weighted_cross_entropy"]

Method = Literal["reweight", "resample", "group-dro", "threshold"]
METHODS: tuple[str, ...] = ("reweight", "resample", "group-dro", "threshold")


@dataclass(frozen=True)
class FairHardenResult:
    """Where the variant went and how it was made. ``weights``: the safetensors file, or
    for ``threshold`` the rule file; ``report``: the fit curve (None for ``threshold``);
    ``groups``: per group its name, size and weight, final ``q`` or rule."""

    method: str
    model_spec: Path
    weights: Path
    record: Path
    digest: str
    report: FitReport | None
    groups: list[dict[str, Any]] = field(default_factory=list)


def weighted_cross_entropy(weights: np.ndarray) -> Objective:
    """``mean_i w_i CE_i`` over a batch, ``w`` looked up by sample position: with weights of
    mean 1 an unbiased estimate of the weighted empirical risk ``(1/n) sum_i w_i CE_i``."""
    w = torch.as_tensor(np.asarray(weights, dtype=np.float32))

    def objective(logits: Tensor, labels: Tensor, positions: Tensor) -> Tensor:
        losses = F.cross_entropy(logits, labels, reduction="none")
        return (w.to(losses.device)[positions.to(w.device)] * losses).mean()

    return objective


class GroupDRO:
    """Sagawa et al. 2020's online Group DRO objective; ``q`` (float64) and ``q_history`` (one
    row per :meth:`end_epoch`) are the adversary's group weights."""

    def __init__(self, codes: np.ndarray, n_groups: int, *, eta: float = 0.01) -> None:
        if not (eta > 0 and np.isfinite(eta)):
            raise ConfigError(f"--dro-eta must be > 0, got {eta}")
        self.codes = torch.as_tensor(np.asarray(codes, dtype=np.int64))
        self.n_groups = int(n_groups)
        self.eta = float(eta)
        self.q = torch.full((self.n_groups,), 1.0 / self.n_groups, dtype=torch.float64)
        self.q_history: list[list[float]] = []

    def group_losses(self, logits: Tensor, labels: Tensor, positions: Tensor) -> Tensor:
        """Mean cross-entropy per group in the batch (0 for a group absent from it)."""
        losses = F.cross_entropy(logits, labels, reduction="none")
        g = self.codes[positions.cpu()].to(losses.device)
        sums = torch.zeros(self.n_groups, device=losses.device).index_add(0, g, losses)
        counts = torch.bincount(g, minlength=self.n_groups).clamp(min=1)
        return sums / counts

    def __call__(self, logits: Tensor, labels: Tensor, positions: Tensor) -> Tensor:
        group_loss = self.group_losses(logits, labels, positions)
        q = self.q * torch.exp(self.eta * group_loss.detach().cpu().double())
        self.q = q / q.sum()
        return (group_loss * self.q.to(group_loss.device, group_loss.dtype)).sum()

    def end_epoch(self) -> None:
        self.q_history.append(self.q.tolist())


def _groups_table(g: Groups, **columns: Any) -> list[dict[str, Any]]:
    """One row per group: name, size, and the method's per-group values."""
    sizes = g.sizes
    rows = []
    for k, name in enumerate(g.names):
        row: dict[str, Any] = {"group": name, "n": int(sizes[k])}
        row.update({key: values[k] for key, values in columns.items()})
        rows.append(row)
    return rows


@dataclass
class _Recipe:
    """What one training method changes in :func:`raigate.training.fit`, and what it records
    (``groups()`` and ``extra()`` are read after training)."""

    objective: Objective = cross_entropy
    sampler: Sampler | None = None
    on_epoch: Callable[[int], None] | None = None
    groups: Callable[[], list[dict[str, Any]]] = list
    extra: Callable[[], dict[str, Any]] = dict


def _reweight(g: Groups, weights: np.ndarray, *, epochs: int, seed: int, eta: float) -> _Recipe:
    per_group = _per_group(g, weights)
    table = _groups_table(g, weight=per_group.tolist(), total=(per_group * g.sizes).tolist())
    return _Recipe(objective=weighted_cross_entropy(weights), groups=lambda: table)


def _resample(g: Groups, weights: np.ndarray, *, epochs: int, seed: int, eta: float) -> _Recipe:
    sampler = balanced_sampler(weights, seed=seed)
    drawn = np.stack(
        [np.bincount(g.codes[sampler(e)], minlength=len(g.names)) for e in range(epochs)], 1
    )
    per_group = _per_group(g, weights)
    prob = per_group / float(per_group @ g.sizes)
    table = _groups_table(g, draw_probability=prob.tolist(), drawn_per_epoch=drawn.tolist())
    return _Recipe(sampler=sampler, groups=lambda: table)


def _group_dro(g: Groups, weights: np.ndarray, *, epochs: int, seed: int, eta: float) -> _Recipe:
    dro = GroupDRO(g.codes, len(g.names), eta=eta)
    return _Recipe(
        objective=dro,
        on_epoch=lambda _epoch: dro.end_epoch(),
        groups=lambda: _groups_table(g, q=dro.q.tolist()),
        extra=lambda: {"eta": dro.eta, "q_final": dro.q.tolist(), "q_per_epoch": dro.q_history},
    )


def _per_group(g: Groups, weights: np.ndarray) -> np.ndarray:
    """The weight each group's samples share (all samples of a group weigh the same)."""
    out = np.zeros(len(g.names))
    out[g.codes] = weights
    return out


_RECIPES: dict[str, Callable[..., _Recipe]] = {
    "reweight": _reweight,
    "resample": _resample,
    "group-dro": _group_dro,
}


def harden_fairness(
    model: Model,
    data: Dataset,
    out_dir: str | Path,
    *,
    method: Method,
    attribute: str,
    by_label: bool = False,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    dro_eta: float = 0.01,
    constraint: str = "equalized_odds",
    positive: str | None = None,
    device: str = "cpu",
    label_map: dict[str, str] | None = None,
    progress: bool = True,
    name: str = "model",
) -> FairHardenResult:
    """Make a fairness-hardened variant of ``model`` from ``data`` grouped by ``attribute``
    (``"race"`` or ``"race+gender"``) and save it to ``out_dir`` (see the module docstring).

    ``by_label``: groups are (attribute, label) cells; ``positive``: the positive class of a
    binary model for ``threshold`` (default its second class, as ``predict_proba``'s column 1).

    >>> import raigate, tempfile
    >>> data = raigate.load_data("demo:train", limit=128)
    >>> model = raigate.load_model("raigate.zoo:small_cnn", data=data, random_init=True)
    >>> res = harden_fairness(model, data, tempfile.mkdtemp(), method="reweight",
    ...                       attribute="race", epochs=1, progress=False)
    >>> raigate.load_model(str(res.model_spec)).digest == res.digest
    True
    """
    from raigate.audit.evaluate import prepare, require_inputs

    if method not in METHODS:
        raise ConfigError(f"--method must be one of {list(METHODS)}, got {method!r}")
    require_plain(model, "harden fairness")
    require_inputs(model, data)
    if epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    start = time.perf_counter()
    view = labels_in_model_order(model, prepare(model, data), label_map)
    out = Path(out_dir)
    if method == "threshold":
        return _threshold(
            model, view, data, out, attribute=attribute, by_label=by_label, seed=seed,
            constraint=constraint, positive=positive, batch_size=batch_size, device=device,
            progress=progress, name=name, start=start,
        )  # fmt: skip
    require_white_box(model, f"harden fairness --method {method} (fine-tuning)")
    _factory_of(model)  # refuse a model whose retrained weights could not be reloaded, first
    g = _at_least_two(groups_of(view, attribute, by_label=by_label), data)
    recipe = _RECIPES[method](
        g, balanced_weights(g.codes, len(g.names)), epochs=epochs, seed=seed, eta=dro_eta
    )
    trained = copy.deepcopy(model)
    report = fit(
        trained.net, view, normalize=trained.transform, epochs=epochs, lr=lr,
        batch_size=batch_size, seed=seed, device=device, progress=progress,
        objective=recipe.objective, sampler=recipe.sampler, on_epoch=recipe.on_epoch,
    )  # fmt: skip
    weights, spec, digest = save_variant(model, trained, out, name)
    table = recipe.groups()
    record = _write_record(
        out,
        {
            "method": method,
            "defense": _DEFENSES[method],
            "attribute": "+".join(g.columns),
            "groups_by_label": by_label,
            "groups": table,
            **recipe.extra(),
            "epochs": epochs,
            "optimizer": f"Adam lr={lr}",
            "batch_size": batch_size,
            "seed": seed,
            "base_model": base_record(model),
            "hardened_model": {"spec": spec.name, "digest": digest},
            "data": data_record(data),
            "train_loss": report.losses,
            "train_accuracy": report.accuracies,
            "seconds": round(time.perf_counter() - start, 3),
        },
    )
    return FairHardenResult(
        method=method, model_spec=spec, weights=weights, record=record, digest=digest,
        report=report, groups=table,
    )  # fmt: skip


_DEFENSES = {
    "reweight": "group-balanced reweighting: weighted cross-entropy, w_i = n / (G n_g)",
    "resample": "group-balanced resampling: draws with replacement, P(i) proportional to "
    "1 / n_g, seeded per epoch",
    "group-dro": "Group DRO (Sagawa et al. 2020, Algorithm 1; no group adjustments)",
    "threshold": "group-specific randomized thresholds (Hardt et al. 2016) by fairlearn "
    "ThresholdOptimizer; needs the sensitive attribute at prediction time",
}


def _at_least_two(g: Groups, data: Dataset) -> Groups:
    if len(g.names) < 2:
        raise ConfigError(
            f"--attribute {g.label}: {data.spec} holds one group ({g.names}); balancing needs "
            "two or more"
        )
    return g


def _write_record(out: Path, doc: dict[str, Any]) -> Path:
    return write_atomic(out / "harden.json", dumps(doc))


def positive_scores(
    model: Model, data: Dataset, positive: int, *, batch_size: int, device: str, progress: bool
) -> np.ndarray:
    """Softmax probability of class ``positive`` for every sample of ``data`` (prepared for
    the model), in order: the score the thresholds are fit on and applied to."""
    from raigate.privacy.mia import model_outputs

    out = model_outputs(model, data, batch_size=batch_size, device=device, progress=progress)
    return out.probs[:, positive].astype(np.float64)


def _rates(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    """Selection rate, TPR and FPR of (expected) positive predictions ``p`` against ``y``."""
    pos, neg = y == 1, y == 0
    return {
        "selection_rate": float(p.mean()) if len(p) else None,
        "tpr": float(p[pos].mean()) if pos.any() else None,
        "fpr": float(p[neg].mean()) if neg.any() else None,
    }


def _threshold(
    model: Model,
    view: Dataset,
    data: Dataset,
    out: Path,
    *,
    attribute: str,
    by_label: bool,
    seed: int,
    constraint: str,
    positive: str | None,
    batch_size: int,
    device: str,
    progress: bool,
    name: str,
    start: float,
) -> FairHardenResult:
    from raigate.defenses.thresholds import CONSTRAINTS, fit_thresholds
    from raigate.models.postprocess import (
        base_reference,
        postprocessed_digest,
        write_postprocessed_spec,
    )

    if constraint not in CONSTRAINTS:
        raise ConfigError(f"--constraint must be one of {list(CONSTRAINTS)}, got {constraint!r}")
    names = list(model.class_names)
    if len(names) != 2:
        raise ConfigError(
            f"--method threshold needs a binary task; {model.display_name} has {len(names)} "
            f"classes ({', '.join(names[:5])}{', …' if len(names) > 5 else ''}); use reweight, "
            "resample or group-dro"
        )
    if by_label:
        raise ConfigError("--by-label applies to reweight, resample and group-dro, not threshold")
    if positive is not None and positive not in names:
        raise ConfigError(f"--positive {positive!r} is not a class of the model {names}")
    pos = names.index(positive) if positive is not None else 1
    base_reference(model, out)  # the variant must be able to load its base again: check first
    g = _at_least_two(groups_of(view, attribute), data)
    keys = np.asarray(g.names, dtype=object)[g.codes]
    scores = positive_scores(
        model, view, pos, batch_size=batch_size, device=device, progress=progress
    )
    y = (view.labels == pos).astype(np.int64)
    rule = fit_thresholds(
        scores, y, keys, attributes=g.columns, constraint=constraint, positive=pos,
        negative=1 - pos, seed=seed,
    )  # fmt: skip
    spec = write_postprocessed_spec(out / f"{name}.json", model, rule)
    rule_file = out / f"{name}-{rule.kind}.json"
    digest = postprocessed_digest(model.digest, rule)
    expected = rule.positive_probability(scores, keys)
    before = (scores > 0.5).astype(np.float64)
    table = []
    for k, group in enumerate(g.names):
        m = g.codes == k
        table.append(
            {
                "group": group,
                "n": int(m.sum()),
                "rule": rule.to_dict()["groups"][group],
                "before": _rates(y[m], before[m]),
                "after_expected": _rates(y[m], expected[m]),
            }
        )
    record = _write_record(
        out,
        {
            "method": "threshold",
            "defense": _DEFENSES["threshold"],
            "needs_sensitive_attribute_at_prediction": True,
            "attribute": "+".join(g.columns),
            "constraint": constraint,
            "objective": "accuracy_score",
            "positive_class": names[pos],
            "score": "softmax probability of the positive class",
            "groups": table,
            "seed": seed,
            "base_model": base_record(model),
            "hardened_model": {"spec": spec.name, "rule": rule_file.name, "digest": digest},
            "data": data_record(data),
            "rates_on_fit_data": "before: argmax of the base model; after_expected: the rule's "
            "positive probability averaged (the randomized predictions' expectation)",
            "seconds": round(time.perf_counter() - start, 3),
        },
    )
    return FairHardenResult(
        method="threshold", model_spec=spec, weights=rule_file, record=record, digest=digest,
        report=None, groups=table,
    )  # fmt: skip
