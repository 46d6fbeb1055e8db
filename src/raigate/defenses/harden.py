"""``raigate harden smoothing``: retrain a model with Gaussian noise so smoothing it works.

Smoothing an ordinary model mostly abstains: its predictions on ``x + N(0, σ²I)`` are near
chance (the public CIFAR-10 ResNet-20 drops to about 13-15% at σ = 0.12-0.25). Cohen et
al. (2019) therefore train the base classifier on noisy inputs at the σ they certify
with. This module does that for any model built from a Python factory (a
``pkg.module:factory`` spec or a raigate model spec JSON), then writes the weights as
safetensors and a model spec JSON that every raigate command accepts.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raigate._io import write_atomic
from raigate.data.base import Dataset
from raigate.errors import ConfigError
from raigate.labels import data_to_model_index
from raigate.models.base import (
    Model,
    module_tensors,
    require_plain,
    require_white_box,
    state_digest,
)
from raigate.models.loaders import ModelSpecFile, write_model_spec
from raigate.models.weights import save_safetensors
from raigate.results import dumps
from raigate.training import FitReport

__all__ = [
    "HardenResult",
    "base_record",
    "data_record",
    "harden_smoothing",
    "labels_in_model_order",
    "save_variant",
]


@dataclass(frozen=True)
class HardenResult:
    """Where the hardened model went, its digest, and the training curve."""

    model_spec: Path
    weights: Path
    record: Path
    digest: str
    report: FitReport


def _factory_of(model: Model) -> tuple[str, dict[str, Any]]:
    """The factory and kwargs that rebuild ``model``'s architecture."""
    if model.source == "factory":
        return model.spec, {}
    if model.source == "json":
        doc = ModelSpecFile.model_validate_json(Path(model.spec).read_text(encoding="utf-8"))
        return doc.factory, dict(doc.kwargs)
    raise ConfigError(
        f"harden needs a model built from Python code (pkg.module:factory --weights FILE, or a "
        f"raigate model spec .json) so the retrained weights can be reloaded; {model.spec!r} "
        f"is a {model.source} model"
    )


def labels_in_model_order(
    model: Model, data: Dataset, label_map: dict[str, str] | None = None
) -> Dataset:
    """``data`` with labels as the model's class indices (matched by name, never by
    index), so training on it trains the model's own output units."""
    inverse = data_to_model_index(model.class_names, data.class_names, label_map)
    if np.array_equal(inverse, np.arange(len(data.class_names))):
        return data
    view = copy.copy(data)
    # Subsets and resized views are shallow copies too; the label array is swapped whole.
    view._all_labels = inverse[data._all_labels]
    view.class_names = tuple(model.class_names)
    view._manifest = None
    return view


def save_variant(model: Model, trained: Model, out: Path, name: str) -> tuple[Path, Path, str]:
    """Write ``trained`` (a retrained copy of ``model``) to ``out`` as ``NAME.safetensors`` and
    a model spec ``NAME.json`` with ``model``'s factory, classes and preprocessing; returns
    (weights, spec, digest of the trained network)."""
    factory, kwargs = _factory_of(model)
    trained.to("cpu")
    out.mkdir(parents=True, exist_ok=True)
    weights = save_safetensors(trained.net, out / f"{name}.safetensors")
    spec = write_model_spec(
        out / f"{name}.json",
        factory=factory,
        kwargs=kwargs,
        weights=weights,
        class_names=list(model.class_names),
        input_shape=list(model.input_shape),
        mean=trained.normalize.mean.flatten().tolist(),
        std=trained.normalize.std.flatten().tolist(),
        preprocess=model.preprocess,
    )
    return weights, spec, state_digest(module_tensors(trained.net))


def base_record(model: Model) -> dict[str, Any]:
    """The model a defense started from, for its ``harden.json`` record."""
    return {"spec": model.spec, "digest": model.digest, "random_init": model.random_init}


def data_record(data: Dataset) -> dict[str, Any]:
    """The data a defense was fit on, pinned by its manifest digest."""
    return {
        "spec": data.spec,
        "manifest_digest": data.manifest.digest,
        "n": len(data),
        "synthetic": data.synthetic,
    }


def harden_smoothing(
    model: Model,
    data: Dataset,
    out_dir: str | Path,
    *,
    sigma: float,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
    label_map: dict[str, str] | None = None,
    progress: bool = True,
    name: str = "model",
) -> HardenResult:
    """Noise-train a copy of ``model`` at ``sigma`` on ``data`` and save it to ``out_dir``
    as ``NAME.safetensors``, ``NAME.json`` (model spec) and ``harden.json`` (the record).

    >>> import raigate, tempfile
    >>> data = raigate.load_data("demo:train", limit=64)
    >>> model = raigate.load_model("raigate.zoo:small_cnn", data=data, random_init=True)
    >>> res = harden_smoothing(model, data, tempfile.mkdtemp(), sigma=0.25, epochs=1,
    ...                        progress=False)
    >>> raigate.load_model(str(res.model_spec)).digest == res.digest
    True
    """
    # imported here: raigate.audit imports the defenses for the robustness check
    from raigate.audit.evaluate import prepare
    from raigate.defenses.smoothing import train_noise

    require_plain(model, "noise training for smoothing")
    require_white_box(model, "noise training for smoothing")
    _factory_of(model)  # refuse a model whose retrained weights could not be reloaded, first
    start = time.perf_counter()
    trained = copy.deepcopy(model)
    train_data = labels_in_model_order(model, prepare(model, data), label_map)
    report = train_noise(
        trained, train_data, sigma=sigma, epochs=epochs, lr=lr, batch_size=batch_size,
        seed=seed, device=device, progress=progress,
    )  # fmt: skip
    out = Path(out_dir)
    weights, spec, digest = save_variant(model, trained, out, name)
    record = write_atomic(
        out / "harden.json",
        dumps(
            {
                "defense": "gaussian noise training for randomized smoothing (Cohen et al. 2019)",
                "sigma": sigma,
                "noise": "x + N(0, sigma^2 I) on pixels in [0, 1], not clipped, per batch",
                "epochs": epochs,
                "optimizer": f"Adam lr={lr}",
                "batch_size": batch_size,
                "seed": seed,
                "base_model": base_record(model),
                "hardened_model": {"spec": spec.name, "digest": digest},
                "data": data_record(data),
                "train_loss": report.losses,
                "train_accuracy_on_noisy_batches": report.accuracies,
                "seconds": round(time.perf_counter() - start, 3),
            }
        ),
    )
    return HardenResult(
        model_spec=spec, weights=weights, record=record, digest=digest, report=report
    )
