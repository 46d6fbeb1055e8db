"""Measured leakage: membership inference against a trained model, and the epsilon it proves.

Two attacks score every example (higher = "looks like a training member"):

* ``loss``: the loss-threshold attack (Yeom et al. 2018, "Privacy Risk in Machine
  Learning"): score = minus the cross-entropy of the true label. No training, no shadow
  models, and a strong baseline on overfit models;
* ``art_blackbox``: ART's ``MembershipInferenceBlackBox`` (Shokri et al. 2017 style): an
  attack model (random forest by default) trained on the model's output probabilities and
  the label of half the members and half the non-members, scored on the other halves.

LiRA and RMIA, which calibrate each example's score by reference models, live in
:mod:`raigate.privacy.lira` and are summarized by the same :func:`score_attack`.

For each attack: AUC (the probability that a random member outscores a random
non-member, ties counting one half), TPR at FPR 0.1% and 1% (read off the ROC curve at the
largest FPR not above the target: a conservative reading), and an empirical epsilon lower
bound. (epsilon, delta)-DP implies, for every membership test, TPR <= e^eps FPR + delta and
1 - FPR <= e^eps (1 - TPR) + delta (Kairouz, Oh & Viswanath 2015; used for auditing DP-SGD
by Jagielski, Ullman & Oprea 2020 and Nasr et al. 2021). We choose the threshold on one
random half of the scores and count true/false positives on the other half, take
Clopper-Pearson bounds there (one-sided, alpha/2 each, so both hold jointly with
confidence 1 - alpha), and report the largest epsilon those bounds force. Being a lower
bound with confidence 1 - alpha, it should stay below a valid claimed epsilon; above it,
the guarantee is broken (or the audit is in the 5% tail).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import Tensor

from raigate import stats
from raigate.data.base import Dataset
from raigate.errors import ConfigError
from raigate.labels import data_to_model_index
from raigate.models.base import Model

AttackName = Literal["loss", "art_blackbox", "lira_online", "lira_offline", "rmia"]
ATTACKS: tuple[str, ...] = ("loss", "art_blackbox", "lira_online", "lira_offline", "rmia")
REFERENCE_ATTACKS: tuple[str, ...] = ("lira_online", "lira_offline", "rmia")
"""Attacks that need reference models (:mod:`raigate.privacy.lira`)."""
FPR_TARGETS: tuple[float, ...] = (0.001, 0.01)

__all__ = [
    "ATTACKS",
    "REFERENCE_ATTACKS",
    "AttackResult",
    "ModelOutputs",
    "art_blackbox_scores",
    "auc_interval",
    "clopper_pearson",
    "empirical_epsilon",
    "model_outputs",
    "score_attack",
    "tpr_at_fpr",
    "tpr_interval",
]


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Exact two-sided ``1 - alpha`` interval for a binomial proportion (Clopper & Pearson
    1934) as two floats: the scalar form of :func:`raigate.stats.clopper_pearson`
    (statsmodels' ``beta`` method), which every count here goes through; pass ``2 * a`` for
    one-sided bounds at level ``a``."""
    lo, hi = stats.clopper_pearson(k, n, alpha)
    return float(lo), float(hi)


def _eps_from_rates(tpr: float, fpr: float, delta: float) -> float:
    """Largest epsilon violated by one (TPR, FPR) pair, from both DP inequalities."""
    best = 0.0
    if fpr > 0 and tpr - delta > 0:
        best = max(best, math.log((tpr - delta) / fpr))
    if 1 - tpr > 0 and 1 - fpr - delta > 0:
        best = max(best, math.log((1 - fpr - delta) / (1 - tpr)))
    return best


def _bounded_eps(tp: int, n_pos: int, fp: int, n_neg: int, delta: float, alpha: float) -> float:
    tpr_lo, _ = clopper_pearson(tp, n_pos, alpha)  # one-sided alpha/2 lower bound
    _, fpr_hi = clopper_pearson(fp, n_neg, alpha)  # one-sided alpha/2 upper bound
    return _eps_from_rates(tpr_lo, fpr_hi, delta)


