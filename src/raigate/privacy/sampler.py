"""Sampler honesty: epsilon is computed from the sampling that actually ran.

The accountants (RDP, PRV) bound the *Poisson-subsampled* Gaussian mechanism: each
example joins each logical batch independently with probability ``q``, and the ledger
charges that ``q`` (Mironov, Talwar & Zhang 2019). Two Opacus pitfalls break this silently:

* a ``WeightedRandomSampler`` draws ``B`` examples *with replacement* with probabilities
  ``p_i = w_i / sum(w)``, so example ``i`` is in a given batch with probability
  ``1 - (1 - p_i)^B``, proportional to ``w_i``, not ``q = B / N``; the heaviest examples are
  sampled (and can repeat within a batch) more often than the accountant assumes;
* ``make_private`` replaces the user's sampler with uniform Poisson sampling at
  ``1 / len(data_loader)`` (opacus#600: the weights are dropped), and with
  ``WeightedRandomSampler(weights, num_samples=128)``, batch 16 and ``N = 100,000`` that is
  ``1/8 = 0.125`` instead of ``16 / 100,000 = 0.00016``, 781x too high (opacus#813).

raigate therefore draws its own Poisson batches (:class:`~raigate.privacy.sampling.PoissonBatches`)
and (:func:`resolve_sampler`) refuses any other sampler with one line, except Opacus' own
``UniformWithReplacementSampler`` (or a ``DPDataLoader`` built on it) whose rate equals
``batch_size / N``, which is the same sampling and is converted to raigate's sampler.
After training, :func:`realized_rate` tests the number of examples the loop actually
received against ``Binomial(N * T, q)``; the ledger records the result (``sampler``).

:func:`check_loader` is the same diagnosis for an Opacus user's own DataLoader:

>>> import torch
>>> from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler
>>> data = TensorDataset(torch.zeros(100_000, 1))
>>> wrs = WeightedRandomSampler(torch.ones(100_000), num_samples=128, replacement=True)
>>> report = check_loader(DataLoader(data, batch_size=16, sampler=wrs),
...     dataset_size=100_000, expected_batch_size=16)
>>> report.ok, report.kind, round(report.opacus_rate / report.accountant_rate, 2)
(False, 'weighted', 781.25)
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    Sampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from raigate.errors import ConfigError, DataError
from raigate.privacy.ledger import REALIZED_P_MIN, SamplerRecord

__all__ = [
    "REALIZED_P_MIN",
    "SamplerCheck",
    "SamplerRecord",
    "check_loader",
    "check_weighted",
    "read_weights",
    "realized_rate",
    "resolve_sampler",
    "sampler_finding",
    "weighted_max_rate",
]

SamplerKind = Literal["poisson", "weighted", "shuffled", "sequential", "unknown"]


def _same(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


def weighted_max_rate(weights: Any, batch_size: int) -> float:
    """Largest per-batch inclusion probability ``1 - (1 - max_i p_i)^B`` of a weighted
    sampler drawing ``B`` times with replacement with ``p_i = w_i / sum(w)``. Without
    replacement the heaviest example's share only grows as others are drawn, so this is a
    lower bound on its rate in the first batch."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    p_max = float(w.max() / w.sum())
    return -math.expm1(batch_size * math.log1p(-p_max)) if p_max < 1 else 1.0


@dataclass(frozen=True)
class SamplerCheck:
    """Whether a sampler's draws match what the accountant charges (``q = B / N``).

    ``max_rate`` is the highest probability any one example has of joining one batch
    under this sampler (None when it cannot be told); ``opacus_rate`` is the rate Opacus'
    ``make_private`` would charge and resample at (``1 / len(loader)``), for a loader."""

    ok: bool
    kind: SamplerKind
    sampler_class: str
    accountant_rate: float
    max_rate: float | None
    opacus_rate: float | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _unwrap(obj: Any) -> tuple[Any, int | None, float | None]:
    """(the innermost sampler, batch size if known, Opacus' rate 1/len(loader) if a loader)."""
    opacus_rate = None
    batch = None
    if isinstance(obj, DataLoader):
        try:
            opacus_rate = 1 / len(obj) if len(obj) else None
        except TypeError:  # an IterableDataset has no length (and no per-example rate)
            opacus_rate = None
        batch = obj.batch_size
        obj = obj.batch_sampler if obj.batch_sampler is not None else obj.sampler
    if isinstance(obj, BatchSampler):
        batch = obj.batch_size
        obj = obj.sampler
    return obj, batch, opacus_rate


