"""Class-name alignment: by name, tolerant of spelling, never by index."""

from __future__ import annotations

import pytest

from raigate import ConfigError
from raigate.labels import align_classes, normalize_label

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