def empirical_epsilon(
    member_scores: np.ndarray,
    non_member_scores: np.ndarray,
    *,
    delta: float,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Epsilon lower bound at confidence ``1 - alpha`` from a membership score (see the
    module docstring). Returns the bound, the point estimate on the test half, the chosen
    threshold and the counts it rests on."""
    pos = np.asarray(member_scores, dtype=np.float64)
    neg = np.asarray(non_member_scores, dtype=np.float64)
    rng = np.random.default_rng([seed, 0xE5])
    pos, neg = pos[rng.permutation(len(pos))], neg[rng.permutation(len(neg))]
    pa, pb = pos[: len(pos) // 2], pos[len(pos) // 2 :]
    na, nb = neg[: len(neg) // 2], neg[len(neg) // 2 :]
    if min(len(pa), len(pb), len(na), len(nb)) == 0:
        return {"eps_lower": 0.0, "eps_point": 0.0, "threshold": None, "n_test": 0}
    # Candidate thresholds: quantiles of the calibration half (caps the search at 201).
    cands = np.unique(np.quantile(np.concatenate([pa, na]), np.linspace(0, 1, 201)))
    pa_sorted, na_sorted = np.sort(pa), np.sort(na)
    best_t, best_val = float(cands[0]), -1.0
    for t in cands:
        tp = len(pa) - int(np.searchsorted(pa_sorted, t, side="left"))
        fp = len(na) - int(np.searchsorted(na_sorted, t, side="left"))
        val = _bounded_eps(tp, len(pa), fp, len(na), delta, alpha)
        if val > best_val:
            best_t, best_val = float(t), val
    tp = int((pb >= best_t).sum())
    fp = int((nb >= best_t).sum())
    return {
        "eps_lower": _bounded_eps(tp, len(pb), fp, len(nb), delta, alpha),
        "eps_point": _eps_from_rates(tp / len(pb), fp / len(nb), delta),
        "threshold": best_t,
        "tp": tp,
        "n_members_test": len(pb),
        "fp": fp,
        "n_non_members_test": len(nb),
        "alpha": alpha,
        "delta": delta,
    }


def auc_interval(auc: float, n_pos: int, n_neg: int, alpha: float) -> tuple[float, float]:
    """Two-sided ``1 - alpha`` interval of an AUC (Hanley & McNeil 1982, their eq. 2: the
    Mann-Whitney statistic's variance with ``Q1 = A/(2-A)``, ``Q2 = 2A^2/(1+A)``), clipped to
    [0, 1]; pass ``2 * a`` for a one-sided bound at level ``a``.

    >>> lo, hi = auc_interval(0.5, 1000, 1000, 0.05)
    >>> round(hi - 0.5, 4)
    0.0253
    """
    a = float(auc)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    half = float(norm.ppf(1 - alpha / 2)) * math.sqrt(max(var, 0.0))
    return max(0.0, a - half), min(1.0, a + half)


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """TPR at the largest ROC operating point whose FPR does not exceed ``fpr``."""
    from sklearn.metrics import roc_curve

    fprs, tprs, _ = roc_curve(labels, scores)
    ok = fprs <= fpr + 1e-12
    return float(tprs[ok].max()) if ok.any() else 0.0


def tpr_interval(
    labels: np.ndarray, scores: np.ndarray, fpr: float, alpha: float
) -> tuple[float, float]:
    """Two-sided ``1 - alpha`` Clopper-Pearson interval of the TPR at the threshold
    :func:`tpr_at_fpr` reads (the members it flags, out of all members). The threshold is
    read off the same scores, so the interval covers the sampling of the members given it."""
    n_pos = int(np.sum(labels == 1))
    tp = round(tpr_at_fpr(labels, scores, fpr) * n_pos)
    return clopper_pearson(tp, n_pos, alpha)


@dataclass(frozen=True)
class AttackResult:
    """AUC, TPR at low FPR (with intervals) and the empirical epsilon bound of one attack;
    ``reference_models`` and ``queries`` say what the attack cost (0 and 1 for the loss
    attack)."""

    attack: str
    auc: float
    tpr: dict[str, float]
    epsilon: dict[str, Any]
    n_members: int
    n_non_members: int
    tpr_ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    auc_ci: tuple[float, float] | None = None
    reference_models: int = 0
    queries: int = 1

    def record(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "auc": self.auc,
            **({"auc_ci": list(self.auc_ci)} if self.auc_ci is not None else {}),
            **{f"tpr_at_fpr_{k}": v for k, v in self.tpr.items()},
            **{f"tpr_at_fpr_{k}_ci": list(v) for k, v in self.tpr_ci.items()},
            "eps_lower": self.epsilon["eps_lower"],
            "eps_point": self.epsilon.get("eps_point"),
            "n_members": self.n_members,
            "n_non_members": self.n_non_members,
            "reference_models": self.reference_models,
            "queries": self.queries,
        }


def score_attack(
    name: str,
    member_scores: np.ndarray,
    non_member_scores: np.ndarray,
    *,
    delta: float,
    alpha: float = 0.05,
    seed: int = 0,
    reference_models: int = 0,
    queries: int = 1,
) -> AttackResult:
    """Summarize an attack's scores (higher = member) into an :class:`AttackResult`; the
    AUC and TPR intervals are two-sided at ``alpha``."""
    from sklearn.metrics import roc_auc_score

    m = np.asarray(member_scores, dtype=np.float64)
    n = np.asarray(non_member_scores, dtype=np.float64)
    labels = np.concatenate([np.ones(len(m)), np.zeros(len(n))])
    scores = np.concatenate([m, n])
    if len(m) == 0 or len(n) == 0:
        raise ConfigError("a membership attack needs at least one member and one non-member")
    auc = float(roc_auc_score(labels, scores))
    tpr = {f"{f:g}": tpr_at_fpr(labels, scores, f) for f in FPR_TARGETS}
    tpr_ci = {f"{f:g}": tpr_interval(labels, scores, f, alpha) for f in FPR_TARGETS}
    eps = empirical_epsilon(m, n, delta=delta, alpha=alpha, seed=seed)
    return AttackResult(
        attack=name,
        auc=auc,
        tpr=tpr,
        epsilon=eps,
        n_members=len(m),
        n_non_members=len(n),
        tpr_ci=tpr_ci,
        auc_ci=auc_interval(auc, len(m), len(n), alpha),
        reference_models=reference_models,
        queries=queries,
    )


@dataclass(frozen=True)
class ModelOutputs:
    """Softmax probabilities, per-example loss and labels (in the model's class order)."""

    probs: np.ndarray
    loss: np.ndarray
    labels: np.ndarray


def model_outputs(
    model: Model,
    data: Dataset,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    progress: bool = True,
    label_map: dict[str, str] | None = None,
    stage: str = "model_outputs",
    seed: int = 0,
) -> ModelOutputs:
    """One pass over ``data``: probabilities, cross-entropy of the true label, and labels
    mapped to the model's class indices by name (:func:`raigate.labels.data_to_model_index`).

    The pass is cut into fixed batches of ``batch_size`` spread over the ranks of a
    ``torchrun`` world (:func:`raigate.parallel.map_batches`), so each rank scores
    ``1/N`` of the examples and every rank gets all of them back, bit for bit what one
    process computes; ``stage`` names the pass in ``--resume`` progress, distinct for each
    pass of one check."""
    from raigate import parallel
    from raigate.audit.evaluate import prepare

    to_model = data_to_model_index(model.class_names, data.class_names, label_map)
    model.to(device)
    labels = to_model[data.labels]

    @torch.no_grad()
    def score(x: Tensor, _: Tensor, pos: np.ndarray) -> parallel.Arrays:
        logits = model.logits(x.to(device)).float()
        y = torch.as_tensor(labels[pos], device=logits.device)
        return {
            "probs": logits.softmax(dim=1).cpu().numpy(),
            "loss": F.cross_entropy(logits, y, reduction="none").double().cpu().numpy(),
        }

    out = parallel.map_batches(
        prepare(model, data), batch_size, score, stage=stage, seed=seed,
        desc="membership scores", unit="images", progress=progress,
    )  # fmt: skip
    n = len(data)
    probs = out.get("probs", np.empty((n, model.num_classes), dtype=np.float32))
    loss = out.get("loss", np.empty(n, dtype=np.float64))
    return ModelOutputs(probs=probs, loss=loss, labels=labels)


def art_blackbox_scores(
    model: Model,
    members: ModelOutputs,
    non_members: ModelOutputs,
    *,
    attack_model: Literal["rf", "gb", "lr", "nn"] = "rf",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """ART ``MembershipInferenceBlackBox`` on the model's probabilities: fit on a random
    half of members and non-members, return membership probabilities for the other halves."""
    try:
        from art.attacks.inference.membership_inference import MembershipInferenceBlackBox
        from art.estimators.classification import PyTorchClassifier
    except ImportError as exc:  # pragma: no cover - ART is a declared dependency
        from raigate.errors import MissingDependencyError

        raise MissingDependencyError("adversarial-robustness-toolbox", "the ART attack") from exc
    classifier = PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(model.input_shape),
        nb_classes=model.num_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if model.device.type == "cuda" else "cpu",
    )
    rng = np.random.default_rng([seed, 0xA7])
    mi, ni = rng.permutation(len(members.labels)), rng.permutation(len(non_members.labels))
    m_fit, m_eval = mi[: len(mi) // 2], mi[len(mi) // 2 :]
    n_fit, n_eval = ni[: len(ni) // 2], ni[len(ni) // 2 :]
    attack = MembershipInferenceBlackBox(
        classifier, input_type="prediction", attack_model_type=attack_model
    )
    params = getattr(attack.attack_model, "get_params", dict)()
    if "random_state" in params:  # sklearn attack models: seeded, so reruns agree
        attack.attack_model.set_params(random_state=seed)
    attack.fit(
        y=members.labels[m_fit],
        test_y=non_members.labels[n_fit],
        pred=members.probs[m_fit],
        test_pred=non_members.probs[n_fit],
    )
    pm = attack.infer(None, members.labels[m_eval], pred=members.probs[m_eval], probabilities=True)
    pn = attack.infer(
        None, non_members.labels[n_eval], pred=non_members.probs[n_eval], probabilities=True
    )
    return np.asarray(pm, dtype=np.float64).reshape(-1), np.asarray(pn, dtype=np.float64).reshape(
        -1
    )
