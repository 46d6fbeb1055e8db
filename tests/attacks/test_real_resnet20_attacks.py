"""FGSM/PGD on a real model and real images: the public CIFAR-10 ResNet-20 on the CIFAR-10
test JPEGs from the shared data folder (skipped where that folder is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import raigate
from raigate.attacks import fgsm, pgd, to_art_classifier

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_fgsm_equals_art_and_pgd_dominates_on_resnet20(shared_data_dir: Path) -> None:
    from art.attacks.evasion import FastGradientMethod

    weights = shared_data_dir / "weights" / "akamaster_resnet20-12fca82f.th"
    images = shared_data_dir / "cifar10-test-jpg"
    if not (weights.is_file() and images.is_dir()):
        pytest.skip("CIFAR-10 JPEGs or ResNet-20 weights absent from the shared data")
    data = raigate.load_data(f"folder:{images}", sample=40, seed=3)
    model = raigate.load_model(
        "raigate.zoo:resnet20", weights=weights, data=data, mean=MEAN, std=STD
    )
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.as_tensor(data.labels)
    eps = 2 / 255
    ours = fgsm(model, x, y, eps=eps, norm="linf")
    art = FastGradientMethod(to_art_classifier(model), norm=np.inf, eps=eps).generate(
        x.numpy(), y=np.eye(10, dtype=np.float32)[y.numpy()]
    )
    np.testing.assert_array_equal(ours.numpy(), art)
    clean = model.predict(x) == y
    ok_fgsm = model.predict(ours) == y
    ok_pgd = model.predict(pgd(model, x, y, eps=eps, steps=5)) == y
    assert not (ok_pgd & ~ok_fgsm).any()
    # a real, undefended model: 2/255 already costs most of its accuracy
    assert int(ok_pgd.sum()) < int(ok_fgsm.sum()) < int(clean.sum())
