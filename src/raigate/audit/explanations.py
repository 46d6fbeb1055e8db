"""Explanations check: attribution maps that are tested, not just drawn.

For ``n_samples`` images (a seeded sample stratified by label) the check computes the maps
of every requested method for the target class (the model's prediction, or the label) and
measures, per method:

* **faithfulness**: deletion and insertion AUC (Petsiuk et al. 2018) against the same
  curves for a random pixel order, with one-sided Wilcoxon signed-rank p-values over the
  images; Captum's ``infidelity`` and ``sensitivity_max`` (Yeh et al. 2019);
* **sanity**: the cascading model-parameter randomization test (Adebayo et al. 2018): the
  mean Spearman correlation between the maps of the trained model and of copies whose
  layers are re-initialized from the top down; a method whose maps stay correlated above
  ``sanity_max_spearman`` after *every* layer is randomized fails the check;
* **Integrated Gradients' completeness delta** per image (Sundararajan et al. 2017): a
  delta above ``ig_delta_tolerance`` of ``|f(x) - f(baseline)|`` warns to raise n_steps;
* **agreement** between methods (mean Spearman of the absolute maps) and, on data with
  group attributes (FairFace, demo), the mean map per group and its total-variation
  distance to the overall mean map.

Methods that cannot run on the model (Grad-CAM without a conv layer, e.g. a ViT) are
skipped with a note in the ``methods`` table.

**Black-box models** (``model.mode == "black-box"``: an ONNX session, a served predictor;
no input gradients, no weights) are explained by the perturbation methods, which need
forward passes only: by default ``occlusion``, ``feature-ablation`` and ``kernelshap``
(:data:`BLACK_BOX_METHODS`); naming a gradient method for such a model is a ConfigError
that lists the methods that work. Deletion/insertion, infidelity and max-sensitivity are
forward-only too and run unchanged. The randomization test re-initializes the network's
weights, which a query-only model does not expose: it is skipped, and the skip is a
``warn`` finding (``explanations.sanity``) with the reason, so the verdict says the maps'
dependence on the weights was not tested. With ``out_dir`` the check writes PNG
figures there: ``explanations_grid.png`` (image + overlay per method),
``sanity_cascade.png`` and ``group_maps_<attribute>.png``.

**Several processes** (``torchrun``, :mod:`raigate.parallel`): the per-image work (maps,
curves, infidelity, IG deltas, per-image agreement; max-sensitivity; the randomization
test) runs on fixed batches of ``batch_size`` images, each rank computing its share, and is
gathered in image order on every rank; the aggregates (means, Wilcoxon tests, group maps,
findings) are then computed on every rank from the same arrays. Every random draw depends
on the run seed and the image or batch only (the random pixel order is seeded per image;
SmoothGrad, KernelSHAP, infidelity and max-sensitivity re-seed with ``seed`` inside each
batch), so any number of processes gives the single process's metrics, bit for bit.

>>> import raigate
>>> from raigate.audit import explanations
>>> data = raigate.load_data("demo:test", limit=4)
>>> model = raigate.load_model("raigate.zoo:small_cnn", data=data, random_init=True)
>>> params = explanations.ExplainParams(
...     methods=["saliency"], n_samples=2, sanity_layers=2, progress=False
... )
>>> result = explanations.run(model, data, params)
>>> result.table("faithfulness")["method"].tolist()
['saliency']
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from raigate import progress as _progress
from raigate._io import write_atomic
from raigate.audit.evaluate import prepare, require_inputs
from raigate.data.base import Dataset, select
from raigate.environment import collect_environment
from raigate.errors import ConfigError
from raigate.explain.methods import (
    METHODS,
    AttributionConfig,
    Method,
    default_blur_sigma,
    get_method,
    make_baseline,
    seeded,
)
from raigate.explain.metrics import (
    deletion_insertion,
    group_mean_maps,
    importance,
    infidelity_scores,
    sensitivity_scores,
    spearman_rows,
    square_removal,
)
from raigate.explain.sanity import cascade, cascade_plan, randomization_units
from raigate.labels import LabelMap, data_to_model_index
from raigate.models.base import Model, require_plain
from raigate.parallel import Arrays, batch_seed, item_seed, map_batches, map_positions
from raigate.results import CheckResult, DataRef, Finding, ModelRef
from raigate.values import Fraction, Listed, Seed

NAME = "explanations"
DEFAULT_METHODS = ("integrated-gradients", "saliency", "gradcam", "smoothgrad", "occlusion")
"""Methods run on a white-box model when ``methods`` is not given."""
BLACK_BOX_METHODS = ("occlusion", "feature-ablation", "kernelshap")
"""Methods run on a black-box model (forward passes only) when ``methods`` is not given."""
_ID_COLUMNS = {"file", "path", "filename", "service_test"}


class ExplainParams(BaseModel):
    """Parameters of the explanations check (every one is echoed into ``result.json``)."""

    model_config = ConfigDict(extra="forbid")
    # resolved relative to the audit plan file (raigate.config); a label map may be a JSON file
    PLAN_PATH_FIELDS: ClassVar[dict[str, str]] = {"label_map": "path"}

    methods: Annotated[list[str], Listed] | None = Field(
        None,
        description="registered method names; default by the model's mode: DEFAULT_METHODS "
        "(white-box) or BLACK_BOX_METHODS (black-box, forward passes only)",
    )
    n_samples: int = Field(16, gt=0, description="images explained (seeded, stratified)")
    target: Literal["predicted", "label"] = Field(
        "predicted", description="class explained: the model's prediction or the true label"
    )
    label_map: LabelMap = Field(None, description="model class -> data label")
    layer: str | None = Field(None, description="Grad-CAM layer (module name in model.net)")
    baseline: Literal["black", "blur", "uniform"] = Field(
        "black",
        description="reference image for Integrated Gradients, occlusion, feature ablation "
        "and KernelSHAP",
    )
    n_steps: int = Field(50, gt=0, description="Integrated Gradients quadrature points")
    batch_size: int = Field(128, gt=0, description="images per forward/backward pass")
    smoothgrad_samples: int = Field(16, gt=0, description="noisy copies per image")
    smoothgrad_stdev: Fraction = Field(0.15, gt=0, description="SmoothGrad noise std (pixels)")
    occlusion_window: int | None = Field(None, gt=0, description="px; default min(H,W)/8")
    occlusion_stride: int | None = Field(None, gt=0, description="px; default window/2")
    patch_size: int | None = Field(
        None,
        gt=0,
        description="feature-ablation/KernelSHAP superpixel side, px; default min(H,W)/8",
    )
    kernelshap_samples: int = Field(
        256, gt=1, description="KernelSHAP coalitions per image (one forward pass each)"
    )
    blur_sigma: Fraction | None = Field(None, gt=0, description="px; default max(H,W)/16")
    curve_steps: int = Field(20, gt=0, description="points of the deletion/insertion curves")
    infidelity_perturbations: int = Field(16, gt=0, description="perturbations per image")
    infidelity_square: int | None = Field(
        None, gt=0, description="side of infidelity's removed square, px; default min(H,W)/4"
    )
    sensitivity_samples: int = Field(8, ge=0, description="images for sensitivity_max")
    sensitivity_perturbations: int = Field(8, gt=0, description="perturbations per image")
    sensitivity_radius: Fraction = Field(0.02, gt=0, description="L-inf radius (pixels)")
    sanity_samples: int = Field(16, gt=0, description="images for the randomization test")
    sanity_layers: int = Field(5, gt=0, description="randomization checkpoints (depths)")
    sanity_max_spearman: float = Field(
        0.7,
        ge=-1,
        le=1,
        # the CLI spells it --max-sanity-spearman, like the other gates' --max-/--min- names
        validation_alias=AliasChoices("sanity_max_spearman", "max_sanity_spearman"),
        description="fail when the fully randomized maps correlate above this",
    )
    ig_delta_tolerance: Fraction = Field(
        0.05, gt=0, description="warn when |delta| > this x |f(x) - f(baseline)|"
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="level of the Wilcoxon tests")
    grid_samples: int = Field(8, ge=0, description="images in explanations_grid.png")
    device: str = "cpu"
    seed: Seed = 0
    progress: bool = True

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [v.strip() for v in value if v.strip()]
        if not names:
            raise ValueError("give at least one method")
        if len(set(names)) != len(names):
            raise ValueError(f"a method is listed twice: {names}")
        return names

    def attribution_config(self) -> AttributionConfig:
        return AttributionConfig(
            baseline=self.baseline,
            n_steps=self.n_steps,
            batch_size=self.batch_size,
            layer=self.layer,
            smoothgrad_samples=self.smoothgrad_samples,
            smoothgrad_stdev=self.smoothgrad_stdev,
            occlusion_window=self.occlusion_window,
            occlusion_stride=self.occlusion_stride,
            patch_size=self.patch_size,
            kernelshap_samples=self.kernelshap_samples,
            blur_sigma=self.blur_sigma,
            seed=self.seed,
        )


DEFINITIONS = {
    "importance": "channel sum of the attributions per pixel (signed for ranking, absolute "
    "for correlations and figures)",
    "deletion_auc": "Petsiuk et al. 2018: area under the target-class softmax probability as "
    "the top-ranked pixels are set to black, over the deleted fraction 0..1 (lower = more "
    "faithful)",
    "insertion_auc": "Petsiuk et al. 2018: area under the target-class probability as the "
    "top-ranked pixels are put back into a blurred copy (blur_sigma), fraction 0..1 (higher "
    "= more faithful)",
    "random_deletion_auc": "the same curves for a uniformly random pixel order (seeded per "
    "image: the seed and the image's position)",
    "wilcoxon_p": "one-sided Wilcoxon signed-rank test over images: method better than random",
    "infidelity": "Yeh et al. 2019 via captum.metrics.infidelity: square-removal perturbations "
    "(one random infidelity_square x infidelity_square square set to the baseline image), "
    "target logit, normalize=True; mean over images (lower = better)",
    "sensitivity_max": "Yeh et al. 2019 via captum.metrics.sensitivity_max: uniform noise in "
    "the L-inf ball of sensitivity_radius, Frobenius norm relative to the map; mean over the "
    "first sensitivity_samples images (lower = more stable)",
    "spearman": "Adebayo et al. 2018 cascading randomization: mean over sanity_samples images "
    "of the Spearman rank correlation between the absolute maps of the trained model and of a "
    "copy with the top `layers_randomized` layers re-initialized (down to `layer`)",
    "sanity_note": "why the randomization test did not run (a black-box model has no weights "
    "to re-initialize), else null",
    "passed": "spearman below sanity_max_spearman (the maps changed); the method's finding "
    "uses the row where every layer is randomized",
    "relative_delta": "|IG attribution sum - (f(x) - f(baseline))| / |f(x) - f(baseline)| on "
    "the target logit",
    "tv_distance": "0.5 * sum |mean map of the group - mean map of all images|, maps "
    "normalized to sum 1 (0 = same regions, 1 = disjoint)",
}


def explained_samples(data: Dataset, params: ExplainParams) -> Dataset:
    """The images the check explains, in order: a seeded sample of ``n_samples`` stratified
    by label, then shuffled with the same seed so that the first images (the figures, the
    randomization test, max-sensitivity) span the classes instead of the first one."""
    chosen = select(data, sample=params.n_samples, seed=params.seed)
    return chosen.subset(np.random.default_rng(params.seed).permutation(len(chosen)))


def _group_columns(attributes: pd.DataFrame) -> list[str]:
    cols = []
    for col in attributes.columns:
        if str(col) in _ID_COLUMNS:
            continue
        series = attributes[col]
        if isinstance(series.dtype, pd.CategoricalDtype) or (
            series.dtype == object and 2 <= series.nunique() <= 20
        ):
            cols.append(str(col))
    return cols


def _infidelity_square(params: ExplainParams, x: Tensor) -> int:
    return params.infidelity_square or max(1, round(min(x.shape[-2:]) / 4))


def _wilcoxon_less(a: np.ndarray, b: np.ndarray) -> float | None:
    """One-sided p-value that ``a`` tends to be below ``b`` (paired); None when undefined."""
    from scipy.stats import wilcoxon

    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.size < 2 or not np.any(diff != 0):
        return None
    try:
        return float(wilcoxon(diff, alternative="less").pvalue)
    except ValueError:
        return None


def _mean(values: np.ndarray) -> float:
    """Mean in float64 via torch, as the metrics always were (the same bits on every rank)."""
    return float(torch.from_numpy(np.ascontiguousarray(values)).double().mean())


def _random_scores(seed: int, positions: np.ndarray, hw: tuple[int, int]) -> Tensor:
    """The random pixel order of each image ``[B, H, W]``: one generator per image, seeded
    from the run seed and the image's position, so an image's yardstick does not depend on
    the batch it is in, on the number of processes or on the batches computed before."""
    rows = [
        torch.rand(hw, generator=torch.Generator().manual_seed(item_seed(seed, "random-order", p)))
        for p in positions.tolist()
    ]
    return torch.stack(rows)


def _attribution_pass(
    model: Model,
    data: Dataset,
    methods: dict[str, Method],
    config: AttributionConfig,
    params: ExplainParams,
    label_targets: np.ndarray | None,
) -> Arrays:
    """Maps, curves, infidelity and IG completeness terms per image and method, computed
    on raigate.parallel's fixed batches of ``batch_size`` images (each rank its share) and
    gathered in image order on every rank.

    Arrays (first axis: image): ``map`` ``[n, M, H, W]`` absolute importance per method;
    ``deletion``, ``insertion``, ``infidelity`` ``[n, M]``; ``has_delta``, ``delta``,
    ``attribution_sum``, ``output_diff`` ``[n, M]`` (NaN where a method has no delta);
    ``agreement`` ``[n, P]`` Spearman per pair of methods; ``random_deletion``,
    ``random_insertion``, ``target``, ``prob`` ``[n]``. Infidelity, SmoothGrad and KernelSHAP
    draw their noise under the run seed inside the batch (:func:`seeded`), so a batch gives
    the same values on any rank."""
    device = params.device
    names = list(methods)
    pairs = list(itertools.combinations(range(len(names)), 2))

    def batch(x: Tensor, y: Tensor, positions: np.ndarray) -> Arrays:
        x = x.to(device)
        with torch.no_grad():
            probs = model.logits(x).softmax(dim=1)
        if label_targets is not None:
            target = torch.from_numpy(label_targets[y.numpy()]).to(device)
        else:
            target = probs.argmax(dim=1)
        sigma = params.blur_sigma if params.blur_sigma is not None else default_blur_sigma(x)
        b, m = x.shape[0], len(names)
        cols = {k: np.full((b, m), np.nan) for k in ("delta", "attribution_sum", "output_diff")}
        has_delta = np.zeros((b, m), dtype=bool)
        maps, dels, ins, infid = [], [], [], []
        # a heartbeat per method: one batch of KernelSHAP or IG can take minutes
        shown = _progress.track(methods.values(), "methods", "methods", show=params.progress)
        for j, method in enumerate(shown):
            attr, delta = method.attribute_with_delta(model, x, target, config)
            imp = importance(attr)
            maps.append(imp.abs().cpu())
            d, i = deletion_insertion(
                model,
                x,
                imp,
                target,
                steps=params.curve_steps,
                blur_sigma=sigma,
                batch_size=params.batch_size,
            )
            dels.append(d)
            ins.append(i)
            infid.append(
                infidelity_scores(
                    model,
                    x,
                    attr,
                    target,
                    perturb=square_removal(
                        _infidelity_square(params, x),
                        lambda inputs: make_baseline(inputs, config),
                    ),
                    n_perturb=params.infidelity_perturbations,
                    batch_size=params.batch_size,
                    seed=params.seed,
                )
            )
            if delta is not None:
                has_delta[:, j] = True
                cols["delta"][:, j] = delta.double().cpu().numpy()
                sums, diff = _completeness(model, x, attr, target, config)
                cols["attribution_sum"][:, j] = sums
                cols["output_diff"][:, j] = diff
        scores = _random_scores(params.seed, positions, (x.shape[2], x.shape[3])).to(device)
        rd, ri = deletion_insertion(
            model,
            x,
            scores,
            target,
            steps=params.curve_steps,
            blur_sigma=sigma,
            batch_size=params.batch_size,
        )
        agreement = [spearman_rows(maps[a], maps[c]) for a, c in pairs]
        return {
            "map": torch.stack(maps, dim=1).numpy(),
            "deletion": torch.stack(dels, dim=1).numpy(),
            "insertion": torch.stack(ins, dim=1).numpy(),
            "infidelity": torch.stack(infid, dim=1).numpy(),
            "has_delta": has_delta,
            **cols,
            "agreement": (
                torch.stack(agreement, dim=1) if agreement else torch.zeros(b, 0)
            ).numpy(),
            "random_deletion": rd.numpy(),
            "random_insertion": ri.numpy(),
            "target": target.cpu().numpy(),
            "prob": probs.gather(1, target.view(-1, 1)).squeeze(1).cpu().numpy(),
        }

    return map_batches(
        data,
        params.batch_size,
        batch,
        stage="attributions",
        seed=params.seed,
        desc="explain",
        unit="images",
        progress=params.progress,
    )


@torch.no_grad()
def _completeness(
    model: Model, x: Tensor, attr: Tensor, target: Tensor, config: AttributionConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the attribution sum and f(x) - f(baseline) on the target logit, computed
    here rather than trusted from Captum, so the delta in the report can be checked."""
    t = target.view(-1, 1)
    diff = model.logits(x).gather(1, t) - model.logits(make_baseline(x, config)).gather(1, t)
    sums = attr.flatten(1).sum(dim=1)
    return sums.double().cpu().numpy(), diff.squeeze(1).double().cpu().numpy()


