"""Groups of a sensitive attribute, and the group-balanced weights and sampler built on them.

A group is a value of one attribute column (``race``) or a combination of values of several
(``race+gender``, the intersection syntax of the fairness check), optionally split by the
label (``by_label``: the (attribute, label) cells that Sagawa et al. 2020 and Idrissi et al.
2022 call groups). Group names join the values with ``|`` as the fairness report does
(``Black|Female``).

Balancing gives every group the same total weight: sample ``i`` of group ``g`` gets
``w_i = n / (G * n_g)`` (``G`` non-empty groups, ``n`` samples), so the weights average 1 and
each group sums to ``n / G``. Minimising ``mean_i w_i * loss_i`` is then minimising the
unweighted mean over groups of each group's mean loss (Sagawa et al. 2020's reweighting
baseline); :func:`balanced_sampler` draws with probabilities proportional to the same
weights, with replacement, as ``torch.utils.data.WeightedRandomSampler`` does.

>>> import numpy as np
>>> codes = np.array([0, 0, 0, 1])
>>> balanced_weights(codes, 2).tolist()
[0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 2.0]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from raigate.data.base import Dataset
from raigate.errors import ConfigError

__all__ = [
    "Groups",
    "balanced_sampler",
    "balanced_weights",
    "group_keys",
    "groups_of",
    "parse_attribute",
]


def parse_attribute(
    attribute: str | list[str] | tuple[str, ...], data: Dataset, option: str = "--attribute"
) -> tuple[str, ...]:
    """``"race"`` or ``"race+gender"`` as a tuple of attribute columns of ``data``; an unknown
    column is a ConfigError naming ``option`` and the columns the data has."""
    parts = attribute.split("+") if isinstance(attribute, str) else list(attribute)
    cols = tuple(c.strip() for c in parts if c.strip())
    available = data.attribute_columns
    if not cols or len(set(cols)) != len(cols):
        raise ConfigError(
            f"{option} {'+'.join(parts)!r}: name one column or join different columns with "
            f"'+', e.g. race or race+gender; {data.spec} has attribute columns {available}"
        )
    data.require_attribute_columns(cols, option)
    return cols


def group_keys(attributes: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """Each row's group name: the values of ``columns`` as text, joined with ``|``."""
    values = [attributes[c].astype(str).to_numpy(dtype=object) for c in columns]
    keys = values[0]
    for v in values[1:]:
        keys = keys + "|" + v
    return np.asarray(keys, dtype=object)


@dataclass(frozen=True)
class Groups:
    """Every sample's group code (``codes[i]`` indexes ``names``) and the group sizes."""

    columns: tuple[str, ...]
    by_label: bool
    names: list[str]
    codes: np.ndarray

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.codes, minlength=len(self.names))

    @property
    def label(self) -> str:
        return "+".join(self.columns) + (" x label" if self.by_label else "")


def groups_of(
    data: Dataset,
    attribute: str | tuple[str, ...],
    *,
    by_label: bool = False,
    class_names: tuple[str, ...] | None = None,
    option: str = "--attribute",
) -> Groups:
    """The groups of ``data`` by ``attribute`` (with ``by_label``: split by the label, named
    ``value|label`` with ``class_names`` for the label names, default the data's); errors
    name ``option``, the option the attribute came from."""
    columns = parse_attribute(attribute, data, option)
    keys = group_keys(data.attributes, columns)
    if by_label:
        names = np.asarray(class_names or data.class_names, dtype=object)
        keys = keys + "|" + names[data.labels]
    uniq, codes = np.unique(keys.astype(str), return_inverse=True)
    return Groups(columns=columns, by_label=by_label, names=[str(u) for u in uniq], codes=codes)


def balanced_weights(codes: np.ndarray, n_groups: int) -> np.ndarray:
    """``w_i = n / (G * n_g(i))`` with ``G`` the non-empty groups: mean 1, every group's
    total ``n / G`` (see the module docstring)."""
    codes = np.asarray(codes, dtype=np.int64)
    sizes = np.bincount(codes, minlength=n_groups).astype(np.float64)
    present = int((sizes > 0).sum())
    if present == 0:
        raise ConfigError("no samples to weight")
    return len(codes) / (present * sizes[codes])


def balanced_sampler(
    weights: np.ndarray, *, seed: int, num_samples: int | None = None
) -> Callable[[int], list[int]]:
    """``sampler(epoch) -> positions``: ``num_samples`` (default ``len(weights)``) draws with
    replacement, ``P(i)`` proportional to ``weights[i]``, from a generator seeded with
    ``seed + epoch`` (``torch.multinomial``, the draw ``WeightedRandomSampler`` makes)."""
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    n = len(w) if num_samples is None else int(num_samples)

    def sample(epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed + epoch)
        return torch.multinomial(w, n, replacement=True, generator=gen).tolist()

    return sample
