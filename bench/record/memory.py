"""An in-memory sink: the run's `RunRecord` kept in Python (tests, notebooks)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from bench.api import ConfigError, RunRecord

__all__ = ["MemorySink"]


class MemorySink:
    """A `bench.api.Sink` that keeps one run as a `RunRecord` in ``self.record``.

    ``record.metrics`` holds the final metrics (logged with ``step=None``),
    ``record.history`` the per-step series of stepped metrics, ``record.status`` the status
    given to ``end``.

    Args:
        artifact_dir: a folder to copy artifacts into (they then outlive the run's scratch
            folder); None keeps the paths as given (valid while the producer keeps them).
    """

    def __init__(self, artifact_dir: str | Path | None = None) -> None:
        self.artifact_dir = Path(artifact_dir) if artifact_dir is not None else None
        self.record: RunRecord | None = None

    @property
    def run_id(self) -> str | None:
        return self.record.run_id if self.record is not None else None

    def _rec(self) -> RunRecord:
        if self.record is None:
            raise RuntimeError("MemorySink: call start() before recording")
        return self.record

    def start(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run_id = uuid.uuid4().hex
        self.record = RunRecord(run_id, name, params=dict(params),
                                tags={k: str(v) for k, v in tags.items()}, status="RUNNING")
        return run_id

    def reopen(self, run_id: str) -> dict[str, int]:
        """Attach to run ``run_id`` again (resume): the run this sink holds, or a new empty
        record when it holds none; marks it RUNNING and returns the highest step recorded
        for each stepped metric.

        Raises:
            ConfigError: the sink holds another run.
        """
        if self.record is None:
            self.record = RunRecord(run_id, "", status="RUNNING")
        elif self.record.run_id != run_id:
            raise ConfigError(f"MemorySink holds run {self.record.run_id}, not {run_id}")
        self.record.status = "RUNNING"
        return {k: max(s for s, _ in series) for k, series in self.record.history.items()
                if series}

    def flush(self) -> None:
        """Nothing to write: the record is always current."""

    def close_stale(self, run_id: str, reason: str) -> tuple[str, str]:
        """Mark the held run ``run_id`` KILLED with ``reason`` if it is RUNNING; a run this
        sink does not hold has nothing to mark (returns KILLED, ``reason``)."""
        rec = self.record
        if rec is None or rec.run_id != run_id:
            return "KILLED", reason
        if rec.status != "RUNNING":
            return rec.status, rec.tags.get("failure.reason", "")
        rec.tags.update({"failure.reason": reason, "failure.type": "ProcessDied"})
        rec.status = "KILLED"
        return "KILLED", reason

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        rec = self._rec()
        if step is None:
            rec.metrics.update({k: float(v) for k, v in metrics.items()})
            return
        for k, v in metrics.items():
            rec.history.setdefault(k, []).append((int(step), float(v)))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._rec().tags.update({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: Path) -> str:
        rec, path = self._rec(), Path(path)
        if self.artifact_dir is not None:
            self.artifact_dir.mkdir(parents=True, exist_ok=True)
            path = Path(shutil.copy2(path, self.artifact_dir / path.name))
        rec.artifacts[path.name] = str(path)
        return str(path)

    def end(self, status: str) -> None:
        if self.record is not None:
            self.record.status = status