def _delta_rows(
    model: Model, data: Dataset, names: list[str], arrays: Arrays
) -> list[dict[str, Any]]:
    """One ``ig_delta`` record per image and method with a completeness delta, method by
    method in image order (the same list whatever the batch size or number of ranks)."""
    attrs = data.attributes
    id_col = next((c for c in ("file", "path", "filename") if c in attrs.columns), None)
    files = attrs[id_col].astype(str).tolist() if id_col else None
    labels = data.labels
    rows = []
    for j, method in enumerate(names):
        for i in np.flatnonzero(arrays["has_delta"][:, j]).tolist():
            d = float(arrays["delta"][i, j])
            od = float(arrays["output_diff"][i, j])
            t = int(arrays["target"][i])
            rows.append(
                {
                    "method": method,
                    "index": i,
                    **({"file": files[i]} if files is not None else {}),
                    "label": data.class_names[int(labels[i])],
                    "target": t,
                    "target_class": model.class_names[t],
                    "attribution_sum": float(arrays["attribution_sum"][i, j]),
                    "output_diff": od,
                    "delta": d,
                    "relative_delta": abs(d) / abs(od) if od != 0 else None,
                }
            )
    return rows


def _first_images(data: Dataset, k: int, device: str) -> Tensor:
    """The first ``k`` explained images ``[k, C, H, W]``, read again on every rank (the
    figures, max-sensitivity and the randomization test use them): the same tensors the
    loader gave the batch they were in."""
    if k == 0:
        return torch.zeros(0, *data.shape, device=device)
    return torch.stack([data[i][0] for i in range(k)]).to(device)


