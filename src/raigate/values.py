"""Numbers as users spell them, the same on the command line and in an audit plan.

``--eps 8/255`` and ``eps = ["8/255"]`` mean the same budget; :data:`Fraction` is the
pydantic type params classes use for such fields, :func:`parse_fraction` the parser the CLI
calls. Both refuse what cannot be a setting (``4/0``, ``abc``, ``nan``, ``inf``) with a
``ValueError`` whose text names the value, which the CLI and the plan loader turn into a
one-line error (exit 2). :data:`Listed` lets a list field take the command line's comma
form too, so ``eps = "1/255,2/255"`` in a plan means ``--eps 1/255,2/255``.

>>> parse_fraction("8/255") == 8 / 255, parse_fraction(" 0.5 "), parse_fraction(3)
(True, 0.5, 3.0)
>>> split_commas("1/255, 2/255"), split_commas(["linf"])
(['1/255', '2/255'], ['linf'])
>>> parse_fraction("4/0")
Traceback (most recent call last):
...
ValueError: '4/0' divides by zero
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BeforeValidator, Field


def parse_fraction(value: str | float | int) -> float:
    """A finite number from ``0.03``, ``"0.03"``, ``"8/255"`` or ``"1e-3"``."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, str):
        text = value.strip()
        num, sep, den = text.partition("/")
        try:
            out = float(num) / float(den) if sep else float(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a number or a fraction like 8/255") from None
        except ZeroDivisionError:
            raise ValueError(f"{value!r} divides by zero") from None
    else:
        out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{value!r} is not a finite number")
    return out


def _fraction_input(value: Any) -> Any:
    # None, lists and other types go on to pydantic, which names what it expected
    if isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool)):
        return parse_fraction(value)
    return value


Fraction = Annotated[float, BeforeValidator(_fraction_input)]
"""A float field that also takes ``"8/255"``, and never NaN or infinity."""


Seed = Annotated[int, Field(ge=0, le=2**63 - 1, description="seed of every random step")]
"""A seed numpy's ``SeedSequence`` and torch accept: a non-negative integer below 2**63."""


def split_commas(value: Any) -> Any:
    """``"a, b"`` -> ``["a", "b"]``; lists and other values go on unchanged, to be validated
    (and named in errors) by the field's own type."""
    if isinstance(value, str):
        return [token.strip() for token in value.split(",") if token.strip()]
    return value


Listed = BeforeValidator(split_commas)
"""Metadata for a list field that also takes one comma-separated string, the form its CLI
option takes (``Annotated[list[Fraction], Listed]``): a plan and a command line then accept
the same text, and a plan written by copying flags works."""
