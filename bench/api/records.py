"""Records, sinks and sources: what a run leaves. ``run_job(job, sink)`` writes a run through
a `Sink` as it happens; tables, reports and the Python API read `RunRecord`s from a
`Source`. Plain data; nothing here imports the rest of bench.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["RunRecord", "Sink", "Source", "STATUSES"]

STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")


@dataclass
class RunRecord:
    """Everything one run recorded: what the tables, the speed-up study and the Python API
    read (never a tracker's internals).

    Attributes:
        params: flat parameters (``method``, ``dataset``, ``seed``, ``p_method_*``,
            ``p_dataset_*``, ``optim_*``, ``solver_*``, budget).
        tags: labels (provenance, split names, estimator and kind of each likelihood).
        metrics: final values (``test_nll``, ``test_nll_se``, ``train_seconds``, ...).
        history: per-step series, metric -> [(step, value)].
        status: RUNNING, FINISHED, FAILED or KILLED; failure: its one-line reason.
        artifacts: name -> path or URI (``checkpoint.pt``, ``samples.png``, ...).
    """

    run_id: str | None
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    status: str = "RUNNING"
    artifacts: dict[str, str] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.params.get("method", ""))

    @property
    def dataset(self) -> str:
        return str(self.params.get("dataset", ""))

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 0))

    @property
    def failure(self) -> str | None:
        return self.tags.get("failure.reason")


class Sink(Protocol):
    """Where one run's record goes as it happens (MLflow, a JSON-lines folder, memory).

    One sink per run: `bench.harness.running.run.run_job` calls ``start`` (or ``reopen`` to
    continue a killed run), then ``log_metrics``, ``set_tags`` and ``log_artifact`` as the
    run goes, ``flush`` before each resumable checkpoint, and ``end`` in a ``finally``.
    `bench.harness.training.resume.settle_stale` calls ``close_stale`` for a run left
    RUNNING by a process that died. A sink never raises from ``end``.

    """

    @property
    def run_id(self) -> str | None:
        """The open run's id (None before ``start``); a sink that moved the run elsewhere
        mid-run (MLflow's fallback store) names the run there."""

    def start(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> str | None:
        """Open a new run; returns its id."""

    def reopen(self, run_id: str) -> dict[str, int]:
        """Attach to run ``run_id`` again (to resume it) and mark it RUNNING; returns the
        highest step recorded so far for each stepped metric (those steps are not sent again).

        Raises:
            ConfigError: the store holds no run ``run_id``.
        """

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record metric values (at a training step, or final when step is None)."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Record labels."""

    def log_artifact(self, path: Path) -> str:
        """Keep a file with the run; returns where it is kept (a path or URI)."""

    def flush(self) -> None:
        """Write what the sink buffers now (a no-op for a sink that writes at once)."""

    def close_stale(self, run_id: str, reason: str) -> tuple[str, str]:
        """Mark run ``run_id``, left RUNNING by a process that died, KILLED with ``reason``
        (tags ``failure.reason``, ``failure.type`` = ProcessDied); a run the store already
        ended keeps its status. Returns the run's (status, reason) now."""

    def end(self, status: str) -> None:
        """Close the run with its final status (flushes everything; never raises)."""


class Source(Protocol):
    """Where recorded runs are read back from (an MLflow store, a JSON-lines folder): what
    `bench table`, `bench report`, `bench regress` and `bench.lab.load` read.

    Attributes:
        uri: the store's URI, as the user gave it (for messages).
    """

    uri: str

    def records(self, experiment: str = "bench",
                history: tuple[str, ...] | None = ()) -> list[RunRecord]:
        """Every run of ``experiment`` as a `RunRecord`, oldest first ([] for an unknown
        experiment). ``metrics`` holds each metric's latest value (a final metric: its
        value; a stepped one: its last), ``status`` is RUNNING for a run still going or
        whose process died unnoticed, ``history`` holds the per-step series of the metrics
        named in ``history`` (None: every metric)."""

    def checkpoint(self, run_id: str) -> Path:
        """Run ``run_id``'s ``checkpoint.pt`` as a local file.

        Raises:
            ConfigError: no run ``run_id`` in the store.
            DataError: the run kept no checkpoint.
        """
