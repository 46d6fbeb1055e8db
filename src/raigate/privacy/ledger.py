"""The privacy ledger (``ledger.json``): what a DP-SGD run spent, recomputable by anyone.

The ledger records the mechanism, not just a number: the noise multiplier ``sigma``, the
Poisson sample rate ``q``, the step count and the clipping norm, as the accountant's
history ``[(sigma, q, steps), ...]``. ``epsilons`` holds epsilon at ``delta`` from two
independent accountants over that history:

* ``prv``: numerical composition of privacy loss random variables (Gopi, Lee & Wutschitz
  2021), Opacus' default; the value is its upper bound at ``eps_error = 0.01``;
* ``rdp``: Renyi DP of the subsampled Gaussian (Mironov, Talwar & Zhang 2019), converted
  to (epsilon, delta) as in Opacus (Balle et al. 2020); looser, but a classic cross-check.

``epsilon`` is the value under the accountant the run was calibrated with. Anyone can
recompute both from the history with Opacus' accountants::

    acc = RDPAccountant(); acc.history = [tuple(h) for h in ledger["history"]]
    acc.get_epsilon(ledger["delta"])
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from raigate._io import write_atomic
from raigate.errors import DataError

Accountant = Literal["prv", "rdp"]
ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")
LEDGER_NAME = "ledger.json"
PRV_EPS_ERROR = 0.01

__all__ = [
    "ACCOUNTANTS",
    "BALANCE_DEFINITION",
    "LEDGER_NAME",
    "REALIZED_P_MIN",
    "Accountant",
    "Ledger",
    "SamplerRecord",
    "epsilon_for",
    "epsilons_for",
]


def epsilon_for(history: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
    """Epsilon at ``delta`` for an accountant history, computed by Opacus' accountant."""
    key = tuple((float(s), float(q), int(k)) for s, q, k in history)
    return _epsilon_cached(key, float(delta), accountant)


@functools.lru_cache(maxsize=256)
def _epsilon_cached(
    history: tuple[tuple[float, float, int], ...], delta: float, accountant: str
) -> float:
    # Pure in its arguments; cached because checkpoints and tests ask for the same values.
    import warnings

    from opacus.accountants import create_accountant

    if not history:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    with warnings.catch_warnings():
        # RDP: "optimal order is the largest alpha" only says a wider order grid could give
        # a tighter (smaller) epsilon; the value returned is still a valid upper bound.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        # PRV at sample rate 1 (an unsubsampled Gaussian, e.g. --balance's noisy counts)
        # takes log(1 - q) = -inf inside Opacus; the value it returns is still right
        # (tested against the analytic Gaussian mechanism).
        warnings.filterwarnings("ignore", message="divide by zero encountered in log")
        if accountant == "prv":
            return float(acc.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))
        return float(acc.get_epsilon(delta=delta))


def epsilons_for(history: list[tuple[float, float, int]], delta: float) -> dict[str, float]:
    """Epsilon at ``delta`` under both accountants."""
    return {name: epsilon_for(history, delta, name) for name in ACCOUNTANTS}


REALIZED_P_MIN = 1e-6
"""Two-sided binomial p-value below which the realized draw count refutes the rate ``q``."""


