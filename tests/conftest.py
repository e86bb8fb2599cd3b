"""Shared fixtures: quiet MLflow, a registry, the offline data root, tiny toy splits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path | None:
    """BENCH_DATA_DIR if set, else ../shared/data when it exists, else None."""
    env = os.environ.get("BENCH_DATA_DIR")
    if env and Path(env).is_dir():
        return Path(env)
    return SHARED if SHARED.is_dir() else None


@pytest.fixture(scope="session")
def registry():
    from bench.harness.planning.registry import Registry

    return Registry()


@pytest.fixture()
def toy_splits():
    import torch

    from bench.api import Splits

    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 2, generator=g) * torch.tensor([1.0, 0.5]) + 1.0
    return Splits(x[:400], x[400:500], x[500:], (2,), "test gaussian 400/100/100")


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """An initialised MLflow SQLite store (creating one runs migrations for ~10 s)."""
    from bench.record.mlflow_sink import _client

    path = tmp_path_factory.mktemp("mlflow") / "template.db"
    _client(f"sqlite:///{path}").search_experiments()  # creates the tables, no experiment
    return path


@pytest.fixture()
def tracking_uri(tmp_path, _mlflow_template) -> str:
    """A fresh MLflow store for one test (a copy of the template)."""
    import shutil

    path = tmp_path / "runs.db"
    shutil.copy(_mlflow_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks run fastest on one thread (and far faster on a loaded 2-core box)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