def check_loader(loader: Any, *, dataset_size: int, expected_batch_size: int) -> SamplerCheck:
    """Does ``loader`` (a DataLoader, BatchSampler or Sampler) draw the Poisson batches an
    accountant charging ``q = expected_batch_size / dataset_size`` assumes? Returns a
    :class:`SamplerCheck` whose ``message`` says so in one line (raises only for a
    non-positive size)."""
    from opacus.utils.uniform_sampler import (
        DistributedUniformWithReplacementSampler,
        UniformWithReplacementSampler,
    )

    n, b = int(dataset_size), int(expected_batch_size)
    if n <= 0 or b <= 0:
        raise ConfigError(f"dataset_size {n} and expected_batch_size {b} must be positive")
    inner, batch, opacus_rate = _unwrap(loader)
    q, name = b / n, _class_name(inner)
    qtext = f"q = {b}/{n} = {q:.6g}"
    vs_q = (
        f"; Opacus' make_private would charge and resample at 1/len(loader) = "
        f"{opacus_rate:.4g} ({opacus_rate / q:.4g}x q)"
        if opacus_rate is not None
        else ""
    )
    kind: SamplerKind
    if isinstance(inner, UniformWithReplacementSampler | DistributedUniformWithReplacementSampler):
        kind, max_rate = "poisson", float(inner.sample_rate)
        total = int(getattr(inner, "total_size", inner.num_samples))
        ok = total == n and _same(max_rate, q)
        if total != n:
            text = f"{name} draws from {total} examples, not the dataset's {n}: build it with "
            text += f"num_samples={n}"
        elif not ok:
            text = f"{name} draws each example with rate {max_rate:.6g}, but the accountant "
            text += f"charges {qtext}: build it with sample_rate={q:.6g}"
        else:
            text = f"{name}: Poisson sampling at {qtext}, as the accountant assumes"
        return SamplerCheck(ok, kind, name, q, max_rate, opacus_rate, text)
    if isinstance(inner, WeightedRandomSampler):
        kind, max_rate = "weighted", weighted_max_rate(inner.weights, batch or b)
        text = _weighted_message(name, inner.replacement, batch or b, max_rate, q, qtext) + vs_q
        text += (
            "; use Poisson sampling, and group-weighted clipping (raigate privacy train "
            "--balance) to balance groups with correct accounting"
        )
        return SamplerCheck(False, kind, name, q, max_rate, opacus_rate, text)
    if isinstance(inner, RandomSampler | SequentialSampler):
        kind = "shuffled" if isinstance(inner, RandomSampler) else "sequential"
        text = (
            f"{name} makes fixed-size {kind} batches (each example in exactly one batch per "
            f"epoch), not Poisson samples; the accountants' bound at {qtext} assumes each "
            f"example joins each batch independently{vs_q}; use Opacus' DPDataLoader "
            "(poisson_sampling=True) or raigate's own sampling"
        )
        return SamplerCheck(False, kind, name, q, min(1.0, (batch or b) / n), opacus_rate, text)
    text = (
        f"{name}: not a sampler whose per-example rate can be told, so no accountant's "
        f"epsilon at {qtext} covers it{vs_q}; use Poisson sampling"
    )
    return SamplerCheck(False, "unknown", name, q, None, opacus_rate, text)


def _weighted_message(
    name: str, replacement: bool, batch: int, max_rate: float, q: float, qtext: str
) -> str:
    how, bound = ("with", "") if replacement else ("without", "at least ")
    return (
        f"{name} draws {batch} examples per batch {how} replacement with probability "
        f"proportional to the weights, so example i joins a batch with rate "
        f"1-(1-w_i/sum w)^{batch} ({bound}{max_rate:.4g} for the heaviest, "
        f"{max_rate / q:.4g}x the accountant's {qtext}); the epsilon charged at q assumes "
        "each example joins independently at q, so it does not cover this sampling"
    )


def resolve_sampler(sampler: Any, *, dataset_size: int, batch_size: int) -> str:
    """What ``run_private_training(sampler=...)`` accepts: ``None`` (raigate's Poisson
    batches) or Opacus' uniform Poisson sampler / ``DPDataLoader`` at exactly
    ``batch_size / N`` over ``N`` examples, which raigate then draws itself (seeded and
    resumable; the sampler's own generator is not used). Returns where the sampling comes
    from, for the ledger; anything else is a one-line ConfigError."""
    if sampler is None:
        return "raigate"
    if not isinstance(sampler, DataLoader | Sampler | BatchSampler):
        raise ConfigError(
            f"sampler: {type(sampler).__name__} is not a torch Sampler or DataLoader; pass "
            "sampler=None for raigate's Poisson sampling"
        )
    check = check_loader(sampler, dataset_size=dataset_size, expected_batch_size=batch_size)
    if check.ok:
        return f"{check.sampler_class} (same rate; drawn by raigate's seeded sampler)"
    if check.kind == "weighted":
        raise ConfigError(f"sampler refused: {check.message}; or pass sampler=None")
    if check.kind == "poisson":
        raise ConfigError(f"sampler refused: {check.message}")
    raise ConfigError(
        f"sampler refused: raigate draws its own Poisson batches at q = batch_size/N and "
        f"charges that rate; {check.message}; pass sampler=None"
    )


