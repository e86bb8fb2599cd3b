"""MLflow tracking (with `bench.record.store` and `bench.record.mlflow_read`, the only
modules of bench that import mlflow).

Default store: a SQLite file ``results/mlflow.db`` (no server); any tracking URI works
(``--tracking-uri`` or ``MLFLOW_TRACKING_URI``), e.g. a team's ``mlflow server``.
`MlflowSink` writes one run (the `bench.api.Sink` protocol); `load_records` reads an
experiment back as `bench.api.RunRecord`s, and `find_checkpoint` gives a run's checkpoint as
a local file. MLflow's own output goes to the log (stderr), never to stdout.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bench.api import ConfigError, DataError
from bench.record.mlflow_read import (
    ARTIFACT_TAG,
    CHECKPOINT,
    DEFAULT_EXPERIMENT,
    artifact_repository,
    find_checkpoint,
    load_records,
)
from bench.record.store import (
    IO_LOCK,
    check_tracking_uri,
    is_http,
    is_unreachable,
    make_client,
    quiet,
    retry_locked,
    sqlite_path,
    store_lock,
)

__all__ = ["MlflowSink", "default_tracking_uri", "load_records", "find_checkpoint",
           "check_tracking_uri", "DEFAULT_EXPERIMENT", "CHECKPOINT", "usable_dir"]

log = logging.getLogger(__name__)
T = TypeVar("T")
FALLBACK_TAG = "bench.fallback_from"
_LIVE: weakref.WeakSet = weakref.WeakSet()  # open sinks, flushed at interpreter exit


def default_tracking_uri(results_dir: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite file ``results_dir/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    usable_dir(results_dir)
    return f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"


def usable_dir(path: Path, option: str = "--results-dir") -> Path:
    """``path`` as a folder (created if missing); ConfigError (one line) when it cannot be
    one (a file, /dev/null, no permission to create it)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{option} {path}: cannot be used as a folder "
                          f"({e.strerror or e})") from None
    return path


_quiet = quiet
_client = make_client


def _experiment_id(client, uri: str, name: str, artifact_root: Path | None) -> str:
    """The experiment's id, created if missing (under the store's lock for SQLite; a
    concurrent creation on a server is read back)."""
    with store_lock(uri):
        exp = retry_locked(lambda: client.get_experiment_by_name(name))
        if exp is not None:
            return exp.experiment_id
        if artifact_root is None and sqlite_path(uri) is not None:
            artifact_root = sqlite_path(uri).parent / "artifacts"  # beside the store
        location = artifact_root.resolve().as_uri() if artifact_root is not None else None
        try:
            return retry_locked(lambda: client.create_experiment(name,
                                                                 artifact_location=location))
        except Exception:
            exp = client.get_experiment_by_name(name)  # another process created it meanwhile
            if exp is None:
                raise
            return exp.experiment_id


def _log_batches(client, run_id: str, **items: list) -> None:
    """``client.log_batch`` in MLflow's batch limits (100 params or tags, 1000 metrics),
    each batch retried while SQLite is locked."""
    for kind, values in items.items():
        size = 1000 if kind == "metrics" else 100
        for i in range(0, len(values), size):
            part = {kind: values[i:i + size]}
            retry_locked(functools.partial(client.log_batch, run_id, **part))


@atexit.register
def _flush_live() -> None:
    for sink in list(_LIVE):
        try:
            sink.flush()
        except Exception as e:  # noqa: BLE001 - best effort at exit
            log.warning("could not flush metrics of run %s at exit: %s", sink.run_id, e)