def _sensitivity(
    model: Model,
    methods: dict[str, Method],
    config: AttributionConfig,
    params: ExplainParams,
    x: Tensor,
    target: Tensor,
) -> dict[str, float | None]:
    """Max-sensitivity per method, mean over the images of ``x``: per-image work (each
    image reruns every method per perturbation), so it is sharded in fixed batches too."""
    if x.shape[0] == 0:
        return dict.fromkeys(methods)

    def batch(positions: np.ndarray) -> Arrays:
        idx = torch.from_numpy(positions).to(x.device)
        cols = []
        for method in methods.values():

            def explain(inp: Tensor, tgt: Tensor, method: Method = method) -> Tensor:
                return method.attribute(model, inp, tgt, config)

            cols.append(
                sensitivity_scores(
                    explain,
                    x[idx],
                    target[idx],
                    radius=params.sensitivity_radius,
                    n_perturb=params.sensitivity_perturbations,
                    batch_size=params.batch_size,
                    seed=params.seed,
                )
            )
        return {"sensitivity": torch.stack(cols, dim=1).numpy()}

    scores = map_positions(
        x.shape[0],
        params.batch_size,
        batch,
        stage="sensitivity",
        seed=params.seed,
        desc="sensitivity",
        unit="images",
        progress=params.progress,
    )["sensitivity"]
    return {name: _mean(scores[:, j]) for j, name in enumerate(methods)}


