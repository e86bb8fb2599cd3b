"""MLflow tracking: the only module that imports mlflow.

Default store: a SQLite file ``results/mlflow.db`` (no server); any tracking URI works
(``--tracking-uri`` or ``MLFLOW_TRACKING_URI``), e.g. a team's ``mlflow server``.
Step metrics are buffered and written in batches so logging does not slow training.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["Tracker", "default_tracking_uri", "search_runs", "DEFAULT_EXPERIMENT"]

log = logging.getLogger(__name__)
DEFAULT_EXPERIMENT = "bench"


def default_tracking_uri(results_dir: Path) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    results_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"


def _client(uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, name: str, artifact_root: Path | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    return client.create_experiment(name, artifact_location=location)


class Tracker:
    """One MLflow run: params, tags, buffered metrics, artifacts, final status."""

    def __init__(self, uri: str, experiment: str = DEFAULT_EXPERIMENT,
                 artifact_root: Path | None = None, flush_every: int = 500) -> None:
        self.uri = uri
        self.client = _client(uri)
        self.experiment_id = _experiment_id(self.client, experiment, artifact_root)
        self.run_id: str | None = None
        self._buffer: list[Any] = []
        self.flush_every = flush_every
        self.history: dict[str, list[tuple[int, float]]] = {}

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={k: str(v)[:5000] for k, v in tags.items()})
        self.run_id = run.info.run_id
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            v = float(v)
            self._buffer.append(Metric(k, v, ts, step or 0))
            self.history.setdefault(k, []).append((step or 0, v))
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v)[:5000])

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is None:
            return
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, status=status)


def search_runs(uri: str, experiment: str = DEFAULT_EXPERIMENT):
    """All runs of an experiment as a pandas DataFrame (params.*, metrics.*, tags.*)."""
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    client = _client(uri)
    if client.get_experiment_by_name(experiment) is None:
        import pandas as pd

        return pd.DataFrame()
    return mlflow.search_runs(experiment_names=[experiment], max_results=100000)
