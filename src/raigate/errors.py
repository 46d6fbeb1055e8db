"""One exception tree for the whole library; only ``cli.py`` turns it into exit codes.

::

    RaigateError                  exit 3  (internal: a bug or an environment problem)
    ├── UserError                 exit 2  (the user can fix it: the message says how)
    │   ├── SpecError             unknown scheme, malformed model/data spec
    │   ├── ModelLoadError        unreadable weights, keys/shapes that do not fit
    │   ├── DataError             missing path, wrong layout, bad CSV column, bad image
    │   ├── ConfigError           an option or parameter out of range
    │   └── MissingDependencyError  an optional package is not installed
    ├── GateFailed                exit 1  (the audit ran; a gate did not pass)
    └── VerificationFailed        exit 1  (a signature or a subject digest does not verify)

Messages are one line: what is wrong, naming the file or field, and what to do instead.
"""

from __future__ import annotations


class RaigateError(Exception):
    """Base of every error raigate raises on purpose."""

    exit_code: int = 3


class UserError(RaigateError):
    """A mistake in the input that the user can fix; the message says how."""

    exit_code = 2


class SpecError(UserError):
    """A model or data spec that cannot be parsed or names an unknown scheme."""


class ModelLoadError(UserError):
    """Weights or model archives that cannot be read or do not fit the architecture."""


class DataError(UserError):
    """A dataset that is missing, laid out wrongly, or holds an unreadable file."""


class ConfigError(UserError):
    """An option or parameter value that is out of range or inconsistent."""


class MissingDependencyError(UserError):
    """An optional package is needed for this feature and is not installed."""

    def __init__(self, package: str, feature: str, *, install: str | None = None) -> None:
        # ``install``: what to pip install when it is not the package itself (an extra
        # such as raigate[mlflow], which also pins the version raigate is tested with)
        super().__init__(
            f"{feature} needs the package '{package}': install it with "
            f"`pip install {install or package}` (or `pip install -e '.[dev]'` in a checkout)"
        )
        self.package = package


class GateFailed(RaigateError):
    """The audit ran to the end and at least one gate did not pass."""

    exit_code = 1


class VerificationFailed(RaigateError):
    """``raigate verify`` found a bad signature or a changed file: the evidence is not
    what was signed. Exit 1, like a failed gate, so CI stops on it."""

    exit_code = 1
