"""Training needs the network: DP-SGD retraining and noise training for smoothing refuse a
black-box model (a served predictor, an ONNX session) with one line that says what to give
instead, before any work is done."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import raigate
from raigate.defenses import harden_smoothing, train_noise
from raigate.errors import ConfigError
from raigate.models.base import Capabilities, Model, require_white_box
from raigate.models.blackbox import QueryNet
from raigate.privacy.train import DPParams, run_private_training
from raigate.zoo import small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")

DP_MESSAGE = (
    "served:cnn is black-box (queries only); DP-SGD retraining needs the network: give a "
    "factory + weights or a white-box ONNX"
)


@pytest.fixture(scope="module")
def data() -> raigate.Dataset:
    return raigate.load_data("demo:train", limit=16)


@pytest.fixture(scope="module")
def black_box(data: raigate.Dataset) -> Model:
    torch.manual_seed(0)
    net = small_cnn(num_classes=len(data.class_names)).eval()

    def predict(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(a)).numpy()

    return Model(
        QueryNet(predict, name="cnn endpoint"),
        class_names=data.class_names,
        input_shape=(3, 32, 32),
        spec="served:cnn",
        capabilities=Capabilities(gradients=False),
    )


def _one_line(info: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_dp_sgd_refuses_a_black_box_model(
    black_box: Model, data: raigate.Dataset, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        run_private_training(black_box, data, DPParams(epochs=1, progress=False), out_dir=tmp_path)
    assert _one_line(info) == DP_MESSAGE
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_dp_sgd_refuses_a_bare_query_net(black_box: Model, data: raigate.Dataset) -> None:
    with pytest.raises(ConfigError) as info:
        run_private_training(black_box.net, data, DPParams(epochs=1, progress=False))
    assert _one_line(info).startswith("cnn endpoint is black-box (queries only); DP-SGD")


def test_noise_training_refuses_a_black_box_model(
    black_box: Model, data: raigate.Dataset, tmp_path: Path
) -> None:
    expected = DP_MESSAGE.replace("DP-SGD retraining", "noise training for smoothing")
    with pytest.raises(ConfigError) as info:
        harden_smoothing(black_box, data, tmp_path, sigma=0.25, epochs=1, progress=False)
    assert _one_line(info) == expected
    with pytest.raises(ConfigError) as info:
        train_noise(black_box, data, sigma=0.25, epochs=1, progress=False)
    assert _one_line(info) == expected


def test_a_white_box_model_passes_the_guard(data: raigate.Dataset) -> None:
    model = raigate.wrap(
        small_cnn(num_classes=len(data.class_names)),
        class_names=data.class_names,
        input_shape=(3, 32, 32),
    )
    require_white_box(model, "DP-SGD retraining")  # no error
    require_white_box(model.net, "DP-SGD retraining")
