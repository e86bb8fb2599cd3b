"""A job's own folder, ``<results>/runs/<job_key>/``: its resumable checkpoint, its status and
an exclusive lock while a process runs it.

Files::

    lock       fcntl.flock'ed (exclusive) by the live process; the kernel frees it on death
    run.json   {"run_id", "status", "reason", "job_key", "label", "step"}, written atomically
    last.pt    the resumable checkpoint (`bench.harness.training.checkpoint`, with "loop" and
    "best")
    ...        the run's outputs (checkpoint.pt, samples.png, traceback.txt)

A run can be resumed when ``run.json`` says RUNNING (the process was killed outright) or
KILLED (a clean stop) and ``last.pt`` exists; never a FINISHED or FAILED one. Whoever takes
the lock finds RUNNING only from a process that died (`RunFolder.stale`), and removes the
temporary files an interrupted atomic write left (``.last.pt.*``, ``.run.json.*``).

The job key covers the plug-in sources (SHA-256 of the method's and dataset's files): an
edited plug-in is another job, never resumed from the old code's checkpoint. The data cannot
be hashed at plan time; `data_fingerprint` of the loaded splits is stored in the checkpoint
and compared before a resume (`bench.harness.training.resume`).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from bench.api import BenchError, ConfigError, Job

__all__ = ["job_key", "RunFolder", "RunLocked", "RESUMABLE", "CHECKPOINT", "write_atomic",
           "DiskFull", "is_disk_full", "data_fingerprint", "plugin_sha256"]

log = logging.getLogger(__name__)
RESUMABLE = ("RUNNING", "KILLED")
CHECKPOINT = "last.pt"


class RunLocked(ConfigError):
    """Another live process runs the same job in the same folder."""


class DiskFull(BenchError):
    """A write met a full device (ENOSPC) or quota (EDQUOT); says what and where."""


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is a full device or quota, however wrapped (torch's
    writer reports a failed ``write`` as a RuntimeError)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, DiskFull) or (isinstance(exc, OSError)
                                         and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
            return True
        if "No space left on device" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


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
    method and dataset with their parameters and plug-in sources (`plugin_sha256`), seed,
    optimisation, budget, solver, execution, sample scoring and what is evaluated; not the
    device, data root or checkpoint policy (the data's content is checked on resume)."""
    spec = {"method": job.method, "method_params": _plain(job.method_params),
            "dataset": job.dataset, "dataset_params": _plain(job.dataset_params),
            "seed": job.seed, "optim": _plain(job.optim), "budget": _plain(job.budget),
            "solver": _plain(job.solver), "execution": _plain(job.execution),
            "sample_eval": _since_v01(_plain(job.sample_eval)),
            "evaluate_test": job.evaluate_test,
            "n_samples": job.n_samples,
            "sources": [plugin_sha256(job.method_cls), plugin_sha256(job.dataset_cls)]}
    if job.scorers:  # what is scored is part of the run (keys without plug-in scorers stay)
        spec["scorers"] = sorted(f"{c.name}:{plugin_sha256(c)}" for c in job.scorers)
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: SampleEval fields added after keys were first published, left out of the key at their
#: defaults so that a run (or a suite's record) made before they existed keeps its key
_ADDED_SAMPLE_EVAL = {"resize": "tf1", "train_rows": None}


def _since_v01(sample_eval: dict) -> dict:
    return {k: v for k, v in sample_eval.items()
            if not (k in _ADDED_SAMPLE_EVAL and v == _ADDED_SAMPLE_EVAL[k])}


def plugin_sha256(cls: type | None) -> str:
    """SHA-256 of the file defining a plug-in class ("" when it has none, e.g. built in a
    test)."""
    module = sys.modules.get(getattr(cls, "__module__", ""), None)
    path = getattr(module, "__file__", None)
    if not path:
        return ""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return _file_sha256(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, _mtime_ns: int, _size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def data_fingerprint(splits: Any) -> str:
    """SHA-256 (first 16 hex digits) of a `Splits`' train/val/test tensors: shape, dtype and
    bytes (about 1 s per GB)."""
    import torch

    h = hashlib.sha256()
    for name in ("train", "val", "test"):
        t = getattr(splits, name).detach().to("cpu").contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()[:16]


def write_atomic(path: Path, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``data`` (bytes, or a function writing to the open file) to ``path`` atomically:
    a temporary file in the same folder, flushed and fsync'ed, then os.replace, so a reader
    sees the old file or the new one, never a partial one.

    Raises:
        DiskFull: the device is full (the partial temporary file is removed).
    """
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
    except BaseException as exc:
        size = Path(tmp).stat().st_size if Path(tmp).exists() else 0
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, Exception) and is_disk_full(exc):
            free = _free_bytes(path.parent)
            left = "" if free is None else f"; {free / 2**20:.2f} MiB free without it"
            raise DiskFull(f"no space left on device writing {path} (failed after "
                           f"{size / 2**20:.2f} MiB{left})") from exc
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
        self._clean_partial()

    def _clean_partial(self) -> None:
        """Remove what interrupted atomic writes left (`write_atomic`'s temporary files);
        only the lock's holder calls this, so none of them is being written."""
        for name in (CHECKPOINT, self.info_path.name, "checkpoint.pt"):
            for tmp in self.path.glob(f".{name}.*"):
                try:
                    tmp.unlink()
                    log.info("removed %s, left by an interrupted write", tmp)
                except OSError as e:
                    log.warning("could not remove %s: %s", tmp, e)

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

    def settle(self, **fields: Any) -> bool:
        """`write_info`, never raising (at the end of a run, so that a full disk or a lost
        folder does not hide the run's outcome): False, with an error on the log, when
        ``run.json`` could not be written (the next holder finds it `stale`)."""
        try:
            self.write_info(**fields)
            return True
        except (OSError, BenchError) as e:
            log.error("%s could not be updated (%s): %s", self.info_path, fields.get("status"),
                      str(e).splitlines()[0] if str(e) else type(e).__name__)
            return False

    def stale(self) -> bool:
        """``run.json`` says RUNNING although its owner is gone (call it holding the lock:
        a live owner would hold it)."""
        return self._fd is not None and self.info().get("status") == "RUNNING"

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