def _sanity(
    model: Model,
    methods: dict[str, Method],
    config: AttributionConfig,
    params: ExplainParams,
    x: Tensor,
    target: Tensor,
    reference: dict[str, Tensor],
    *,
    figure: bool,
) -> tuple[list[dict[str, Any]], dict[str, list[tuple[str, Tensor]]]]:
    """The cascading randomization test on the images of ``x``, sharded in fixed batches:
    each batch walks the whole cascade (one deep copy, re-initialized from the top down,
    seeded per layer, so every rank builds the same copies) and returns its per-image
    Spearman ``[B, steps, M]``; every rank then averages the gathered values.

    With ``figure``, also the first image's map at every depth for ``sanity_cascade.png``:
    kept from batch 0 when this rank computed it (rank 0 always owns batch 0), else (a
    resumed run, or another rank asked for figures) batch 0 is recomputed here."""
    names = list(methods)
    steps = cascade_plan(model, checkpoints=params.sanity_layers)
    first: dict[str, list[Tensor]] = {}

    def batch(positions: np.ndarray) -> Arrays:
        idx = torch.from_numpy(positions).to(x.device)
        rho = torch.empty(len(positions), len(steps), len(names))
        keep = figure and positions[0] == 0
        cascaded = cascade(model, checkpoints=params.sanity_layers, seed=params.seed)
        for s, step in enumerate(cascaded):
            for j, (name, method) in enumerate(methods.items()):
                maps = importance(method.attribute(step.model, x[idx], target[idx], config))
                maps = maps.abs().cpu()
                rho[:, s, j] = spearman_rows(reference[name][idx.cpu()], maps)
                if keep:
                    first.setdefault(name, []).append(maps[0])
        return {"spearman": rho.numpy()}

    k = x.shape[0]
    rho = map_positions(
        k,
        params.batch_size,
        batch,
        stage="sanity",
        seed=params.seed,
        desc="sanity",
        unit="images",
        progress=params.progress,
    )["spearman"]
    if figure and not first:
        with seeded(batch_seed(params.seed, "sanity", 0), x.device):
            batch(np.arange(min(k, params.batch_size), dtype=np.int64))

    records: list[dict[str, Any]] = []
    for s, step in enumerate(steps):
        for j, name in enumerate(names):
            column = torch.from_numpy(np.ascontiguousarray(rho[:, s, j])).double()
            mean = float(column.mean())
            records.append(
                {
                    "method": name,
                    "layer": step.layer,
                    "layers_randomized": step.randomized,
                    "layers_total": step.total,
                    "spearman": mean,
                    "spearman_std": float(column.std()) if column.numel() > 1 else None,
                    "n": int(column.numel()),
                    "all_randomized": step.randomized == step.total,
                    "passed": mean < params.sanity_max_spearman,
                }
            )
    maps: dict[str, list[tuple[str, Tensor]]] = {}
    if figure:
        for name in names:
            maps[name] = [("trained", reference[name][0])] + [
                (f"-> {step.layer}\n({step.randomized}/{step.total})", m)
                for step, m in zip(steps, first[name], strict=True)
            ]
    return records, maps