class SamplerRecord(BaseModel):
    """The ledger's ``sampler``: which sampling ran, and whether the examples the training
    loop received over the run are plausible under Poisson sampling at ``sample_rate``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["poisson"] = "poisson"
    sampler_class: str = Field(description="the sampler class that drew the batches")
    source: str = Field("raigate", description="who chose the sampling (a converted sampler)")
    sample_rate: float
    steps: int = Field(description="steps whose draws were counted")
    trials: int = Field(description="dataset_size x steps: example-step pairs")
    examples_drawn: int = Field(description="examples the training loop received")
    expected: float = Field(description="sample_rate x trials")
    p_value: float = Field(description="two-sided binomial test of examples_drawn")
    plausible: bool = Field(description=f"p_value >= {REALIZED_P_MIN:g}")


class Ledger(BaseModel):
    """Spent privacy budget of one DP-SGD run, with every parameter needed to recompute it.

    ``complete`` is false while a run is unfinished (a checkpoint can resume it); the
    numbers then describe the budget spent so far.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["raigate.privacy.ledger"] = "raigate.privacy.ledger"
    version: Literal[1] = 1
    epsilon: float = Field(description="epsilon spent at delta, under `accountant`")
    target_epsilon: float
    delta: float
    accountant: Accountant
    epsilons: dict[str, float] = Field(description="epsilon at delta under each accountant")
    noise_multiplier: float = Field(description="sigma: noise std / max_grad_norm")
    sample_rate: float = Field(description="q = batch_size / dataset_size, Poisson")
    steps: int
    planned_steps: int
    max_grad_norm: float
    batch_size: int = Field(description="expected logical batch size q * N")
    physical_batch_size: int
    epochs: float
    poisson_sampling: bool
    secure_mode: bool
    augmult: int
    canaries: int
    dataset_size: int
    dataset_spec: str
    manifest_digest: str
    grad_sample_mode: str
    batchnorm: str
    opacus_version: str
    complete: bool
    history: list[tuple[float, float, int]]
    group_balance: dict[str, Any] | None = Field(
        None, description="--balance: the groups, their noisy counts and weights (see definitions)"
    )
    sampler: SamplerRecord | None = Field(
        None, description="the sampling that ran, and its realized-rate test (older ledgers: none)"
    )
    definitions: dict[str, str] = Field(default_factory=dict)

    def to_json(self) -> str:
        from raigate.results import dumps

        return dumps(self.model_dump(mode="python"))

    def write(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write ``out_dir/ledger.json`` atomically."""
        return write_atomic(Path(out_dir) / LEDGER_NAME, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Ledger:
        """Read a ledger (a file, or a folder holding ``ledger.json``)."""
        p = Path(path)
        if p.is_dir():
            p = p / LEDGER_NAME
        try:
            raw: Any = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{p}: no such ledger; give the ledger.json of a DP run") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{p}: not valid JSON ({exc})") from None
        try:
            return cls.model_validate(raw)
        except ValueError as exc:
            first = str(exc).splitlines()[0]
            raise DataError(f"{p}: not a raigate privacy ledger: {first}") from None


DEFINITIONS: dict[str, str] = {
    "epsilon": "(epsilon, delta)-DP under add/remove-one-example adjacency, at the ledger's "
    "delta, for the whole run (all steps composed)",
    "noise_multiplier": "std of the Gaussian noise added to the sum of clipped per-example "
    "gradients, divided by max_grad_norm",
    "sample_rate": "probability that each example joins each logical batch (Poisson sampling)",
    "max_grad_norm": "L2 norm each example's gradient is clipped to (flat clipping over all "
    "parameters)",
    "augmult": "augmented copies per example per step whose gradients are averaged before "
    "clipping (De et al. 2022); 0 means no augmentation",
    "sampler": "the sampler that drew the logical batches; examples_drawn counts the examples "
    "the training loop received over `steps` steps, tested two-sided against "
    "Binomial(dataset_size x steps, sample_rate): p_value < 1e-6 means the sampling that ran "
    "was not Poisson at the charged rate, and epsilon does not hold",
    "epsilons.prv": "PRV accountant (Gopi et al. 2021), upper bound at eps_error=0.01",
    "epsilons.rdp": "RDP accountant (Mironov et al. 2019), Opacus' conversion to (eps, delta)",
}

BALANCE_DEFINITION = (
    "group-weighted clipping (--balance): each example's clipped gradient is multiplied by its "
    "group's weight min_h n_h / n_g <= 1 before summing, so the sensitivity stays max_grad_norm; "
    "the counts n_g are released once by the Gaussian mechanism with std count_noise (the "
    "history's entry (count_noise, 1.0, 1)), composed with the training steps"
)
"""The ledger's ``definitions["group_balance"]``, present when the run balanced groups."""
