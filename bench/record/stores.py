"""The tracking store chosen by its URI, for writing (`sink_factory`) and reading
(`open_source`): ``jsonl://FOLDER`` is a folder of JSON-lines files (`bench.record.jsonl`),
anything else an MLflow store (a SQLite file, a server: `bench.record.mlflow_sink`). The
one place the commands and `bench.lab` turn a ``--tracking-uri`` into a sink or a source;
it imports mlflow only through the MLflow modules, and only for an MLflow URI.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.api import ConfigError
from bench.api.records import Sink, Source
from bench.record.jsonl import JsonlSink, JsonlSource, is_jsonl, jsonl_root

__all__ = ["store_uri", "open_source", "sink_factory", "is_jsonl"]


def store_uri(tracking_uri: str | None, results_dir: Path) -> str:
    """``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``results_dir/mlflow.db``."""
    if tracking_uri:
        return tracking_uri
    from bench.record.mlflow_sink import default_tracking_uri

    return default_tracking_uri(results_dir)


def open_source(uri: str) -> Source:
    """The records of the store at ``uri``.

    Raises:
        ConfigError: no JSON-lines folder there; an MLflow server that does not answer
            (within seconds); an unknown scheme.
    """
    if is_jsonl(uri):
        root = jsonl_root(uri)
        if not root.is_dir():
            raise ConfigError(f"no JSON-lines store at {root} (tracking URI {uri}): run "
                              "`bench run --tracking-uri ...` first")
        return JsonlSource(root)
    from bench.record.mlflow_read import MlflowSource
    from bench.record.store import check_tracking_uri

    check_tracking_uri(uri)
    return MlflowSource(uri)


def _writable_folder(root: Path, experiment: str) -> None:
    """ConfigError (one line) unless the experiment's folder of ``root`` can be written."""
    folder = JsonlSink(root, experiment).folder  # created, or ConfigError
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as e:
        raise ConfigError(f"JSON-lines store {root}: cannot write in {folder} "
                          f"({e.strerror or e})") from None


def sink_factory(uri: str, experiment: str, results: Path) -> Callable[[], Sink]:
    """A function returning a fresh sink per run into the store at ``uri``, after checking
    the store can be written (call it before reading any data: an unusable store stops the
    command at once, `ConfigError`).

    MLflow: an HTTP server within seconds, a SQLite store opened (created if new) and its
    folder writable; runs on a server fall back to ``results/fallback/mlflow.db`` when it
    dies mid-run, runs on a local store keep their artifacts in ``results/artifacts``.
    """
    if is_jsonl(uri):
        root = jsonl_root(uri)
        _writable_folder(root, experiment)
        return lambda: JsonlSink(root, experiment)
    from bench.record.store import check_tracking_uri, check_writable, is_http, make_client

    check_tracking_uri(uri)
    make_client(uri)  # a store that cannot be opened or written: one line, exit 2, now
    check_writable(uri)
    fallback = results / "fallback" if is_http(uri) else None

    def new_sink() -> Sink:
        from bench.record.mlflow_sink import MlflowSink

        # a server's experiment keeps its artifacts where the server says (shared)
        return MlflowSink(uri, experiment, fallback_dir=fallback,
                          artifact_root=None if fallback else results / "artifacts")

    return new_sink
