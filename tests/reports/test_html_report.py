"""report.html without a browser: the templates escape what a plan or a model names, the first
screen says what was audited and how to verify it (paths relative to the bundle), every gate
row reads value / direction / threshold, and plots are re-encoded small.

One signed audit (evaluate, fairness, explanations on 64 demo images) is shared by the module.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from raigate.cli import app
from raigate.reports.gates import rule_for
from raigate.reports.html_report import PLOT_WIDTH, plot_uri, relative_spec
from raigate.reports.render import render_html
from raigate.results import AuditReport

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()

PLAN = """
seed = 5
[model]
spec = "raigate.zoo:small_cnn"
random_init = true
[data]
spec = "demo:test"
limit = 64
[checks.evaluate]
min_accuracy = 0.0
[checks.fairness]
sensitive = ["gender"]
n_boot = 100
min_group_size = 5
[checks.explanations]
methods = ["saliency"]
n_samples = 2
sanity_samples = 2
sensitivity_samples = 0
infidelity_perturbations = 2
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("html")
    res = runner.invoke(app, ["keys", "generate", "--out", str(tmp / "keys")])
    assert res.exit_code == 0, res.output
    (tmp / "plan.toml").write_text(PLAN)
    out = tmp / "bundle"
    args = ["audit", str(tmp / "plan.toml"), "--out", str(out)]
    res = runner.invoke(app, [*args, "--key", str(tmp / "keys" / "raigate.key")])
    assert res.exit_code in (0, 1), res.output  # an untrained model may fail a gate
    return out


def _page(bundle: Path) -> str:
    return (bundle / "report.html").read_text()


def _cells(row: str) -> list[str]:
    return re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)


def test_first_screen_names_verdict_model_data_and_signature(bundle: Path) -> None:
    page = _page(bundle)
    report = json.loads((bundle / "report.json").read_text())
    first = page[: page.index("</header>")]
    assert re.search(r'id="verdict">Verdict: <span class="badge badge-(pass|warn|fail)">', first)
    assert f">{report['verdict'].upper()}</span>" in first.split('id="verdict"')[1][:120]
    assert report["model"]["digest"] in first
    assert report["data"]["manifest_digest"] in first and "demo:test" in first
    # the key id the page names is the one the attestation was signed with
    envelope = json.loads((bundle / "attestation.dsse.json").read_text())
    keyid = envelope["signatures"][0]["keyid"]
    assert f"signed with key id <code>{keyid}</code>" in first
    assert "raigate verify bundle --key raigate.pub" in first
    # one line per area, linking to its section
    glance = first[first.index('id="glance"') :]
    assert len(re.findall(r"<tr><td><a href=\"#check-", glance)) == len(report["checks"])


def test_unsigned_page_says_so(bundle: Path) -> None:
    report = AuditReport.load(bundle / "report.json")
    page = render_html(report, bundle)
    assert '<dd id="signature">unsigned' in page and "signed with key id" not in page


def test_no_absolute_path_of_the_bundle_and_no_network(bundle: Path) -> None:
    page = _page(bundle)
    assert str(bundle) not in page and str(bundle.parent) not in page
    assert "http://" not in page and "https://" not in page
    assert relative_spec(f"fairface:{bundle.parent}/data", bundle) == "fairface:../data"
    assert relative_spec(f"{bundle}/nets.py:build", bundle) == "nets.py:build"


def test_every_gate_row_has_value_direction_threshold(bundle: Path) -> None:
    page = _page(bundle)
    report = json.loads((bundle / "report.json").read_text())
    rows = re.findall(r'<tr class="gate">(.*?)</tr>', page, re.S)
    gates = report["gates"]
    assert gates and len(rows) == 2 * len(gates)  # the summary table and each area's own
    summary = rows[: len(gates)]
    for g, row in zip(gates, summary, strict=True):
        check, gid, _badge, value, direction, threshold, baseline = _cells(row)
        assert f"<code>{g['id']}</code>" == gid and g["check"] in check
        rule = rule_for(g["id"])
        assert rule is not None, f"{g['id']}: no direction"
        assert direction == rule.direction
        assert value == ("–" if g["value"] is None else f"{g['value']:.4g}")
        if g["id"].startswith("explanations.faithfulness."):
            # the random pixel order's AUC is a baseline, not a chosen threshold
            assert threshold == "–" and baseline == f"{g['threshold']:.4g}"
        else:
            assert baseline == "–"
            assert threshold == ("–" if g["threshold"] is None else f"{g['threshold']:.4g}")
    assert any(g["id"].startswith("explanations.faithfulness.") for g in gates)


