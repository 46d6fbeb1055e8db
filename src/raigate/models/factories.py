"""The one place raigate imports and calls Python code that a model spec names.

A ``pkg.module:factory`` string can come from two kinds of places, and they are trusted
differently (after transformers' ``trust_remote_code``; README "Security model"):

* **named by the caller**: ``--model pkg.mod:factory`` on the command line, or
  ``load_model("pkg.mod:factory")`` in Python. That is the user's own choice of code, and it
  is imported as ``python -m`` would import it (current directory first, then PYTHONPATH).
* **read from a file** (an ``origin``): a model-spec JSON, an audit plan, or the ``base`` a
  DP-SGD spec rebuilds. Files travel between people, so only raigate's own model factories
  (:data:`BUILTIN_FACTORY_MODULES`, :data:`BUILTIN_FACTORIES`) run from them; anything else
  needs ``trust_code`` (CLI ``--trust-code``, plan ``trust_code = true``), and without it
  the refusal comes *before* the module is imported, so nothing of it runs.

Only network builders count as raigate's own, not every callable in the package: a spec
naming ``raigate._io:write_atomic`` with a path and a text would otherwise be a file-writing
primitive. Factories called while loading an untrusted file run under the same rule, so a
built-in factory that itself builds a named ``base`` (``raigate.privacy.fold:private_net``)
cannot be used to smuggle foreign code past it.

>>> build_network("raigate.zoo:small_cnn", num_classes=3, origin="m.json").__class__.__name__
'SmallCNN'
>>> build_network("os:system", kwargs={"command": "true"}, origin="m.json")  # doctest: +ELLIPSIS
Traceback (most recent call last):
  ...
raigate.errors.SpecError: m.json names factory 'os:system', ... rerun with --trust-code ...
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch import nn

from raigate.errors import ModelLoadError, SpecError
from raigate.models._common import one_line
from raigate.models.specs import _FACTORY_RE as FACTORY_RE

__all__ = [
    "BUILTIN_FACTORIES",
    "BUILTIN_FACTORY_MODULES",
    "accepts_num_classes",
    "build_network",
    "check_trust",
    "import_factory",
    "is_builtin_factory",
]

BUILTIN_FACTORY_MODULES = ("raigate.zoo",)
"""Packages whose network builders run from any file: their callables build a module and do
nothing else."""

BUILTIN_FACTORIES = frozenset({"raigate.privacy.fold:private_net"})
"""Single built-in factories outside those packages (the DP-SGD spec's rebuild)."""

# The file being loaded without trust while its factory runs; None = the caller's own code.
_UNTRUSTED_ORIGIN: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "raigate_untrusted_origin", default=None
)


def is_builtin_factory(target: str) -> bool:
    """Whether ``target`` names one of raigate's own model factories, judged from the string
    alone (nothing is imported). ``raigate_evil:x`` and ``raigate.evil:x`` are not."""
    module, _, _ = target.partition(":")
    return target in BUILTIN_FACTORIES or any(
        module == pkg or module.startswith(pkg + ".") for pkg in BUILTIN_FACTORY_MODULES
    )


def _defined_in_builtin(target: str, obj: Any) -> bool:
    """After import: the attribute must be defined there, not re-exported from elsewhere
    (``raigate.zoo._norm:ConfigError`` is a callable, but not a network builder)."""
    if target in BUILTIN_FACTORIES:
        return True
    where = getattr(obj, "__module__", None) or ""
    return any(where == pkg or where.startswith(pkg + ".") for pkg in BUILTIN_FACTORY_MODULES)


def _refuse(target: str, origin: str) -> SpecError:
    return SpecError(
        f"{origin} names factory {target!r}, code outside raigate's built-in model factories; "
        f"it was not imported: if you trust {origin}, rerun with --trust-code "
        "(plan: trust_code = true; Python: trust_code=True)"
    )


