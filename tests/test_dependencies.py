"""The declared dependencies match what src/raigate imports, so an install from pyproject.toml
alone cannot miss a package (scipy and scikit-learn once went undeclared, pulled in only
through other packages' requirements).

Every third-party top-level module imported anywhere in src/raigate (module level or inside a
function: the lazily imported ones are needed too) must come from a distribution declared in
``[project].dependencies``; every declared distribution must be imported directly, pinned in
constraints.txt, or named below with the reason it is needed anyway.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from raigate.environment import _PACKAGES

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "raigate"

OPTIONAL_IMPORTS: dict[str, str] = {
    "torchcsprng": "only for `--secure-mode` DP-SGD, imported inside secure_generator() under "
    "try/except ImportError with an install hint; not published for current torch releases",
}
"""Modules imported but deliberately not declared, with the reason."""

INDIRECT: dict[str, str] = {
    "pyopenssl": "model-signing 1.1 imports OpenSSL at import time without declaring it",
}
"""Declared distributions that src/raigate never imports, with why they are still needed."""


def _canonical(name: str) -> str:
    """PEP 503 normalized distribution name (``Pillow`` and ``pillow`` are one package)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(reqs: list[str]) -> set[str]:
    return {_canonical(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]) for req in reqs}


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return _names(project["dependencies"])


def _extras() -> set[str]:
    """The user-facing extras (``raigate[mlflow]``), not ``dev``: a feature's optional
    package, imported only when the feature is used, with an install hint."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return set().union(*(_names(v) for k, v in extras.items() if k != "dev"))


def _imported_modules() -> dict[str, set[str]]:
    """Third-party top-level module -> files importing it (absolute imports only; relative
    ones are raigate's own)."""
    found: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "raigate" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared() -> None:
    declared = _declared() | _extras()
    dists = packages_distributions()
    imported = _imported_modules()
    assert set(OPTIONAL_IMPORTS) <= set(imported), "stale OPTIONAL_IMPORTS entry"
    problems = []
    for module, files in sorted(imported.items()):
        if module in OPTIONAL_IMPORTS:
            continue
        provided_by = {_canonical(d) for d in dists.get(module, [])}
        if not provided_by:
            problems.append(f"{module} (in {sorted(files)[0]}) is imported but not installed")
        elif not provided_by & declared:
            problems.append(
                f"{module} (in {sorted(files)[0]}) comes from {sorted(provided_by)}, "
                "none of which pyproject.toml declares"
            )
    assert not problems, "\n".join(problems)


def test_every_declared_dependency_is_imported_and_pinned() -> None:
    dists = packages_distributions()
    imported = {_canonical(d) for m in _imported_modules() for d in dists.get(m, [])}
    pinned = {
        _canonical(line.split("==")[0])
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    }
    declared = _declared()
    assert declared - imported <= {_canonical(d) for d in INDIRECT}, declared - imported
    assert declared | _extras() <= pinned, (
        f"not pinned in constraints.txt: {sorted((declared | _extras()) - pinned)}"
    )


def test_environment_reports_declared_packages_only() -> None:
    """The versions a report records are of packages an install actually has."""
    names = {_canonical(p) for p in _PACKAGES}
    assert len(names) == len(_PACKAGES)
    assert names <= _declared(), sorted(names - _declared())
    assert "statsmodels" in names  # it computes every interval and Holm correction
