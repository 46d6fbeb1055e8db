"""Adversarial robustness: an ε sweep of attacks on the model and, optionally, on its
randomized-smoothing defense, next to the defense's certified accuracy.

What an attacker can do (``attacks`` table): accuracy under FGSM, PGD (native torch), the
query-only Square Attack (native, score-based) and HopSkipJump (ART, decision-based) and
any ``art:NAME`` attack at each norm and ε, with Wilson 95% intervals, per attribute value
when the data has attributes (``attacks_by_group``, ``group_gaps``). A black-box model
(``model.mode == "black-box"``: queries only) is attacked with ``square`` by default, the
query attacks spend at most ``query_budget`` queries per image and each of their rows says
how many it spent (:mod:`raigate.audit.robustness_attacks`). What a defense buys
back, honestly: with ``smoothing_sigma`` the same attacks run against the smoothed
classifier, adaptively (expectation over ``eot_samples`` noise draws per gradient step,
Salman et al. 2019), and ``smoothed_vs_base`` gives the accuracy ratio per attack, norm and
ε. Smoothing an ordinary model mostly abstains, so the defended classifier is usually the
smoothing of a noise-trained variant (``smoothing_model``, made by ``raigate harden
smoothing``): the base rows then attack the audited model as shipped and the smoothed rows
attack the defense built from the variant, which is the comparison a release needs;
``certification`` gives Cohen et al. (2019)'s certified accuracy at L2 radii, from
CERTIFY with ``certify_n0``/``certify_n`` draws at failure probability ``alpha``.

Gates (``raigate.audit.robustness_gates``): ``min_robust_accuracy`` rules gate the accuracy
under a named attack, norm and ε, ``min_certified_accuracy`` rules the certified accuracy at
a radius, each by its exact interval at ``gate_alpha`` over all of them (Bonferroni). The
gradient-masking findings only say whether the attack is sound; without a rule the result's
``verdict_scope`` says "attack soundness checked; robustness not gated".

Definitions (also in ``params.definitions`` of every result): ε and radii are in pixel
units of the [0, 1] image the model takes (L-inf: per pixel; L2: over all C·H·W values);
accuracy under attack = fraction of samples still classified correctly (model classes
matched to data labels by name); the smoothed model's accuracy = majority vote over
``predict_n`` noise draws at the attacked point (``accuracy_predict``: Cohen's PREDICT
with abstentions counted as errors); certified accuracy at r = fraction of samples that
CERTIFY classifies correctly with radius >= r.

>>> import raigate
>>> from raigate.audit import robustness
>>> data = raigate.load_data("demo:test", limit=16)
>>> model = raigate.load_model("raigate.zoo:small_cnn", data=data, random_init=True)
>>> params = robustness.RobustnessParams(eps=[2 / 255], pgd_steps=2, progress=False)
>>> result = robustness.run(model, data, params)
>>> [(r["attack"], r["eps"] > 0) for r in result.metrics["attacks"]]
[('clean', False), ('fgsm', True), ('pgd', True)]
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from scipy.stats import norm as gaussian

from raigate import progress as _progress
from raigate._io import write_atomic
from raigate.attacks import (
    MIN_QUERY_BUDGET,
    QueryResult,
    check_norm,
    default_step_size,
    fgsm,
    hop_skip_jump,
    is_black_box,
    parse_attack_params,
    perturbation_norm,
    pgd_search,
    resolve_art_attack,
    run_art_attack,
    square_attack,
    takes_eps,
)
from raigate.audit.evaluate import prepare, require_inputs
from raigate.audit.robustness_attacks import (
    DEFAULT_ATTACKS,
    NATIVE_ATTACKS,
    QUERY_ATTACKS,
    attack_order,
    check_attacks_for,
    query_definitions,
    query_findings,
    skipped_without_gradients,
)
from raigate.audit.robustness_findings import (
    eps_text,
    group_gap_records,
    group_records,
    masking_findings,
    plot_certification,
    plot_sweep,
)
from raigate.audit.robustness_gates import (
    NOT_GATED,
    CertifiedAccuracyRule,
    RobustAccuracyRule,
    check_certified_rules,
    check_robust_rules,
    coerce_rules,
    gate_findings,
    gate_params,
)
from raigate.data.base import Dataset, select
from raigate.defenses.smoothing import SmoothedClassifier, predict_from_counts
from raigate.environment import collect_environment
from raigate.errors import ConfigError
from raigate.labels import LabelMap, align_classes, data_to_model_index
from raigate.models.base import Model, require_plain
from raigate.parallel import current, item_seed, map_batches
from raigate.results import CheckResult, DataRef, Finding, ModelRef
from raigate.sanity import accuracy_findings
from raigate.stats import wilson_interval
from raigate.throughput import Throughput, accelerate, resolve_batch_size
from raigate.values import Fraction, Listed, Seed

NAME = "robustness"
DEFAULT_EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
Record = dict[str, Any]
Key = tuple[str, str, str | None, float | None]

__all__ = ["NAME", "RobustnessParams", "run", "validate"]


class RobustnessParams(BaseModel):
    """Parameters of the robustness check; every number in the result is labelled by them."""

    model_config = ConfigDict(extra="forbid")
    # in an audit plan, smoothing_model names a [models.NAME] table; run() takes the loaded
    # model as smoothing_base (raigate.config)
    PLAN_MODEL_FIELDS: ClassVar[dict[str, str]] = {"smoothing_model": "smoothing_base"}
    # resolved relative to the audit plan file (raigate.config); a label map may be a JSON file
    PLAN_PATH_FIELDS: ClassVar[dict[str, str]] = {"label_map": "path"}

    attacks: Annotated[list[str], Listed] | None = Field(
        None,
        description="fgsm, pgd, square, hsj and/or art:NAME; default: fgsm and pgd on a "
        "white-box model, square on a black-box one",
    )
    attack_params: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments for art:NAME attacks (JSON)"
    )
    # `norm` and `radii` are the CLI's names (--norm, --radii); a plan takes either spelling
    norms: Annotated[list[Literal["linf", "l2"]], Listed] = Field(
        default_factory=lambda: ["linf"], validation_alias=AliasChoices("norms", "norm")
    )
    eps: Annotated[list[Fraction], Listed] = Field(default_factory=lambda: list(DEFAULT_EPS))
    pgd_steps: int = Field(20, ge=1)
    pgd_restarts: int = Field(1, ge=1)
    pgd_step_size: Fraction | None = Field(None, gt=0, description="default 2.5*eps/steps")
    query_budget: int = Field(
        1000,
        ge=MIN_QUERY_BUDGET,
        description="square and hsj: the most queries per image, its clean query included",
    )
    smoothing_sigma: Fraction | None = Field(None, gt=0, description="None: no smoothing")
    smoothing_model: str | None = Field(
        None,
        description="smooth this model (e.g. a noise-trained variant from `raigate harden "
        "smoothing`) instead of the audited one: a model spec, or in an audit plan the name of "
        "a [models.NAME] table; same classes and input shape",
    )
    eot_samples: int = Field(8, ge=1, description="noise draws per attack gradient step")
    predict_n: int = Field(100, ge=1, description="noise draws per smoothed prediction")
    certify: bool = True
    certify_n: int = Field(100_000, ge=1)
    certify_n0: int = Field(100, ge=1)
    alpha: float = Field(0.001, gt=0, lt=0.5)
    certify_radii: Annotated[list[Fraction], Listed] = Field(
        default_factory=lambda: list(DEFAULT_RADII),
        validation_alias=AliasChoices("certify_radii", "radii"),
        description="L2 radii of the certified-accuracy table",
    )
    certify_max_samples: int | None = Field(
        None, ge=1, description="certify a seeded class-stratified subset (default: all samples)"
    )
    max_samples: int = Field(500, ge=1, description="seeded stratified sample above this")
    large_eps_check: bool = True
    masking_tolerance: float = Field(0.02, ge=0, le=1)
    large_eps_max_accuracy: float = Field(0.10, ge=0, le=1)
    min_certified_ratio: float = Field(
        0.5, ge=0, le=1, description="warn when certified accuracy at r=0 < this x clean"
    )
    # robustness gates (raigate.audit.robustness_gates); after the fields they refer to, so
    # their validators see the attacks, norms, eps and smoothing settings
    min_robust_accuracy: list[RobustAccuracyRule] = Field(
        default_factory=list,
        description="gates: minimum accuracy under an attack, e.g. "
        '{attack = "pgd", norm = "linf", eps = "8/255", min = 0.4} or "pgd:linf:8/255=0.4"',
    )
    min_certified_accuracy: list[CertifiedAccuracyRule] = Field(
        default_factory=list,
        description="gates: minimum certified accuracy, e.g. {radius = 0.25, min = 0.6} or "
        '"0.25=0.6"',
    )
    gate_alpha: float = Field(
        0.05, gt=0, lt=1, description="family-wise error of the robustness gates (Bonferroni)"
    )
    label_map: LabelMap = Field(None, description="model class -> data label")
    batch_size: int = Field(128, gt=0, description="images per attack batch")
    smoothing_batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] = Field(
        1000, description='noisy images per forward pass; "auto": measured (raigate.throughput)'
    )
    # throughput of the base model's forward passes (raigate.throughput); off: fp32 eager
    channels_last: bool = Field(False, description="inputs in channels-last memory order")
    compile: bool = Field(False, description="torch.compile the base model (inductor)")
    bf16: bool = Field(False, description="bfloat16 autocast (CUDA, or a CPU with native bf16)")
    workers: int = Field(0, ge=0)
    device: str = "cpu"
    seed: Seed = 0
    progress: bool = True

    @field_validator("attacks")
    @classmethod
    def _attack_names(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None  # chosen by the model's mode in run()
        if not v:
            raise ValueError("give at least one attack (fgsm, pgd, square, hsj or art:NAME)")
        for a in v:
            if a not in NATIVE_ATTACKS and not (a.startswith("art:") and len(a) > 4):
                raise ValueError(f"unknown attack {a!r}; use fgsm, pgd, square, hsj or art:NAME")
        return sorted(dict.fromkeys(v), key=attack_order)

    @field_validator("eps", "certify_radii")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one value")
        bad = [x for x in v if not (math.isfinite(x) and x >= 0)]
        if bad:
            raise ValueError(f"values must be finite and >= 0, got {bad[0]}")
        return sorted(set(v))

    @field_validator("norms")
    @classmethod
    def _norms(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one norm (linf, l2)")
        return list(dict.fromkeys(v))

    @field_validator("attack_params", mode="before")
    @classmethod
    def _attack_params_text(cls, v: Any) -> Any:
        # the JSON text --attack-params takes; a plan may also write the table itself
        if not isinstance(v, str):
            return v
        try:
            return parse_attack_params(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("min_robust_accuracy", mode="before")
    @classmethod
    def _robust_rules_in(cls, v: Any) -> list[Any]:
        return coerce_rules(RobustAccuracyRule, v)

    @field_validator("min_certified_accuracy", mode="before")
    @classmethod
    def _certified_rules_in(cls, v: Any) -> list[Any]:
        return coerce_rules(CertifiedAccuracyRule, v)

    @field_validator("min_robust_accuracy")
    @classmethod
    def _robust_rules_measured(
        cls, v: list[RobustAccuracyRule], info: ValidationInfo
    ) -> list[RobustAccuracyRule]:
        d = info.data
        if not v or not {"attacks", "norms", "eps"} <= set(d):
            return v  # a field they refer to failed first and is reported instead
        # attacks None: either mode's default may run; run() checks again once it knows
        either = {a for m in DEFAULT_ATTACKS.values() for a in m}
        attacks = d["attacks"] or sorted(either, key=attack_order)
        return check_robust_rules(
            v, attacks=attacks, norms=d["norms"], eps=d["eps"],
            smoothing=d.get("smoothing_sigma") is not None, base_only=QUERY_ATTACKS,
        )  # fmt: skip

    @field_validator("min_certified_accuracy")
    @classmethod
    def _certified_rules_measured(
        cls, v: list[CertifiedAccuracyRule], info: ValidationInfo
    ) -> list[CertifiedAccuracyRule]:
        d = info.data
        if not v or not {"smoothing_sigma", "certify", "certify_n", "alpha"} <= set(d):
            return v
        sigma = d["smoothing_sigma"]
        return check_certified_rules(
            v,
            certifies=sigma is not None and d["certify"],
            top=max_certifiable_radius(sigma, d["certify_n"], d["alpha"]) if sigma else 0.0,
            settings=f"certify_n={d['certify_n']} draws at sigma={sigma}, alpha={d['alpha']:g}",
        )

    @model_validator(mode="after")
    def _n0_le_n(self) -> RobustnessParams:
        if self.smoothing_model is not None and self.smoothing_sigma is None:
            raise ValueError(
                "--smoothing-model needs --smoothing-sigma: the sigma the variant was "
                "noise-trained at"
            )
        if self.certify_n0 > self.certify_n:
            raise ValueError(
                f"--certify-n0 ({self.certify_n0}) must not exceed --certify-n "
                f"({self.certify_n}): n0 selects the class, n estimates its probability"
            )
        return self


def _definitions(p: RobustnessParams, mode: str = "white-box") -> dict[str, str]:
    d = {
        "eps": "perturbation budget in pixel units of [0,1] images; linf: max per-pixel "
        "change, l2: Euclidean length over all C*H*W values",
        "accuracy": "fraction of samples classified as their true label after the attack "
        "(model classes matched to data labels by name); ci: Wilson score 95%",
        "fgsm": "one step eps*sign(grad) (linf) or eps*grad/||grad||_2 (l2), clip, project "
        "(Goodfellow et al. 2015; identical to ART FastGradientMethod)",
        "pgd": f"{p.pgd_steps} steps of size "
        + ("2.5*eps/steps" if p.pgd_step_size is None else f"{p.pgd_step_size:g}")
        + f", {p.pgd_restarts} random start(s), per-sample worst over iterates, the clean "
        "image and the FGSM point (Madry et al. 2018); pgd_own_accuracy leaves out the FGSM "
        "point",
        "max_perturbation": "largest measured perturbation of the row in its norm",
        "large_eps_check": "PGD at linf eps 0.5 / l2 eps 0.5*sqrt(C*H*W): any image can be "
        "made flat grey, so a working attack should reach ~0 accuracy",
    }
    if p.min_robust_accuracy or p.min_certified_accuracy:
        d["gates"] = (
            "per rule: FAIL when the whole two-sided Clopper-Pearson interval of the accuracy, "
            "at confidence 1 - gate_alpha/m (Bonferroni over the m gates), lies below the "
            "minimum, WARN when it straddles it, PASS when it lies at or above it; robust "
            "accuracy under an attack is an upper bound on true robust accuracy, certified "
            "accuracy a lower bound"
        )
    if p.smoothing_sigma is not None:
        f_is = (
            "the audited model"
            if p.smoothing_model is None
            else f"the variant {p.smoothing_model} (smoothing_model; base rows attack the "
            "audited model, smoothed rows the defense built from the variant)"
        )
        d.update(
            smoothed_model="randomized smoothing g(x)=argmax_c P(f(x+d)=c), d~N(0, sigma^2 I) "
            f"on pixels, sigma={p.smoothing_sigma:g} (Cohen et al. 2019); f = {f_is}",
            smoothed_attack=f"EOT: gradients of log mean softmax over {p.eot_samples} fresh "
            "noise draws per step (Salman et al. 2019)",
            smoothed_accuracy=f"majority vote of the base model over {p.predict_n} noise draws "
            f"at the attacked point; accuracy_predict: Cohen's PREDICT (binomial test at "
            f"alpha={p.alpha:g}), abstentions counted as errors",
            ratio="smoothed accuracy / base accuracy for the same attack, norm and eps",
            certified_accuracy=f"fraction of certified samples CERTIFY (n0={p.certify_n0}, "
            f"n={p.certify_n}, alpha={p.alpha:g}, one-sided Clopper-Pearson) classifies "
            "correctly with L2 radius >= r = sigma*Phi^-1(pA_lower)",
            average_certified_radius="mean over certified samples of the radius if correct, "
            "else 0 (Zhai et al. 2020)",
            abstain_rate="fraction of certified samples where CERTIFY abstained (pA_lower <= 1/2)",
            certified_wrong_rate="fraction of certified samples where CERTIFY certified a wrong "
            "class: the certificate says the smoothed prediction is stable, not that it is right",
        )
    d.update(query_definitions(p.attacks or [], p.query_budget, p.seed))
    if mode == "black-box":
        for gone in ("fgsm", "pgd", "smoothed_attack"):
            d.pop(gone, None)
        skipped = skipped_without_gradients(p.smoothing_sigma is not None)
        d["mode"] = (
            "black-box: the model only answers queries (no input gradients), so only "
            "query attacks ran; skipped: " + "; ".join(f"{k} ({why})" for k, why in skipped.items())
        )
        d["large_eps_check"] = "skipped: " + skipped["large_eps_check"]
    return d


class _Sweep:
    """Per-sample outcomes of every (model, attack, norm, eps) row, filled batch by batch."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.correct: dict[Key, np.ndarray] = {}
        self.own: dict[Key, np.ndarray] = {}
        self.predict_ok: dict[Key, np.ndarray] = {}
        self.abstain: dict[Key, np.ndarray] = {}
        self.queries: dict[Key, np.ndarray] = {}  # query attacks: queries spent per image
        self.max_pert: dict[Key, float] = {}
        self.order: list[Key] = []

    def arr(self, store: dict[Key, np.ndarray], key: Key, dtype: type = bool) -> np.ndarray:
        if key not in store:
            store[key] = np.zeros(self.n, dtype=dtype)
        return store[key]

    def put(self, key: Key, idx: np.ndarray, ok: np.ndarray, pert: float) -> None:
        if key not in self.correct:
            self.order.append(key)
        self.arr(self.correct, key)[idx] = ok
        self.max_pert[key] = max(self.max_pert.get(key, 0.0), pert)

    _STORES: ClassVar[tuple[str, ...]] = ("correct", "own", "predict_ok", "abstain", "queries")

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """This batch's outcomes as flat arrays (raigate.parallel exchanges no objects):
        ``PREFIX|STORE|KEY-as-JSON``, the batch's max perturbation repeated per image."""
        out: dict[str, np.ndarray] = {}
        for key in self.order:
            k = json.dumps(list(key))
            for store in self._STORES:
                if key in getattr(self, store):
                    out[f"{prefix}|{store}|{k}"] = getattr(self, store)[key]
            out[f"{prefix}|max_pert|{k}"] = np.full(self.n, self.max_pert[key])
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str, n: int) -> _Sweep:
        """The whole sample's sweep from the gathered :meth:`to_arrays` of every batch."""
        sweep = cls(n)
        for name, a in arrays.items():
            pre, store, k = name.split("|", 2)
            if pre != prefix:
                continue
            key: Key = tuple(json.loads(k))  # type: ignore[assignment]
            if key not in sweep.correct and store == "correct":
                sweep.order.append(key)
            if store == "max_pert":
                sweep.max_pert[key] = float(a.max()) if len(a) else 0.0
            else:
                getattr(sweep, store)[key] = a
        return sweep


