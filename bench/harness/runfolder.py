"""A job's own folder, ``<results>/runs/<job_key>/``: its resumable checkpoint, its status and
an exclusive lock while a process runs it.

Files::

    lock       fcntl.flock'ed (exclusive) by the live process; the kernel frees it on death
    run.json   {"run_id", "status", "reason", "job_key", "label", "step"}, written atomically
    last.pt    the resumable checkpoint (`bench.harness.checkpoint`, with "loop" and "best")
    ...        the run's outputs (checkpoint.pt, samples.png, traceback.txt)

A run can be resumed when ``run.json`` says RUNNING (the process was killed outright) or
KILLED (a clean stop) and ``last.pt`` exists; never a FINISHED or FAILED one.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from bench.api import ConfigError, Job

__all__ = ["job_key", "RunFolder", "RunLocked", "RESUMABLE", "CHECKPOINT", "write_atomic"]

log = logging.getLogger(__name__)
RESUMABLE = ("RUNNING", "KILLED")
CHECKPOINT = "last.pt"


class RunLocked(ConfigError):
    """Another live process runs the same job in the same folder."""


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, type):
        return getattr(obj, "name", obj.__name__)
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def job_key(job: Job) -> str:
    """A short stable hash (16 hex digits of a SHA-256) of everything that defines the run:
    method and dataset with their parameters, seed, optimisation, budget, solver, execution,
    sample scoring and what is evaluated; not the device, data root or checkpoint policy."""
    spec = {"method": job.method, "method_params": _plain(job.method_params),
            "dataset": job.dataset, "dataset_params": _plain(job.dataset_params),
            "seed": job.seed, "optim": _plain(job.optim), "budget": _plain(job.budget),
            "solver": _plain(job.solver), "execution": _plain(job.execution),
            "sample_eval": _plain(job.sample_eval), "evaluate_test": job.evaluate_test,
            "n_samples": job.n_samples}
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_atomic(path: Path, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``data`` (bytes, or a function writing to the open file) to ``path`` atomically:
    a temporary file in the same folder, flushed and fsync'ed, then os.replace, so a reader
    sees the old file or the new one, never a partial one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunFolder:
    """The folder of one job (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoint = self.path / CHECKPOINT
        self.info_path = self.path / "run.json"
        self._fd: int | None = None

    def lock(self, label: str = "") -> None:
        """Take the folder's exclusive lock, or raise `RunLocked` (nothing is touched)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(f"job {label or self.path.name} is already running in another "
                            f"process (its folder {self.path} is locked)") from None
        self._fd = fd

    def unlock(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def info(self) -> dict[str, Any]:
        """``run.json`` ({} when absent or unreadable)."""
        try:
            data = json.loads(self.info_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_info(self, **fields: Any) -> None:
        """Update ``run.json`` atomically with ``fields``."""
        info = {**self.info(), **fields}
        write_atomic(self.info_path, json.dumps(info, indent=1, default=str).encode())

    def resumable(self) -> bool:
        """A run of this job was left RUNNING or KILLED with a checkpoint."""
        return self.info().get("status") in RESUMABLE and self.checkpoint.is_file()

    def describe(self) -> str:
        """One phrase on what the folder holds (for error messages)."""
        info = self.info()
        if not info:
            return "no run of this job was recorded"
        if not self.checkpoint.is_file():
            return f"its last run ({info.get('status')}) left no checkpoint"
        return f"its last run is {info.get('status')}, which is not resumed"
