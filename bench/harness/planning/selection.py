"""The ``name[key=value,...]`` selection grammar, checked against a plug-in's typed Params.

Values are coerced to the dataclass field's type: int, float, bool, str, Literal[...],
optional types, and tuples (``hidden=(512,512)`` or ``hidden=512x512``). Commas inside
brackets or parentheses do not split. `check_param_defaults` checks that every default of a
plug-in's Params has its declared type (the plan's check and the contract's).

Torch-free, like everything the plan imports: a bad grid fails before torch loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any

from bench.api.domains import domain_of
from bench.api.errors import ConfigError, ContractError

__all__ = [
    "parse_selection", "split_top", "build_params", "param_fields", "closest",
    "param_default_problems", "check_param_defaults", "domain_problem", "domain_text", "domains",
]


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside (), [] and quotes."""
    parts, depth, cur, quote = [], 0, [], None
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_selection(text: str) -> tuple[str, dict[str, str]]:
    """``"interflow[lr=3e-4,interpolant=linear]"`` -> ("interflow", {"lr": "3e-4", ...})."""
    text = text.strip()
    if "[" not in text:
        if "]" in text or not text:
            raise ConfigError(f"malformed selection {text!r}: expected name[key=value,...]")
        return text, {}
    if not text.endswith("]"):
        raise ConfigError(f"malformed selection {text!r}: missing closing ']'")
    name, inner = text.split("[", 1)
    overrides: dict[str, str] = {}
    for item in split_top(inner[:-1]):
        if "=" not in item:
            raise ConfigError(f"malformed parameter {item!r} in {text!r}: expected key=value")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    return name.strip(), overrides


def param_fields(params_cls: type) -> dict[str, Any]:
    """Field name -> resolved type of a Params dataclass."""
    hints = typing.get_type_hints(params_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(params_cls)}


