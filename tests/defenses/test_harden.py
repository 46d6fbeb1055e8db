"""Noise training (``harden_smoothing``): the saved spec reloads, labels are matched by
name, and the noise-trained model is what smoothing needs (it stops abstaining)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import raigate
from raigate import ConfigError
from raigate.audit import evaluate
from raigate.defenses import SmoothedClassifier, harden_smoothing

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_harden_with_classes_in_another_order(tmp_path: Path) -> None:
    train = raigate.load_data("demo:train", limit=640)
    test = raigate.load_data("demo:test", sample=96, seed=2)
    assert train.class_names == ("Male", "Female")
    torch.manual_seed(0)
    # the model's output units are in the opposite order: training must follow the names
    model = raigate.load_model(
        "raigate.zoo:small_cnn", class_names=["Female", "Male"], input_size=(3, 32, 32),
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), random_init=True,
    )  # fmt: skip
    before = model.digest
    res = harden_smoothing(
        model, train, tmp_path, sigma=0.25, epochs=3, lr=3e-3, seed=0, progress=False
    )
    assert model.digest == before  # the caller's model is left alone
    hardened = raigate.load_model(str(res.model_spec))
    assert hardened.digest == res.digest != before
    assert hardened.class_names == ("Female", "Male")
    acc = evaluate.run(hardened, test, evaluate.EvaluateParams(progress=False)).metric("accuracy")
    assert acc > 0.75  # measured against the data's labels, matched by name
    record = json.loads((tmp_path / "harden.json").read_text())
    assert record["sigma"] == 0.25 and record["epochs"] == 3
    assert record["base_model"]["digest"] == before
    assert len(record["train_loss"]) == 3

    # the point of it: the smoothed hardened model is right far more often than chance
    x = torch.stack([test[i][0] for i in range(48)])
    truth = torch.as_tensor(1 - test.labels[:48])  # data Male=0 is model unit 1
    untrained = SmoothedClassifier(model, 0.25, seed=0).predict(x, n=64, alpha=0.001)
    smoothed = SmoothedClassifier(hardened, 0.25, seed=0).predict(x, n=64, alpha=0.001)
    assert int((smoothed == truth).sum()) > int((untrained == truth).sum()) + 5


def test_harden_refuses_a_model_it_cannot_rebuild(tmp_path: Path) -> None:
    from raigate.zoo import small_cnn

    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(small_cnn(num_classes=2).eval()), str(path))
    model = raigate.load_model(str(path), class_names=["Male", "Female"], input_size=(3, 32, 32))
    data = raigate.load_data("demo:train", limit=8)
    with pytest.raises(ConfigError, match="harden needs a model built from Python code"):
        harden_smoothing(model, data, tmp_path / "out", sigma=0.25, epochs=1, progress=False)