class _Evaluator:
    """Correctness of a batch under the base model or the smoothed model's vote."""

    def __init__(self, model: Model, mapping: np.ndarray, device: str) -> None:
        self.model = model
        self.map = torch.as_tensor(mapping, device=device)

    def to_data(self, pred: torch.Tensor) -> torch.Tensor:
        """Model class indices to data label indices (-1: abstain or not a data class)."""
        return torch.where(pred >= 0, self.map[pred.clamp(min=0)], torch.full_like(pred, -1))

    @torch.no_grad()
    def base(self, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        return (self.to_data(self.model.logits(x).argmax(1)) == y).cpu().numpy()

    def smoothed(
        self, sm: SmoothedClassifier, x: torch.Tensor, y: torch.Tensor, n: int, alpha: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(majority vote correct, PREDICT correct, PREDICT abstained) from one set of draws."""
        counts = sm.counts(x, n)
        vote = (self.to_data(counts.argmax(1)) == y).cpu().numpy()
        pred = predict_from_counts(counts, alpha)
        ok = ((pred >= 0) & (self.to_data(pred) == y)).cpu().numpy()
        return vote, ok, (pred < 0).cpu().numpy()


class _Runner:
    """Runs every attack row on one batch for one target (base or smoothed) and records it."""

    def __init__(
        self,
        p: RobustnessParams,
        ev: _Evaluator,
        smoothed: SmoothedClassifier | None,
        input_shape: tuple[int, int, int],
    ) -> None:
        self.p = p
        self.ev = ev
        self.smoothed = smoothed
        self.input_shape = input_shape
        self.rows: _progress.Bar = _progress.bar(0, "", show=False)
        """Counts each row recorded: a batch of a long sweep can take minutes."""

    def record(
        self,
        store: _Sweep,
        key: Key,
        x_adv: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        idx: np.ndarray,
    ) -> None:
        self.rows.update(1)
        norm = key[2]
        pert = 0.0
        if norm is not None:
            pert = float(perturbation_norm(x_adv, x, check_norm(norm)).max())
        if key[0] == "base" or self.smoothed is None:
            store.put(key, idx, self.ev.base(x_adv, y), pert)
            return
        vote, ok, abstain = self.ev.smoothed(
            self.smoothed, x_adv, y, self.p.predict_n, self.p.alpha
        )
        store.put(key, idx, vote, pert)
        store.arr(store.predict_ok, key)[idx] = ok
        store.arr(store.abstain, key)[idx] = abstain

    def query(
        self,
        store: _Sweep,
        key: Key,
        res: QueryResult,
        x: torch.Tensor,
        y: torch.Tensor,
        idx: np.ndarray,
        *,
        minimal: bool = False,
    ) -> None:
        """A query attack's row and its queries. ``minimal`` (HopSkipJump, no eps of its
        own): a point counts only where it lies within the key's eps, else the clean image
        stays in the row."""
        x_row = res.x_adv
        if minimal:
            within = res.success & (res.distance <= (key[3] or 0.0))
            x_row = torch.where(within.view(-1, 1, 1, 1), res.x_adv, x)
        self.record(store, key, x_row, x, y, idx)
        store.arr(store.queries, key, np.int64)[idx] = res.queries.cpu().numpy()

    def own(
        self, store: _Sweep, key: Key, x_own: torch.Tensor, y: torch.Tensor, idx: np.ndarray
    ) -> None:
        """Outcome at PGD's own worst point (without the FGSM candidate)."""
        if key[0] == "base" or self.smoothed is None:
            ok = self.ev.base(x_own, y)
        else:
            ok = self.ev.smoothed(self.smoothed, x_own, y, self.p.predict_n, self.p.alpha)[0]
        store.arr(store.own, key)[idx] = ok

    def batch(
        self,
        name: str,
        target: Model,
        x: torch.Tensor,
        y: torch.Tensor,
        y_model: torch.Tensor,
        idx: np.ndarray,
        sweep: _Sweep,
        big: _Sweep,
    ) -> None:
        p = self.p
        attacks = p.attacks or []
        if name != "base":  # the query attacks attack the base model only
            attacks = [a for a in attacks if a not in QUERY_ATTACKS]
        self.record(sweep, (name, "clean", None, 0.0), x, x, y, idx)
        for norm in p.norms:
            hsj: QueryResult | None = None  # minimal perturbation: one run serves every eps
            for eps in p.eps:
                x_fgsm = None
                for attack in attacks:
                    key: Key = (name, attack, norm, eps)
                    if attack == "square":
                        res_q = square_attack(
                            target, x, y_model, eps=eps, norm=norm,
                            query_budget=p.query_budget, seed=p.seed,
                        )  # fmt: skip
                        self.query(sweep, key, res_q, x, y, idx)
                    elif attack == "hsj":
                        if hsj is None:
                            hsj = hop_skip_jump(
                                target, x, y_model, norm=norm, query_budget=p.query_budget,
                                seed=p.seed,
                            )  # fmt: skip
                        self.query(sweep, key, hsj, x, y, idx, minimal=True)
                    elif attack == "fgsm":
                        x_fgsm = fgsm(target, x, y_model, eps=eps, norm=norm)
                        self.record(sweep, key, x_fgsm, x, y, idx)
                    elif attack == "pgd":
                        res = pgd_search(
                            target, x, y_model, eps=eps, norm=norm, steps=p.pgd_steps,
                            step_size=p.pgd_step_size, restarts=p.pgd_restarts,
                            include_fgsm=x_fgsm is None,
                            candidates=() if x_fgsm is None else (x_fgsm,), seed=p.seed,
                        )  # fmt: skip
                        self.record(sweep, key, res.x_adv, x, y, idx)
                        self.own(sweep, key, res.x_own, y, idx)
                    elif takes_eps(attack):
                        x_art = run_art_attack(
                            target, attack, x, y_model, params=p.attack_params, eps=eps, norm=norm
                        )
                        self.record(sweep, key, x_art, x, y, idx)
            if p.large_eps_check and "pgd" in attacks:
                eps_big = _large_eps(norm, self.input_shape)
                res = pgd_search(
                    target, x, y_model, eps=eps_big, norm=norm, steps=p.pgd_steps, seed=p.seed
                )
                self.record(big, (name, "pgd", norm, eps_big), res.x_adv, x, y, idx)
        for attack in attacks:
            if attack.startswith("art:") and not takes_eps(attack):
                # no budget parameter: one run, its own budget; max_perturbation says what it used
                x_art = run_art_attack(target, attack, x, y_model, params=p.attack_params)
                self.record(sweep, (name, attack, p.norms[0], None), x_art, x, y, idx)


def stratified_positions(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` sorted positions, every class keeping its share (largest remainder), seeded."""
    n = len(labels)
    if k >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * k / n
    take = np.floor(exact).astype(int)
    take[np.argsort(-(exact - take), kind="stable")[: k - take.sum()]] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=int(t), replace=False)
        for c, t in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can give with ``n`` draws: all ``n`` votes for the class,
    so pA_lower = alpha^(1/n) (Cohen et al. 2019), radius sigma * Phi^-1(pA_lower)."""
    return float(sigma) * float(gaussian.ppf(alpha ** (1 / n)))


def _large_eps(norm: str, shape: tuple[int, int, int]) -> float:
    return 0.5 if norm == "linf" else round(0.5 * math.sqrt(math.prod(shape)), 6)


def _estimate(p: RobustnessParams, n: int) -> str:
    """Approximate forward passes of the sweep, a backward pass counted as two."""
    fb = 3  # forward + backward
    attacks = p.attacks or []
    per = 0
    if "fgsm" in attacks:
        per += fb + 1
    if "pgd" in attacks:
        per += p.pgd_restarts * (p.pgd_steps * fb + 1) + 3
    settings = len(p.norms) * len(p.eps)
    big = len(p.norms) * (p.pgd_steps * fb + 4) if p.large_eps_check and "pgd" in attacks else 0
    # square: a run per norm and eps, hsj: one per norm; each row also evaluates its points
    runs = settings * ("square" in attacks) + len(p.norms) * ("hsj" in attacks)
    queries = n * (p.query_budget * runs + settings * sum(a in QUERY_ATTACKS for a in attacks))
    base = n * (1 + per * settings + big) + queries
    text = f"attacks: about {base:,} forward passes on the base model"
    if queries:
        text += f" (at most {queries:,} by the query attacks, which stop early on success)"
    if p.smoothing_sigma is not None:
        on_smoothed = [a for a in attacks if a not in QUERY_ATTACKS]
        rows = 1 + sum(2 if a == "pgd" else 1 for a in on_smoothed) * settings + len(p.norms)
        smooth = n * ((per * settings + big) * p.eot_samples + rows * p.predict_n)
        text += (
            f" and {smooth:,} for the smoothed model (EOT m={p.eot_samples}, "
            f"predict_n={p.predict_n})"
        )
    if any(a.startswith("art:") for a in attacks):
        text += " plus the ART attacks' own queries"
    return text + f"; n={n} samples"


def _resolve_attacks(p: RobustnessParams, model: Model) -> RobustnessParams:
    """``p`` with the attacks for ``model``: the mode's default when none were given, ART
    names resolved, a gradient attack on a black-box model refused, and the gate rules
    checked against what will actually run; each problem a one-line ConfigError."""
    attacks = list(p.attacks) if p.attacks is not None else list(DEFAULT_ATTACKS[model.mode])
    for a in attacks:
        if a.startswith("art:"):
            resolve_art_attack(a)  # a typo fails now, not after an hour of PGD
    check_attacks_for(attacks, model.mode, model.display_name)
    try:
        rules = check_robust_rules(
            p.min_robust_accuracy, attacks=attacks, norms=p.norms, eps=p.eps,
            smoothing=p.smoothing_sigma is not None, base_only=QUERY_ATTACKS,
        )  # fmt: skip
    except ValueError as e:
        raise ConfigError(f"min_robust_accuracy {e}") from None
    return p.model_copy(update={"attacks": attacks, "min_robust_accuracy": rules})


def validate(
    model: Model, data: Dataset, params: RobustnessParams, smoothing_base: Model | None = None
) -> None:
    """Plan preflight: samples, channels, class names, attack names (and whether they can
    attack a black-box model) and the smoothed variant's fit, checked before any check of
    the plan runs."""
    require_plain(model, "the robustness check")
    require_inputs(model, data)
    align_classes(model.class_names, data.class_names, params.label_map)
    _resolve_attacks(params, model)
    if smoothing_base is not None:
        _smoothing_base(model, data, params, smoothing_base)


def run(
    model: Model,
    data: Dataset,
    params: RobustnessParams | None = None,
    *,
    out_dir: str | Path | None = None,
    echo: Callable[[str], None] | None = None,
    smoothing_base: Model | None = None,
) -> CheckResult:
    """Run the sweep (and smoothing + certification when ``smoothing_sigma`` is set).

    ``smoothing_base`` is the model the defense smooths (default: ``params.smoothing_model``
    loaded as a model spec, else ``model`` itself). ``echo`` receives the cost estimates
    printed before the attacks and before certification. With ``out_dir``, plots and
    ``certification.csv`` are written there and listed in ``artifacts``; ``result.json`` is
    the caller's (``result.write(out_dir)``).
    """
    p = params or RobustnessParams()
    if smoothing_base is not None and p.smoothing_model is None:
        p = p.model_copy(update={"smoothing_model": smoothing_base.spec})
    say = echo or (lambda _msg: None)
    start = time.perf_counter()
    require_plain(model, "the robustness check")
    mapping = align_classes(model.class_names, data.class_names, p.label_map)
    inverse = data_to_model_index(model.class_names, data.class_names, p.label_map)
    p = _resolve_attacks(p, model)
    for rule in p.min_robust_accuracy:
        if rule.attack.startswith("art:") and not takes_eps(rule.attack):
            raise ConfigError(
                f"min_robust_accuracy rule {rule.text}: {rule.attack} takes no eps budget (it "
                "runs once, unbounded), so no row has that eps; gate an attack with a budget"
            )
    chosen = select(data, sample=p.max_samples, seed=p.seed) if len(data) > p.max_samples else data
    prepared = prepare(model, chosen)
    n = len(prepared)
    if n == 0:
        raise ConfigError(f"{data.spec} has no samples to attack")
    model.to(p.device)
    smoothed = None
    f = model
    fast = accelerate(model, Throughput.of(p), device=p.device)
    targets: list[tuple[str, Model]] = [("base", fast)]
    if p.smoothing_sigma is not None:
        f = _smoothing_base(model, data, p, smoothing_base)
        f.to(p.device)
        fast_f = fast if f is model else accelerate(f, Throughput.of(p), device=p.device)
        noise_batch = resolve_batch_size(p.smoothing_batch_size, fast_f, device=p.device)
        smoothed = SmoothedClassifier(
            fast_f, p.smoothing_sigma, eot_samples=p.eot_samples,
            batch_size=noise_batch.size, seed=p.seed,
        )  # fmt: skip
        targets.append(("smoothed", smoothed))
    say(_estimate(p, n))

    ev = _Evaluator(model, mapping, p.device)
    runner = _Runner(p, ev, smoothed, model.input_shape)
    inv_t = torch.as_tensor(inverse, device=p.device)

    def attack_batch(x: torch.Tensor, y: torch.Tensor, pos: np.ndarray) -> dict[str, np.ndarray]:
        """Every row on one fixed batch; its noise and random starts are the batch's own
        (raigate.parallel seeds the global RNGs; the smoothed model's stream restarts)."""
        if smoothed is not None:
            smoothed.reseed(item_seed(p.seed, "smoothed", int(pos[0])))
        x, y = x.to(p.device), y.to(p.device)
        local, local_big = _Sweep(len(pos)), _Sweep(len(pos))
        idx = np.arange(len(pos))
        with _progress.bar(None, "attack rows", "rows", show=p.progress) as runner.rows:
            for name, target in targets:
                runner.batch(name, target, x, y, inv_t[y], idx, local, local_big)
        return {**local.to_arrays("sweep"), **local_big.to_arrays("big")}

    gathered = map_batches(
        prepared, p.batch_size, attack_batch, stage="attacks", seed=p.seed,
        workers=p.workers, desc="robustness", unit="images", progress=p.progress,
    )  # fmt: skip
    sweep = _Sweep.from_arrays(gathered, "sweep", n)
    big = _Sweep.from_arrays(gathered, "big", n)

    rows = _rows(sweep, p)
    large_rows = _rows(big, p)
    by_group = group_records(rows, sweep.correct, prepared.attributes)
    for r in (*rows, *large_rows):
        r.pop("key")
    findings = masking_findings(
        rows, large_rows, tolerance=p.masking_tolerance,
        large_eps_max_accuracy=p.large_eps_max_accuracy,
    )  # fmt: skip
    findings += query_findings(rows, p.query_budget)
    clean = sweep.correct[("base", "clean", None, 0.0)]
    findings += accuracy_findings(
        NAME, model, prepared, clean, device=p.device, batch_size=p.batch_size
    )
    attacked = [r["accuracy"] for r in rows if r["model"] == "base" and r["attack"] != "clean"]
    metrics: dict[str, Any] = {
        "n": n,
        "clean_accuracy": next(r["accuracy"] for r in rows if r["attack"] == "clean"),
        "min_robust_accuracy": min(attacked) if attacked else None,
        "attacks": rows,
        "attacks_by_group": by_group,
        "group_gaps": group_gap_records(by_group),
        "large_eps_check": large_rows,
    }
    artifacts: list[str] = []
    cert: dict[str, Any] | None = None
    if smoothed is not None:
        metrics["smoothed_vs_base"] = _ratios(rows, p)
        metrics["smoothing_model"] = [
            {**ModelRef.of(f).model_dump(exclude={"warnings"}), "same_as_audited": f is model}
        ]
        if p.certify:
            base_clean = sweep.correct[("base", "clean", None, 0.0)]
            cert = _certify(smoothed, prepared, ev, p, say, base_clean)
            metrics.update(cert["metrics"])
            findings.append(cert["finding"])
            if out_dir is not None:
                artifacts += _write_certification(cert, prepared, p, Path(out_dir))
    if out_dir is not None:
        plot_sweep(rows, Path(out_dir) / "robust_accuracy.png")
        artifacts.append("robust_accuracy.png")
    gate_rows, gate_found = _gates(p, rows, cert)
    if gate_rows:
        metrics["gates"] = gate_rows

    return CheckResult(
        check=NAME,
        params={
            **p.model_dump(exclude={"progress"}),
            "n": n,
            "mode": model.mode,
            **(
                {"skipped": skipped_without_gradients(p.smoothing_sigma is not None)}
                if model.mode == "black-box"
                else {}
            ),
            "definitions": _definitions(p, model.mode),
            "interval": "Wilson score, 95%",
            "gates": gate_params(p.min_robust_accuracy, p.min_certified_accuracy, p.gate_alpha),
            **({"smoothing_batch": noise_batch.as_dict()} if smoothed is not None else {}),
        },
        metrics=metrics,
        findings=[*findings, *gate_found],
        verdict_scope=None if gate_found else NOT_GATED,
        artifacts=sorted(artifacts),
        seed=p.seed,
        environment=collect_environment(p.device),
        model=ModelRef.of(model),
        data=DataRef.of(chosen, n),  # the audited sample's manifest (subsets share spec)
        timing_s=round(time.perf_counter() - start, 3),
    )


def _gates(
    p: RobustnessParams, rows: list[Record], cert: dict[str, Any] | None
) -> tuple[list[Record], list[Finding]]:
    """The robustness gates' table and findings (raigate.audit.robustness_gates)."""
    certified: dict[float, tuple[int, int]] = {}
    if cert is not None:
        ps = cert["per_sample"]
        for rule in p.min_certified_accuracy:
            hit = ps["correct"] & (ps["radius"] >= rule.radius)
            certified[rule.radius] = (int(hit.sum()), len(hit))
    return gate_findings(
        p.min_robust_accuracy,
        p.min_certified_accuracy,
        rows,
        certified,
        alpha=p.gate_alpha,
        cert_text=f"sigma={p.smoothing_sigma}, CERTIFY n0={p.certify_n0}, n={p.certify_n}, "
        f"alpha={p.alpha:g}",
    )


def _smoothing_base(model: Model, data: Dataset, p: RobustnessParams, given: Model | None) -> Model:
    """The model the defense smooths; a variant must answer in the audited model's terms."""
    if given is None and p.smoothing_model is None:
        return model
    if given is None:
        from raigate.models import load_model

        assert p.smoothing_model is not None
        given = load_model(p.smoothing_model, data=data)
    name = p.smoothing_model or given.spec
    require_plain(given, "randomized smoothing")
    if list(given.class_names) != list(model.class_names):
        raise ConfigError(
            f"smoothing model {name}: classes {list(given.class_names)} differ from the audited "
            f"model's {list(model.class_names)}; smooth a variant of the same model"
        )
    if tuple(given.input_shape) != tuple(model.input_shape):
        raise ConfigError(
            f"smoothing model {name}: input shape {tuple(given.input_shape)} differs from the "
            f"audited model's {tuple(model.input_shape)}"
        )
    return given


def _rows(sweep: _Sweep, p: RobustnessParams) -> list[Record]:
    rows: list[Record] = []
    for key in sweep.order:
        model_name, attack, norm, eps = key
        ok = sweep.correct[key]
        s = int(ok.sum())
        lo, hi = wilson_interval(s, sweep.n)
        row: Record = {
            "key": key,
            "model": model_name,
            "attack": attack,
            "norm": norm,
            "eps": eps,
            "eps_text": eps_text(eps) if attack != "clean" else "0",
            "accuracy": s / sweep.n,
            "n": sweep.n,
            "correct": s,
            "ci_low": lo,
            "ci_high": hi,
            "max_perturbation": round(sweep.max_pert[key], 6) if attack != "clean" else 0.0,
        }
        if attack == "pgd":
            row.update(
                steps=p.pgd_steps,
                restarts=p.pgd_restarts,
                step_size=p.pgd_step_size or default_step_size(eps or 0.0, p.pgd_steps),
                pgd_own_accuracy=float(sweep.own[key].mean()) if key in sweep.own else None,
            )
        if attack in QUERY_ATTACKS:
            spent = sweep.queries[key]
            row.update(
                black_box=True,
                query_budget=p.query_budget,
                queries_mean=round(float(spent.mean()), 3),
                queries_max=int(spent.max()),
            )
        if attack.startswith("art:"):
            row.update(black_box=is_black_box(attack), attack_params=p.attack_params)
        if model_name == "smoothed":
            row.update(
                sigma=p.smoothing_sigma,
                eot_samples=p.eot_samples if attack != "clean" else None,
                predict_n=p.predict_n,
                accuracy_predict=float(sweep.predict_ok[key].mean()),
                abstain_rate=float(sweep.abstain[key].mean()),
            )
        rows.append(row)
    return rows


def _ratios(rows: list[Record], p: RobustnessParams) -> list[Record]:
    base = {(r["attack"], r["norm"], r["eps"]): r for r in rows if r["model"] == "base"}
    out: list[Record] = []
    for r in rows:
        k = (r["attack"], r["norm"], r["eps"])
        if r["model"] != "smoothed" or k not in base:
            continue
        b = base[k]["accuracy"]
        out.append(
            {
                "attack": r["attack"],
                "norm": r["norm"],
                "eps": r["eps"],
                "eps_text": r["eps_text"],
                "base_accuracy": b,
                "smoothed_accuracy": r["accuracy"],
                "ratio": r["accuracy"] / b if b > 0 else None,
                "difference": r["accuracy"] - b,
                "sigma": p.smoothing_sigma,
                "eot_samples": p.eot_samples,
                "predict_n": p.predict_n,
                "n": r["n"],
            }
        )
    return out


def _certify(
    sm: SmoothedClassifier,
    data: Dataset,
    ev: _Evaluator,
    p: RobustnessParams,
    say: Callable[[str], None],
    base_clean: np.ndarray,
) -> dict[str, Any]:
    """CERTIFY on ``certify_max_samples`` of the attacked samples (seeded, stratified by
    class, so a folder sorted by class is not certified on its first classes only)."""
    k = min(len(data), p.certify_max_samples or len(data))
    positions = stratified_positions(data.labels, k, p.seed)
    subset = data.subset(positions)
    draws = k * (p.certify_n0 + p.certify_n)
    say(
        f"certify: {k} images x ({p.certify_n0:,} selection + {p.certify_n:,} estimation noise "
        f"draws) = {draws:,} forward passes of the base model, {sm.batch_size} per batch"
    )

    def certify_batch(x: torch.Tensor, y: torch.Tensor, pos: np.ndarray) -> dict[str, np.ndarray]:
        # per-image noise, seeded by the image's place in the audited sample
        seeds = [item_seed(p.seed, "certify", int(positions[i])) for i in pos]
        c = sm.certify(
            x.to(p.device), p.certify_n0, p.certify_n, p.alpha, seeds=seeds,
            progress=p.progress and current().main,  # noise draws: rank 0's bar only
        )  # fmt: skip
        return {
            "pred": ev.to_data(c.prediction.to(p.device)).cpu().numpy(),
            "radius": c.radius.numpy(),
            "p_lower": c.p_lower.numpy(),
            "count": c.count.numpy(),
            "label": y.numpy(),
        }

    # as many images per batch as share one noise batch (one at n = 100,000): a killed
    # run redoes at most that much per process (raigate.parallel progress). From the plan,
    # not the autotuned size, which may differ when the run resumes (the votes do not:
    # each image's noise is its own stream, however it is cut into batches)
    planned = p.smoothing_batch_size if isinstance(p.smoothing_batch_size, int) else 1024
    per_batch = max(1, planned // max(p.certify_n0, p.certify_n))
    got = map_batches(
        subset, per_batch, certify_batch, stage="certify", seed=p.seed,
        workers=p.workers, desc="certify", unit="images", progress=p.progress,
    )  # fmt: skip
    pred, radius, label = got["pred"], got["radius"], got["label"]
    abstained = pred < 0
    correct = (~abstained) & (pred == label)
    table = [
        {
            "radius": r,
            "certified_accuracy": float((correct & (radius >= r)).mean()),
            "certified": int((correct & (radius >= r)).sum()),
            "n": k,
        }
        for r in p.certify_radii
    ]
    top = max(1.0, float(radius.max()) if k else 0.0, max(p.certify_radii))
    grid = np.round(np.linspace(0.0, top, 101), 6)
    curve = [
        {"radius": float(r), "certified_accuracy": float((correct & (radius >= r)).mean())}
        for r in grid
    ]
    abstain_rate = float(abstained.mean())
    wrong_rate = float(((~abstained) & (pred != label)).mean())
    acr = float(np.where(correct, radius, 0.0).mean())
    acc0 = float(correct.mean())
    base_acc = float(base_clean[positions].mean())
    need = p.min_certified_ratio * base_acc
    bad = acc0 < need
    finding = Finding(
        id="robustness.smoothing.certified_accuracy",
        severity="warn" if bad else "pass",
        metric="certified_accuracy_at_0",
        value=acc0,
        threshold=need,
        message=(
            f"CERTIFY (sigma={p.smoothing_sigma:g}, n={p.certify_n}, alpha={p.alpha:g}) is "
            f"correct on {acc0:.1%} of {k} samples, abstains on {abstain_rate:.1%} and certifies "
            f"a wrong class on {wrong_rate:.1%}, against {base_acc:.1%} clean accuracy of the "
            "audited model on the same samples; "
            + (
                f"below {p.min_certified_ratio:.0%} of it: "
                + (
                    "the base model is not robust to its own noise, so the smoothed model is "
                    "not usable as is; train it with Gaussian noise (raigate harden smoothing) "
                    "first"
                    if p.smoothing_model is None
                    else f"the smoothed variant {p.smoothing_model} is not robust enough to "
                    f"sigma={p.smoothing_sigma:g} noise; noise-train it longer or at this sigma"
                )
                if bad
                else f"at least {p.min_certified_ratio:.0%} of it"
            )
        ),
    )
    max_radius = max_certifiable_radius(p.smoothing_sigma or 0.0, p.certify_n, p.alpha)
    return {
        "metrics": {
            "certification": table,
            "certification_curve": curve,
            "abstain_rate": abstain_rate,
            "certified_wrong_rate": wrong_rate,
            "average_certified_radius": acr,
            "certified_n": k,
            "max_certifiable_radius": max_radius,
        },
        "finding": finding,
        "per_sample": {
            "position": positions,
            "prediction": pred,
            "radius": radius,
            "p_lower": got["p_lower"],
            "count": got["count"],
            "label": label,
            "correct": correct,
        },
        "curve": curve,
    }


def _write_certification(
    cert: dict[str, Any], data: Dataset, p: RobustnessParams, out: Path
) -> list[str]:
    ps = cert["per_sample"]
    names = np.asarray(data.class_names, dtype=object)
    frame = pd.DataFrame(
        {
            "index": ps["position"],
            "label": names[ps["label"]],
            "certified_class": [names[c] if c >= 0 else "(abstain)" for c in ps["prediction"]],
            "radius": np.round(ps["radius"], 6),
            "p_a_lower": np.round(ps["p_lower"], 6),
            "n_a": ps["count"],
            "correct": ps["correct"],
        }
    )
    attrs = data.attributes.iloc[ps["position"]].reset_index(drop=True)
    frame = pd.concat([frame, attrs], axis=1)
    write_atomic(out / "certification.csv", frame.to_csv(index=False))
    plot_certification(cert["curve"], float(p.smoothing_sigma or 0), out / "certification.png")
    return ["certification.csv", "certification.png"]
