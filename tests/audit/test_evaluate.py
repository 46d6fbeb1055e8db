"""evaluate: checked against a hand-worked case and against sklearn/pandas/statsmodels."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix
from statsmodels.stats.proportion import proportion_confint

import raigate
from raigate.audit import evaluate
from raigate.data.base import Dataset


class TensorData(Dataset):
    """In-memory images for exact, hand-worked cases."""

    def __init__(
        self, x: torch.Tensor, labels: list[int], names: list[str], attrs: pd.DataFrame
    ) -> None:
        super().__init__(
            spec="tensor:test",
            labels=np.array(labels),
            class_names=names,
            attributes=attrs,
            task="t",
            native_size=tuple(x.shape[-2:]),
        )
        self._x = x

    def _read(self, row: int, size: tuple[int, int] | None) -> torch.Tensor:
        return self._x[row]

    def _manifest_files(self, rows: np.ndarray) -> list[dict[str, Any]]:
        return [{"path": f"row{r}", "sha256": "0" * 64, "bytes": 0} for r in rows]


class Brightness(torch.nn.Module):
    """Class 1 ("bright") when mean pixel > 0.5, else class 0 ("dark")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], dim=1)


def test_hand_worked_case() -> None:
    levels = [0.1, 0.2, 0.9, 0.8, 0.7, 0.3]  # predictions: d d b b b d
    labels = [0, 1, 1, 1, 0, 0]  # correct:     y n y y n y  -> 4/6
    x = torch.stack([torch.full((3, 4, 4), v) for v in levels])
    attrs = pd.DataFrame({"group": ["a", "a", "a", "b", "b", "b"]})
    data = TensorData(x, labels, ["dark", "bright"], attrs)
    model = raigate.wrap(Brightness(), class_names=["dark", "bright"], input_shape=(3, 4, 4))
    r = evaluate.run(model, data, evaluate.EvaluateParams(progress=False, min_accuracy=0.7))
    assert r.metric("accuracy") == pytest.approx(4 / 6)
    per_class = {row["class"]: (row["n"], row["accuracy"]) for row in r.metrics["per_class"]}
    assert per_class == {"dark": (3, pytest.approx(2 / 3)), "bright": (3, pytest.approx(2 / 3))}
    per_group = {row["value"]: row["accuracy"] for row in r.metrics["per_attribute"]}
    assert per_group == {"a": pytest.approx(2 / 3), "b": pytest.approx(2 / 3)}
    cm = {(c["true"], c["predicted"]): c["count"] for c in r.metrics["confusion_matrix"]}
    assert cm == {
        ("dark", "dark"): 2,
        ("dark", "bright"): 1,
        ("bright", "dark"): 1,
        ("bright", "bright"): 2,
    }
    assert r.verdict == "fail" and r.findings[0].threshold == 0.7
    assert "below the required 0.7000" in r.findings[0].message


def test_model_class_order_is_matched_by_name() -> None:
    x = torch.stack([torch.full((3, 4, 4), v) for v in (0.1, 0.9)])
    data = TensorData(x, [1, 0], ["bright", "dark"], pd.DataFrame(index=range(2)))
    model = raigate.wrap(Brightness(), class_names=["dark", "bright"], input_shape=(3, 4, 4))
    r = evaluate.run(model, data, evaluate.EvaluateParams(progress=False))
    assert r.metric("accuracy") == 1.0


def test_matches_independent_computation_on_demo_data(tmp_path) -> None:
    data = raigate.load_data("demo:test", sample=300, seed=1)
    torch.manual_seed(0)
    model = raigate.load_model(
        "raigate.zoo:small_cnn", data=data, mean=[0.5] * 3, std=[0.25] * 3, random_init=True
    )
    r = evaluate.run(
        model, data, evaluate.EvaluateParams(progress=False, batch_size=64), out_dir=tmp_path
    )

    # independent: the bare net on hand-normalized pixels, sklearn and pandas for the metrics
    xs = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        preds = model.net((xs - 0.5) / 0.25).argmax(1).numpy()
    y = data.labels
    assert r.metric("accuracy") == pytest.approx(accuracy_score(y, preds))
    lo, hi = proportion_confint(int((preds == y).sum()), len(y), alpha=0.05, method="wilson")
    assert r.metric("accuracy_ci_low") == pytest.approx(lo)
    assert r.metric("accuracy_ci_high") == pytest.approx(hi)
    cm = confusion_matrix(y, preds, labels=range(len(data.class_names)))
    got = {(c["true"], c["predicted"]): c["count"] for c in r.metrics["confusion_matrix"]}
    for i, t in enumerate(data.class_names):
        for j, p in enumerate(data.class_names):
            assert got.get((t, p), 0) == cm[i, j]
    frame = data.attributes.assign(correct=preds == y)
    expected = frame.groupby("race")["correct"].mean()
    got_race = {
        row["value"]: row["accuracy"]
        for row in r.metrics["per_attribute"]
        if row["attribute"] == "race"
    }
    assert got_race == pytest.approx(expected.to_dict())
    assert r.data.synthetic is True and r.data.manifest_digest.startswith("sha256:")
    assert r.model.digest == model.digest
    written = pd.read_csv(tmp_path / "predictions.csv")
    assert r.artifacts == ["predictions.csv"]
    assert (written["predicted"].to_numpy() == np.asarray(data.class_names)[preds]).all()