def _faithfulness(
    arrays: Arrays, names: list[str], sensitivity: dict[str, float | None], k_sens: int
) -> list[dict[str, Any]]:
    """One ``faithfulness`` record per method from the gathered per-image values."""
    rand_del, rand_ins = arrays["random_deletion"], arrays["random_insertion"]
    rd, ri = _mean(rand_del), _mean(rand_ins)
    records = []
    for j, name in enumerate(names):
        d, i = arrays["deletion"][:, j], arrays["insertion"][:, j]
        records.append(
            {
                "method": name,
                "n": len(d),
                "deletion_auc": _mean(d),
                "insertion_auc": _mean(i),
                "random_deletion_auc": rd,
                "random_insertion_auc": ri,
                "deletion_wilcoxon_p": _wilcoxon_less(d, rand_del),
                "insertion_wilcoxon_p": _wilcoxon_less(rand_ins, i),
                "infidelity": _mean(arrays["infidelity"][:, j]),
                "sensitivity_max": sensitivity[name],
                "sensitivity_n": k_sens,
            }
        )
    return records


def requested_methods(model: Model, params: ExplainParams) -> list[str]:
    """``params.methods``, or when not given the defaults for the model's mode."""
    if params.methods is not None:
        return list(params.methods)
    return list(BLACK_BOX_METHODS if model.mode == "black-box" else DEFAULT_METHODS)


