"""Class-name alignment: by name, tolerant of spelling, never by index."""

from __future__ import annotations

import numpy as np
import pytest

from raigate import ConfigError
from raigate.labels import align_classes, data_to_model_index, normalize_label

FAIRFACE_RACES = [
    "East Asian",
    "Indian",
    "Black",
    "White",
    "Middle Eastern",
    "Latino_Hispanic",
    "Southeast Asian",
]


def test_normalization_is_tolerant() -> None:
    assert (
        normalize_label("Latino_Hispanic")
        == normalize_label("latino/hispanic")
        == "latino hispanic"
    )
    assert normalize_label(" Middle-Eastern ") == "middle eastern"


def test_reordered_model_classes_map_by_name() -> None:
    # FairFace's reference model orders races differently from the CSV.
    model = [
        "White",
        "Black",
        "Latino/Hispanic",
        "East Asian",
        "Southeast Asian",
        "Indian",
        "Middle Eastern",
    ]
    m = align_classes(model, FAIRFACE_RACES)
    assert [FAIRFACE_RACES[j] for j in m] == [
        "White",
        "Black",
        "Latino_Hispanic",
        "East Asian",
        "Southeast Asian",
        "Indian",
        "Middle Eastern",
    ]


def test_extra_model_classes_map_to_minus_one_and_missing_ones_fail() -> None:
    assert align_classes(["cat", "dog", "car"], ["dog", "cat"]).tolist() == [1, 0, -1]
    with pytest.raises(ConfigError, match=r"no model class matches data label\(s\) \['bird'\]"):
        align_classes(["cat", "dog"], ["cat", "bird"])


def test_label_map_bridges_different_vocabularies() -> None:
    assert align_classes(["m", "f"], ["Male", "Female"], {"m": "Male", "f": "Female"}).tolist() == [
        0,
        1,
    ]


def test_data_to_model_index_inverts_the_alignment_by_hand() -> None:
    # Hand-worked: the model orders races its own way and has an extra class "Other".
    # Data label 0 "East Asian" is model unit 3, 1 "Indian" -> 5, 2 "Black" -> 1,
    # 3 "White" -> 0, 4 "Middle Eastern" -> 6, 5 "Latino_Hispanic" -> 2 (via spelling),
    # 6 "Southeast Asian" -> 4; model unit 7 "Other" is no data label.
    model = [
        "White", "Black", "Latino/Hispanic", "East Asian",
        "Southeast Asian", "Indian", "Middle Eastern", "Other",
    ]  # fmt: skip
    inv = data_to_model_index(model, FAIRFACE_RACES)
    assert inv.tolist() == [3, 5, 1, 0, 6, 2, 4]
    labels = np.array([0, 6, 3, 3, 5])
    assert [model[i] for i in inv[labels]] == [
        "East Asian", "Southeast Asian", "White", "White", "Latino/Hispanic",
    ]  # fmt: skip
    # a label map reaches a model class whose name differs; errors are align_classes'
    label_map = {"m": "Male", "f": "Female"}
    assert data_to_model_index(["m", "f"], ["Female", "Male"], label_map).tolist() == [1, 0]
    with pytest.raises(ConfigError, match="no model class matches"):
        data_to_model_index(["cat", "dog"], ["cat", "bird"])