def test_confusion_matrix_is_a_grid_and_details_are_collapsed(bundle: Path) -> None:
    page = _page(bundle)
    report = json.loads((bundle / "report.json").read_text())
    cm = report["checks"]["evaluate"]["metrics"]["confusion_matrix"]
    section = page[page.index('id="check-evaluate"') :]
    grid = section[section.index('<table class="grid">') :].split("</table>")[0]
    counts = [int(c) for row in re.findall(r"<tr>(.*?)</tr>", grid, re.S) for c in _cells(row)]
    assert sum(counts) == sum(r["count"] for r in cm) == report["data"]["n"]
    # every detail table sits in a closed <details> with its own scroll box
    assert "<details open" not in page
    assert page.count('<div class="scroll">') >= len(report["checks"]["evaluate"]["metrics"])
    assert "@media print" in page


def test_class_names_are_escaped(bundle: Path) -> None:
    report = AuditReport.load(bundle / "report.json")
    report.model["class_names"] = ["<script>alert(1)</script>", "b"]
    report.data["spec"] = 'demo:"><img src=x onerror=alert(2)>'
    page = render_html(report, bundle)
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_small_bundle_page_size(bundle: Path) -> None:
    page = (bundle / "report.html").read_bytes()
    embedded = sum(len(m) for m in re.findall(rb"data:image/png;base64,[A-Za-z0-9+/=]+", page))
    pngs = sum(p.stat().st_size for p in bundle.glob("checks/*/*.png"))
    assert pngs > 0 and embedded <= pngs * 4 / 3 + 100  # never larger than the files
    assert len(page) < 400_000, len(page)


def test_plot_is_reencoded_narrower_and_smaller(tmp_path: Path) -> None:
    img = Image.new("RGB", (1500, 600), "white")
    for x in range(0, 1500, 3):  # a plot-like image: lines of a few colours
        for y in range(0, 600, 50):
            img.putpixel((x, y), (31, 119, 180) if x % 2 else (255, 127, 14))
    path = tmp_path / "p.png"
    img.save(path)
    uri = plot_uri(path)
    data = base64.b64decode(uri.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as small:
        assert small.width == PLOT_WIDTH and small.height == round(600 * PLOT_WIDTH / 1500)
    assert len(data) <= path.stat().st_size


def test_pdf_needs_a_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from raigate.reports import pdf

    page = tmp_path / "r.html"
    page.write_text("<p>x</p>")
    # a browser that does not run leaves no file behind, not even a temporary one
    assert pdf.print_pdf(page, tmp_path / "r.pdf", browser=str(tmp_path / "none")) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]
    monkeypatch.setattr(pdf, "find_chromium", lambda: None)
    assert pdf.print_pdf(page, tmp_path / "r.pdf") is False
    (tmp_path / "plan.toml").write_text(PLAN)
    args = ["audit", str(tmp_path / "plan.toml"), "--out", str(tmp_path / "o"), "--pdf"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--pdf: no Chromium" in res.output, res.output


@pytest.mark.parametrize(
    "gate_id",
    [
        "evaluate.min_accuracy",
        "evaluate.chance_level",
        "fairness.input_scale",
        "model.normalization_scale",
        "data.limit_misses_classes",
        "fairness.accuracy_difference[race]",
        "fairness.selection_rate_ratio[race+gender]",
        "fairness.equalized_odds_difference[age]",
        "robustness.min_robust_accuracy[pgd linf eps=8/255]",
        "robustness.min_certified_accuracy[r=0.25]",
        "robustness.query_budget.square",
        "robustness.smoothing.certified_accuracy",
        "robustness.masking.large_eps.model",
        "privacy.empirical_epsilon",
        "privacy.membership_auc",
        "privacy.spent_epsilon",
        "privacy.sampler",
        "explanations.faithfulness.saliency",
        "explanations.sanity.saliency",
        "explanations.sanity",
        "explanations.ig_delta",
    ],
)
def test_every_gate_kind_has_a_direction(gate_id: str) -> None:
    """Each finding id the checks write (grep 'id=' in src/raigate) reads with a direction."""
    rule = rule_for(gate_id)
    assert rule is not None and rule.direction and rule.passing


def test_no_pdf_writes_none(tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN.split("[checks.fairness]")[0])
    res = runner.invoke(app, ["audit", str(plan), "--out", str(tmp_path / "o"), "--no-pdf"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "report.html").is_file()
    assert not (tmp_path / "o" / "report.pdf").exists()