def _require_forward_only(model: Model, names: list[str]) -> None:
    """ConfigError when a gradient method is asked of a black-box model: the user named it,
    so dropping it silently would report fewer methods than were asked for."""
    if model.mode != "black-box":
        return
    wrong = [name for name in names if get_method(name).needs_gradients]
    if wrong:
        usable = [name for name, m in METHODS.items() if not m.needs_gradients]
        raise ConfigError(
            f"--methods {', '.join(wrong)}: {'needs' if len(wrong) == 1 else 'need'} input "
            f"gradients, but {model.display_name} is black-box (queries only); methods that "
            f"work black-box: {', '.join(usable)}"
        )


def sanity_skip_reason(model: Model) -> str | None:
    """Why the cascading randomization test cannot run on ``model``, or ``None``."""
    if model.mode == "black-box":
        return (
            f"cascading randomization test not run: {model.display_name} is black-box (queries "
            "only) and the test re-initializes the network's weights layer by layer"
        )
    if not randomization_units(model.net):
        return "cascading randomization test not run: the network has no parameter layers"
    return None


def _method_status(
    model: Model, params: ExplainParams
) -> tuple[dict[str, Method], list[dict[str, Any]]]:
    """The requested methods that can run on ``model``, and a status row for every one (a
    skipped method says why); ConfigError for an unknown method, a gradient method on a
    black-box model, a bad layer, or none left."""
    config = params.attribution_config()
    names = requested_methods(model, params)
    _require_forward_only(model, names)
    status: list[dict[str, Any]] = []
    methods: dict[str, Method] = {}
    for name in names:
        method = get_method(name)
        reason = method.skip_reason(model, config)
        if reason is None:
            methods[name] = method
        status.append(
            {
                "method": name,
                "status": "skipped" if reason else "ran",
                "note": reason or method.summary,
                **({} if reason else {"settings": _settings(method, model, config)}),
            }
        )
    if not methods:
        notes = "; ".join(r["note"] for r in status)
        raise ConfigError(f"none of the requested methods can run on this model: {notes}")
    return methods, status


def validate(model: Model, data: Dataset, params: ExplainParams) -> None:
    """Plan preflight: samples, channels, the methods (names, Grad-CAM layer, at least one
    runnable) and, for ``target = "label"``, the class names, before any check runs."""
    require_plain(model, "the explanations check")
    require_inputs(model, data)
    _method_status(model, params)
    if params.target == "label":
        data_to_model_index(model.class_names, data.class_names, params.label_map)


