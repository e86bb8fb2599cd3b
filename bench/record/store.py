"""The tracking store's plumbing: MLflow clients that survive concurrency and faults.

- A fresh embedded SQLite store is created atomically: MLflow's migrations run in a
  temporary file beside it, under an exclusive ``fcntl.flock`` on ``<store>.db.lock``, which
  is then renamed into place (a kill at any moment leaves no store or a complete one, and
  several processes may open one new store at once). A store left half-built by an older
  version is rebuilt when it holds no run, else refused in one line; a file that is not a
  SQLite database, or an unknown URI scheme, is refused in one line (`ConfigError`).
- An existing store is read without the lock (a read-only store can be read); it runs in
  WAL mode with a busy timeout, and writes that still meet "database is locked" are retried
  with bounded backoff (`retry_locked`).
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
from typing import TypeVar
from urllib.parse import urlparse

from bench.api import ConfigError
from bench.record.sqlite_store import sqlite_path, store_lock

__all__ = ["IO_LOCK", "quiet", "make_client", "store_lock", "sqlite_path", "retry_locked",
           "is_locked", "is_unreachable", "is_http", "check_tracking_uri", "HTTP_ENV",
           "check_writable"]

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


def check_writable(uri: str) -> None:
    """ConfigError (one line) unless a SQLite store's folder can take its lock (what every
    write needs); other stores are not checked."""
    with store_lock(uri):
        pass


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
    try:
        with engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode=WAL").scalar()
    except Exception as e:  # noqa: BLE001 - e.g. a read-only store: read it as it is
        mode = f"unchanged ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if str(mode).lower() != "wal":
        log.info("SQLite store kept journal mode %s", mode)
    engine._bench_tuned = True


def make_client(uri: str):
    """An `MlflowClient` for ``uri``. A new SQLite store is created atomically under
    `store_lock` (see the module docstring); an existing one is opened without the lock.

    Raises:
        ConfigError: an unknown URI scheme, a file that is not a SQLite database, a store
            whose schema is incomplete and holds runs, or a store MLflow cannot open.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if is_http(uri):
        for k, v in HTTP_ENV.items():
            os.environ.setdefault(k, v)
    path = sqlite_path(uri)
    with quiet():
        from mlflow.tracking import MlflowClient

        for name in ("alembic", "mlflow"):  # after the import, which sets mlflow's level
            logging.getLogger(name).setLevel(logging.WARNING)
        if path is None:
            try:
                return MlflowClient(tracking_uri=uri)
            except Exception as e:  # noqa: BLE001 - e.g. an unknown scheme
                raise ConfigError(f"tracking URI {uri!r} cannot be used: {_first(e)}") from None
        from bench.record.sqlite_store import create_if_missing, open_store  # mlflow: lazily

        create_if_missing(uri, path)
        client = open_store(uri, path)
        engine = getattr(client._tracking_client.store, "engine", None)
        if engine is not None:
            _tune_sqlite(engine)
    return client


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


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
    count as reachable). Other stores are only checked for a scheme MLflow knows (a SQLite
    file is created on first use).

    Raises:
        ConfigError: an unknown scheme; the server refused the connection, timed out, or
            answered anything else (5xx, or 404 from something that is not an MLflow server).
    """
    if not is_http(uri):
        _check_scheme(uri)
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


#: the tracking store schemes MLflow itself serves (a dialect may add "+driver")
KNOWN_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https",
                 "databricks", "databricks-uc", "uc")


def _check_scheme(uri: str) -> None:
    """ConfigError unless ``uri``'s scheme is MLflow's or a tracking-store plug-in's."""
    scheme = urlparse(uri).scheme.split("+", 1)[0]
    if scheme in KNOWN_SCHEMES or uri in KNOWN_SCHEMES or len(scheme) == 1:  # C:\ paths
        return
    from importlib.metadata import entry_points

    plugins = {e.name for e in entry_points(group="mlflow.tracking_store")}
    if scheme not in plugins:
        known = ", ".join(f"{s}://" for s in (*KNOWN_SCHEMES[1:], *sorted(plugins)))
        raise ConfigError(f"tracking URI {uri!r}: unknown scheme {scheme + '://'!r}; use a "
                          f"path, {known}, or jsonl://FOLDER (JSON-lines files)")
