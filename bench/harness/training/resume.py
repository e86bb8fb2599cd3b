"""Where a job starts: afresh, or from the resumable checkpoint of its run folder
(`bench.harness.training.runfolder`), and under torchrun the same choice on every rank.

A checkpoint is resumed only on the data it was trained on: when it holds a data
fingerprint, the splits are loaded and hashed first (`bench.harness.training.runfolder.
data_fingerprint`) and handed on to the run, so they are read once. On other data (another
``--data-dir``, files replaced) the run is not resumed: a new run starts (``--resume``: a
one-line refusal), said on stderr, and the old checkpoint is kept beside it. Refusing to
continue, rather than continuing with a note, is the only choice that never mixes data:
a model trained on two datasets measures neither.

A run folder left RUNNING by a process that died (its lock is free) is settled before the
job starts: the tracking run, if still RUNNING, is marked KILLED with the reason "process
died (SIGKILL?) ..." (the sink's ``close_stale``), and so is ``run.json``.
"""

from __future__ import annotations

import logging
from typing import Any

from bench.api import ConfigError, Job, Sink
from bench.harness.training.recorder import one_line

__all__ = ["resume_point", "agree_start", "settle_stale"]

log = logging.getLogger(__name__)


def resume_point(job: Job, folder: Any, sink: Sink, ranks: int = 1) -> dict[str, Any] | None:
    """The checkpoint this job continues from (per ``job.resume``), or None to start afresh.
    A checkpoint of a launch with another number of ``ranks`` is not resumed (its batch
    order and random streams are those of that launch).

    Raises:
        ConfigError: ``resume="require"`` and there is nothing to resume.
    """
    from bench.harness.training.checkpoint import load_checkpoint

    if job.resume == "never":
        settle_stale(job, folder, sink, "not resumed (--fresh)")
        return None
    why = None
    if not folder.resumable():
        why = folder.describe()
    else:
        try:
            ckpt = load_checkpoint(folder.checkpoint)
        except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint is not resumed
            why = f"its checkpoint {folder.checkpoint} cannot be read ({one_line(exc)})"
        else:
            written = len(ckpt.get("ranks") or [None])
            if ckpt.get("kind") != "resume" or not ckpt.get("run_id"):
                why = f"{folder.checkpoint} is not a resumable checkpoint"
            elif written != ranks:
                why = (f"its checkpoint was written by a launch of {written} process(es), "
                       f"this one has {ranks}")
            else:
                why = _data_changed(job, ckpt)
                if why is None:
                    return ckpt
                _set_aside(job, folder, ckpt, why)
    settle_stale(job, folder, sink, f"not resumed: {why}")
    if job.resume == "require":
        raise ConfigError(f"cannot resume {job.label or job.name}: {why} ({folder.path})")
    return None


def _data_changed(job: Job, ckpt: dict[str, Any]) -> str | None:
    """Why ``ckpt`` was trained on other data than ``job`` reads now, or None (same data, or
    a checkpoint without a fingerprint). The loaded ``(dataset, splits)`` go into
    ``ckpt["loaded"]`` for the run. A dataset that fails to load is left to the run to
    report (as when starting afresh)."""
    from bench.harness.training.runfolder import data_fingerprint

    want = ckpt.get("data_sha256")
    if not want:
        return None
    try:
        dataset = job.dataset_cls(job.dataset_params, data_dir=job.data_dir)
        splits = dataset.splits()
        got = data_fingerprint(splits)
    except Exception:  # noqa: BLE001 - the run reads the data again and reports it
        return None
    if got == want:
        ckpt["loaded"] = (dataset, splits)
        return None
    root = job.data_dir if job.data_dir is not None else "the default data root"
    return (f"its data changed since its checkpoint (splits sha256 {want} -> {got}, read "
            f"from {root})")


def _set_aside(job: Job, folder: Any, ckpt: dict[str, Any], why: str) -> None:
    """Keep a checkpoint that is not resumed beside the new run's (nothing is lost)."""
    kept = folder.path / f"superseded-{ckpt.get('run_id') or 'run'}.pt"
    folder.checkpoint.replace(kept)
    log.warning("%s: not resumed: %s; a new run starts (the old checkpoint is kept as %s)",
                job.label or job.name, why, kept)


def settle_stale(job: Job, folder: Any, sink: Sink, why: str = "") -> None:
    """If ``run.json`` says RUNNING while we hold the folder's lock, its process died: mark
    its tracking run KILLED (if the store still says RUNNING; else take the store's status)
    and ``run.json`` alike, with the reason "process died (SIGKILL?) ..."."""
    if not folder.stale():
        return
    info = folder.info()
    step = info.get("step")
    reason = ("process died (SIGKILL?) before its first checkpoint"
              if not folder.checkpoint.is_file() and not step
              else f"process died (SIGKILL?) at step {step or 0}; {why}".rstrip("; "))
    status, run_id = "KILLED", info.get("run_id")
    if run_id:
        try:
            status, reason = sink.close_stale(run_id, reason)
        except Exception as e:  # noqa: BLE001 - the folder is settled all the same
            log.warning("could not mark run %s KILLED in the store: %s", run_id, one_line(e))
    folder.write_info(status=status, reason=reason)
    log.warning("%s: run %s was left RUNNING by a process that died: now %s (%s)",
                job.label or job.name, run_id, status, reason)


def agree_start(job: Job, world: Any, folder: Any, sink: Sink) -> dict[str, Any] | None:
    """Data parallel: rank 0 locks the run folder and chooses the resume point; every rank
    learns the outcome at the same collective and the others read the same checkpoint (the
    folder must be on a file system every node sees). Any failure there (locked, nothing to
    resume, an unwritable folder) is raised on rank 0 and as `PeerFailure` on the others."""
    import json

    from bench.harness.training.checkpoint import load_checkpoint
    from bench.harness.training.distributed import PeerFailure
    from bench.harness.training.runfolder import RunFolder

    resume, error = None, None
    if world.is_main and folder is not None:
        try:
            folder.lock(job.label or job.name)
            resume = resume_point(job, folder, sink, world.size)
        except Exception as exc:  # noqa: BLE001 - told to the other ranks, then re-raised
            error = exc
    said = json.loads(world.broadcast_text(json.dumps(
        {"resume": resume is not None, "error": None if error is None else str(error)})))
    if error is not None:
        raise error
    if said["error"] is not None:
        raise PeerFailure(f"rank 0 could not start this job: {said['error']}")
    if said["resume"] and not world.is_main:
        resume = load_checkpoint(RunFolder(job.work_dir).checkpoint)
    return resume
