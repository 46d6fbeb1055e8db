"""Fuzzing what users hand raigate, through the CLI: mutated audit plans, corrupted FairFace
and CSV label files, mutated model-spec JSON and truncated images.

Every case must end in exit 0, 1 or 2 with at most one ``raigate: error:`` line: never exit 3
(an internal error), never a traceback, and never a half-written out folder (a failed run
leaves no report, a finished one a complete bundle). Hypothesis draws the mutations,
derandomized so CI sees the same cases every run; each test prints how many it tried.
``RAIGATE_FUZZ_SCALE=20`` multiplies the number of cases for a deep local run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from raigate.cli import app
from raigate.models.loaders import write_model_spec
from raigate.models.weights import save_safetensors
from raigate.zoo import small_cnn

SCALE = int(os.environ.get("RAIGATE_FUZZ_SCALE", "1"))  # e.g. 20 for a deep local run
FUZZ = settings(
    max_examples=60 * SCALE,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
BUNDLE_REPORTS = ("report.json", "report.html", "junit.xml", "model-card.md", "mlbom.cdx.json")
RACES = ["East Asian", "White", "Black", "Indian"]


# -- a small, valid workspace every mutation starts from -------------------------------------
def _image(path: Path, seed: int, size: tuple[int, int] = (20, 18)) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _fairface(root: Path) -> Path:
    rows = []
    for k in range(1, 13):
        rel = f"val/{k}.jpg"
        _image(root / rel, k)
        age = ["3-9", "10-19", "20-29", "more than 70"][k % 4]
        rows.append([rel, age, ["Male", "Female"][k % 2], RACES[k % 4], "True"])
    with open(root / "fairface_label_val.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "age", "gender", "race", "service_test"])
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("fuzz")
    _fairface(ws / "fairface")
    for k in range(6):
        _image(ws / "folder" / ["cat", "dog"][k % 2] / f"{k}.png", 100 + k)
    names = ["cat", "dog"]
    lines = [f"folder/{names[k % 2]}/{k}.png,{names[k % 2]},s{k % 3}\n" for k in range(6)]
    (ws / "table.csv").write_text("path,label,site\n" + "".join(lines))
    torch.manual_seed(0)
    save_safetensors(small_cnn(num_classes=2), ws / "model.safetensors")
    write_model_spec(
        ws / "model.json",
        factory="raigate.zoo:small_cnn",
        weights=ws / "model.safetensors",
        class_names=["Male", "Female"],
        input_shape=(3, 32, 32),
        mean=[0.5, 0.5, 0.5],
        std=[0.5, 0.5, 0.5],
    )
    return ws


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def assert_clean_exit(code: int, out: str, allowed: tuple[int, ...] = (0, 1, 2)) -> None:
    assert code in allowed, f"exit {code}:\n{out}"
    assert "Traceback" not in out, out
    assert out.count("raigate: error:") <= 1, out
    if code == 2:
        (line,) = [ln for ln in out.splitlines() if ln.startswith("raigate: error:")]
        assert "internal error" not in line


@pytest.fixture
def tally(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[int], None]]:
    """Counts the cases a test tried and prints them (with their exit codes) at the end."""
    codes: Counter[int] = Counter()
    yield codes.update
    with capsys.disabled():
        shown = ", ".join(f"exit {k}: {v}" for k, v in sorted(codes.items()))
        print(f"\n  fuzz: {sum(codes.values())} cases tried ({shown})")


# -- mutations ------------------------------------------------------------------------------------
WEIRD_TEXT = st.sampled_from(
    ["", " ", "1/255", "4/0", "-1", "nan", "inf", "1e308", "0", "\x00", "é", "../", "/", "a:b",
     "raigate.zoo:small_cnn", "os:system", "demo:test", "fairface:", "[", "]", "=", '"', "'",
     "\n", "[checks.x]", "true", "0x10", "2024-09-03", "Sep-03", "3-9", "[[a]]"]
)  # fmt: skip
SCALARS = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    WEIRD_TEXT,
    st.text(max_size=8),
)
VALUES = st.one_of(
    SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(WEIRD_TEXT, SCALARS, max_size=2)
)


@st.composite
def text_mutation(draw: st.DrawFn, text: str) -> str:
    """1 to 3 edits: delete, replace or insert a slice, or duplicate/drop/swap a line."""
    for _ in range(draw(st.integers(1, 3))):
        lines = text.split("\n")
        op = draw(st.sampled_from(["delete", "replace", "insert", "dup", "drop", "swap"]))
        i = draw(st.integers(0, max(len(text) - 1, 0)))
        j = draw(st.integers(i, min(len(text), i + 12)))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "replace":
            text = text[:i] + draw(WEIRD_TEXT) + text[j:]
        elif op == "insert":
            text = text[:i] + draw(st.one_of(WEIRD_TEXT, st.text(max_size=6))) + text[i:]
        else:
            k = draw(st.integers(0, len(lines) - 1))
            if op == "dup":
                lines.insert(k, lines[k])
            elif op == "drop":
                del lines[k]
            else:
                m = draw(st.integers(0, len(lines) - 1))
                lines[k], lines[m] = lines[m], lines[k]
            text = "\n".join(lines)
    return text


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return (
            "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
        )
    return json.dumps(str(v))


def to_toml(doc: dict[str, Any]) -> str:
    """A minimal TOML writer: top-level scalars, then tables and tables of tables."""
    out = [f"{k} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]

    def table(prefix: str, body: dict[str, Any]) -> None:
        out.append(f"\n[{prefix}]")
        out.extend(
            f"{json.dumps(k)} = {_toml_value(v)}"
            for k, v in body.items()
            if not isinstance(v, dict)
        )
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{prefix}.{json.dumps(k)}", v)

    for k, v in doc.items():
        if isinstance(v, dict):
            table(json.dumps(k), v)
    return "\n".join(out) + "\n"


def plan_doc(ws: Path) -> dict[str, Any]:
    return {
        "seed": 0,
        "model": {"spec": str(ws / "model.json")},
        "data": {"spec": f"fairface:{ws / 'fairface'}:val", "task": "gender"},
        "checks": {
            "evaluate": {"batch_size": 8},
            "fairness": {
                "n_boot": 100,
                "min_group_size": 2,
                "plots": False,
                "sensitive": ["race"],
                "intersections": [],
            },
            "robustness": {
                "attacks": ["fgsm"],
                "eps": ["8/255"],
                "max_samples": 4,
                "large_eps_check": False,
                "min_robust_accuracy": ["fgsm:linf:8/255=0.1"],
            },
        },
    }


NEW_KEYS = st.sampled_from(["limit", "sample", "eps", "alpha", "check", "model", "trust_code"])


@st.composite
def plan_mutation(draw: st.DrawFn, doc: dict[str, Any]) -> dict[str, Any]:
    """Set, delete or add a key anywhere in the plan, 1 to 3 times."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        node = doc
        while True:
            keys = list(node)
            if not keys:
                break
            key = draw(st.sampled_from(keys))
            if isinstance(node[key], dict) and draw(st.booleans()):
                node = node[key]
                continue
            op = draw(st.sampled_from(["set", "delete", "add"]))
            if op == "set":
                node[key] = draw(VALUES)
            elif op == "delete":
                del node[key]
            else:
                node[draw(st.one_of(WEIRD_TEXT, NEW_KEYS))] = draw(VALUES)
            break
    return doc


