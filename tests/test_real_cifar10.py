"""evaluate on real images and real public weights (CIFAR-10 JPEGs + akamaster ResNet-20),
checked against an independent pipeline: PIL decode, hand normalization, the bare net."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from raigate.cli import app
from raigate.models.weights import apply_state_dict, load_state_dict_file
from raigate.zoo import resnet20

MEAN, STD = "0.485,0.456,0.406", "0.229,0.224,0.225"


def test_resnet20_on_real_cifar10_jpegs(shared_data_dir: Path, tmp_path: Path) -> None:
    weights = shared_data_dir / "weights" / "akamaster_resnet20-12fca82f.th"
    images = shared_data_dir / "cifar10-test-jpg"
    if not (weights.is_file() and images.is_dir()):
        pytest.skip("CIFAR-10 JPEGs or ResNet-20 weights absent from the shared data")
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            "raigate.zoo:resnet20",
            "--weights",
            str(weights),
            "--data",
            f"folder:{images}",
            "--sample",
            "400",
            "--seed",
            "7",
            "--mean",
            MEAN,
            "--std",
            STD,
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "result.json").read_text())
    per_class = {r["class"]: r for r in doc["metrics"]["per_class"]}
    assert set(per_class) == {
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    }
    assert all(r["n"] == 40 for r in per_class.values())  # stratified sample

    # independent: the same files, decoded by PIL, through the bare network
    preds = __import__("pandas").read_csv(tmp_path / "predictions.csv")
    net = resnet20(num_classes=10)
    apply_state_dict(net, load_state_dict_file(weights), source=str(weights))
    net.eval()
    paths = [images / p for p in preds["path"]]
    x = torch.stack(
        [
            torch.from_numpy(
                np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255
            ).permute(2, 0, 1)
            for p in paths
        ]
    )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        k = net((x - mean) / std).argmax(1).numpy()
    names = np.array(sorted(per_class))
    truth = np.array([Path(p).parent.name for p in preds["path"]])
    independent = float((names[k] == truth).mean())
    assert doc["metrics"]["accuracy"] == pytest.approx(independent)
    # published ~91.7% on the original PNGs; these JPEGs are lossy (quality ~75)
    assert 0.70 < independent < 0.95
