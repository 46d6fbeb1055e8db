"""Reference models for LiRA and RMIA: the audited model's recipe, retrained K times.

The pool is the targets (members, then non-members) followed by the population the user
supplies, with population images that equal a target dropped (compared by pixels), so no
example is counted twice. Each reference model trains on a random half of the pool, chosen
as in Carlini et al.'s code so that every example is IN for exactly ``K // 2`` models and
OUT for the rest: online attacks then have IN and OUT models for every target, offline
attacks use each example's OUT models. LiRA assumes the reference models are trained like
the audited one, on as many examples: when half the pool is more than the audited model
trained on, ``fraction`` (e.g. 0.25: each example IN for ``round(0.25 K)`` models) brings the
reference training sets down to its size.

A reference model starts where the audited model started: a fresh network from the same
factory and kwargs (seeded per model), or, with ``init`` (the pretrained weights the audited
model was fine-tuned from), those weights. It never starts from the audited model's own
weights, which have seen the members.

The recipe is plain minibatch training (:func:`fit_recipe`), or, with ``recipe.dp``, DP-SGD
with the audited run's settings (:mod:`raigate.privacy.reference_dp`): a DP-trained model is
attacked with reference models trained as privately as it was, each with its own ledger.

``OUT/reference/`` holds ``ref_000.safetensors`` ... and ``reference.json``: the manifest
digests of the members, non-members and population, the population positions kept, which
pool positions each model trained on, the recipe and the seeds. A later audit passes the
folder back (``--reference DIR``) and skips the training; a manifest that names other data
is refused.

Under ``torchrun`` the K models are shared out over the ranks
(:func:`raigate.parallel.map_positions`, one model per batch): model ``i`` is trained by
rank ``i % N`` from a seed of ``(seed, i)`` alone, so it is the same network whichever rank
trains it. Its trainer also scores it on the pool, and hands back those scores and its
weights (safetensors bytes), so every rank ends with all K networks and scores and no rank
reads another's files; rank 0 alone writes ``OUT/reference/``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import Tensor, nn

from raigate import parallel
from raigate import progress as _progress
from raigate.data.base import Dataset
from raigate.errors import ConfigError
from raigate.models.base import Model
from raigate.privacy.reference_dp import ledger_summary, train_dp_model
from raigate.values import Fraction

MANIFEST = "reference.json"
REFERENCE_DIR = "reference"

__all__ = [
    "MANIFEST",
    "REFERENCE_DIR",
    "Pool",
    "ReferenceRecipe",
    "ReferenceSet",
    "build_pool",
    "fit_recipe",
    "in_out_split",
    "load_reference",
    "query_outputs",
    "reference_attack_scores",
    "reference_outputs",
    "train_accuracy",
    "train_reference",
]


class ReferenceRecipe(BaseModel):
    """How each reference model is trained: meant to repeat the audited model's recipe."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, gt=0)
    lr: Fraction = Field(1e-3, gt=0)
    batch_size: int = Field(64, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: Fraction = Field(0.9, ge=0, lt=1, description="SGD only")
    weight_decay: Fraction = Field(0.0, ge=0)
    flip: bool = Field(False, description="random horizontal flips while training")
    init: str | None = Field(None, description="weights file to fine-tune from (pretrained)")
    dp: dict[str, Any] | None = Field(
        None,
        description="DP-SGD settings (raigate.privacy.reference_dp.DP_RECIPE_FIELDS): each model "
        "is trained by run_private_training with them instead of the plain loop, and the "
        "fields above but init are unused",
    )

    @field_validator("dp")
    @classmethod
    def _dp_fields(cls, dp: dict[str, Any] | None) -> dict[str, Any] | None:
        from raigate.privacy.reference_dp import check_dp_recipe

        return None if dp is None else check_dp_recipe(dp)


class _ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    sha256: str
    seed: int
    in_pool: list[int]
    train_accuracy: float
    cpu_seconds: float
    seconds: float
    ledger: dict[str, Any] | None = None  # DP recipe: the model's spent budget


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = 1
    architecture: str
    members: dict[str, Any]
    non_members: dict[str, Any]
    population: dict[str, Any]
    pool_size: int
    fraction: float = 0.5
    recipe: ReferenceRecipe
    init_sha256: str | None = None
    seed: int
    models: list[_ModelEntry]


@dataclass(frozen=True)
class Pool:
    """Targets then population, as pixels the model takes, with labels in its class order."""

    x: Tensor
    y: Tensor
    n_members: int
    n_non_members: int
    population_positions: np.ndarray
    dropped: int
    sources: dict[str, dict[str, Any]]

    @property
    def n_targets(self) -> int:
        return self.n_members + self.n_non_members

    @property
    def population(self) -> np.ndarray:
        """Pool positions of the population samples (RMIA's ``z``)."""
        return np.arange(self.n_targets, len(self.y))


def _tensors(
    model: Model, data: Dataset, label_map: dict[str, str] | None
) -> tuple[Tensor, Tensor]:
    from raigate.audit.evaluate import prepare
    from raigate.labels import data_to_model_index

    to_model = data_to_model_index(model.class_names, data.class_names, label_map)
    xs = [x for x, _, _ in prepare(model, data).loader(256)]
    y = torch.as_tensor(to_model[data.labels], dtype=torch.long)
    return torch.cat(xs).float(), y


def _digest_rows(x: Tensor) -> list[str]:
    return [hashlib.sha256(r.numpy().tobytes()).hexdigest() for r in x]


def build_pool(
    model: Model,
    members: Dataset,
    non_members: Dataset,
    population: Dataset,
    *,
    label_map: dict[str, str] | None = None,
) -> Pool:
    """Load the three sets into memory (reference training makes many passes over them)."""
    xm, ym = _tensors(model, members, label_map)
    xn, yn = _tensors(model, non_members, label_map)
    xp, yp = _tensors(model, population, label_map)
    seen = set(_digest_rows(xm)) | set(_digest_rows(xn))
    keep = np.array([d not in seen for d in _digest_rows(xp)], dtype=bool)
    if keep.sum() < 2:
        raise ConfigError(
            f"population {population.spec} has {int(keep.sum())} samples besides the members "
            "and non-members; LiRA and RMIA need a population of the same distribution"
        )
    kept = np.flatnonzero(keep)
    return Pool(
        x=torch.cat([xm, xn, xp[kept]]),
        y=torch.cat([ym, yn, yp[kept]]),
        n_members=len(ym),
        n_non_members=len(yn),
        population_positions=kept,
        dropped=int((~keep).sum()),
        sources={
            name: {"spec": d.spec, "digest": d.manifest.digest, "n": len(d)}
            for name, d in (
                ("members", members),
                ("non_members", non_members),
                ("population", population),
            )
        },
    )


def in_out_split(k: int, n: int, seed: int, fraction: float = 0.5) -> np.ndarray:
    """``mask[k, n]``: every example IN for exactly ``round(fraction * k)`` of ``k`` models
    (at least one, at most ``k - 1``), by the rank of a uniform draw per example, as in
    Carlini et al.'s code; each model then trains on about ``fraction * n`` examples."""
    u = np.random.default_rng([seed, 0x11A]).uniform(size=(k, n))
    n_in = min(max(round(fraction * k), 1), k - 1)
    return u.argsort(0).argsort(0) < n_in


def _fresh_net(model: Model, recipe: ReferenceRecipe) -> nn.Module:
    """The audited architecture at a fresh initialization (from its factory when the model
    names one, else by each layer's ``reset_parameters``), or at ``recipe.init``. With a DP
    recipe and a model saved by ``raigate privacy train``, the network before its BatchNorm
    was folded or replaced."""
    from raigate.models.factories import build_network
    from raigate.models.loaders import ModelSpecFile
    from raigate.models.weights import apply_state_dict, load_state_dict_file

    if model.source == "factory":
        net = build_network(model.spec, num_classes=model.num_classes, trust_code=True)
    elif model.source == "json":
        from raigate.privacy.artifacts import SPEC_FACTORY

        doc = ModelSpecFile.model_validate_json(Path(model.spec).read_text(encoding="utf-8"))
        factory, kwargs = doc.factory, dict(doc.kwargs)
        if recipe.dp is not None and factory == SPEC_FACTORY:
            # a DP run's own spec: start before its BatchNorm change (DP-SGD training redoes it)
            factory, kwargs = kwargs["base"], dict(kwargs.get("base_kwargs") or {})
        net = build_network(
            factory, kwargs=kwargs, num_classes=model.num_classes, trust_code=True
        )  # the audited model was built from this factory, so it passed the trust rules
    else:
        net = copy.deepcopy(model.net)
        for name, mod in net.named_modules():
            own = list(mod.parameters(recurse=False))
            if own and not hasattr(mod, "reset_parameters"):
                raise ConfigError(
                    f"cannot re-initialize layer {name or '(root)'} ({type(mod).__name__}) of "
                    f"{model.spec}: give the model as a factory or model spec .json"
                )
            if own:
                mod.reset_parameters()
    if recipe.init is not None:
        apply_state_dict(net, load_state_dict_file(recipe.init), source=recipe.init)
    return net


def fit_recipe(
    net: nn.Module,
    transform: nn.Module,
    x: Tensor,
    y: Tensor,
    recipe: ReferenceRecipe,
    seed: int,
    device: str,
    *,
    progress: bool = False,
) -> float:
    """Train ``net`` (on pixels through ``transform``, the audited model's normalization)
    with the recipe: plain minibatches, seeded shuffles and flips. Returns the training
    accuracy. Also the way to train a target whose recipe the reference models repeat.
    ``progress`` counts the epochs (inside the reference models' bar: a heartbeat)."""
    gen = torch.Generator().manual_seed(seed)
    net.to(device).train()
    transform = transform.to(device)
    if recipe.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
        )
    else:
        opt = torch.optim.SGD(
            net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
        )  # fmt: skip
    for _ in _progress.track(range(recipe.epochs), "reference epochs", "epochs", show=progress):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), recipe.batch_size):
            idx = order[i : i + recipe.batch_size]
            xb, yb = x[idx], y[idx]
            if recipe.flip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(net(transform(xb.to(device))), yb.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return train_accuracy(net, transform, x, y, device)


@torch.no_grad()
def train_accuracy(
    net: nn.Module, transform: nn.Module, x: Tensor, y: Tensor, device: str
) -> float:
    """Accuracy of ``net`` (eval mode) on pixels ``x`` through ``transform``."""
    net.to(device).eval()
    transform = transform.to(device)
    right = sum(
        int((net(transform(x[i : i + 512].to(device))).argmax(1).cpu() == y[i : i + 512]).sum())
        for i in range(0, len(y), 512)
    )
    return right / max(len(y), 1)


@dataclass
class ReferenceSet:
    """Trained (or reloaded) reference networks, which pool examples each saw, and the
    manifest that says how they were made."""

    nets: list[nn.Module]
    in_mask: np.ndarray
    manifest: dict[str, Any]
    directory: Path | None
    reused: bool
    ledgers: list[Any] = field(default_factory=list)
    """DP recipe, freshly trained: each model's :class:`~raigate.privacy.ledger.Ledger`."""
    outputs: tuple[np.ndarray, np.ndarray] | None = None
    """Freshly trained: ``(phi[K, Q, N], p_y[K, Q, N])`` of each model on the pool, computed
    by the rank that trained it (:func:`query_outputs`), so scoring needs no second pass."""

    @property
    def cpu_seconds(self) -> list[float]:
        return [m["cpu_seconds"] for m in self.manifest["models"]]


def train_reference(
    model: Model,
    pool: Pool,
    *,
    k: int = 8,
    fraction: float = 0.5,
    recipe: ReferenceRecipe | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    queries: Literal[1, 2] = 2,
    batch_size: int = 256,
) -> ReferenceSet:
    """Train ``k`` reference models on random halves of ``pool`` (``fraction``: another
    share, to match the audited model's training-set size); with ``out_dir``, save them and
    ``reference.json`` there (see the module docstring). With ``recipe.dp``, each model is a
    DP-SGD run (:mod:`raigate.privacy.reference_dp`) whose ledger is returned and recorded.
    Each model's outputs on the pool for ``queries`` (``batch_size`` at a time) are kept in
    :attr:`ReferenceSet.outputs`. Under ``torchrun`` the models are shared out over the
    ranks and every rank gets all of them back (module docstring)."""
    from raigate._io import sha256_file, write_atomic
    from raigate.models.base import require_white_box
    from raigate.privacy.ledger import Ledger

    if k < 2:
        raise ConfigError(f"LiRA and RMIA need at least 2 reference models, got {k}")
    require_white_box(model, "training reference models (LiRA, RMIA)")
    recipe = recipe or ReferenceRecipe()
    if not 0 < fraction < 1:
        raise ConfigError(
            f"the reference fraction must lie strictly between 0 and 1, got {fraction}"
        )
    mask = in_out_split(k, len(pool.y), seed, fraction)
    model.to(device)
    trained: dict[int, nn.Module] = {}  # the networks this rank trained, by model index

    def train_one(pos: np.ndarray) -> parallel.Arrays:
        i = int(pos[0])
        net, arrays = _train_one(model, pool, mask[i], i, recipe, seed, device, queries,
                                 batch_size, progress=progress)  # fmt: skip
        trained[i] = net
        return arrays

    got = parallel.map_positions(
        k, 1, train_one, stage="reference_models", seed=seed, desc="reference models",
        unit="models", progress=progress,
    )  # fmt: skip
    ledgers = [Ledger.model_validate(json.loads(str(t))) for t in got["ledger"] if str(t)]
    weights = [got["weights"][i].tobytes() for i in range(k)]
    entries = [
        _ModelEntry(
            file=f"ref_{i:03d}.safetensors",
            sha256=hashlib.sha256(weights[i]).hexdigest(),
            seed=int(got["seed"][i]),
            in_pool=np.flatnonzero(mask[i]).tolist(),
            train_accuracy=float(got["train_accuracy"][i]),
            cpu_seconds=float(got["cpu_seconds"][i]),
            seconds=float(got["seconds"][i]),
            ledger=None if not ledgers else ledger_summary(ledgers[i]),
        )
        for i in range(k)
    ]
    manifest = _Manifest(
        architecture=model.spec,
        members=pool.sources["members"],
        non_members=pool.sources["non_members"],
        population={**pool.sources["population"], "kept": pool.population_positions.tolist()},
        pool_size=len(pool.y),
        fraction=fraction,
        recipe=recipe,
        init_sha256=sha256_file(recipe.init) if recipe.init else None,
        seed=seed,
        models=entries,
    ).model_dump()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and parallel.current().main:  # one writer, whatever N
        out.mkdir(parents=True, exist_ok=True)
        for entry, payload in zip(entries, weights, strict=True):
            write_atomic(out / entry.file, payload)
        write_atomic(out / MANIFEST, json.dumps(manifest, sort_keys=True, indent=1) + "\n")
    nets = [
        trained[i] if i in trained else _net_from_bytes(model, recipe, weights[i], entries[i])
        for i in range(k)
    ]
    return ReferenceSet(
        nets=nets, in_mask=mask, manifest=manifest, directory=out, reused=False,
        ledgers=ledgers, outputs=(got["phi"], got["prob"]),
    )  # fmt: skip


def _train_one(
    model: Model,
    pool: Pool,
    rows_in: np.ndarray,
    i: int,
    recipe: ReferenceRecipe,
    seed: int,
    device: str,
    queries: int,
    batch_size: int,
    *,
    progress: bool = False,
) -> tuple[nn.Module, parallel.Arrays]:
    """Reference model ``i``, trained on the pool rows ``rows_in`` marks, and what every rank
    needs of it: its weights (safetensors bytes), its outputs on the pool, its ledger (DP)
    and training numbers, each array with one row. The seed comes from ``(seed, i)`` only,
    never from the rank or the models trained before, so any rank trains the same network."""
    from safetensors.torch import save

    s = int(np.random.default_rng([seed, 0x2EF, i]).integers(2**31))
    torch.manual_seed(s)
    net = _fresh_net(model, recipe)
    rows = np.flatnonzero(rows_in)
    t0, c0 = time.perf_counter(), time.process_time()
    x, y = pool.x[rows], pool.y[rows]
    ledger = ""
    if recipe.dp is not None:
        net, led = _train_dp(net, model, x, y, recipe, s, device, i)
        acc = train_accuracy(net, model.transform, x, y, device)
        # JSON's Infinity keeps an infinite epsilon; the check reads the summary back
        ledger = json.dumps(led.model_dump(mode="python"), allow_nan=True)
    else:
        acc = fit_recipe(net, model.transform, x, y, recipe, s, device, progress=progress)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    net.to(device).eval()
    transform = model.transform.to(device)
    phi, prob = query_outputs(lambda v: net(transform(v)), pool, queries=queries,
                              batch_size=batch_size, device=device)  # fmt: skip
    net.cpu()
    state = {key: v.detach().cpu().contiguous() for key, v in net.state_dict().items()}
    return net, {
        "seed": np.asarray([s], dtype=np.int64),
        "train_accuracy": np.asarray([acc], dtype=np.float64),
        "cpu_seconds": np.asarray([round(cpu, 3)]),
        "seconds": np.asarray([round(wall, 3)]),
        "ledger": np.asarray([ledger]),
        "weights": np.frombuffer(save(state), dtype=np.uint8)[None],
        "phi": phi[None],
        "prob": prob[None],
    }


def _net_from_bytes(
    model: Model, recipe: ReferenceRecipe, payload: bytes, entry: _ModelEntry
) -> nn.Module:
    """A reference network another rank trained, rebuilt from its safetensors bytes as
    :func:`load_reference` rebuilds a saved one (BatchNorm changed as its ledger says)."""
    from safetensors.torch import load

    from raigate.models.weights import apply_state_dict
    from raigate.privacy.fold import rebuild

    net = _fresh_net(model, recipe.model_copy(update={"init": None}))
    if entry.ledger is not None:
        net, _ = rebuild(net.eval(), entry.ledger["batchnorm"])
    apply_state_dict(net, load(payload), source=entry.file)
    return net.eval()


def _train_dp(
    net: nn.Module,
    model: Model,
    x: Tensor,
    y: Tensor,
    recipe: ReferenceRecipe,
    seed: int,
    device: str,
    i: int,
) -> tuple[nn.Module, Any]:
    """One DP reference model; ``batchnorm: auto`` resolved as ``privacy train`` would for
    the audited run (fold with pretrained ``init``, else GroupNorm), since the bare network
    handed over does not say whether it is pretrained."""
    assert recipe.dp is not None
    dp = dict(recipe.dp)
    if dp["batchnorm"] == "auto":
        dp["batchnorm"] = "fold" if recipe.init is not None else "groupnorm"
    return train_dp_model(net, model, x, y, dp, seed=seed, device=device, name=f"ref_{i:03d}")


def load_reference(
    directory: str | Path, model: Model, pool: Pool, *, dp: dict[str, Any] | None = None
) -> ReferenceSet:
    """Reload saved reference models after checking that they were trained on this pool:
    the same members, non-members and population (manifest digests) and weights files that
    still hash to what the manifest says; with ``dp`` (the DP recipe the caller expects, e.g.
    from ``--reference-recipe-from``), that the models were trained with it. DP reference
    models are rebuilt with the BatchNorm change their ledgers record."""
    from raigate._io import sha256_file
    from raigate.models.weights import apply_state_dict, load_state_dict_file
    from raigate.privacy.fold import rebuild
    from raigate.privacy.reference_dp import check_dp_recipe

    d = Path(directory)
    path = d / MANIFEST
    if not path.is_file():
        raise ConfigError(f"--reference {d}: no {MANIFEST} there (train with --population first)")
    try:
        doc = _Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, UnicodeDecodeError) as e:
        raise ConfigError(f"--reference {d}: {MANIFEST} is not a reference manifest") from e
    for name in ("members", "non_members", "population"):
        want, have = pool.sources[name]["digest"], getattr(doc, name).get("digest")
        if want != have:
            raise ConfigError(
                f"--reference {d} was trained with {name.replace('_', '-')} "
                f"{getattr(doc, name).get('spec')} (manifest digest {str(have)[:12]}), not "
                f"{pool.sources[name]['spec']} ({want[:12]}); retrain without --reference"
            )
    if (
        doc.pool_size != len(pool.y)
        or doc.population.get("kept") != pool.population_positions.tolist()
    ):
        raise ConfigError(f"--reference {d}: its pool differs from this audit's; retrain")
    if len(doc.models) < 2:
        raise ConfigError(f"--reference {d}: needs at least 2 reference models")
    if dp is not None and doc.recipe.dp != check_dp_recipe(dp):
        how = "without DP" if doc.recipe.dp is None else f"with DP recipe {doc.recipe.dp}"
        raise ConfigError(
            f"--reference {d}: its models were trained {how}, not with the DP recipe asked "
            "for; retrain without --reference"
        )
    nets = []
    mask = np.zeros((len(doc.models), doc.pool_size), dtype=bool)
    for i, entry in enumerate(doc.models):
        f = d / entry.file
        if not f.is_file() or sha256_file(f) != entry.sha256:
            raise ConfigError(f"--reference {d}: {entry.file} is missing or changed since training")
        net = _fresh_net(model, doc.recipe.model_copy(update={"init": None}))
        if entry.ledger is not None:  # trained by DP-SGD, after this BatchNorm change
            net, _ = rebuild(net.eval(), entry.ledger["batchnorm"])
        apply_state_dict(net, load_state_dict_file(f), source=f)
        nets.append(net.eval())
        mask[i, entry.in_pool] = True
    return ReferenceSet(
        nets=nets, in_mask=mask, manifest=doc.model_dump(), directory=d, reused=True
    )


