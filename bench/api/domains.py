"""Parameter domains, declared once on a ``Params`` field and checked by the plan.

A domain is dataclass field metadata::

    @dataclass
    class Params:
        batch_size: int = field(default=512, metadata=at_least(1))
        lr_decay: float = field(default=0.5, metadata=in_range(0, 1))
        noise: float = field(default=0.1, metadata=positive())
        hidden: tuple[int, ...] = field(default=(64, 64), metadata=at_least(1))  # each

The plan refuses a value outside its field's domain before any data is read (one line,
exit 2: ``method 'rectflow': batch_size=0 is out of its domain (an integer >= 1)``), and
the contract checks refuse a default outside it. A domain holds for a number, for each
element of a tuple, and is not applied to None (an optional field's "unset"). Values must
be finite (NaN and infinities are outside every domain).

Torch-free and importing nothing else of bench.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Domain", "domain_violation", "at_least", "greater_than", "positive",
           "non_negative", "in_range", "probability", "domain_of", "DOMAIN_KEY"]

#: the key of field metadata that holds a `Domain`
DOMAIN_KEY = "bench.domain"


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Domain:
    """An interval of numbers: ``lo`` (None: unbounded) to ``hi``, each end open or closed.

    Use the helpers (`at_least`, `positive`, `in_range`, ...), which return field metadata.
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, value: Any) -> bool:
        """Whether a finite number lies in the interval (bool is not a number here)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def describe(self, integer: bool = False) -> str:
        """``an integer >= 1``, ``a number > 0``, ``a number in [0, 1)``."""
        what = "an integer" if integer else "a number"
        if self.lo is not None and self.hi is not None:
            return (f"{what} in {'(' if self.lo_open else '['}{_num(self.lo)}, "
                    f"{_num(self.hi)}{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"{what} {'<' if self.hi_open else '<='} {_num(self.hi)}"
        return f"{what} (finite)"

    def outside(self, value: Any) -> str | None:
        """None when ``value`` (a number, None, or a tuple/list of numbers) is inside, else
        its first element outside, as text (``0``, ``nan``)."""
        if value is None:
            return None
        items = value if isinstance(value, tuple | list) else (value,)
        for v in items:
            if not self.contains(v):
                return repr(v)
        return None

    def metadata(self) -> dict[str, Domain]:
        return {DOMAIN_KEY: self}


def at_least(lo: float) -> dict[str, Domain]:
    """Field metadata: the value is >= ``lo`` (``at_least(1)`` for sizes and counts)."""
    return Domain(lo=lo).metadata()


def greater_than(lo: float) -> dict[str, Domain]:
    """Field metadata: the value is > ``lo``."""
    return Domain(lo=lo, lo_open=True).metadata()


def positive() -> dict[str, Domain]:
    """Field metadata: the value is > 0 (rates, scales, tolerances)."""
    return greater_than(0)


def non_negative() -> dict[str, Domain]:
    """Field metadata: the value is >= 0 (weights, optional counts where 0 means off)."""
    return at_least(0)


def in_range(lo: float, hi: float, *, lo_open: bool = False,
             hi_open: bool = False) -> dict[str, Domain]:
    """Field metadata: lo <= value <= hi (an end is excluded with ``lo_open``/``hi_open``)."""
    if not lo <= hi:
        raise ValueError(f"in_range({lo}, {hi}): lo must not exceed hi")
    return Domain(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open).metadata()


def probability() -> dict[str, Domain]:
    """Field metadata: the value is in [0, 1]."""
    return in_range(0, 1)


def domain_of(field: dataclasses.Field) -> Domain | None:
    """The `Domain` a ``Params`` field declares, or None."""
    dom = field.metadata.get(DOMAIN_KEY) if field.metadata else None
    return dom if isinstance(dom, Domain) else None


def domain_violation(params: Any) -> str | None:
    """The first field of a ``Params`` instance outside its declared domain, as a sentence
    (``batch_size=0 is out of its domain (an integer >= 1)``), or None. The plan refuses
    such values before anything runs; the plug-in base classes ask again at construction,
    so a ``Params`` built by hand is held to the same domains."""
    if not dataclasses.is_dataclass(params):
        return None
    for f in dataclasses.fields(params):
        dom, value = domain_of(f), getattr(params, f.name, None)
        if dom is None or (bad := dom.outside(value)) is None:
            continue
        items = value if isinstance(value, tuple | list) else (value,)
        integer = all(isinstance(v, int) for v in items)
        shown = bad if not isinstance(value, tuple | list) else f"{value!r} ({bad})"
        return f"{f.name}={shown} is out of its domain ({dom.describe(integer)})"
    return None
