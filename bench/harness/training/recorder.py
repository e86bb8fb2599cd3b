"""What a run records besides its metrics: the flat parameters, the source commit, and the
`Recorder` that writes to the run's `RunRecord` and its sink at once (skipping, on a resumed
run, the steps the sink already holds)."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

from bench.api import BenchError, Job, RunRecord, Sink

__all__ = ["git_commit", "job_params", "Recorder", "one_line"]

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def git_commit() -> str:
    """The source commit (``-dirty`` with local changes), or "" outside a git checkout."""
    if not (PROJECT_ROOT / ".git").exists():
        return ""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, text=True,
                             capture_output=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=PROJECT_ROOT, text=True,
                               capture_output=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _flat(prefix: str, obj: Any) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in dataclasses.asdict(obj).items()}


def job_params(job: Job) -> dict[str, Any]:
    """The flat parameters recorded with a run (and compared by `bench table`)."""
    b = job.budget
    return {"method": job.method, "dataset": job.dataset, "seed": job.seed,
            **_flat("p_method_", job.method_params), **_flat("p_dataset_", job.dataset_params),
            **_flat("optim_", job.optim), "steps": b.steps, "max_seconds": b.max_seconds,
            "eval_every": b.eval_every, "patience": b.patience, "device": job.device,
            "val_rows": b.val_rows, "test_rows": b.test_rows,
            "explosion_factor": b.explosion_factor,
            **_flat("solver_", job.solver), **_flat("samples_", job.sample_eval),
            **_flat("exec_", job.execution)}


class Recorder:
    """Writes to the run's record and to its sink at once.

    Args:
        recorded: on a resumed run, the highest step already recorded for each metric key
            (the sink's ``reopen``): those steps (and final values already there) are not
            sent to the sink again, so its history holds every step once.
    """

    def __init__(self, record: RunRecord, sink: Sink,
                 recorded: dict[str, int] | None = None) -> None:
        self.record, self.sink = record, sink
        self.recorded = dict(recorded or {})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items()}
        if step is None:
            self.record.metrics.update(clean)
        else:
            for k, v in clean.items():
                self.record.history.setdefault(k, []).append((int(step), v))
        if self.recorded:
            clean = {k: v for k, v in clean.items() if k not in self.recorded
                     or (step is not None and int(step) > self.recorded[k])}
            if not clean:
                return
        self.sink.log_metrics(clean, step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        clean = {k: str(v) for k, v in tags.items()}
        self.record.tags.update(clean)
        self.sink.set_tags(clean)

    def log_artifact(self, path: Path) -> None:
        self.record.artifacts[path.name] = str(self.sink.log_artifact(path) or path)

    def flush(self) -> None:
        """Write what the sink buffers now."""
        self.sink.flush()


def one_line(exc: BaseException) -> str:
    """The failure reason of ``exc``: its first line (with its type unless bench's own); a
    full device or quota, however wrapped, reads "no space left on device (...)"."""
    from bench.harness.training.runfolder import DiskFull, is_disk_full

    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    if is_disk_full(exc) and not isinstance(exc, DiskFull):
        where = getattr(exc, "filename", None)
        return (f"no space left on device{f' writing {where}' if where else ''} "
                f"({type(exc).__name__}: {msg})")[:500]
    if not isinstance(exc, BenchError):
        msg = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return msg[:500]
