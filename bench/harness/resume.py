"""Where a job starts: afresh, or from the resumable checkpoint of its run folder
(`bench.harness.runfolder`), and under torchrun the same choice on every rank."""

from __future__ import annotations

from typing import Any

from bench.api import ConfigError, Job, Sink
from bench.harness.recorder import one_line

__all__ = ["resume_point", "agree_start"]


def resume_point(job: Job, folder: Any, sink: Sink, ranks: int = 1) -> dict[str, Any] | None:
    """The checkpoint this job continues from (per ``job.resume``), or None to start afresh.
    A checkpoint of a launch with another number of ``ranks`` is not resumed (its batch
    order and random streams are those of that launch).

    Raises:
        ConfigError: ``resume="require"`` and there is nothing to resume.
    """
    from bench.harness.checkpoint import load_checkpoint

    if job.resume == "never":
        return None
    why = None
    if not folder.resumable():
        why = folder.describe()
    elif not callable(getattr(sink, "reopen", None)):
        why = f"the sink {type(sink).__name__} cannot reopen a run"
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
                return ckpt
    if job.resume == "require":
        raise ConfigError(f"cannot resume {job.label or job.name}: {why} ({folder.path})")
    return None


def agree_start(job: Job, world: Any, folder: Any, sink: Sink) -> dict[str, Any] | None:
    """Data parallel: rank 0 locks the run folder and chooses the resume point; every rank
    learns the outcome at the same collective and the others read the same checkpoint (the
    folder must be on a file system every node sees). Any failure there (locked, nothing to
    resume, an unwritable folder) is raised on rank 0 and as `PeerFailure` on the others."""
    import json

    from bench.harness.checkpoint import load_checkpoint
    from bench.harness.distributed import PeerFailure
    from bench.harness.runfolder import RunFolder

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
