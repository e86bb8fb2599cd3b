"""Reading an MLflow store back: `load_records` (an experiment as `bench.api.RunRecord`s)
and `find_checkpoint` (a run's checkpoint as a local file). Every read is retried while a
SQLite store is locked by concurrent writers."""

from __future__ import annotations

import ast
import functools
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from bench.api import ConfigError, DataError, RunRecord
from bench.record.store import make_client, quiet, retry_locked

__all__ = ["load_records", "find_checkpoint", "MlflowSource", "artifact_repository",
           "DEFAULT_EXPERIMENT", "CHECKPOINT", "ARTIFACT_TAG"]

DEFAULT_EXPERIMENT = "bench"
CHECKPOINT = "checkpoint.pt"
#: a run's own artifact location when it differs from its experiment's (a run recorded with
#: another --results-dir than the experiment's first: see `bench.record.mlflow_sink`)
ARTIFACT_TAG = "bench.artifact_uri"


def artifact_repository(uri: str):
    """MLflow's artifact repository at ``uri`` (a run's artifact folder)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(uri)


def _artifact_root(run) -> str:
    """Where a run's artifacts are: its ``bench.artifact_uri`` tag, else its artifact URI."""
    return run.data.tags.get(ARTIFACT_TAG) or run.info.artifact_uri


def _value(text: str) -> Any:
    """A recorded parameter back to a Python value where it reads as one ("0.005" -> 0.005,
    "(8, 8)" -> (8, 8), "None" -> None); other text stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _artifacts(client, run, path: str | None = None) -> dict[str, str]:
    """Artifact path -> URI of every file a run kept (under its own location when tagged)."""
    root = _artifact_root(run)
    if ARTIFACT_TAG in run.data.tags:
        listed = artifact_repository(root).list_artifacts(path)
    else:
        listed = client.list_artifacts(run.info.run_id, path)
    out: dict[str, str] = {}
    for f in listed:
        if f.is_dir:
            out.update(_artifacts(client, run, f.path))
        else:
            out[f.path] = f"{root.rstrip('/')}/{f.path}"
    return out


def load_records(uri: str, experiment: str = DEFAULT_EXPERIMENT,
                 history: tuple[str, ...] | None = ()) -> list[RunRecord]:
    """Every run of an experiment as a `RunRecord`, oldest first.

    ``metrics`` holds each metric's latest value (for a final metric, its value), params
    are read back as Python values where they parse as literals, tags exclude MLflow's own
    (``mlflow.*``), ``artifacts`` maps each artifact path to its URI.

    Args:
        history: metrics whose per-step series to read into ``record.history`` (one query
            per run and metric: ask only for what you use); None: every metric's.
    """
    client = make_client(uri)
    with quiet():
        exp = retry_locked(lambda: client.get_experiment_by_name(experiment))
        if exp is None:
            return []
        runs, token = [], None
        while True:
            page = retry_locked(functools.partial(
                client.search_runs, [exp.experiment_id], max_results=1000,
                order_by=["attributes.start_time ASC"], page_token=token))
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
                artifacts=retry_locked(functools.partial(_artifacts, client, run)))
            for key in data.metrics if history is None else history:
                if key in data.metrics:
                    series = retry_locked(lambda: client.get_metric_history(info.run_id, key))  # noqa: B023
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

    client = make_client(uri)
    with quiet():
        try:
            run = retry_locked(lambda: client.get_run(run_id))
        except MlflowException:
            raise ConfigError(f"no run {run_id!r} in the tracking store {uri}") from None
        root = _artifact_root(run)
        parsed = urlparse(root)
        if parsed.scheme in ("", "file"):
            local = Path(unquote(parsed.path)) / CHECKPOINT
            if local.is_file():
                return local
        try:
            dst = tempfile.mkdtemp(prefix="bench-ckpt-")
            if ARTIFACT_TAG in run.data.tags:
                return Path(artifact_repository(root).download_artifacts(CHECKPOINT, dst))
            return Path(client.download_artifacts(run_id, CHECKPOINT, dst))
        except (MlflowException, OSError):
            raise DataError(f"run {run_id} ({run.info.run_name}, {run.info.status}) has no "
                            f"{CHECKPOINT} artifact") from None


class MlflowSource:
    """An MLflow tracking store read back (`bench.api.records.Source`): `load_records` and
    `find_checkpoint` over one URI."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def records(self, experiment: str = DEFAULT_EXPERIMENT,
                history: tuple[str, ...] | None = ()) -> list[RunRecord]:
        return load_records(self.uri, experiment, history=history)

    def checkpoint(self, run_id: str) -> Path:
        return find_checkpoint(self.uri, run_id)