@torch.no_grad()
def _query_batch(forward: Any, x: Tensor, y: Tensor, queries: int) -> tuple[Tensor, Tensor]:
    """``(phi[Q, B], p_y[Q, B])`` of one batch: the image and (``queries == 2``) its mirror."""
    from raigate.privacy.lira import scaled_logit

    phi, prob = [], []
    for q in range(queries):
        logits = forward(x.flip(-1) if q == 1 else x).double()
        phi.append(scaled_logit(logits, y).cpu())
        prob.append(logits.softmax(1).gather(1, y[:, None]).squeeze(1).cpu())
    return torch.stack(phi), torch.stack(prob)


@torch.no_grad()
def query_outputs(
    forward: Any,
    pool: Pool,
    *,
    queries: int,
    batch_size: int = 256,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """``(phi[Q, N], p_y[Q, N])`` of one network on every pool example, for the plain image
    and (``queries == 2``) its mirror, in this process (one network is one unit of work)."""
    parts = []
    for i in range(0, len(pool.y), batch_size):
        x, y = pool.x[i : i + batch_size].to(device), pool.y[i : i + batch_size].to(device)
        parts.append(_query_batch(forward, x, y, queries))
    return torch.cat([p[0] for p in parts], 1).numpy(), torch.cat([p[1] for p in parts], 1).numpy()


def _target_outputs(
    model: Model, pool: Pool, *, queries: int, batch_size: int, device: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`query_outputs` of the audited model, its pool batches shared out over the
    ranks (:func:`raigate.parallel.map_positions`): the same batches, so the same bits."""

    def one(pos: np.ndarray) -> parallel.Arrays:
        x, y = pool.x[pos].to(device), pool.y[pos].to(device)
        phi, prob = _query_batch(model.logits, x, y, queries)
        return {"phi": phi.T.numpy(), "prob": prob.T.numpy()}  # positions first

    got = parallel.map_positions(len(pool.y), batch_size, one, stage="target_queries", seed=seed)
    return got["phi"].T.copy(), got["prob"].T.copy()


def reference_outputs(
    model: Model,
    pool: Pool,
    refs: ReferenceSet,
    *,
    queries: int,
    batch_size: int = 256,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(phi[K, Q, N], p_y[K, Q, N])`` of every reference model on the pool: those their
    trainers recorded (:attr:`ReferenceSet.outputs`, the first ``queries``), or, for reloaded
    models, one pass per model with the models shared out over the ranks."""
    if refs.outputs is not None and refs.outputs[0].shape[1] >= queries:
        return refs.outputs[0][:, :queries], refs.outputs[1][:, :queries]

    def one(pos: np.ndarray) -> parallel.Arrays:
        net = refs.nets[int(pos[0])].to(device)
        try:
            phi, prob = query_outputs(lambda x: net(model.transform(x)), pool, queries=queries,
                                      batch_size=batch_size, device=device)  # fmt: skip
        finally:
            net.cpu()
        return {"phi": phi[None], "prob": prob[None]}

    got = parallel.map_positions(len(refs.nets), 1, one, stage="reference_queries", seed=seed)
    return got["phi"], got["prob"]


def reference_attack_scores(
    model: Model,
    pool: Pool,
    refs: ReferenceSet,
    attacks: list[str],
    *,
    queries: int = 2,
    variance: Literal["auto", "global", "per_example"] = "auto",
    rmia_mode: Literal["online", "offline"] = "online",
    rmia_a: float = 0.3,
    rmia_gamma: float = 1.0,
    batch_size: int = 256,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Scores over the whole pool (targets first) of each of ``attacks`` among
    ``lira_online``, ``lira_offline`` and ``rmia`` (:mod:`raigate.privacy.lira`), from one
    pass of the audited model and of every reference model over the pool (passes shared
    out over the ranks of a ``torchrun`` world; every rank gets every score)."""
    from raigate.privacy import lira

    kw = {"queries": queries, "batch_size": batch_size, "device": device, "seed": seed}
    model.to(device)
    t_phi, t_p = _target_outputs(model, pool, **kw)  # type: ignore[arg-type]
    r_phi, r_p = reference_outputs(model, pool, refs, **kw)  # type: ignore[arg-type]
    mask = refs.in_mask
    scores: dict[str, np.ndarray] = {}
    if "lira_online" in attacks:
        scores["lira_online"] = lira.lira_online_scores(t_phi, r_phi, mask, variance=variance)
    if "lira_offline" in attacks:
        scores["lira_offline"] = lira.lira_offline_scores(t_phi, r_phi, mask, variance=variance)
    if "rmia" in attacks:
        scores["rmia"] = lira.rmia_scores(
            t_p.mean(0), r_p.mean(1), mask, pool.population, mode=rmia_mode, a=rmia_a,
            gamma=rmia_gamma,
        )  # fmt: skip
    return scores
