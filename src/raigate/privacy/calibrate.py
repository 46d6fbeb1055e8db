"""The noise multiplier for a target (epsilon, delta): Opacus' calibration, and the same
bisection over a whole history when ``--balance`` released the group counts first."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from raigate.errors import ConfigError
from raigate.privacy.ledger import epsilon_for

if TYPE_CHECKING:
    from raigate.privacy.params import DPParams

__all__ = ["calibrate"]


def calibrate(
    params: DPParams, q: float, steps: int, prefix: tuple[tuple[float, float, int], ...] = ()
) -> float:
    """Noise multiplier for (target epsilon, delta) at sample rate ``q`` over ``steps``,
    after the mechanisms already in ``prefix`` (``--balance``'s noisy counts)."""
    if prefix:
        return noise_multiplier_after(
            prefix, params.epsilon, params.delta, q, steps, params.accountant
        )
    return noise_multiplier(params.epsilon, params.delta, q, steps, params.accountant)


@functools.lru_cache(maxsize=16)
def noise_multiplier_after(
    prefix: tuple[tuple[float, float, int], ...],
    epsilon: float,
    delta: float,
    q: float,
    steps: int,
    accountant: str,
) -> float:
    """The smallest noise multiplier (to 1% of epsilon, as Opacus' ``get_noise_multiplier``
    searches) for which ``prefix`` followed by ``steps`` steps at ``(sigma, q)`` spends at
    most ``epsilon``: the same bisection as Opacus', over the whole history."""

    def spent(sigma: float) -> float:
        return epsilon_for([*prefix, (sigma, q, steps)], delta, accountant)

    if epsilon_for(list(prefix), delta, accountant) >= epsilon:
        raise ConfigError(
            f"the group counts alone (--balance-noise {prefix[0][0]:g}) spend epsilon "
            f"{epsilon_for(list(prefix), delta, accountant):.3g} of the target {epsilon}: "
            "raise --balance-noise or --epsilon"
        )
    low, high = 0.0, 10.0
    eps_high = spent(high)
    while eps_high > epsilon:
        low, high = high, 2 * high
        if high > 2000:
            raise ConfigError(
                f"no noise level reaches epsilon {epsilon} at delta {delta} over {steps} steps "
                f"at sample rate {q:.4g} after the group counts; raise --epsilon"
            )
        eps_high = spent(high)
    while epsilon - eps_high > 0.01 * epsilon:
        mid = (low + high) / 2
        eps_mid = spent(mid)
        if eps_mid < epsilon:
            high, eps_high = mid, eps_mid
        else:
            low = mid
    return high


@functools.lru_cache(maxsize=64)
def noise_multiplier(epsilon: float, delta: float, q: float, steps: int, accountant: str) -> float:
    # Pure in its arguments (a binary search over Opacus' accountant); cached for reruns.
    import warnings

    from opacus.accountants.utils import get_noise_multiplier

    extra = {"eps_error": 0.01} if accountant == "prv" else {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the")
            sigma = float(
                get_noise_multiplier(
                    target_epsilon=epsilon,
                    target_delta=delta,
                    sample_rate=q,
                    steps=steps,
                    accountant=accountant,
                    epsilon_tolerance=0.01,
                    **extra,
                )
            )
    except ValueError as exc:
        raise ConfigError(
            f"no noise level reaches epsilon {epsilon} at delta {delta} over "
            f"{steps} steps at sample rate {q:.4g} ({exc}); raise --epsilon or lower --epochs"
        ) from None
    spent = epsilon_for([(sigma, q, steps)], delta, accountant)
    if spent > epsilon:
        raise RuntimeError(f"calibrated sigma {sigma} gives epsilon {spent} > {epsilon}")
    return sigma
