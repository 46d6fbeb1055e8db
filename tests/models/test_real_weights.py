"""The published third-party checkpoints load strictly into the zoo's architectures.

Uses the shared real-data folder (see ``tests/conftest.py``); skips where it is absent.
Accuracy on real images is tested with the data, not here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raigate.models import load_model, state_digest
from raigate.models.base import module_tensors
from raigate.models.weights import load_state_dict_file

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _weights(shared_data_dir: Path, name: str) -> Path:
    path = shared_data_dir / "weights" / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


@pytest.mark.parametrize(
    ("factory", "file"),
    [
        ("resnet20", "akamaster_resnet20-12fca82f.th"),
        ("resnet56", "akamaster_resnet56-4bfd9763.th"),
    ],
)
def test_akamaster_resnets_load_strictly(shared_data_dir: Path, factory: str, file: str) -> None:
    path = _weights(shared_data_dir, file)
    model = load_model(
        f"raigate.zoo:{factory}",
        weights=path,
        class_names=CIFAR10,
        input_size=(3, 32, 32),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    assert model.num_classes == 10 and model.capabilities.batchnorm
    # Every tensor in the file (minus the 'module.' prefix) is now in the network.
    sd = load_state_dict_file(path)
    net_sd = model.net.state_dict()
    assert all(torch.equal(net_sd[k], v) for k, v in sd.items())
    assert model.digest == state_digest(module_tensors(model.net))
    assert model.files[0]["bytes"] == path.stat().st_size
    assert model.logits(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_captum_cifar_net_loads_strictly(shared_data_dir: Path) -> None:
    path = _weights(shared_data_dir, "captum_cifar_torchvision.pt")
    model = load_model(
        "raigate.zoo:captum_cifar_net",
        weights=path,
        class_names=CIFAR10,
        input_size=(3, 32, 32),
        mean=(0.5,),
        std=(0.5,),
    )
    sd = load_state_dict_file(path)
    assert sd.keys() == model.net.state_dict().keys()
    assert torch.equal(model.net.fc3.weight, sd["fc3.weight"])
    assert model.logits(torch.rand(2, 3, 32, 32)).shape == (2, 10)