def closest(name: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _coerce_union(raw: str, args: tuple) -> Any:
    """The first member of a union that reads ``raw`` (``none``/``null`` for an optional)."""
    if raw.lower() in ("none", "null") and type(None) in args:
        return None
    errors = []
    for a in args:
        if a is type(None):
            continue
        try:
            return _coerce(raw, a)
        except (ValueError, TypeError) as e:
            errors.append(str(e))
    raise ValueError("; ".join(errors))


def _coerce_literal(raw: str, args: tuple) -> Any:
    for a in args:
        if str(a) == raw:
            return a
    raise ValueError(f"must be one of {list(args)}")


def _coerce_tuple(raw: str, args: tuple) -> tuple:
    """``(64,64)``, ``[64, 64]`` or ``64x64``: the elements read as the tuple's element type."""
    text = raw.strip("()[] ")
    items = [s for s in (text.split("x") if "," not in text else text.split(",")) if s]
    elem = args[0] if args else str
    return tuple(_coerce(s, elem) for s in items)


def _coerce_bool(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _coerce_int(raw: str) -> int:
    f = float(raw)
    if not math.isfinite(f):
        raise ValueError("must be a finite integer")
    if f != int(f):
        raise ValueError("must be an integer")
    return int(f)


#: the readers of a selection's text by the generic origin of the field's type
_BY_ORIGIN = {typing.Union: _coerce_union, types.UnionType: _coerce_union,
              typing.Literal: _coerce_literal, tuple: _coerce_tuple}
#: the readers by the field's plain type
_BY_TYPE = {bool: _coerce_bool, int: _coerce_int, float: float,
            str: lambda raw: raw.strip("\"'")}


def _coerce(raw: str, tp: Any) -> Any:
    """The value of a selection's text ``raw`` for a field typed ``tp``."""
    raw = raw.strip()
    origin = typing.get_origin(tp)
    if origin in _BY_ORIGIN:
        return _BY_ORIGIN[origin](raw, typing.get_args(tp))
    if tp in _BY_TYPE:
        return _BY_TYPE[tp](raw)
    if isinstance(getattr(tp, "__supertype__", None), type):  # NewType, e.g. DatasetRef
        return tp(_coerce(raw, tp.__supertype__))
    raise TypeError(f"unsupported parameter type {tp}")


def build_params(params_cls: type, overrides: dict[str, Any], owner: str) -> Any:
    """Instantiate `params_cls` with string (or typed) overrides, checking names and types."""
    fields = param_fields(params_cls)
    kwargs = {}
    for key, raw in overrides.items():
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "none"
            raise ConfigError(
                f"unknown parameter {key!r} for {owner}{closest(key, list(fields))}; "
                f"valid: {valid}"
            )
        tp = fields[key]
        if not isinstance(raw, str):
            kwargs[key] = raw
            continue
        try:
            kwargs[key] = _coerce(raw, tp)
        except (ValueError, TypeError) as e:
            tname = getattr(tp, "__name__", str(tp))
            raise ConfigError(
                f"bad value {raw!r} for {owner} parameter {key!r} ({tname}): {e}"
            ) from None
    return construct(params_cls, kwargs, owner, f"invalid parameters for {owner}")


def construct(cls: type, kwargs: dict[str, Any], owner: str, invalid: str) -> Any:
    """``cls(**kwargs)`` for typed values: each value held to its field's declared domain
    first (before ``__post_init__``: the domain's sentence, not the class's), then any
    ``ValueError``/``TypeError`` of the class as one `ConfigError` line ``invalid: why``."""
    fields = param_fields(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in kwargs.items():
        problem = domain_problem(by_name[key], fields[key], value)
        if problem:
            raise ConfigError(f"{owner}: {problem}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{invalid}: {e}") from None


# -- parameter domains (`bench.api.domains`) ----------------------------------------------
def domains(params_cls: type, short: bool = False) -> dict[str, str]:
    """Field -> the words of its declared domain, for the fields that declare one (what
    ``bench list`` shows)."""
    hints = param_fields(params_cls)
    return {f.name: domain_text(f, hints[f.name], short) for f in dataclasses.fields(params_cls)
            if domain_of(f) is not None}


def _is_int(tp: Any) -> bool:
    """Whether the numbers of a field typed ``tp`` are integers (int, int | None,
    tuple[int, ...])."""
    if tp is int:
        return True
    args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
    return bool(args) and all(_is_int(a) for a in args)


def _value_text(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "(" + ", ".join(map(_value_text, value)) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)


def domain_text(field: dataclasses.Field, tp: Any, short: bool = False) -> str | None:
    """The words of a field's declared domain (``an integer >= 1``; ``each an integer >=
    1`` for a tuple; ``short``: ``>= 1``, ``each >= 1``), or None without one."""
    dom = domain_of(field)
    if dom is None:
        return None
    if short:
        text = dom.describe().removeprefix("a number ")
        return f"each {text}" if domain_text(field, tp).startswith("each") else text
    tuples = [a for a in (tp, *typing.get_args(tp)) if a is tuple or typing.get_origin(a)
              is tuple]
    each = "each " if tuples else ""
    return each + dom.describe(_is_int(tp))


def domain_problem(field: dataclasses.Field, tp: Any, value: Any) -> str | None:
    """``batch_size=0 is out of its domain (an integer >= 1)`` when ``value`` lies outside
    the domain the field declares, else None."""
    dom = domain_of(field)
    if dom is None or dom.outside(value) is None:
        return None
    return f"{field.name}={_value_text(value)} is out of its domain ({domain_text(field, tp)})"


# -- parameter defaults -----------------------------------------------------------------
def _tname(tp: Any) -> str:
    if isinstance(tp, type) or isinstance(tp, typing.NewType):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` has the declared type ``tp`` (int is accepted for float)."""
    if tp is Any or tp is object or isinstance(tp, typing.TypeVar):
        return True
    if isinstance(tp, typing.NewType):
        return _matches(value, tp.__supertype__)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if not args or args == ((),):
            return True
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(map(_matches, value, args))
    if origin in (list, set, frozenset):
        return isinstance(value, origin) and all(_matches(v, args[0]) for v in value
                                                 if args)
    if origin is not None:
        return isinstance(value, origin)
    if tp is type(None) or tp is None:
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp) if isinstance(tp, type) else True


def param_default_problems(cls: type) -> list[str]:
    """Sentences saying how ``cls.Params`` breaks the contract (empty when it holds): a
    dataclass whose fields all have defaults of their declared types."""
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and dataclasses.is_dataclass(params)):
        return ["Params is not a dataclass (decorate it with @dataclass)"]
    try:
        hints = typing.get_type_hints(params)
    except Exception as exc:  # noqa: BLE001 - an unresolvable annotation
        return [f"the type hints of Params cannot be resolved ({type(exc).__name__}: {exc})"]
    problems = []
    for f in dataclasses.fields(params):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            problems.append(f"parameter {f.name!r} has no default")
            continue
        tp = hints.get(f.name, Any)
        if not _matches(value, tp):
            problems.append(f"parameter {f.name!r} is declared {_tname(tp)} but its default "
                            f"is {value!r} ({type(value).__name__})")
        elif domain_problem(f, tp, value):
            problems.append(f"the default {domain_problem(f, tp, value)}")
    return problems


def check_param_defaults(cls: type, owner: str) -> None:
    """ContractError (one sentence) unless every ``Params`` default has its declared type.

    Args:
        owner: how to name the plug-in, e.g. "method 'interflow'".
    """
    problems = param_default_problems(cls)
    if problems:
        raise ContractError(f"{owner}: {problems[0]}")
