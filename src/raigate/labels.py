"""Match a model's class names to a dataset's label names, by name and never by index.

Public models order classes their own way (FairFace's reference model orders races
differently from the CSV), so index-based mapping silently scrambles results. Matching is
tolerant of case, spaces, ``_``, ``-`` and ``/`` (``Latino_Hispanic`` = ``Latino/Hispanic``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator

from raigate.errors import ConfigError

_SEP = re.compile(r"[\s_\-/]+")


def read_label_map_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The model class -> data label table in a JSON file: what ``--label-map FILE`` and a
    plan's ``label_map = "FILE"`` name. A ValueError naming the file says what is wrong."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError):
        raise ValueError(f"{p}: label map file not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{p}: label map is not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{p}: a label map must be a JSON object of model class -> data label")
    return {str(k): v for k, v in data.items()}


def _label_map_input(value: Any) -> Any:
    return read_label_map_file(value) if isinstance(value, str) else value


LabelMap = Annotated[dict[str, str] | None, BeforeValidator(_label_map_input)]
"""A params field for a label map: a table, or the path of a JSON file holding one (the form
``--label-map`` takes), so a plan can name the same file the command line does."""


def normalize_label(name: str) -> str:
    """Canonical form for matching: lower case, separators collapsed to one space."""
    return _SEP.sub(" ", str(name).strip().lower()).strip()


def align_classes(
    model_names: Sequence[str],
    data_names: Sequence[str],
    label_map: Mapping[str, str] | None = None,
) -> np.ndarray:
    """Index array ``m`` with ``m[model_class] = data_class`` (``-1``: not a data class).

    ``label_map`` maps model class names to data label names where they differ. Every data
    class must be reachable from some model class, else a ConfigError lists both sides.
    """
    explicit = {normalize_label(k): normalize_label(v) for k, v in (label_map or {}).items()}
    data_index: dict[str, int] = {}
    for j, name in enumerate(data_names):
        key = normalize_label(name)
        if key in data_index:
            raise ConfigError(f"data label names collide after normalization: {list(data_names)}")
        data_index[key] = j
    mapping = np.full(len(model_names), -1, dtype=np.int64)
    for i, name in enumerate(model_names):
        key = normalize_label(name)
        key = explicit.get(key, key)
        if key in data_index:
            mapping[i] = data_index[key]
    covered = set(mapping[mapping >= 0].tolist())
    missing = [data_names[j] for j in range(len(data_names)) if j not in covered]
    if missing:
        raise ConfigError(
            f"no model class matches data label(s) {missing}; model classes are "
            f"{list(model_names)}, data labels are {list(data_names)}: pass --class-names in "
            "the model's output order, or a --label-map file"
        )
    if len(set(mapping[mapping >= 0].tolist())) != int((mapping >= 0).sum()):
        raise ConfigError(f"two model classes map to the same data label: {list(model_names)}")
    return mapping


def data_to_model_index(
    model_names: Sequence[str],
    data_names: Sequence[str],
    label_map: Mapping[str, str] | None = None,
) -> np.ndarray:
    """Index array ``inv`` with ``inv[data_label] = model_class``: the model's output unit for
    each data label, matched by name (:func:`align_classes`, whose errors it raises).

    Attacks, training and per-example losses need the target as the model's own index; the
    inverse of :func:`align_classes` is that map. Every data label has a model class (else
    ``align_classes`` refuses), so no entry is ``-1``.

    >>> data_to_model_index(["dog", "cat", "bird"], ["Cat", "Dog"]).tolist()
    [1, 0]
    >>> data_to_model_index(["m", "f"], ["Male", "Female"], {"m": "male", "f": "female"}).tolist()
    [0, 1]
    """
    mapping = align_classes(model_names, data_names, label_map)
    inverse = np.full(len(data_names), -1, dtype=np.int64)
    known = np.flatnonzero(mapping >= 0)
    inverse[mapping[known]] = known
    return inverse
