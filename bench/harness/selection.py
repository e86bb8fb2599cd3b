"""The ``name[key=value,...]`` selection grammar, checked against a plug-in's typed Params.

Values are coerced to the dataclass field's type: int, float, bool, str, Literal[...],
optional types, and tuples (``hidden=(512,512)`` or ``hidden=512x512``). Commas inside
brackets or parentheses do not split.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from bench.api.errors import ConfigError

__all__ = [
    "parse_selection", "split_top", "build_params", "param_fields", "closest",
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


def _coerce(raw: str, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    raw = raw.strip()
    if origin in (typing.Union, types.UnionType):
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
    if origin is typing.Literal:
        for a in args:
            if str(a) == raw:
                return a
        raise ValueError(f"must be one of {list(args)}")
    if origin is tuple:
        text = raw.strip("()[] ")
        items = [s for s in (text.split("x") if "," not in text else text.split(",")) if s]
        elem = args[0] if args else str
        return tuple(_coerce(s, elem) for s in items)
    if tp is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("must be true or false")
    if tp is int:
        f = float(raw)
        if f != int(f):
            raise ValueError("must be an integer")
        return int(f)
    if tp is float:
        return float(raw)
    if isinstance(getattr(tp, "__supertype__", None), type):  # NewType, e.g. DatasetRef
        return tp(_coerce(raw, tp.__supertype__))
    if tp is str:
        return raw.strip("\"'")
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
    try:
        return params_cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"invalid parameters for {owner}: {e}") from None

