"""``fairface:ROOT[:train|val]``: FairFace in its official layout (Kärkkäinen & Joo,
WACV 2021).

::

    ROOT/fairface_label_train.csv    file,age,gender,race,service_test
    ROOT/fairface_label_val.csv      file = "val/1.jpg", relative to ROOT
    ROOT/train/1.jpg ...  ROOT/val/1.jpg ...

The label CSV is validated in full up front (vocabulary, columns, spreadsheet damage)
because a wrong label silently corrupts every fairness number computed from it; the
images are only opened when a sample is read.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from raigate.data.base import Dataset
from raigate.data.files import (
    ImageFileDataset,
    check_file_names,
    parse_root_split,
    read_label_csv,
)
from raigate.errors import ConfigError, DataError

# Class order is this order: it is FairFace's own order in its paper and code.
RACES: tuple[str, ...] = (
    "East Asian",
    "Indian",
    "Black",
    "White",
    "Middle Eastern",
    "Latino_Hispanic",
    "Southeast Asian",
)
GENDERS: tuple[str, ...] = ("Male", "Female")
AGES: tuple[str, ...] = (
    "0-2",
    "3-9",
    "10-19",
    "20-29",
    "30-39",
    "40-49",
    "50-59",
    "60-69",
    "more than 70",
)
VOCABULARY: dict[str, tuple[str, ...]] = {"race": RACES, "gender": GENDERS, "age": AGES}
TASKS: tuple[str, ...] = ("gender", "age", "race")
DEFAULT_TASK = "gender"
COLUMNS: tuple[str, ...] = ("file", "age", "gender", "race", "service_test")
SPLITS: tuple[str, ...] = ("train", "val")

# Spreadsheets read "3-9" as 9 March and "10-19" as October 2019, then save them back as
# "9-Mar", "Oct-19", "2019-03-09" or "3/9/2019" depending on locale.
_DATE_PATTERNS = tuple(
    re.compile(p)
    for p in (
        r"^\d{1,2}-[A-Za-z]{3,9}$",
        r"^[A-Za-z]{3,9}-\d{1,4}$",
        r"^\d{4}-\d{1,2}-\d{1,2}([ T].*)?$",
        r"^\d{1,2}[/.]\d{1,2}[/.]\d{2,4}$",
    )
)


def _looks_like_date(value: str) -> bool:
    return any(p.match(value) for p in _DATE_PATTERNS)


def task_labels(
    frame: pd.DataFrame, task: str | None, where: str
) -> tuple[str, np.ndarray, tuple[str, ...]]:
    """``(task, integer labels, class names)`` for a FairFace-vocabulary frame."""
    name = DEFAULT_TASK if task is None else task
    if name not in TASKS:
        raise ConfigError(f"{where}: unknown task {task!r}; choose one of {', '.join(TASKS)}")
    vocab = VOCABULARY[name]
    index = {v: k for k, v in enumerate(vocab)}
    labels = np.asarray([index[v] for v in frame[name]], dtype=np.int64)
    return name, labels, vocab


def categorical_attributes(frame: pd.DataFrame) -> pd.DataFrame:
    """race/gender/age as ordered categoricals in FairFace's vocabulary order, so tables and
    plots list age bins as 0-2, 3-9, ... (not alphabetically) and empty groups still show."""
    out = frame.copy()
    for col, vocab in VOCABULARY.items():
        if col in out.columns:
            out[col] = pd.Categorical(out[col], categories=list(vocab), ordered=True)
    return out


def _check_vocabulary(csv: Path, frame: pd.DataFrame) -> None:
    for col in ("race", "gender", "age"):
        allowed = VOCABULARY[col]
        values = frame[col].to_numpy(dtype=object)
        bad = np.flatnonzero(~np.isin(values, np.asarray(allowed, dtype=object)))
        if not bad.size:
            continue
        line, value = int(bad[0]) + 2, str(values[bad[0]])
        more = f" (and {bad.size - 1} more rows)" if bad.size > 1 else ""
        if col == "age" and any(_looks_like_date(str(values[i])) for i in bad[:50]):
            raise DataError(
                f"{csv}: line {line}, column 'age' holds {value!r}{more}, a date: the file "
                "was likely opened in a spreadsheet that turned age bins such as '3-9' and "
                "'10-19' into dates; restore the original FairFace CSV and do not re-save it "
                "from a spreadsheet"
            )
        raise DataError(
            f"{csv}: line {line}, column {col!r} holds {value!r}{more}, which is not a FairFace "
            f"{col}; allowed: {', '.join(allowed)}; fix the value or restore the original CSV"
        )


def load_fairface(spec: str, target: str, task: str | None) -> Dataset:
    """Load one FairFace split; ``task`` (gender, age or race) picks the label and all three
    stay as attribute columns, so a gender model can be audited across race and age."""
    root, split = parse_root_split("fairface", target, SPLITS, "val")
    if not root.is_dir():
        raise DataError(
            f"{root}: FairFace root folder not found; pass the folder that holds "
            f"fairface_label_{split}.csv and {split}/"
        )
    csv_name = f"fairface_label_{split}.csv"
    csv = root / csv_name
    if not csv.is_file():
        raise DataError(
            f"{csv}: FairFace label file not found; expected {csv_name} in {root} (FairFace's "
            f"official layout: ROOT/{csv_name} with images under ROOT/{split}/)"
        )
    frame = read_label_csv(csv)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{csv}: missing column(s) {', '.join(missing)}; a FairFace label file has "
            f"{','.join(COLUMNS)} (found {','.join(frame.columns)})"
        )
    frame = frame.loc[:, list(COLUMNS)].apply(lambda s: s.str.strip())
    empty = np.flatnonzero(frame["file"].to_numpy(dtype=object) == "")
    if empty.size:
        raise DataError(
            f"{csv}: line {int(empty[0]) + 2}, column 'file' is empty; every row names an "
            f"image such as {split}/1.jpg"
        )
    check_file_names(csv, "file", list(frame["file"]))
    _check_vocabulary(csv, frame)
    name, labels, classes = task_labels(frame, task, csv.as_posix())
    attrs = categorical_attributes(
        frame.loc[:, ["file", "race", "gender", "age", "service_test"]].reset_index(drop=True)
    )
    return ImageFileDataset(
        spec=spec,
        root=root,
        paths=list(frame["file"]),
        label_files=[csv_name],
        labels=labels,
        class_names=classes,
        attributes=attrs,
        task=name,
        extra={"format": "fairface", "split": split},
    )
