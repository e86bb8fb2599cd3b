"""Records and sinks: what a run leaves. ``run_job(job, sink)`` writes a run through a
`Sink` as it happens; tables, reports and the Python API read `RunRecord`s. Plain data;
nothing here imports the rest of bench.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["RunRecord", "Sink", "STATUSES"]

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
    """Where a run's record goes as it happens (MLflow, memory). One sink per run."""

    def start(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> str | None:
        """Open the run; returns its id."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record metric values (at a training step, or final when step is None)."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Record labels."""

    def log_artifact(self, path: Path) -> str:
        """Keep a file with the run; returns where it is kept."""

    def end(self, status: str) -> None:
        """Close the run with its final status (flushes everything)."""
