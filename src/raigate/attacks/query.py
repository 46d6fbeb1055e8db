"""What a query-only attack hands back, and the budget it runs under.

A score- or decision-based attack can only learn about the model by sending it images, so
its strength is meaningless without the number of images it sent: accuracy under Square
Attack at 1,000 queries per image is a different (weaker) claim than at 10,000. Every
query attack here therefore returns, per image, the queries it actually spent, and never
spends more than its ``query_budget``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from raigate.errors import ConfigError

MIN_QUERY_BUDGET = 2
"""One query for the clean image, one for the first candidate: less cannot attack at all."""

__all__ = ["MIN_QUERY_BUDGET", "QueryResult", "check_budget"]


@dataclass(frozen=True)
class QueryResult:
    """Per image of the batch: ``x_adv`` (the clean image where nothing was found),
    ``queries`` (images sent to the model for it, the clean query included; int64),
    ``success`` (``x_adv`` is misclassified) and ``distance`` (the size of ``x_adv - x`` in
    the attack's norm; for a minimal-perturbation attack, inf where it found nothing)."""

    x_adv: Tensor
    queries: Tensor
    success: Tensor
    distance: Tensor

    @property
    def mean_queries(self) -> float:
        return float(self.queries.double().mean()) if self.queries.numel() else 0.0

    @property
    def max_queries(self) -> int:
        return int(self.queries.max()) if self.queries.numel() else 0


def check_budget(query_budget: int) -> int:
    """The budget as an int, or a ConfigError naming the flag and the minimum."""
    if int(query_budget) != query_budget or query_budget < MIN_QUERY_BUDGET:
        raise ConfigError(
            f"--query-budget must be an integer >= {MIN_QUERY_BUDGET} (the clean query and "
            f"one candidate), got {query_budget}"
        )
    return int(query_budget)
