"""Group-specific randomized thresholds (Hardt et al. 2016) fit by fairlearn's
``ThresholdOptimizer``, stored as plain numbers and applied without fairlearn or pickle.

For a binary task the model's score is its softmax probability of the positive class.
``ThresholdOptimizer(prefit=True, predict_method="predict_proba")`` picks, per group of the
sensitive attribute, a randomized threshold rule under an ``equalized_odds`` or
``demographic_parity`` constraint, maximising accuracy. Its fitted
``interpolated_thresholder_.interpolation_dict`` holds, per group, two threshold operations
mixed with probabilities ``p0``/``p1`` (and optionally a constant prediction with
probability ``p_ignore``). :class:`GroupThresholds` keeps exactly those numbers and predicts
as fairlearn's ``InterpolatedThresholder`` does::

    p_i = p0 * [s_i op0 t0] + p1 * [s_i op1 t1]        (then p_ignore mixing, if present)
    positive  iff  p_i >= u_i,   u = numpy.random.RandomState(seed).rand(n)

where ``u_i`` is the ``i``-th draw for the sample at position ``i`` of the audited data, so
predicting a whole dataset equals ``ThresholdOptimizer.predict(..., random_state=seed)`` on
it, in any batch order.

**The rule needs the sensitive attribute of every sample at prediction time.** Many
deployments do not have it, or may not lawfully use it to decide; the audit of such a
variant says what it would do if the attribute were available and used.

>>> import numpy as np, pandas as pd, torch
>>> rule = GroupThresholds(attributes=("g",), positive=1, negative=0, seed=0,
...     constraint="demographic_parity",
...     rules={"a": GroupRule(1.0, (">", 0.5), 0.0, (">", 0.5))})
>>> rule.predict(torch.tensor([[0.0, 2.0], [2.0, 0.0]]), pd.DataFrame({"g": ["a", "a"]})).tolist()
[1, 0]
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from raigate.defenses.groups import group_keys
from raigate.errors import ConfigError

__all__ = ["CONSTRAINTS", "GroupRule", "GroupThresholds", "fit_thresholds"]

CONSTRAINTS: tuple[str, ...] = ("equalized_odds", "demographic_parity")
KIND = "group-thresholds"


@dataclass(frozen=True)
class GroupRule:
    """One group's randomized rule: ``operation = (operator, threshold)`` with operator
    ``>`` or ``<``; ``p_ignore``/``prediction_constant`` only where fairlearn set them."""

    p0: float
    operation0: tuple[str, float]
    p1: float
    operation1: tuple[str, float]
    p_ignore: float | None = None
    prediction_constant: float | None = None

    def positive_probability(self, scores: np.ndarray) -> np.ndarray:
        p = self.p0 * _apply(self.operation0, scores) + self.p1 * _apply(self.operation1, scores)
        if self.p_ignore is not None:
            p = self.p_ignore * self.prediction_constant + (1 - self.p_ignore) * p
        return np.asarray(p, dtype=np.float64)


def _apply(operation: tuple[str, float], scores: np.ndarray) -> np.ndarray:
    op, t = operation
    return scores > t if op == ">" else scores < t


def _number(v: float) -> float | str:
    """JSON has no infinity: fairlearn's always/never thresholds are stored as text."""
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")


