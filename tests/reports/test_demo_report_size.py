"""The report's size goals on the full demo (#16): report.html at most 1 MB and report.pdf
at most 20 printed pages with details collapsed (they were 2.9 MB and 99 pages). The whole
demo takes about 90 s on 2 cores, so this is a slow test: `pytest -m slow`."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from raigate.demo import run_demo


@pytest.mark.slow
def test_full_demo_report_fits_one_megabyte_and_twenty_pages(tmp_path: Path) -> None:
    run = run_demo(tmp_path, progress=False, echo=lambda _line: None)
    html = run.outcome.out_dir / "report.html"
    assert html.stat().st_size <= 1_000_000, html.stat().st_size
    pdf = run.outcome.out_dir / "report.pdf"
    if shutil.which("chromium") is None:
        assert not pdf.exists()
        pytest.skip("no chromium: report.pdf is not printed here")
    pages = len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf.read_bytes()))
    assert 1 <= pages <= 20, pages
