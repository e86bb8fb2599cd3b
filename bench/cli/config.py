"""``--config FILE``: a command's options from a TOML file, the command line overriding it.

A key is an option's long name (``max-seconds`` or ``max_seconds``; ``method``/``dataset``
for ``-m``/``-d``); its value is what the option takes: a number, a string, a boolean for a
flag, a list for a repeatable option. Two forms say a grid the way TOML does:

    seeds = [0, 1, 2]                   # or "0,1,2"
    steps = 2000
    set = {batch_size = 256}            # --set batch_size=256
    dataset = ["8gaussians", "moons"]

    [[method]]                          # -m "interflow[hidden=(64,64),interpolant=linear]"
    name = "interflow"
    hidden = [64, 64]
    interpolant = "linear"

The file's values become the command's defaults (click's ``default_map``): an option given
on the command line wins, and a repeatable one (``-m``) replaces the file's list. An
unknown key, a file that is not TOML or is missing, is one ConfigError line (exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bench.api import ConfigError

__all__ = ["config_option", "config_defaults"]


def _keys(command: click.Command) -> dict[str, click.Option]:
    out = {}
    for p in command.params:
        if isinstance(p, click.Option) and p.expose_value:
            out.setdefault(str(p.name), p)  # --fresh shares --resume's name
            for name in (o.lstrip("-") for o in p.opts if o.startswith("--")):
                out[name.replace("-", "_")] = p
    for alias, name in (("method", "methods"), ("dataset", "datasets"), ("set", "sets")):
        if name in out:
            out[alias] = out[name]
    return out


def _long(opt: click.Option) -> str:
    return max((o for o in opt.opts if o.startswith("--")), key=len,
               default=str(opt.name)).lstrip("-")


def _option_value(opt: click.Option, value: Any, where: str) -> Any:
    # the selection grammar's writer, shared with suite files (imported when a file is read:
    # `bench --help` must not pay for the suites module)
    from bench.harness.planning.suites import selection_text, value_text

    if opt.is_flag and isinstance(opt.flag_value, str):  # --resume / --fresh
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expects true or false, got {value!r}")
        return opt.flag_value if value else None
    if opt.name == "sets" and isinstance(value, dict):
        return [f"{k}={value_text(v)}" for k, v in value.items()]
    if opt.name == "seeds" and isinstance(value, list):
        return ",".join(str(v) for v in value)
    if opt.multiple:
        items = value if isinstance(value, list) else [value]
        if opt.name in ("methods", "datasets"):
            return [selection_text(v, where) for v in items]
        return [v if isinstance(v, str) else value_text(v) for v in items]
    if isinstance(value, list | dict):
        raise ConfigError(f"{where}: expects one value, got {value!r}")
    return value


def config_defaults(command: click.Command, path: Path) -> dict[str, Any]:
    """The file's options as ``{param name: value}`` for the command's ``default_map``."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: not TOML: {exc}") from None
    keys = _keys(command)
    out: dict[str, Any] = {}
    for key, value in data.items():
        opt = keys.get(key.replace("-", "_"))
        if opt is None or opt.name == "config":
            from bench.harness.planning.selection import closest

            names = sorted({_long(o) for o in keys.values()} - {"config"})
            raise ConfigError(f"--config {path}: unknown key {key!r}"
                              f"{closest(key.replace('_', '-'), names)}; valid: "
                              + ", ".join(names))
        out[str(opt.name)] = _option_value(opt, value, f"--config {path}: {key}")
    return out


def _load(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.default_map = {**(ctx.default_map or {}), **config_defaults(ctx.command,
                                                                        Path(value))}


def config_option(f):
    """``--config FILE``: the command's options from a TOML file (command line wins)."""
    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True,
                        expose_value=False, callback=_load,
                        help="Options from a TOML file (a grid: method tables, datasets, "
                             "seeds, budget, any other option); the command line "
                             "overrides it.")(f)
