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


def test_square_attack_breaks_resnet20_on_queries_alone(shared_data_dir: Path) -> None:
    """The query-only Square Attack on a real, undefended model through a QueryNet (no
    gradients): 4/255 at 300 queries per image takes at least half of its accuracy, and
    the predictor's own counter agrees with the queries the attack reports."""
    from raigate.attacks import perturbation_norm, square_attack
    from raigate.models.base import Capabilities, Model
    from raigate.models.blackbox import QueryNet

    weights = shared_data_dir / "weights" / "akamaster_resnet20-12fca82f.th"
    images = shared_data_dir / "cifar10-test-jpg"
    if not (weights.is_file() and images.is_dir()):
        pytest.skip("CIFAR-10 JPEGs or ResNet-20 weights absent from the shared data")
    data = raigate.load_data(f"folder:{images}", sample=24, seed=3)
    model = raigate.load_model(
        "raigate.zoo:resnet20", weights=weights, data=data, mean=MEAN, std=STD
    )

    def predict(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.logits(torch.from_numpy(a)).numpy()

    net = QueryNet(predict)
    twin = Model(net, class_names=model.class_names, input_shape=model.input_shape,
                 capabilities=Capabilities(gradients=False))  # fmt: skip
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.as_tensor(data.labels)
    res = square_attack(twin, x, y, eps=4 / 255, query_budget=300, seed=0)
    clean = float((model.predict(x) == y).float().mean())
    after = float((model.predict(res.x_adv) == y).float().mean())
    assert after <= clean / 2, (clean, after)
    assert int(res.queries.sum()) == net.queries and int(res.queries.max()) <= 300
    assert float(perturbation_norm(res.x_adv, x, "linf").max()) <= 4 / 255 + 1e-6


def test_onnx_export_of_resnet20_audited_black_box_through_the_cli(
    shared_data_dir: Path, tmp_path: Path
) -> None:
    """The artifact a team ships: the public ResNet-20 exported to ONNX, audited by
    `raigate robustness --model onnx:FILE --mode black-box` on real CIFAR-10 JPEGs. The
    Square rows (8/255, 200 queries) at least halve the accuracy, spend at most the budget
    and say black-box; a gradient attack on it exits 2 with one line."""
    import json

    from cli_helpers import assert_user_error, invoke
    from raigate.models.onnx import export_onnx
    from raigate.zoo import resnet20

    weights = shared_data_dir / "weights" / "akamaster_resnet20-12fca82f.th"
    images = shared_data_dir / "cifar10-test-jpg"
    if not (weights.is_file() and images.is_dir()):
        pytest.skip("CIFAR-10 JPEGs or ResNet-20 weights absent from the shared data")
    from raigate.models.weights import apply_state_dict, load_state_dict_file

    net = resnet20(num_classes=10)
    apply_state_dict(net, load_state_dict_file(weights), source=weights)
    path = tmp_path / "resnet20.onnx"
    export_onnx(net, path)
    common = ["--model", f"onnx:{path}", "--data", f"folder:{images}", "--sample", "24",
              "--seed", "3", "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)),
              "--mode", "black-box"]  # fmt: skip
    code, out = invoke("robustness", *common, "--attacks", "fgsm", "--out", str(tmp_path / "x"))
    assert_user_error(code, out, "black-box")
    code, out = invoke("robustness", *common, "--eps", "8/255", "--query-budget", "200",
                       "--out", str(tmp_path / "rob"))  # fmt: skip
    assert code == 0, out
    assert "black-box" in out
    result = json.loads((tmp_path / "rob" / "result.json").read_text())
    assert result["mode"] == "black-box"
    rows = {r["attack"]: r for r in result["metrics"]["attacks"] if r["model"] == "base"}
    clean, square = rows["clean"]["accuracy"], rows["square"]
    assert clean >= 0.6, clean  # the public model on lossy JPEGs
    assert square["accuracy"] <= clean / 2, (clean, square["accuracy"])
    assert square["queries_max"] <= 200 and square["max_perturbation"] <= 8 / 255 + 1e-6
