"""``report.pdf``: report.html printed by headless Chromium, for a release board that files
PDFs. Optional: written only where Chromium is installed (Debian's ``chromium``; CI installs
it), since a PDF engine of our own would be a second renderer to keep in step with the page.

The page prints its collapsed state (detail tables stay closed), so the PDF holds the
decisions and stays short; the tables are in report.html and report.json.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from raigate._io import atomic_path

PDF_FILE = "report.pdf"
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in containers; the page is our own file, no remote content
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-pdf-header-footer",  # else the local file path is printed on every page
)
TIMEOUT_S = 120


def find_chromium() -> str | None:
    """The first Chromium-family browser on PATH, or None."""
    for name in _BROWSERS:
        if found := shutil.which(name):
            return found
    return None


def print_pdf(html: Path, pdf: Path, *, browser: str | None = None) -> bool:
    """Print ``html`` to ``pdf`` (atomically) with headless Chromium; False, writing nothing,
    when no browser is found or it fails to produce a PDF: the PDF is a convenience, the
    HTML and JSON remain the report."""
    browser = browser or find_chromium()
    if browser is None:
        return False
    with tempfile.TemporaryDirectory(prefix="raigate-chromium-") as profile:
        try:
            with atomic_path(pdf) as tmp:
                _run(browser, profile, html, tmp)
                if tmp.read_bytes()[:5] != b"%PDF-":
                    raise _NoPdf  # atomic_path removes the temporary file
        except _NoPdf:
            return False
    return True


def _run(browser: str, profile: str, html: Path, tmp: Path) -> None:
    """One headless print; a browser that crashes or hangs leaves ``tmp`` empty."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(
            [browser, *_FLAGS, f"--user-data-dir={profile}", f"--print-to-pdf={tmp}",
             html.resolve().as_uri()],
            capture_output=True,
            timeout=TIMEOUT_S,
            check=False,
        )  # fmt: skip


class _NoPdf(Exception):
    """Raised inside ``atomic_path`` so it discards the temporary file."""
