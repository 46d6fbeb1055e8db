"""``select``: --limit and a seeded, label-stratified --sample."""

from __future__ import annotations

import numpy as np
import pytest

from raigate.data import load_data, select
from raigate.errors import ConfigError


def test_limit_takes_the_first_samples() -> None:
    full = load_data("demo:test")
    part = load_data("demo:test", limit=10)
    assert len(part) == 10
    assert np.array_equal(part.labels, full.labels[:10])
    assert part.attributes.equals(full.attributes.iloc[:10].reset_index(drop=True))
    assert "selected_rows" in part.manifest.extra and part.manifest.count == 10
    assert len(select(full, limit=10**6)) == len(full)
    with pytest.raises(ConfigError):
        select(full, limit=0)
    with pytest.raises(ConfigError, match="not both"):
        select(full, limit=5, sample=5)


@pytest.mark.parametrize("task", ["race", "age", "gender"])
def test_sample_keeps_class_shares(task: str) -> None:
    full = load_data("demo:train", task=task)
    part = load_data("demo:train", task=task, sample=137, seed=3)
    assert len(part) == 137
    expected = np.bincount(full.labels, minlength=len(full.class_names)) * 137 / len(full)
    got = np.bincount(part.labels, minlength=len(full.class_names))
    assert np.all(np.abs(got - expected) <= 1), (got, expected)


def test_sample_is_seeded() -> None:
    def chosen(seed: int) -> list[str]:
        data = load_data("demo:test", task="race", sample=50, seed=seed)
        return [data.manifest.extra["selected_rows"], *data.attributes.astype(str).sum(axis=1)]

    assert chosen(7) == chosen(7)
    assert chosen(7) != chosen(8)
    assert len(load_data("demo:test", sample=10**6)) == 2000
