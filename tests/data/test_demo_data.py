"""The built-in demo data: deterministic, complete over groups, and biased as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raigate.data import Dataset, demo, load_data
from raigate.data.fairface import AGES, GENDERS, RACES
from raigate.errors import ConfigError, SpecError

WEAK = demo.DEMO_DISPARITY["group"]


def pixels(data: Dataset) -> torch.Tensor:
    return torch.cat([x for x, _, _ in data.loader(batch_size=1000)])


def test_generation_is_deterministic() -> None:
    before = {s: demo.generate(s).content_sha256 for s in demo.SPLITS}
    demo.generate.cache_clear()
    after = {s: demo.generate(s).content_sha256 for s in demo.SPLITS}
    assert after == before
    a, b = load_data("demo:test"), load_data("demo:test")
    assert torch.equal(pixels(a), pixels(b))
    assert np.array_equal(a.labels, b.labels) and a.attributes.equals(b.attributes)
    assert a.manifest.digest == b.manifest.digest
    assert load_data("demo:train").manifest.digest != a.manifest.digest


def test_shapes_values_and_manifest() -> None:
    data = load_data("demo")  # default split: test
    assert len(data) == demo.TEST_SIZE and len(load_data("demo:train")) == demo.TRAIN_SIZE
    assert data.synthetic and data.shape == (3, 32, 32)
    assert data.class_names == GENDERS and data.task == "gender"
    x = pixels(data)
    assert x.dtype == torch.float32 and tuple(x.shape) == (demo.TEST_SIZE, 3, 32, 32)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    manifest = data.manifest
    assert manifest.files == []
    extra = manifest.extra
    assert extra["generator"] == "raigate.demo" and extra["split"] == "test"
    assert extra["seed"] == demo.DEMO_SEED + demo.SPLITS["test"]
    assert extra["version"] == demo.DEMO_VERSION and len(extra["content_sha256"]) == 64
    assert data.resized((40, 40))[0][0].shape == (3, 40, 40)


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_group_present(split: str) -> None:
    attrs = load_data(f"demo:{split}").attributes
    groups = attrs.groupby(["race", "gender", "age"]).size()
    assert len(groups) == len(RACES) * len(GENDERS) * len(AGES) == 126
    assert set(attrs["race"]) == set(RACES)


def test_disparity_group_shares() -> None:
    train = load_data("demo:train").attributes["race"]
    test = load_data("demo:test").attributes["race"]
    assert (train == WEAK).mean() == pytest.approx(demo.DEMO_DISPARITY["train_share"], abs=1e-9)
    assert (test == WEAK).mean() == pytest.approx(1 / 7, abs=0.002)
    assert (train == "White").mean() == pytest.approx(0.16, abs=1e-9)


def test_other_tasks_use_fairface_vocabulary() -> None:
    race = load_data("demo:test", task="race")
    assert race.class_names == RACES
    assert [RACES[y] for y in race.labels[:20]] == list(race.attributes["race"][:20])
    assert load_data("demo:test", task="age").class_names == AGES
    with pytest.raises(ConfigError, match="gender, age, race"):
        load_data("demo", task="skin")
    with pytest.raises(SpecError, match="demo:train or demo:test"):
        load_data("demo:val")


def test_oracle_caps_the_disparity_group() -> None:
    oracle = demo.oracle_accuracy("test")
    assert oracle[WEAK] < 0.8
    assert min(v for k, v in oracle.items() if k != WEAK) > 0.92


def test_linear_probe_finds_the_injected_gap() -> None:
    """An independent model (ridge regression on 2x2-pooled pixels, fit on train) is
    clearly less accurate on the disparity group of demo:test than on everyone else."""
    train, test = load_data("demo:train"), load_data("demo:test")

    def features(data: Dataset) -> np.ndarray:
        f = F.avg_pool2d(pixels(data), 2).flatten(1).double().numpy()
        return np.hstack([f, np.ones((len(f), 1))])

    a, b = features(train), features(test)
    target = np.where(train.labels == 1, 1.0, -1.0)
    w = np.linalg.solve(a.T @ a + np.eye(a.shape[1]), a.T @ target)
    hit = ((b @ w) > 0).astype(int) == test.labels
    weak = (test.attributes["race"] == WEAK).to_numpy()
    acc_weak, acc_rest = hit[weak].mean(), hit[~weak].mean()
    assert acc_rest > 0.9, acc_rest
    assert acc_rest - acc_weak >= 0.1, (acc_weak, acc_rest)