@contextlib.contextmanager
def _cwd_importable(enabled: bool = True) -> Iterator[None]:
    """The current directory first on ``sys.path`` while user code is imported and called, as
    ``python -m`` has it (a console script does not), then taken off again: a ``captum/``
    folder where the user happens to stand must not replace the real package for the rest of
    the run. Modules imported meanwhile stay imported, as any import does."""
    cwd = os.getcwd() if enabled else ""
    added = enabled and cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def _import(module_name: str, origin: str, *, from_cwd: bool) -> Any:
    try:
        with _cwd_importable(from_cwd):
            return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise SpecError(
                f"cannot import module {module_name!r} for model spec {origin!r}: not found in "
                f"the current directory ({Path.cwd()}) or on PYTHONPATH"
            ) from e
        raise SpecError(
            f"importing {module_name!r} for model spec {origin!r} failed: {one_line(e)}"
        ) from e
    except Exception as e:  # user code: a SyntaxError or anything its import runs
        raise SpecError(
            f"importing {module_name!r} for model spec {origin!r} failed: {one_line(e)}"
        ) from e


def _effective_origin(origin: str | None, trust_code: bool) -> str | None:
    """The untrusted file this name comes from, if any: the one given, else the one being
    loaded around this call (a built-in factory's ``base``); None when trusted."""
    if trust_code:
        return None
    return origin if origin is not None else _UNTRUSTED_ORIGIN.get()


def check_trust(target: str, *, origin: str | None = None, trust_code: bool = False) -> None:
    """Refuse, from the string alone, a factory an untrusted file names outside raigate's
    own; loaders call it first so this refusal wins over any other complaint."""
    untrusted = _effective_origin(origin, trust_code)
    if untrusted is not None and not is_builtin_factory(target):
        raise _refuse(target, untrusted)


def import_factory(
    target: str, *, origin: str | None = None, trust_code: bool = False
) -> Callable[..., Any]:
    """Import ``pkg.module:attr`` under the trust rules of the module docstring.

    ``origin`` is the file the name was read from (None: the caller named it). From an
    untrusted origin a non-built-in name raises a SpecError before any import.
    """
    where = origin or target
    if not FACTORY_RE.match(target):
        raise SpecError(f"factory {target!r} in {where!r} is not of the form pkg.module:factory")
    check_trust(target, origin=origin, trust_code=trust_code)
    untrusted = _effective_origin(origin, trust_code)
    builtin = is_builtin_factory(target)
    module_name, attr = target.split(":")
    # raigate's own modules never come from the current directory.
    module = _import(module_name, where, from_cwd=not builtin)
    factory = getattr(module, attr, None)
    if factory is None:
        file = getattr(module, "__file__", None) or module_name
        raise SpecError(
            f"module {module_name!r} ({file}) has no attribute {attr!r} (spec {where!r})"
        )
    if untrusted is not None and not _defined_in_builtin(target, factory):
        raise _refuse(target, untrusted)
    if not callable(factory):
        raise SpecError(f"{target!r} is a {type(factory).__name__}, not a callable factory")
    return factory  # type: ignore[no-any-return]


def accepts_num_classes(factory: Callable[..., Any]) -> bool:
    """Whether ``factory`` takes ``num_classes`` by keyword (zoo factories all do)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("num_classes")
    return p is not None and p.kind is not inspect.Parameter.POSITIONAL_ONLY


def build_network(
    target: str,
    *,
    kwargs: dict[str, Any] | None = None,
    num_classes: int | None = None,
    origin: str | None = None,
    trust_code: bool = False,
) -> nn.Module:
    """Import ``target`` (trust rules above) and call it with ``kwargs``, adding
    ``num_classes`` when the factory takes it and ``kwargs`` does not set it.

    Errors: SpecError for a name that cannot be imported or is refused, ModelLoadError for
    a call that fails or returns something other than an ``nn.Module``.
    """
    factory = import_factory(target, origin=origin, trust_code=trust_code)
    kw = dict(kwargs or {})
    if num_classes is not None and "num_classes" not in kw and accepts_num_classes(factory):
        kw["num_classes"] = num_classes
    shown = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    token = _UNTRUSTED_ORIGIN.set(_effective_origin(origin, trust_code))
    try:
        # A user factory may import its helpers from cwd when called, not only at import.
        with _cwd_importable(not is_builtin_factory(target)):
            net = factory(**kw)
    except (SpecError, ModelLoadError):
        raise  # a nested factory's own refusal or failure already says what to do
    except Exception as e:
        raise ModelLoadError(f"calling {target}({shown}) failed: {one_line(e)}") from e
    finally:
        _UNTRUSTED_ORIGIN.reset(token)
    if not isinstance(net, nn.Module):
        raise ModelLoadError(f"{target} returned a {type(net).__name__}, not a torch.nn.Module")
    return net
