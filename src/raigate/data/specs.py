"""Parse a data spec and pick its loader from a small explicit registry."""

from __future__ import annotations

from collections.abc import Callable

from raigate.data.base import Dataset, select
from raigate.errors import SpecError

DATA_SPEC_HELP = (
    "fairface:ROOT[:train|val], cifar100:ROOT[:train|test], folder:ROOT, csv:FILE "
    "or demo[:train|test]"
)

DataLoaderFn = Callable[[str, str, "str | None"], Dataset]
"""``loader(spec, target, task) -> Dataset``; ``target`` is the spec after ``scheme:``."""

_LOADERS: dict[str, DataLoaderFn] = {}


def register_data_loader(scheme: str, loader: DataLoaderFn) -> None:
    """Register (or replace) the loader for a data spec scheme."""
    _LOADERS[scheme] = loader


def _builtin_loaders() -> None:
    from raigate.data import loaders

    for scheme, fn in loaders.LOADERS.items():
        _LOADERS.setdefault(scheme, fn)


def load_data(
    spec: str,
    *,
    task: str | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a data spec as a :class:`Dataset`, optionally bounded by ``limit`` or a seeded,
    label-stratified ``sample``."""
    _builtin_loaders()
    s = spec.strip()
    scheme, _, target = s.partition(":")
    if scheme not in _LOADERS:
        raise SpecError(f"unknown data spec {spec!r}; use {DATA_SPEC_HELP}")
    data = _LOADERS[scheme](s, target, task)
    return select(data, limit=limit, sample=sample, seed=seed)