class MlflowSink:
    """One MLflow run (`bench.api.Sink`): params, tags, buffered metrics, artifacts, status.

    Step metrics are buffered and written in batches when ``flush_every`` are waiting, by a
    background thread every ``flush_seconds``, at interpreter exit and by ``end`` (so a
    SIGKILL loses at most ``flush_seconds`` of metrics). A final metric (``step=None``) is
    written at the largest step logged so far, so that MLflow's "latest value" of a metric
    is its final value.

    When an HTTP tracking server stops answering (MLflow's bounded retries, seconds), the
    run continues in a local SQLite store ``fallback_dir/mlflow.db``: a new run there gets
    the params, tags, every metric and artifact logged so far, the tags
    ``bench.fallback_from`` (the server's URI), ``bench.fallback_run_id`` and
    ``bench.fallback_reason``, a warning goes to stderr, and ``run_id``/``uri`` change to
    the new run's.

    Args:
        uri: tracking URI (see `default_tracking_uri`).
        experiment: experiment name (created if missing).
        artifact_root: where this run keeps its artifacts, ``<artifact_root>/<run id>/
            artifacts/`` (the run's ``--results-dir``), and where a new experiment keeps
            them (default: ``artifacts/`` beside a SQLite store, else the server's
            default). An experiment's location is fixed when it is created, so a run whose
            root differs from it is tagged ``bench.artifact_uri`` (read by
            `load_records` and `find_checkpoint`). Ignored for artifacts on an HTTP
            tracking server, which serves its own artifact store.
        fallback_dir: the local store for a server that dies (None: no fallback, the
            failure propagates).
    """

    def __init__(self, uri: str, experiment: str = DEFAULT_EXPERIMENT,
                 artifact_root: Path | None = None, flush_every: int = 500,
                 flush_seconds: float = 2.0, fallback_dir: Path | None = None) -> None:
        self.uri = self.primary_uri = uri
        self.experiment, self._artifact_root = experiment, artifact_root
        self._fallback_dir = Path(fallback_dir) if fallback_dir is not None else None
        self.fallback_uri: str | None = None
        self.run_id: str | None = None
        self._name, self._params, self._tags = "", {}, {}
        self._buffer: list[Any] = []
        self._journal: list[Any] = []  # every metric of the run, replayed into a fallback
        self._artifact_paths: list[Path] = []
        self._flush_every, self._flush_seconds = flush_every, flush_seconds
        self._last_flush = time.monotonic()
        self._max_step, self._last_ts = 0, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None
        self._call(lambda: self._connect(uri, artifact_root), replayed=True)

    def _connect(self, uri: str, artifact_root: Path | None) -> None:
        self._client = _client(uri)
        self._experiment_id = _experiment_id(self._client, uri, self.experiment, artifact_root)

    def _call(self, op: Callable[[], T], replayed: bool = False) -> T | None:
        """``op()`` under the IO lock, retried while SQLite is locked; a dead server moves
        the run to the fallback store, then ``op`` runs again there unless ``replayed``
        (what the move replays already covers it)."""
        with IO_LOCK:
            try:
                return retry_locked(op)
            except Exception as exc:
                if (self._fallback_dir is None or self.fallback_uri is not None
                        or not is_unreachable(exc)):
                    raise
                self._fall_back(exc)
                return None if replayed else retry_locked(op)

    def _fall_back(self, exc: BaseException) -> None:
        from mlflow.entities import Param, RunTag

        reason = str(exc).splitlines()[0][:300]
        self._fallback_dir.mkdir(parents=True, exist_ok=True)
        self.fallback_uri = f"sqlite:///{(self._fallback_dir / 'mlflow.db').resolve()}"
        log.warning("tracking server %s is unreachable (%s); run %r continues in the local "
                    "store %s", self.primary_uri, reason, self._name or "-", self.fallback_uri)
        old_id, self.uri = self.run_id, self.fallback_uri
        self._artifact_root = self._fallback_dir / "artifacts"
        self._tags.pop(ARTIFACT_TAG, None)  # the server's location: not the fallback's
        self._connect(self.fallback_uri, self._artifact_root)
        if old_id is None:  # nothing recorded yet: `start` opens the run here
            return
        c = self._client
        tags = {**self._tags, FALLBACK_TAG: self.primary_uri, "bench.fallback_run_id": old_id,
                "bench.fallback_reason": reason}
        self._tags = tags
        self.run_id = retry_locked(lambda: c.create_run(
            self._experiment_id, run_name=self._name, tags=tags)).info.run_id
        _log_batches(c, self.run_id, params=[Param(k, v) for k, v in self._params.items()],
                     metrics=self._journal, tags=[RunTag(k, v) for k, v in tags.items()])
        self._buffer.clear()
        self._pin_artifacts()
        for path in self._artifact_paths:
            if path.exists():
                retry_locked(functools.partial(self._store_artifact, path))

    def _start_flusher(self) -> None:
        self._last_flush = time.monotonic()
        _LIVE.add(self)
        if self._flush_seconds > 0 and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._flush_loop, daemon=True,
                                            name=f"bench-flush-{self.run_id}")
            self._thread.start()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self._flush_seconds):
            try:
                self.flush()
            except Exception as e:  # noqa: BLE001 - the next flush (or `end`) retries
                log.warning("could not flush metrics of run %s: %s", self.run_id, e)

    def start(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        from mlflow.entities import Param

        self._name = name
        self._params = {k: str(v)[:6000] for k, v in params.items()}
        self._tags = {k: str(v)[:5000] for k, v in tags.items()}

        def create() -> None:
            self.run_id = self._client.create_run(self._experiment_id, run_name=name,
                                                  tags=self._tags).info.run_id
            _log_batches(self._client, self.run_id,
                         params=[Param(k, v) for k, v in self._params.items()])

        with _quiet():
            self._call(create)
            self._call(self._pin_artifacts)
        self._start_flusher()
        return self.run_id

    def _pin_artifacts(self) -> None:
        """Give the run its artifact location under this sink's ``artifact_root`` when the
        experiment's own location (fixed at its creation) differs: the tag
        ``bench.artifact_uri``. A run that has the tag keeps it (a resumed run's artifacts
        stay together)."""
        if self._artifact_root is None or is_http(self.uri) or ARTIFACT_TAG in self._tags:
            return
        own = (Path(self._artifact_root).resolve() / self.run_id / "artifacts").as_uri()
        stored = self._client.get_run(self.run_id).info.artifact_uri
        if stored.rstrip("/") != own.rstrip("/"):
            self._tags[ARTIFACT_TAG] = own
            self._client.set_tag(self.run_id, ARTIFACT_TAG, own)

    def _artifact_uri(self) -> str:
        """Where this run's artifacts are: the ``bench.artifact_uri`` tag, else the run's
        own artifact URI."""
        if ARTIFACT_TAG in self._tags:
            return self._tags[ARTIFACT_TAG]
        return self._client.get_run(self.run_id).info.artifact_uri

    def _store_artifact(self, path: Path) -> None:
        if ARTIFACT_TAG in self._tags:
            artifact_repository(self._tags[ARTIFACT_TAG]).log_artifact(str(path))
        else:
            self._client.log_artifact(self.run_id, str(path))

    def reopen(self, run_id: str) -> dict[str, int]:
        """Attach to an existing run (to resume it), mark it RUNNING, and return the highest
        step recorded so far for each metric key.

        Raises:
            ConfigError: no run ``run_id`` in the store.
            DataError: the store does not answer.
        """
        from mlflow.entities import Metric
        from mlflow.exceptions import MlflowException

        c = self._client
        with _quiet():
            try:
                run = retry_locked(lambda: c.get_run(run_id))
                hist = {k: retry_locked(lambda: c.get_metric_history(run_id, k))  # noqa: B023
                        for k in run.data.metrics}
                retry_locked(lambda: c.update_run(run_id, status="RUNNING"))
            except MlflowException as e:
                if is_unreachable(e):
                    raise DataError(f"cannot reopen run {run_id}: tracking server {self.uri} "
                                    "is unreachable") from None
                raise ConfigError(f"no run {run_id!r} in the tracking store {self.uri}") from None
        self.run_id, self._name = run_id, run.info.run_name or ""
        self._params = dict(run.data.params)
        self._tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
        self._journal = [Metric(m.key, m.value, m.timestamp, m.step)
                         for series in hist.values() for m in series]
        steps = {k: max(int(m.step) for m in series) for k, series in hist.items() if series}
        self._max_step = max(steps.values(), default=0)
        self._last_ts = max((m.timestamp for m in self._journal), default=0)
        with _quiet():
            self._call(self._pin_artifacts)
        self._start_flusher()
        return steps

    def close_stale(self, run_id: str, reason: str) -> tuple[str, str]:
        """Mark run ``run_id``, left RUNNING by a process that died, KILLED with ``reason``
        (tags ``failure.reason``, ``failure.type`` = ProcessDied). A run the store already
        ended keeps its status. Returns the run's (status, reason) now.

        Raises:
            MlflowException: no such run, or the store cannot be written.
        """
        from mlflow.entities import RunTag

        c = self._client
        with _quiet():
            run = retry_locked(lambda: c.get_run(run_id))
            if run.info.status != "RUNNING":
                return run.info.status, run.data.tags.get("failure.reason", "")
            tags = [RunTag("failure.reason", reason[:5000]),
                    RunTag("failure.type", "ProcessDied")]
            retry_locked(lambda: c.log_batch(run_id, tags=tags))
            retry_locked(lambda: c.set_terminated(run_id, status="KILLED"))
        return "KILLED", reason

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        with IO_LOCK:
            # strictly increasing timestamps: a final value logged at the last step wins
            ts = self._last_ts = max(int(time.time() * 1000), self._last_ts + 1)
            if step is not None:
                self._max_step = max(self._max_step, int(step))
            at = self._max_step if step is None else int(step)
            new = [Metric(k, float(v), ts, at) for k, v in metrics.items()]
            self._buffer.extend(new)
            self._journal.extend(new)
            due = (len(self._buffer) >= self._flush_every
                   or time.monotonic() - self._last_flush >= self._flush_seconds)
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the buffered metrics now."""
        with IO_LOCK:
            while self._buffer and self.run_id is not None:
                chunk = self._buffer[:1000]
                self._call(lambda: self._client.log_batch(self.run_id, metrics=chunk),  # noqa: B023
                           replayed=True)
                del self._buffer[:len(chunk)]  # a fallback's replay has emptied it already
            self._last_flush = time.monotonic()

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        clean = {k: str(v)[:5000] for k, v in tags.items()}
        self._tags.update(clean)
        items = [RunTag(k, v) for k, v in clean.items()]
        with _quiet():
            self._call(lambda: _log_batches(self._client, self.run_id, tags=items),
                       replayed=True)

    def log_artifact(self, path: Path) -> str:
        path = Path(path)
        self._artifact_paths.append(path)
        with _quiet():
            self._call(lambda: self._store_artifact(path), replayed=True)
            root = self._call(self._artifact_uri)
        return f"{root.rstrip('/')}/{path.name}"

    def end(self, status: str = "FINISHED") -> None:
        """Flush, stop the flusher and mark the run ``status``. Never raises: a store that
        cannot be written is reported on the log (an error), so that ``end`` in a
        ``finally`` never hides the job's own outcome."""
        if self.run_id is None:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
        self._thread = None
        _LIVE.discard(self)
        try:
            self.flush()
        except Exception as e:  # noqa: BLE001
            log.error("run %s: metrics could not be written to %s: %s", self.run_id, self.uri,
                      str(e).splitlines()[0] if str(e) else type(e).__name__)
        try:
            with _quiet():
                self._call(lambda: self._client.set_terminated(self.run_id, status=status))
        except Exception as e:  # noqa: BLE001
            log.error("run %s could not be marked %s in %s: %s", self.run_id, status, self.uri,
                      str(e).splitlines()[0] if str(e) else type(e).__name__)
