"""Finds plug-ins: files in methods/ and datasets/, folders from --plugins / BENCH_PLUGINS,
and entry points in the groups ``bench.methods`` and ``bench.datasets``.

Plug-in files are loaded by path under a private module name
(``bench_plugins.methods.<stem>``), inserted into ``sys.modules`` before execution so
dataclasses work, so that no plug-in folder shadows an installed package (e.g. HuggingFace
``datasets``). A file that fails to import is listed as unavailable with the reason; only
an explicit selection of it raises.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench.api.errors import PluginUnavailable, ConfigError
from bench.harness.selection import build_params, closest, parse_selection

__all__ = ["Plugin", "Registry", "PROJECT_ROOT", "KINDS"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KINDS = {"method": "methods", "dataset": "datasets"}


@dataclass
class Plugin:
    """One discovered plug-in: its class, or the reason it is unavailable."""

    name: str
    kind: str  # "method" | "dataset"
    source: str  # file path or "entry point module:attr"
    cls: type | None = None
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.cls is not None


def _base(kind: str) -> type:
    from bench import api

    return api.Method if kind == "method" else api.Dataset


def _load_file(path: Path, kind: str) -> object:
    mod_name = f"bench_plugins.{KINDS[kind]}.{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module


def _error_line(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({Path(last.filename).name}:{last.lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def plugin_dirs(extra: list[str | Path] | None = None) -> list[Path]:
    """Folders searched: the project's own, then BENCH_PLUGINS, then --plugins."""
    dirs = [PROJECT_ROOT]
    env = os.environ.get("BENCH_PLUGINS", "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in (extra or [])]
    return dirs


class Registry:
    """All methods and datasets found, by name."""

    def __init__(self, extra_dirs: list[str | Path] | None = None, entry_points: bool = True):
        self.plugins: dict[str, dict[str, Plugin]] = {"method": {}, "dataset": {}}
        for root in plugin_dirs(extra_dirs):
            root = root.expanduser().resolve()
            if not root.is_dir():
                raise ConfigError(f"plug-in folder {root} does not exist")
            for kind, sub in KINDS.items():
                # a --plugins DIR may hold methods/ and datasets/ or plug-in files directly
                folder = root / sub
                if folder.is_dir():
                    for path in sorted(folder.glob("*.py")):
                        self._scan_file(path, kind)
            if root != PROJECT_ROOT and not any((root / s).is_dir() for s in KINDS.values()):
                for path in sorted(root.glob("*.py")):
                    self._scan_file(path, None)
        if entry_points:
            self._scan_entry_points()

    def _add(self, plugin: Plugin) -> None:
        table = self.plugins[plugin.kind]
        if plugin.name in table:
            raise ConfigError(
                f"duplicate {plugin.kind} name {plugin.name!r}: defined in "
                f"{table[plugin.name].source} and {plugin.source}"
            )
        table[plugin.name] = plugin

    def _scan_file(self, path: Path, kind: str | None) -> None:
        if path.name.startswith("_"):
            return
        try:
            module = _load_file(path, kind or "method")
        except Exception as exc:  # noqa: BLE001 - any import failure makes it unavailable
            self._add(Plugin(path.stem, kind or "method", str(path), error=_error_line(exc)))
            return
        found = False
        for kinds in ([kind] if kind else list(KINDS)):
            base = _base(kinds)
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if (issubclass(obj, base) and obj.__module__ == module.__name__
                        and getattr(obj, "name", None)):
                    self._add(Plugin(obj.name, kinds, str(path), cls=obj))
                    found = True
        if not found and kind:
            self._add(Plugin(path.stem, kind, str(path),
                             error=f"no {kind} class with a `name` in {path.name}"))

    def _scan_entry_points(self) -> None:
        from importlib.metadata import entry_points

        for kind, sub in KINDS.items():
            for ep in entry_points(group=f"bench.{sub}"):
                source = f"entry point {ep.value}"
                try:
                    cls = ep.load()
                except Exception as exc:  # noqa: BLE001
                    self._add(Plugin(ep.name, kind, source, error=_error_line(exc)))
                    continue
                self._add(Plugin(getattr(cls, "name", ep.name), kind, source, cls=cls))

    def names(self, kind: str) -> list[str]:
        return sorted(self.plugins[kind])

    def get(self, kind: str, name: str) -> type:
        """The class of plug-in `name`; ConfigError if unknown, PluginUnavailable if broken."""
        table = self.plugins[kind]
        if name not in table:
            valid = ", ".join(self.names(kind)) or "none"
            raise ConfigError(
                f"unknown {kind} {name!r}{closest(name, self.names(kind))}; valid: {valid}"
            )
        plugin = table[name]
        if not plugin.available:
            raise PluginUnavailable(f"{kind} {name!r} is unavailable: {plugin.error}")
        return plugin.cls

    def resolve(self, kind: str, selection: str, extra: dict[str, str] | None = None):
        """Parse ``name[k=v]`` and return (class, params instance, selection label)."""
        name, overrides = parse_selection(selection)
        cls = self.get(kind, name)
        merged = {**(extra or {}), **overrides}
        params = build_params(cls.Params, merged, f"{kind} {name!r}")
        return cls, params

    def dataset(self, selection: str, data_dir: Path | None = None):
        """Instantiate a dataset from a selection string."""
        cls, params = self.resolve("dataset", selection)
        return cls(params, data_dir=data_dir)
