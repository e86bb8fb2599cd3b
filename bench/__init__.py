"""bench: a benchmark harness for continuous-time generative models.

The public face, for notebooks and scripts: `run` and `load` (from `bench.lab`), and the
plug-in contract `Method`, `FlowMethod`, `Dataset`, `Splits` and `LogLikelihood` (from
`bench.api`). They are imported on first use (PEP 562 module ``__getattr__``), so
``import bench`` stays cheap: torch and mlflow are imported only by the modules that need
them.

>>> import bench
>>> sorted(bench.__all__)
['Dataset', 'FlowMethod', 'LogLikelihood', 'Method', 'Splits', '__version__', 'load', 'run']
>>> bench.Method is __import__("bench.api", fromlist=["Method"]).Method
True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.api import Dataset, FlowMethod, LogLikelihood, Method, Splits
    from bench.lab import load, run

#: the distribution name on PyPI (``bench`` there is an unrelated package); the import
#: name and the command are ``bench``
DISTRIBUTION = "ctgen-bench"

_LAZY = {"run": "bench.lab", "load": "bench.lab", "Method": "bench.api",
         "FlowMethod": "bench.api", "Dataset": "bench.api", "Splits": "bench.api",
         "LogLikelihood": "bench.api"}

__all__ = ["run", "load", "Method", "FlowMethod", "Dataset", "Splits", "LogLikelihood",
           "__version__"]


def _version() -> str:
    """The installed distribution's version (read on first use: importlib.metadata costs
    ~40 ms, which `bench --help` would pay on every call; ``bench regress`` saw it)."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # a source folder that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "__version__"})
