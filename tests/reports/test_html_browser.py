"""report.html in a real browser: headless Chromium loads it from disk (no network), the
verdict and every section render, the console stays free of errors, and a screenshot is
saved; the audit prints report.pdf with details collapsed, a few pages, and signs it.
Skips where Chromium is absent unless RAIGATE_REQUIRE_BROWSER=1 (set by .ci/run
after it installs Debian's chromium)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raigate.cli import app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("RAIGATE_REQUIRE_BROWSER") != "1",
    reason="chromium not installed (apt-get install chromium); .ci/run installs it",
)


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None, "RAIGATE_REQUIRE_BROWSER=1 but chromium is not installed"
    profile = tmp / f"profile{len(list(tmp.glob('profile*')))}"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def console_errors(stderr: str) -> list[str]:
    # with --enable-logging=stderr Chromium prints page console messages as CONSOLE(...) lines
    return [
        ln
        for ln in stderr.splitlines()
        if "CONSOLE" in ln and re.search(r"error|uncaught|failed", ln, re.I)
    ]


def test_console_error_detector_sees_a_real_error(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>console.error('boom from test')</script></body></html>")
    res = chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    assert console_errors(res.stderr), res.stderr[-2000:]


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    # every area (tiny settings), a variant and a second instance of a check
    plan.write_text(
        '[model]\nspec = "raigate.zoo:small_cnn"\nrandom_init = true\n'
        '[models.twin]\nspec = "raigate.zoo:small_cnn"\nrandom_init = true\n'
        '[data]\nspec = "demo:test"\nsample = 64\n'
        "[checks.evaluate]\nmin_accuracy = 0.0\n"
        '[checks.evaluate_twin]\ncheck = "evaluate"\nmodel = "twin"\n'
        '[checks.fairness]\nsensitive = ["gender"]\nn_boot = 100\nmin_group_size = 5\n'
        '[checks.explanations]\nmethods = ["saliency"]\nn_samples = 2\nsanity_samples = 2\n'
        "sensitivity_samples = 0\ninfidelity_perturbations = 2\n"
        "[checks.robustness]\neps = [0.03]\npgd_steps = 1\nmax_samples = 16\n"
        'smoothing_sigma = 0.25\nsmoothing_model = "twin"\neot_samples = 1\npredict_n = 4\n'
        "certify_n = 20\ncertify_n0 = 4\ncertify_max_samples = 4\n"
        '[checks.privacy]\nmembers = "demo:train"\nmembers_limit = 64\nattacks = ["loss"]\n'
    )
    out = tmp_path / "bundle"
    res = CliRunner().invoke(app, ["audit", str(plan), "--out", str(out)])
    assert res.exit_code in (0, 1), res.output  # an untrained model may fail a gate
    report = out / "report.html"
    assert "http://" not in report.read_text() and "https://" not in report.read_text()

    dom = chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_errors(dom.stderr) == []
    html = dom.stdout
    assert re.search(r'id="verdict"[^>]*>Verdict: <span[^>]*>(PASS|WARN|FAIL)</span>', html)
    for section in (
        'id="glance"',
        'id="check-evaluate"',
        'id="check-evaluate_twin"',
        'id="check-fairness"',
        'id="check-explanations"',
        'id="check-robustness"',
        'id="check-privacy"',
        'id="compliance"',
        "<h2>Gates</h2>",
        "<h2>What was audited</h2>",
        "<h2>Environment</h2>",
    ):
        assert section in html, section
    assert "SYNTHETIC" in html or "synthetic" in html

    # first screen: verdict, what was audited, signature status, one line per area
    first = html[: html.index("</header>")]
    for item in ('id="audited"', 'id="signature"', "manifest digest", 'id="glance"'):
        assert item in first, item
    assert "unsigned" in first  # no --key
    # detail tables collapsed, each in its own scroll box; print CSS keeps every column
    assert "<details" in html and "<details open" not in html
    assert re.search(r"\.scroll\{[^}]*overflow:auto", html)
    assert "@media print" in html
    assert '<tr class="gate">' in html and '<td class="direction">—</td>' not in html

    pdf = out / "report.pdf"  # printed by the audit itself: Chromium is installed
    assert pdf.read_bytes()[:5] == b"%PDF-"
    pages = len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf.read_bytes()))
    assert 1 <= pages <= 20, pages
    assert str(out).encode() not in pdf.read_bytes()  # no header/footer naming the local path

    shot = Path(os.environ.get("RAIGATE_SCREENSHOT_DIR", tmp_path)) / "report.png"
    res = chromium(tmp_path, "--window-size=1280,1800", f"--screenshot={shot}", report.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000, res.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_signed_bundle_signs_the_pdf_and_verifies(tmp_path: Path) -> None:
    import json

    runner = CliRunner()
    res = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / "keys")])
    assert res.exit_code == 0, res.output
    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[model]\nspec = "raigate.zoo:small_cnn"\nrandom_init = true\n'
        '[data]\nspec = "demo:test"\nlimit = 32\n[checks.evaluate]\nmin_accuracy = 0.0\n'
    )
    out = tmp_path / "bundle"
    key = str(tmp_path / "keys" / "raigate.key")
    res = runner.invoke(app, ["audit", str(plan), "--out", str(out), "--key", key, "--pdf"])
    assert res.exit_code == 0, res.output
    envelope = json.loads((out / "attestation.dsse.json").read_text())
    import base64
    import hashlib

    stmt = json.loads(base64.b64decode(envelope["payload"]))
    digests = {s["name"]: s["digest"]["sha256"] for s in stmt["subject"]}
    assert digests["report.pdf"] == hashlib.sha256((out / "report.pdf").read_bytes()).hexdigest()
    keyid = envelope["signatures"][0]["keyid"]
    assert f"signed with key id <code>{keyid}</code>" in (out / "report.html").read_text()
    pub = str(tmp_path / "keys" / "raigate.pub")
    res = runner.invoke(app, ["verify", str(out), "--key", pub])
    assert res.exit_code == 0, res.output
    (out / "report.pdf").write_bytes(b"%PDF-1.4 tampered")
    res = runner.invoke(app, ["verify", str(out), "--key", pub])
    assert res.exit_code != 0 and "report.pdf" in res.output
