"""The tracking store's plumbing: MLflow clients that survive concurrency and faults.

- A fresh embedded SQLite store is created (MLflow's migrations) under an exclusive
  ``fcntl.flock`` on ``<store>.db.lock`` beside it, so several processes may open one new
  store at once; it then runs in WAL mode with a busy timeout, and writes that still meet
  "database is locked" are retried with bounded backoff (`retry_locked`).
- An HTTP tracking server is asked for ``/health`` with a short timeout before anything
  runs (`check_tracking_uri`); MLflow's own HTTP retries are bounded to seconds, and
  `is_unreachable` tells a dead server from a request the server refused.
- MLflow's stdout chatter ("View run ... at") goes to stderr (`quiet`).

Every MLflow call of bench runs under the one process-wide lock `IO_LOCK`, so a sink's
background flusher never interleaves with another call (nor with `quiet`'s redirection).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from bench.api import ConfigError

__all__ = ["IO_LOCK", "quiet", "make_client", "store_lock", "sqlite_path", "retry_locked",
           "is_locked", "is_unreachable", "is_http", "check_tracking_uri", "HTTP_ENV"]

log = logging.getLogger(__name__)
T = TypeVar("T")
IO_LOCK = threading.RLock()
BUSY_TIMEOUT_MS = 10_000  # SQLite waits this long for a lock inside one statement
LOCK_RETRY_SECONDS = 120.0  # then bench retries the call with backoff for at most this long
# MLflow's defaults retry a dead server for ~250 s (7 retries, backoff 2, timeout 120 s)
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Anything MLflow (or alembic's migrations) prints goes to stderr, not stdout."""
    with IO_LOCK, contextlib.redirect_stdout(sys.stderr):
        yield


def is_http(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on ``<store>.lock`` for a SQLite URI (no-op for other stores)."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tune_sqlite(engine) -> None:
    """WAL journal (readers never block the writer) and a busy timeout on every
    connection of ``engine``; called once per engine, under `store_lock`."""
    from sqlalchemy import event

    if getattr(engine, "_bench_tuned", False):
        return

    @event.listens_for(engine, "connect")
    def _busy(dbapi_conn, _record) -> None:
        dbapi_conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    engine.dispose()  # pooled connections predate the listener
    with engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA journal_mode=WAL").scalar()
    if str(mode).lower() != "wal":
        log.info("SQLite store kept journal mode %s", mode)
    engine._bench_tuned = True


def make_client(uri: str):
    """An `MlflowClient` for ``uri``; a new SQLite store is created (migrated) under
    `store_lock`, so concurrent first uses are safe."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if is_http(uri):
        for k, v in HTTP_ENV.items():
            os.environ.setdefault(k, v)
    with quiet(), store_lock(uri):
        from mlflow.tracking import MlflowClient

        for name in ("alembic", "mlflow"):  # after the import, which sets mlflow's level
            logging.getLogger(name).setLevel(logging.WARNING)
        client = MlflowClient(tracking_uri=uri)
        if sqlite_path(uri) is not None:
            engine = getattr(client._tracking_client.store, "engine", None)
            if engine is not None:
                _tune_sqlite(engine)
    return client


def is_locked(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" (or "busy"), however wrapped."""
    seen = 0
    while exc is not None and seen < 10:
        text = str(exc).lower()
        if "database is locked" in text or "database is busy" in text:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the tracking server did not answer (refused, timed out, reset,
    5xx after MLflow's retries), not that it refused the request."""
    text = str(exc)
    if type(exc).__name__ in ("ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout"):
        return True
    return text.startswith("API request to") and ("failed with exception" in text
                                                   or "failed with timeout" in text)


def retry_locked(fn: Callable[[], T], budget_s: float = LOCK_RETRY_SECONDS) -> T:
    """``fn()``, retried with jittered exponential backoff (0.05 s doubling to 2 s) while it
    fails with "database is locked", for at most ``budget_s`` seconds."""
    deadline, delay = time.monotonic() + budget_s, 0.05
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_locked(exc) or time.monotonic() + delay > deadline:
                raise
            log.debug("tracking store locked; retrying in %.2f s", delay)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(2 * delay, 2.0)


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (a few seconds at most) when an HTTP tracking server does not answer.

    Asks ``<uri>/health``: MLflow answers 200 (401/403 behind an authenticating proxy also
    count as reachable). Other stores are not checked here (a SQLite file is created on
    first use).

    Raises:
        ConfigError: the server refused the connection, timed out, or answered anything else
            (5xx, or 404 from something that is not an MLflow server).
    """
    if not is_http(uri):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) only
            status = resp.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(f"tracking server {uri} is unreachable ({reason}); start it, or "
                          "pass another --tracking-uri") from None
    if status not in (200, 401, 403):
        raise ConfigError(f"tracking server {uri} is not a healthy MLflow server (GET /health "
                          f"answered {status})")