def run(
    model: Model,
    data: Dataset,
    params: ExplainParams | None = None,
    *,
    out_dir: str | Path | None = None,
) -> CheckResult:
    """Explain ``model`` on ``data`` and test the explanations; see the module docstring.

    With ``out_dir``, writes the PNG figures there and lists them in ``artifacts``;
    ``result.json`` is the caller's to write (``result.write(out_dir)``).
    """
    params = params or ExplainParams()
    start = time.perf_counter()
    require_plain(model, "the explanations check")
    config = params.attribution_config()
    model.to(params.device)
    methods, status = _method_status(model, params)
    data = prepare(model, data)
    if len(data) == 0:
        raise ConfigError(f"{data.spec} holds no samples to explain")
    data = explained_samples(data, params)
    n = len(data)
    label_targets = (
        data_to_model_index(model.class_names, data.class_names, params.label_map)
        if params.target == "label"
        else None
    )

    keep = min(n, max(params.grid_samples, params.sensitivity_samples, params.sanity_samples))
    arrays = _attribution_pass(model, data, methods, config, params, label_targets)
    names = list(methods)
    abs_maps = {name: torch.from_numpy(arrays["map"][:, j]) for j, name in enumerate(names)}
    kept_x = _first_images(data, keep, params.device)
    kept_t = torch.from_numpy(arrays["target"][:keep]).to(params.device)

    # max-sensitivity reruns each method n_perturb times: on the first images only
    k_sens = min(params.sensitivity_samples, n)
    sensitivity = _sensitivity(model, methods, config, params, kept_x[:k_sens], kept_t[:k_sens])
    faithfulness = _faithfulness(arrays, names, sensitivity, k_sens)
    findings = [_faithfulness_finding(rec, params.alpha) for rec in faithfulness]

    k_sanity = min(params.sanity_samples, n)
    sanity_note = sanity_skip_reason(model)
    sanity: list[dict[str, Any]] = []
    sanity_maps: dict[str, list[tuple[str, Tensor]]] = {}
    if sanity_note is None:
        sanity, sanity_maps = _sanity(
            model,
            methods,
            config,
            params,
            kept_x[:k_sanity],
            kept_t[:k_sanity],
            {name: m[:k_sanity] for name, m in abs_maps.items()},
            figure=out_dir is not None,
        )
    else:
        findings.append(_sanity_skipped_finding(sanity_note, params.sanity_max_spearman))
    for name in methods:
        final = [r for r in sanity if r["method"] == name and r["all_randomized"]]
        if final:
            findings.append(_sanity_finding(final[-1], params.sanity_max_spearman))

    delta_rows = _delta_rows(model, data, names, arrays)
    if delta_rows:
        findings.append(_delta_finding(delta_rows, params))

    agreement = [
        {"method_a": names[a], "method_b": names[b], "spearman": _mean(column), "n": n}
        for (a, b), column in zip(
            itertools.combinations(range(len(names)), 2), arrays["agreement"].T, strict=True
        )
    ]

    attrs = data.attributes
    group_cols = _group_columns(attrs)
    group_records: list[dict[str, Any]] = []
    group_means: dict[str, dict[tuple[str, str], Tensor]] = {}
    for name in methods:
        records, means = group_mean_maps(abs_maps[name], attrs, group_cols)
        group_records += [{"method": name, **r} for r in records]
        group_means[name] = means

    artifacts: list[str] = []
    if out_dir is not None:
        artifacts = _write_figures(
            Path(out_dir),
            model=model,
            data=data,
            kept_x=kept_x,
            kept_t=kept_t,
            probs=torch.from_numpy(arrays["prob"]),
            abs_maps=abs_maps,
            sanity_maps=sanity_maps,
            group_records=group_records,
            group_means=group_means,
            group_cols=group_cols,
            params=params,
        )

    relative = [r["relative_delta"] for r in delta_rows if r["relative_delta"] is not None]
    return CheckResult(
        check=NAME,
        artifacts=artifacts,
        params={
            **params.model_dump(exclude={"progress"}),
            "methods": [r["method"] for r in status],  # the mode's defaults when not given
            "sanity_note": sanity_note,
            "n": n,
            "blur_sigma_px": params.blur_sigma
            if params.blur_sigma is not None
            else max(model.input_shape[1:]) / 16.0,
            "infidelity_square_px": params.infidelity_square
            or max(1, round(min(model.input_shape[1:]) / 4)),
            "methods_settings": {r["method"]: r.get("settings", {}) for r in status},
            "definitions": DEFINITIONS,
        },
        metrics={
            "n": n,
            "methods": [{k: v for k, v in r.items() if k != "settings"} for r in status],
            "faithfulness": faithfulness,
            "sanity": sanity,
            "ig_delta": delta_rows,
            "ig_max_relative_delta": max(relative) if relative else None,
            "agreement": agreement,
            "group_maps": group_records,
        },
        findings=findings,
        seed=params.seed,
        environment=collect_environment(params.device),
        model=ModelRef.of(model),
        data=DataRef.of(data, n),
        timing_s=round(time.perf_counter() - start, 3),
    )


def _settings(method: Method, model: Model, config: AttributionConfig) -> dict[str, Any]:
    return method.details(model, config)


_VERDICTS = {
    (True, True): "the map ranks pixels better than a random order on both curves",
    (False, True): "the map beats a random order on insertion only; deleting its top pixels "
    "to black hurts the prediction less than deleting random pixels (see the docs' caveats)",
    (True, False): "the map beats a random order on deletion only, not on insertion",
    (False, False): "the map does not rank pixels measurably better than a random order",
}