def _fresh(ws: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=ws))


def _assert_bundle_state(code: int, out: Path) -> None:
    present = [n for n in BUNDLE_REPORTS if (out / n).exists()]
    if code in (0, 1):
        assert present == list(BUNDLE_REPORTS), f"exit {code} with an incomplete bundle: {present}"
    else:
        assert present == [], f"exit {code} left a report behind: {present}"
    assert not [p.name for p in out.rglob("*.tmp")], "a temporary file was left"


# -- the tests ------------------------------------------------------------------------------------
def test_the_unmutated_inputs_pass(workspace: Path) -> None:
    """The starting points are valid, so every mutation starts from a working run."""
    d = _fresh(workspace)
    (d / "plan.toml").write_text(to_toml(plan_doc(workspace)))
    code, out = invoke("audit", str(d / "plan.toml"), "--out", str(d / "out"), "--no-pdf")
    assert code in (0, 1), out
    _assert_bundle_state(code, d / "out")
    for spec in (f"fairface:{workspace / 'fairface'}:val", f"csv:{workspace / 'table.csv'}"):
        assert invoke("data", "inspect", spec)[0] == 0
    assert invoke("models", "inspect", str(workspace / "model.json"))[0] == 0


@settings(FUZZ, max_examples=150 * SCALE)
@given(data=st.data())
def test_mutated_plans(workspace: Path, tally: Callable[[Any], None], data: st.DataObject) -> None:
    base = plan_doc(workspace)
    if data.draw(st.booleans(), label="structured"):
        text = to_toml(data.draw(plan_mutation(base)))
    else:
        text = data.draw(text_mutation(to_toml(base)))
    d = _fresh(workspace)
    (d / "plan.toml").write_text(text, encoding="utf-8", errors="surrogatepass")
    code, out = invoke("audit", str(d / "plan.toml"), "--out", str(d / "out"), "--no-pdf")
    tally([code])
    assert_clean_exit(code, out)
    if (d / "out").exists():
        _assert_bundle_state(code, d / "out")


