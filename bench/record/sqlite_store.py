"""The embedded SQLite store's life cycle: atomic creation, and a store MLflow cannot open
told apart (not a database, a half-built schema) in one line.

MLflow creates a new SQLite store by running its ~60 alembic migrations in place, for
seconds; a process killed meanwhile left a half-built schema that every later command met as
a 130-line traceback. Here a new store is built in a temporary file beside it,
``.<name>.new-<pid>``, under `store_lock`, and renamed into place once
complete: a store file that exists is complete. Leftovers of an interrupted creation are
removed under the lock by the next creator. A store half-built by an earlier version is
moved aside (``<name>.incomplete-<time>``, nothing deleted) and created anew when it holds no
run; with runs it is refused (`ConfigError`), naming ``mlflow db upgrade``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from bench.api import ConfigError

__all__ = ["create_if_missing", "open_store", "schema_state", "read_only_uri", "sqlite_path",
           "store_lock"]

log = logging.getLogger(__name__)
_SIDE = ("-journal", "-wal", "-shm")



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

    lock = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock, "a")  # noqa: SIM115 - closed below
    except OSError as e:
        raise ConfigError(f"cannot write beside the tracking store {path} ({lock}: "
                          f"{e.strerror or e}); pass a writable --results-dir or "
                          "--tracking-uri") from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _exists(path: Path) -> bool:
    """A store file with content (SQLite takes a 0-byte file for an empty database)."""
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def create_if_missing(uri: str, path: Path) -> None:
    """Create the store ``path`` (``uri``) atomically if it does not exist yet."""
    if _exists(path):
        return
    with store_lock(uri):
        for old in path.parent.glob(f".{path.name}.new-*"):  # an interrupted creation's
            old.unlink(missing_ok=True)
        if not _exists(path):
            _build(path)


def _build(path: Path) -> None:
    """MLflow's tables at the head revision and its default experiment, in a temporary file
    renamed to ``path`` when complete. Call under the store's lock."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.utils import _get_sqlalchemy_store

    tmp = path.with_name(f".{path.name}.new-{os.getpid()}")
    tmp_uri = f"sqlite:///{tmp}"
    t0 = time.monotonic()
    try:
        store = _get_sqlalchemy_store(tmp_uri, None)
        store.engine.dispose()
        SqlAlchemyStore._engine_map.pop(tmp_uri, None)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        for side in _SIDE:  # a stale journal of an older file of that name
            path.with_name(path.name + side).unlink(missing_ok=True)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, *(tmp.with_name(tmp.name + s) for s in _SIDE)):
            leftover.unlink(missing_ok=True)
    log.info("created the tracking store %s in %.1f s", path, time.monotonic() - t0)


def schema_state(path: Path) -> tuple[str | None, int]:
    """(alembic revision or None, number of runs) of a store, read with sqlite3 only.

    Raises:
        ConfigError: the file is not a SQLite database (or cannot be read).
    """
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            tables = {r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            rev = (con.execute("SELECT version_num FROM alembic_version").fetchone()
                   if "alembic_version" in tables else None)
            runs = (con.execute("SELECT count(*) FROM runs").fetchone()[0]
                    if "runs" in tables else 0)
        finally:
            con.close()
    except sqlite3.Error as e:
        raise ConfigError(f"the tracking store {path} is not a usable SQLite database ({e}); "
                          "pass another --tracking-uri or --results-dir") from None
    return (rev[0] if rev else None), int(runs)


def open_store(uri: str, path: Path):
    """An `MlflowClient` of the store; a store MLflow cannot open is diagnosed
    (`schema_state`) and, when half-built without runs, moved aside and created anew (said
    on the log).

    Raises:
        ConfigError: not a database; an incomplete or out-of-date schema holding runs; any
            other failure to open it (one line).
    """
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(tracking_uri=uri if _writable(path) else read_only_uri(path))
    except Exception as exc:  # noqa: BLE001 - diagnosed below
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    from mlflow.store.db.utils import _get_latest_schema_revision

    head = _get_latest_schema_revision()
    rev, runs = schema_state(path)
    if rev == head:
        raise ConfigError(f"the tracking store {path} cannot be opened: {first}")
    if runs:
        raise ConfigError(f"the tracking store {path} has an incomplete or out-of-date schema "
                          f"(revision {rev}, this MLflow expects {head}) and holds {runs} "
                          f"run(s): back it up, then run `mlflow db upgrade {uri}`")
    with store_lock(uri):
        if schema_state(path)[0] != head:  # not already rebuilt by another process
            _forget_engine(uri)
            aside = path.with_name(f"{path.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            log.warning("the tracking store %s was half-built (schema revision %s, no run): "
                        "moved aside to %s and created anew", path, rev, aside.name)
            _build(path)
    _forget_engine(uri)
    return MlflowClient(tracking_uri=uri)


def _writable(path: Path) -> bool:
    return os.access(path.parent, os.W_OK) and os.access(path, os.W_OK)


def read_only_uri(path: Path) -> str:
    """A URI that reads ``path`` without writing anything beside it (a read-only store):
    ``mode=ro``, and ``immutable=1`` when no write-ahead log holds uncheckpointed pages
    (SQLite cannot otherwise open a WAL database whose folder takes no ``-shm`` file)."""
    wal = path.with_name(path.name + "-wal")
    still = not wal.exists() or wal.stat().st_size == 0
    return f"sqlite:///file:{path}?mode=ro{'&immutable=1' if still else ''}&uri=true"


def _forget_engine(uri: str) -> None:
    """Drop MLflow's cached engine of ``uri`` (its pool holds the replaced file open)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = SqlAlchemyStore._engine_map.pop(uri, None)
    if engine is not None:
        engine.dispose()