def _faithfulness_finding(rec: dict[str, Any], alpha: float) -> Finding:
    name = rec["method"]
    p_del, p_ins = rec["deletion_wilcoxon_p"], rec["insertion_wilcoxon_p"]
    deletion_ok = (
        rec["deletion_auc"] < rec["random_deletion_auc"] and p_del is not None and p_del < alpha
    )
    insertion_ok = (
        rec["insertion_auc"] > rec["random_insertion_auc"] and p_ins is not None and p_ins < alpha
    )

    def p(v: float | None) -> str:
        return "undefined" if v is None else f"{v:.2g}"

    return Finding(
        id=f"explanations.faithfulness.{name}",
        severity="pass" if deletion_ok and insertion_ok else "warn",
        metric="deletion_auc",
        value=rec["deletion_auc"],
        threshold=rec["random_deletion_auc"],
        message=(
            f"{name}: deletion AUC {rec['deletion_auc']:.3f} vs {rec['random_deletion_auc']:.3f} "
            f"for a random pixel order (lower is better, Wilcoxon p={p(p_del)}), insertion AUC "
            f"{rec['insertion_auc']:.3f} vs {rec['random_insertion_auc']:.3f} (higher is "
            f"better, p={p(p_ins)}), n={rec['n']} images, alpha={alpha}: "
            + _VERDICTS[(deletion_ok, insertion_ok)]
        ),
    )


def _sanity_finding(rec: dict[str, Any], threshold: float) -> Finding:
    name = rec["method"]
    ok = bool(rec["passed"])
    return Finding(
        id=f"explanations.sanity.{name}",
        severity="pass" if ok else "fail",
        metric="spearman",
        value=rec["spearman"],
        threshold=threshold,
        message=(
            f"{name}: after re-initializing all {rec['layers_total']} parameter layers "
            f"(cascading randomization, Adebayo et al. 2018) the maps correlate with the "
            f"trained model's at mean Spearman {rec['spearman']:.3f} over {rec['n']} images "
            + (
                f"(below {threshold}): the maps depend on the learned weights"
                if ok
                else f"(not below {threshold}): the maps barely depend on the learned weights, "
                "so they do not explain this model"
            )
        ),
    )


def _sanity_skipped_finding(note: str, threshold: float) -> Finding:
    return Finding(
        id="explanations.sanity",
        severity="warn",
        metric="spearman",
        value=None,
        threshold=threshold,
        message=f"{note}; whether the maps depend on what the model learned is untested "
        "(give the network, a factory + weights or a white-box ONNX, to test it)",
    )


def _delta_finding(rows: list[dict[str, Any]], params: ExplainParams) -> Finding:
    tol = params.ig_delta_tolerance
    over = [r for r in rows if r["relative_delta"] is None or r["relative_delta"] > tol]
    worst = max((r["relative_delta"] or 0.0 for r in rows), default=0.0)
    ok = not over
    return Finding(
        id="explanations.ig_delta",
        severity="pass" if ok else "warn",
        metric="ig_max_relative_delta",
        value=worst,
        threshold=tol,
        message=(
            f"Integrated Gradients completeness: {len(over)} of {len(rows)} images have "
            f"|sum of attributions - (f(x) - f(baseline))| above {tol:g} x |f(x) - f(baseline)| "
            f"(worst {worst:.3g}; n_steps={params.n_steps}, baseline={params.baseline})"
            + ("" if ok else "; increase --n-steps for a converged integral")
        ),
    )


def _write_figures(
    out: Path,
    *,
    model: Model,
    data: Dataset,
    kept_x: Tensor,
    kept_t: Tensor,
    probs: Tensor,
    abs_maps: dict[str, Tensor],
    sanity_maps: dict[str, list[tuple[str, Tensor]]],
    group_records: list[dict[str, Any]],
    group_means: dict[str, dict[tuple[str, str], Tensor]],
    group_cols: list[str],
    params: ExplainParams,
) -> list[str]:
    from raigate.explain import plots

    artifacts: list[str] = []
    k = min(params.grid_samples, kept_x.shape[0])
    if k:
        names = np.asarray(data.class_names, dtype=object)
        labels = data.labels
        titles = [
            f"label {names[labels[i]]}\n{model.class_names[int(kept_t[i])]} p={float(probs[i]):.2f}"
            for i in range(k)
        ]
        grid = plots.explanation_grid(
            kept_x[:k].cpu(), {m: v[:k] for m, v in abs_maps.items()}, titles
        )
        write_atomic(out / "explanations_grid.png", grid)
        artifacts.append("explanations_grid.png")
    if sanity_maps:  # empty when the randomization test could not run
        png = plots.sanity_figure(
            kept_x[0].cpu(),
            sanity_maps,
            "cascading randomization (Adebayo et al. 2018): maps as layers are re-initialized "
            "from the top down",
        )
        write_atomic(out / "sanity_cascade.png", png)
        artifacts.append("sanity_cascade.png")
    for column in group_cols:
        rows = [r for r in group_records if r["attribute"] == column and r["n"]]
        values: list[tuple[str, int]] = [("all", len(data))]
        seen: set[str] = set()
        for r in rows:
            if r["value"] not in seen:
                seen.add(r["value"])
                values.append((r["value"], r["n"]))
        maps = {
            method: {v: means[("all", "all") if v == "all" else (column, v)] for v, _ in values}
            for method, means in group_means.items()
        }
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in column)
        write_atomic(out / f"group_maps_{safe}.png", plots.group_maps_figure(column, values, maps))
        artifacts.append(f"group_maps_{safe}.png")
    return artifacts