class GroupThresholds:
    """Per-group randomized thresholds on the positive-class probability; a model
    ``postprocess`` (see :mod:`raigate.models.postprocess`): ``predict(logits, attributes)``
    returns model class indices, ``attributes`` indexed by the samples' positions."""

    kind = KIND

    def __init__(
        self,
        *,
        attributes: tuple[str, ...],
        rules: dict[str, GroupRule],
        positive: int,
        negative: int,
        seed: int,
        constraint: str,
    ) -> None:
        self.attributes = tuple(attributes)
        self.rules = dict(rules)
        self.positive = int(positive)
        self.negative = int(negative)
        self.seed = int(seed)
        self.constraint = constraint
        self._rng = np.random.RandomState(self.seed)
        self._uniforms = np.empty(0, dtype=np.float64)

    @property
    def needs_attributes(self) -> tuple[str, ...]:
        return self.attributes

    def uniforms(self, positions: np.ndarray) -> np.ndarray:
        """``RandomState(seed).rand(n)[positions]``: the stream is drawn once, in order, and
        extended as larger positions come, so batches in any order get the same draws."""
        positions = np.asarray(positions, dtype=np.int64)
        need = int(positions.max()) + 1 if positions.size else 0
        if need > len(self._uniforms):
            more = self._rng.rand(need - len(self._uniforms))
            self._uniforms = np.concatenate([self._uniforms, more])
        return self._uniforms[positions]

    def positive_probability(self, scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Probability of predicting the positive class, per sample (fairlearn's pmf)."""
        unknown = sorted(set(groups) - set(self.rules))
        if unknown:
            raise ConfigError(
                f"group(s) {unknown[:5]} of {'+'.join(self.attributes)} were not in the data the "
                f"thresholds were fit on (fit on: {sorted(self.rules)}); refit with data that "
                "holds every group"
            )
        out = np.zeros(len(scores), dtype=np.float64)
        for name, rule in self.rules.items():
            mask = groups == name
            if mask.any():
                out[mask] = rule.positive_probability(scores[mask])
        return out

    def predict_scores(
        self, scores: np.ndarray, groups: np.ndarray, positions: np.ndarray
    ) -> np.ndarray:
        """1 (positive) or 0 per sample from positive-class probabilities, group names and
        the samples' positions in the data: fairlearn's ``predict`` with
        ``random_state=seed`` on the whole data, sample by sample."""
        p = self.positive_probability(np.asarray(scores, dtype=np.float64), groups)
        return (p >= self.uniforms(positions)).astype(np.int64)

    def predict(self, logits: Tensor, attributes: pd.DataFrame) -> np.ndarray:
        """Model class indices for a batch; ``attributes.index``: the samples' positions in
        the audited data (they pick the random draws)."""
        scores = logits.detach().softmax(dim=1)[:, self.positive].cpu().double().numpy()
        groups = group_keys(attributes, self.attributes)
        hit = self.predict_scores(scores, groups, attributes.index.to_numpy())
        return np.where(hit == 1, self.positive, self.negative).astype(np.int64)

    # -- storage ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        rules = {}
        for name, r in sorted(self.rules.items()):
            d: dict[str, Any] = asdict(r)
            d["operation0"] = [r.operation0[0], _number(r.operation0[1])]
            d["operation1"] = [r.operation1[0], _number(r.operation1[1])]
            rules[name] = {k: v for k, v in d.items() if v is not None}
        return {
            "kind": KIND,
            "attributes": list(self.attributes),
            "positive_class_index": self.positive,
            "negative_class_index": self.negative,
            "seed": self.seed,
            "constraint": self.constraint,
            "score": "softmax probability of the positive class",
            "rule": "positive iff p0*[s op0 t0] + p1*[s op1 t1] >= RandomState(seed).rand(n)[i]",
            "groups": rules,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> GroupThresholds:
        try:
            rules = {
                str(name): GroupRule(
                    p0=float(r["p0"]),
                    operation0=_operation(r["operation0"]),
                    p1=float(r["p1"]),
                    operation1=_operation(r["operation1"]),
                    p_ignore=float(r["p_ignore"]) if "p_ignore" in r else None,
                    prediction_constant=(
                        float(r["prediction_constant"]) if "prediction_constant" in r else None
                    ),
                )
                for name, r in doc["groups"].items()
            }
            return cls(
                attributes=tuple(doc["attributes"]),
                rules=rules,
                positive=int(doc["positive_class_index"]),
                negative=int(doc["negative_class_index"]),
                seed=int(doc["seed"]),
                constraint=str(doc["constraint"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"group thresholds: missing or malformed field ({e})") from None

    @classmethod
    def read(cls, path: Path) -> GroupThresholds:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read group thresholds ({e})") from None
        return cls.from_dict(doc)

    def describe(self) -> dict[str, Any]:
        """For reports: what the rule uses and that it needs the attribute to predict."""
        return {
            "kind": KIND,
            "attributes": list(self.attributes),
            "constraint": self.constraint,
            "groups": len(self.rules),
            "seed": self.seed,
            "needs_attributes_at_prediction": True,
        }


def _operation(v: Any) -> tuple[str, float]:
    op, t = v
    if op not in (">", "<"):
        raise ValueError(f"operator {op!r}")
    return str(op), float(t)


def _score_estimator() -> Any:
    """The model's precomputed positive-class probability as a prefit scikit-learn
    classifier: ``X`` is one column of scores, ``predict_proba`` returns ``[1 - s, s]``
    (a class made on use: scikit-learn is imported only when thresholds are fit)."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Scores(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
        def fit(self, X: Any, y: Any = None) -> Any:
            return self

        def __sklearn_is_fitted__(self) -> bool:
            return True

        def predict_proba(self, X: Any) -> np.ndarray:
            s = np.asarray(X, dtype=np.float64)[:, 0]
            return np.column_stack([1 - s, s])

    return Scores()


def fit_thresholds(
    scores: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    attributes: tuple[str, ...],
    constraint: str,
    positive: int,
    negative: int,
    seed: int,
) -> GroupThresholds:
    """Fit fairlearn's ``ThresholdOptimizer`` on positive-class probabilities ``scores``,
    binary labels ``y`` (1 = positive) and group names ``groups``; return its rules."""
    if constraint not in CONSTRAINTS:
        raise ConfigError(f"--constraint must be one of {list(CONSTRAINTS)}, got {constraint!r}")
    try:
        from fairlearn.postprocessing import ThresholdOptimizer
    except ImportError as e:  # pragma: no cover - a dependency of raigate
        raise ConfigError(f"threshold post-processing needs fairlearn ({e})") from None
    optimizer = ThresholdOptimizer(
        estimator=_score_estimator(),
        constraints=constraint,
        objective="accuracy_score",
        prefit=True,
        predict_method="predict_proba",
    )
    try:
        optimizer.fit(
            np.asarray(scores, dtype=np.float64)[:, None],
            np.asarray(y, dtype=np.int64),
            sensitive_features=np.asarray(groups, dtype=object),
        )
    except ValueError as e:
        raise ConfigError(f"fairlearn ThresholdOptimizer could not fit: {e}") from None
    rules = {}
    for name, b in optimizer.interpolated_thresholder_.interpolation_dict.items():
        rules[str(name)] = GroupRule(
            p0=float(b.p0),
            operation0=(b.operation0.operator, float(b.operation0.threshold)),
            p1=float(b.p1),
            operation1=(b.operation1.operator, float(b.operation1.threshold)),
            p_ignore=float(b.p_ignore) if "p_ignore" in b else None,
            prediction_constant=float(b.prediction_constant)
            if "prediction_constant" in b
            else None,
        )
    return GroupThresholds(
        attributes=attributes, rules=rules, positive=positive, negative=negative, seed=seed,
        constraint=constraint,
    )  # fmt: skip