@FUZZ
@given(data=st.data())
def test_corrupted_fairface_labels(
    workspace: Path, tally: Callable[[Any], None], data: st.DataObject
) -> None:
    root = _fresh(workspace)
    for f in (workspace / "fairface" / "val").iterdir():
        (root / "val").mkdir(exist_ok=True)
        (root / "val" / f.name).write_bytes(f.read_bytes())
    text = (workspace / "fairface" / "fairface_label_val.csv").read_text()
    (root / "fairface_label_val.csv").write_text(
        data.draw(text_mutation(text)), errors="surrogatepass"
    )
    spec = f"fairface:{root}:val"
    code, out = invoke("data", "inspect", spec)
    tally([code])
    assert_clean_exit(code, out, (0, 2))
    if code == 0:  # a file that still reads must also audit (or be refused) cleanly
        code, out = invoke("evaluate", "--model", str(workspace / "model.json"), "--data", spec,
                           "--out", str(root / "out"))  # fmt: skip
        assert_clean_exit(code, out)
        assert (root / "out" / "result.json").exists() == (code in (0, 1))


@FUZZ
@given(data=st.data())
def test_corrupted_csv_labels(
    workspace: Path, tally: Callable[[Any], None], data: st.DataObject
) -> None:
    d = _fresh(workspace)
    text = (workspace / "table.csv").read_text().replace("folder/", f"{workspace}/folder/")
    (d / "table.csv").write_text(data.draw(text_mutation(text)), errors="surrogatepass")
    code, out = invoke("data", "inspect", f"csv:{d / 'table.csv'}")
    tally([code])
    assert_clean_exit(code, out, (0, 2))


@FUZZ
@given(data=st.data())
def test_mutated_model_specs(
    workspace: Path, tally: Callable[[Any], None], data: st.DataObject
) -> None:
    doc = json.loads((workspace / "model.json").read_text())
    d = _fresh(workspace)
    doc["weights"] = str(workspace / "model.safetensors")
    if data.draw(st.booleans(), label="structured"):
        key = data.draw(st.sampled_from([*doc, "extra"]))
        if data.draw(st.booleans()):
            doc.pop(key, None)
        else:
            doc[key] = data.draw(VALUES)
        text = json.dumps(doc, allow_nan=True)
    else:
        text = data.draw(text_mutation(json.dumps(doc, indent=1)))
    (d / "model.json").write_text(text, errors="surrogatepass")
    marker = Path.cwd() / "PWNED"
    code, out = invoke("models", "inspect", str(d / "model.json"))
    tally([code])
    assert_clean_exit(code, out, (0, 2))
    assert not marker.exists()


@settings(FUZZ, max_examples=20 * SCALE)
@given(cut=st.floats(0.0, 0.95), which=st.integers(0, 5))
def test_truncated_images(
    workspace: Path, tally: Callable[[Any], None], cut: float, which: int
) -> None:
    root = _fresh(workspace)
    for f in (workspace / "folder").rglob("*.png"):
        target = root / f.relative_to(workspace / "folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        raw = f.read_bytes()
        target.write_bytes(raw[: int(len(raw) * cut)] if f.stem == str(which) else raw)
    code, out = invoke("evaluate", "--model", str(workspace / "model.json"), "--data",
                       f"folder:{root}", "--label-map", str(_label_map(root)),
                       "--out", str(root / "out"))  # fmt: skip
    tally([code])
    assert_clean_exit(code, out)
    assert (root / "out" / "result.json").exists() == (code in (0, 1))


def _label_map(root: Path) -> Path:
    path = root / "labels.json"
    path.write_text(json.dumps({"Male": "cat", "Female": "dog"}))
    return path
