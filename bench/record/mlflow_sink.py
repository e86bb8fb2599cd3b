"""MLflow tracking: the only module of bench that imports mlflow.

Default store: a SQLite file ``results/mlflow.db`` (no server); any tracking URI works
(``--tracking-uri`` or ``MLFLOW_TRACKING_URI``), e.g. a team's ``mlflow server``.
`MlflowSink` writes one run (the `bench.api.Sink` protocol); `load_records` reads an
experiment back as `bench.api.RunRecord`s, and `find_checkpoint` gives a run's checkpoint as
a local file. MLflow's own output goes to the log (stderr), never to stdout.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from bench.api import ConfigError, DataError, RunRecord

__all__ = ["MlflowSink", "default_tracking_uri", "load_records", "find_checkpoint",
           "DEFAULT_EXPERIMENT"]

log = logging.getLogger(__name__)
DEFAULT_EXPERIMENT = "bench"
CHECKPOINT = "checkpoint.pt"


def default_tracking_uri(results_dir: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite file ``results_dir/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    results_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Anything MLflow (or alembic's migrations) prints goes to stderr, not stdout."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _client(uri: str):
    """An `MlflowClient` for ``uri`` (creating a new SQLite store runs its migrations)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with _quiet():
        from mlflow.tracking import MlflowClient

        for name in ("alembic", "mlflow"):  # after the import, which sets mlflow's level
            logging.getLogger(name).setLevel(logging.WARNING)
        return MlflowClient(tracking_uri=uri)


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _experiment_id(client, uri: str, name: str, artifact_root: Path | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if artifact_root is None and _sqlite_path(uri) is not None:
        artifact_root = _sqlite_path(uri).parent / "artifacts"  # beside the store, not ./mlruns
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    return client.create_experiment(name, artifact_location=location)


class MlflowSink:
    """One MLflow run (`bench.api.Sink`): params, tags, buffered metrics, artifacts, status.

    Step metrics are buffered and written in batches when ``flush_every`` are waiting or
    ``flush_seconds`` have passed since the last write, and always by ``end``. A final
    metric (``step=None``) is written at the largest step logged so far, so that MLflow's
    "latest value" of a metric is its final value.

    Args:
        uri: tracking URI (see `default_tracking_uri`).
        experiment: experiment name (created if missing).
        artifact_root: where a new experiment keeps artifacts (default: ``artifacts/``
            beside a SQLite store, else the server's default).
    """

    def __init__(self, uri: str, experiment: str = DEFAULT_EXPERIMENT,
                 artifact_root: Path | None = None, flush_every: int = 500,
                 flush_seconds: float = 5.0) -> None:
        self.uri = uri
        self._client = _client(uri)
        with _quiet():
            self._experiment_id = _experiment_id(self._client, uri, experiment, artifact_root)
        self.run_id: str | None = None
        self._buffer: list[Any] = []
        self._flush_every, self._flush_seconds = flush_every, flush_seconds
        self._last_flush = time.monotonic()
        self._max_step, self._last_ts = 0, 0

    def start(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        from mlflow.entities import Param

        with _quiet():
            run = self._client.create_run(self._experiment_id, run_name=name,
                                          tags={k: str(v)[:5000] for k, v in tags.items()})
            self.run_id = run.info.run_id
            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                self._client.log_batch(self.run_id, params=items[i:i + 100])
        self._last_flush = time.monotonic()
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        # strictly increasing timestamps: a final value logged at the last step wins
        ts = self._last_ts = max(int(time.time() * 1000), self._last_ts + 1)
        if step is not None:
            self._max_step = max(self._max_step, int(step))
        at = self._max_step if step is None else int(step)
        self._buffer.extend(Metric(k, float(v), ts, at) for k, v in metrics.items())
        if (len(self._buffer) >= self._flush_every
                or time.monotonic() - self._last_flush >= self._flush_seconds):
            self.flush()

    def flush(self) -> None:
        """Write the buffered metrics now."""
        with _quiet():
            while self._buffer:
                chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]
                self._client.log_batch(self.run_id, metrics=chunk)
        self._last_flush = time.monotonic()

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        with _quiet():
            for i in range(0, len(items), 100):
                self._client.log_batch(self.run_id, tags=items[i:i + 100])

    def log_artifact(self, path: Path) -> str:
        path = Path(path)
        with _quiet():
            self._client.log_artifact(self.run_id, str(path))
            root = self._client.get_run(self.run_id).info.artifact_uri
        return f"{root.rstrip('/')}/{path.name}"

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is None:
            return
        try:
            self.flush()
        finally:
            with _quiet():
                self._client.set_terminated(self.run_id, status=status)


def _value(text: str) -> Any:
    """A recorded parameter back to a Python value where it reads as one ("0.005" -> 0.005,
    "(8, 8)" -> (8, 8), "None" -> None); other text stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _artifacts(client, run_id: str, root: str, path: str | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in client.list_artifacts(run_id, path):
        if f.is_dir:
            out.update(_artifacts(client, run_id, root, f.path))
        else:
            out[f.path] = f"{root.rstrip('/')}/{f.path}"
    return out


def load_records(uri: str, experiment: str = DEFAULT_EXPERIMENT,
                 history: tuple[str, ...] = ()) -> list[RunRecord]:
    """Every run of an experiment as a `RunRecord`, oldest first.

    ``metrics`` holds each metric's latest value (for a final metric, its value), params
    are read back as Python values where they parse as literals, tags exclude MLflow's own
    (``mlflow.*``), ``artifacts`` maps each artifact path to its URI.

    Args:
        history: metrics whose per-step series to read into ``record.history`` (one query
            per run and metric: ask only for what you use).
    """
    client = _client(uri)
    with _quiet():
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        runs, token = [], None
        while True:
            page = client.search_runs([exp.experiment_id], max_results=1000,
                                      order_by=["attributes.start_time ASC"], page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
        records = []
        for run in runs:
            info, data = run.info, run.data
            rec = RunRecord(
                run_id=info.run_id, name=info.run_name or "",
                params={k: _value(v) for k, v in data.params.items()},
                tags={k: v for k, v in data.tags.items() if not k.startswith("mlflow.")},
                metrics=dict(data.metrics), status=info.status,
                artifacts=_artifacts(client, info.run_id, info.artifact_uri))
            for key in history:
                if key in data.metrics:
                    series = client.get_metric_history(info.run_id, key)
                    series = sorted(series, key=lambda m: (m.step, m.timestamp))
                    rec.history[key] = [(int(m.step), float(m.value)) for m in series]
            records.append(rec)
    return records


def find_checkpoint(uri: str, run_id: str) -> Path:
    """The run's ``checkpoint.pt`` artifact as a local file (the stored file itself for a
    local artifact store, else a downloaded copy in a temporary folder).

    Raises:
        ConfigError: no run ``run_id`` in the store.
        DataError: the run has no checkpoint (e.g. it failed before writing one).
    """
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    with _quiet():
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise ConfigError(f"no run {run_id!r} in the tracking store {uri}") from None
        root = run.info.artifact_uri
        parsed = urlparse(root)
        if parsed.scheme in ("", "file"):
            local = Path(unquote(parsed.path)) / CHECKPOINT
            if local.is_file():
                return local
        try:
            dst = tempfile.mkdtemp(prefix="bench-ckpt-")
            return Path(client.download_artifacts(run_id, CHECKPOINT, dst))
        except (MlflowException, OSError):
            raise DataError(f"run {run_id} ({run.info.run_name}, {run.info.status}) has no "
                            f"{CHECKPOINT} artifact") from None
