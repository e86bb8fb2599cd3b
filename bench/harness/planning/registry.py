"""Finds plug-ins: the built-in ones, folders from --plugins / BENCH_PLUGINS, and entry points
in the groups ``bench.methods``, ``bench.datasets`` and ``bench.scorers``. A plug-in folder
holds ``methods/``, ``datasets/`` and ``scorers/`` (`bench.api.Scorer` subclasses, one file
each), or plug-in files directly.

The built-in plug-ins (``methods/*.py``, ``datasets/*.py``) are found where they really are:
in a wheel, inside the package as ``bench/_plugins/{methods,datasets}`` (package data, looked
at first); in a source checkout or editable install, in the repository root next to the
``bench`` package, and only if that folder's ``pyproject.toml`` installs the ``bench`` command
(an arbitrary parent such as ``site-packages``, where HuggingFace's ``datasets`` lives, is
never scanned).

Plug-in files are loaded by path under a private module name
(``bench_plugins.methods.<stem>``), inserted into ``sys.modules`` before execution so
dataclasses work, so that no plug-in folder shadows an installed package. A file that fails
to import, or a class that leaves abstract methods unimplemented, is listed as unavailable
with the reason; only an explicit selection of it raises.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import tomllib
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench.api.errors import ConfigError, PluginUnavailable
from bench.harness.planning.selection import build_params, closest, parse_selection

__all__ = ["Plugin", "Registry", "KINDS", "builtin_root", "checkout_root", "load_plugin_file",
           "plugin_dirs"]

KINDS = {"method": "methods", "dataset": "datasets", "scorer": "scorers"}
PACKAGE_DIR = Path(__file__).resolve().parents[2]  # the installed `bench` package


@dataclass
class Plugin:
    """One discovered plug-in: its class, or the reason it is unavailable.

    Attributes:
        name, kind: the plug-in's name and "method" | "dataset" | "scorer".
        source: the file it was loaded from, or "entry point module:attr".
        version: sha256[:12] of the file, or the distribution version of an entry point.
        cls: the class (None when unavailable); error: why it is unavailable.
    """

    name: str
    kind: str
    source: str
    version: str = ""
    cls: type | None = None
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.cls is not None


def checkout_root(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The source checkout holding ``package_dir``: its parent, if that folder has a
    ``pyproject.toml`` whose project installs this package's command (``bench =
    "bench.cli.main:main"``: the distribution name may change, the command does not); else
    None."""
    root = package_dir.parent
    try:
        meta = tomllib.loads((root / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    scripts = meta.get("project", {}).get("scripts", {})
    return root if scripts.get("bench") == "bench.cli.main:main" else None


def builtin_root(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """Where the built-in plug-ins are: ``bench/_plugins`` in a wheel, else the checkout."""
    shipped = package_dir / "_plugins"
    if any((shipped / sub).is_dir() for sub in KINDS.values()):
        return shipped
    return checkout_root(package_dir)


def plugin_dirs(extra: list[str | Path] | None = None) -> list[Path]:
    """Folders searched: the built-in plug-ins', then BENCH_PLUGINS, then --plugins."""
    root = builtin_root()
    dirs = [root] if root is not None else []
    env = os.environ.get("BENCH_PLUGINS", "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in (extra or [])]
    return dirs


def _base(kind: str) -> type:
    from bench import api

    return {"method": api.Method, "dataset": api.Dataset, "scorer": api.Scorer}[kind]


def _file_version(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _error_line(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({Path(last.filename).name}:{last.lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _abstract_error(cls: type) -> str | None:
    if not inspect.isabstract(cls):
        return None
    missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
    return f"abstract methods not implemented: {missing}"


def _load_module(path: Path, module_name: str) -> object:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path} as Python source")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def load_plugin_file(path: str | Path, kind: str | None = None,
                     prefix: str = "bench_plugins") -> list[Plugin]:
    """The plug-ins defined in one file (methods and/or datasets when ``kind`` is None).

    The file is executed as module ``<prefix>.<methods|datasets>.<stem>``. A file that fails
    to import gives one unavailable plug-in named after the file, with the error; a class
    with unimplemented abstract methods is unavailable with their names.
    """
    path = Path(path).resolve()
    sub = KINDS[kind] if kind else "files"
    version = _file_version(path)
    try:
        module = _load_module(path, f"{prefix}.{sub}.{path.stem}")
    except Exception as exc:  # noqa: BLE001 - any import failure makes it unavailable
        return [Plugin(path.stem, kind or "method", str(path), version,
                       error=_error_line(exc))]
    found = []
    for k in [kind] if kind else list(KINDS):
        base = _base(k)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (issubclass(obj, base) and obj.__module__ == module.__name__
                    and getattr(obj, "name", None)):
                error = _abstract_error(obj)
                found.append(Plugin(obj.name, k, str(path), version,
                                    cls=None if error else obj, error=error))
    if not found and kind:
        found.append(Plugin(path.stem, kind, str(path), version,
                            error=f"no {kind} class with a `name` in {path.name}"))
    return found


class Registry:
    """All methods and datasets found, by name."""

    def __init__(self, extra_dirs: list[str | Path] | None = None, entry_points: bool = True):
        self.plugins: dict[str, dict[str, Plugin]] = {kind: {} for kind in KINDS}
        builtin = builtin_root()
        for root in plugin_dirs(extra_dirs):
            root = root.expanduser().resolve()
            if not root.is_dir():
                raise ConfigError(f"plug-in folder {root} does not exist")
            # a plug-in folder may hold methods/ and datasets/, or plug-in files directly
            has_sub = False
            for kind, sub in KINDS.items():
                folder = root / sub
                if folder.is_dir():
                    has_sub = True
                    for path in sorted(folder.glob("*.py")):
                        self._scan_file(path, kind)
            if not has_sub and root != builtin:
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
        for plugin in load_plugin_file(path, kind):
            self._add(plugin)

    def _scan_entry_points(self) -> None:
        from importlib.metadata import entry_points

        for kind, sub in KINDS.items():
            for ep in entry_points(group=f"bench.{sub}"):
                source = f"entry point {ep.value}"
                dist = getattr(ep, "dist", None)
                version = str(dist.version) if dist is not None else ""
                try:
                    cls = ep.load()
                except Exception as exc:  # noqa: BLE001
                    self._add(Plugin(ep.name, kind, source, version, error=_error_line(exc)))
                    continue
                error = _abstract_error(cls) if inspect.isclass(cls) else None
                self._add(Plugin(getattr(cls, "name", ep.name), kind, source, version,
                                 cls=None if error else cls, error=error))

    def add_builtin(self, kind: str, classes: tuple[type, ...], source: str) -> None:
        """List classes that ship inside bench (the built-in scorers) beside the plug-ins,
        for ``bench list``; ConfigError when a plug-in already took a name."""
        for cls in classes:
            self._add(Plugin(cls.name, kind, source, cls=cls))

    def scorers(self) -> list[type]:
        """The available scorer classes found in plug-in folders and entry points, by
        name (``Job.scorers``: the harness adds its built-in ones)."""
        return [p.cls for _, p in sorted(self.plugins["scorer"].items())
                if p.available and not p.source.startswith("built in")]

    def names(self, kind: str) -> list[str]:
        return sorted(self.plugins[kind])

    def plugin(self, kind: str, name: str) -> Plugin:
        """The `Plugin` record of ``name`` (available or not); ConfigError if unknown."""
        table = self.plugins[kind]
        if name not in table:
            valid = ", ".join(self.names(kind)) or "none"
            raise ConfigError(
                f"unknown {kind} {name!r}{closest(name, self.names(kind))}; valid: {valid}"
            )
        return table[name]

    def get(self, kind: str, name: str) -> type:
        """The class of plug-in `name`; ConfigError if unknown, PluginUnavailable if broken."""
        plugin = self.plugin(kind, name)
        if not plugin.available:
            raise PluginUnavailable(f"{kind} {name!r} is unavailable: {plugin.error}")
        return plugin.cls

    def resolve(self, kind: str, selection: str, extra: dict[str, str] | None = None):
        """Parse ``name[k=v]`` and return (class, params instance)."""
        name, overrides = parse_selection(selection)
        cls = self.get(kind, name)
        merged = {**(extra or {}), **overrides}
        params = build_params(cls.Params, merged, f"{kind} {name!r}")
        return cls, params

    def dataset(self, selection: str, data_dir: Path | None = None):
        """Instantiate a dataset from a selection string."""
        cls, params = self.resolve("dataset", selection)
        return cls(params, data_dir=data_dir)