def realized_rate(
    *,
    drawn: int,
    dataset_size: int,
    steps: int,
    sample_rate: float,
    sampler_class: str,
    source: str = "raigate",
) -> SamplerRecord:
    """Test ``drawn`` examples over ``steps`` Poisson steps on ``dataset_size`` examples
    against ``Binomial(dataset_size * steps, sample_rate)`` (exact two-sided test, scipy)."""
    from scipy.stats import binomtest

    trials = int(dataset_size) * int(steps)
    p = float(binomtest(int(drawn), trials, sample_rate).pvalue) if trials > 0 else 1.0
    return SamplerRecord(
        sampler_class=sampler_class,
        source=source,
        sample_rate=sample_rate,
        steps=int(steps),
        trials=trials,
        examples_drawn=int(drawn),
        expected=sample_rate * trials,
        p_value=p,
        plausible=p >= REALIZED_P_MIN,
    )


def sampler_finding(record: SamplerRecord) -> Any:
    """The realized-rate test as a :class:`~raigate.results.Finding` (``privacy.sampler``):
    fail when the examples the loop received refute Poisson sampling at the charged rate."""
    from raigate.results import Finding

    sd = math.sqrt(record.trials * record.sample_rate * (1 - record.sample_rate))
    return Finding(
        id="privacy.sampler",
        severity="pass" if record.plausible else "fail",
        metric="sampler_p_value",
        value=record.p_value,
        threshold=REALIZED_P_MIN,
        message=(
            f"the training loop received {record.examples_drawn} examples over "
            f"{record.steps} steps; Poisson sampling at the charged q={record.sample_rate:.4g} "
            f"gives {record.expected:.1f} +- {sd:.1f} (two-sided binomial p="
            f"{record.p_value:.2g}, sampler {record.sampler_class})"
            + ("" if record.plausible else ": the sampling that ran is not the one charged, "
               "so the ledger's epsilon does not hold")
        ),
    )  # fmt: skip


def read_weights(path: str | os.PathLike[str]) -> Tensor:
    """Per-example sampler weights from a ``.npy`` array (read without pickle) or a text
    file with one number per line (a CSV's first column, header allowed)."""
    import numpy as np

    p = Path(path)
    try:
        if p.suffix == ".npy":
            values = np.load(p, allow_pickle=False).astype(np.float64).reshape(-1)
        else:
            rows = [ln.split(",")[0].strip() for ln in p.read_text(encoding="utf-8").splitlines()]
            rows = [r for r in rows if r]
            if rows and not _is_number(rows[0]):
                rows = rows[1:]  # a header
            values = np.array([float(r) for r in rows], dtype=np.float64)
    except FileNotFoundError:
        raise DataError(f"{p}: no such weights file") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"{p}: not a list of sampler weights ({exc})") from None
    if values.size == 0 or not np.all(np.isfinite(values)) or (values < 0).any():
        raise DataError(f"{p}: sampler weights must be finite, non-negative and not empty")
    if values.sum() <= 0:
        raise DataError(f"{p}: the sampler weights sum to zero")
    return torch.as_tensor(values)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_weighted(
    weights: Any, *, batch_size: int, num_samples: int | None = None, replacement: bool = True
) -> SamplerCheck:
    """:func:`check_loader` for ``DataLoader(data, batch_size, sampler=WeightedRandomSampler(
    weights, num_samples, replacement))`` over ``len(weights)`` examples, without the data:
    what ``raigate privacy check-sampler --weights FILE`` prints."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    n = len(w)
    if batch_size <= 0 or (num_samples is not None and num_samples <= 0):
        raise ConfigError("--batch-size and --num-samples must be positive")
    if not replacement and (num_samples or n) > n:
        raise ConfigError(
            f"--num-samples {num_samples} exceeds the {n} weights without replacement"
        )
    wrs = WeightedRandomSampler(w, num_samples=num_samples or n, replacement=replacement)
    loader = DataLoader(range(n), batch_size=batch_size, sampler=wrs)  # type: ignore[arg-type]
    return check_loader(loader, dataset_size=n, expected_batch_size=batch_size)
