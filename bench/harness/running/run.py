"""``run_job(job, sink) -> RunRecord``: one (method, dataset, seed), in isolation.

Loads the data, checks the splits and the method against the contract (cheaply), trains with
the harness's loop and optimiser, restores the best state, scores it with the harness's
evaluation, writes the checkpoint, and records everything as it happens to the sink and to
the returned `RunRecord`. Any failure of the job (bench's own errors, a plug-in raising any
exception) ends the run FAILED with a one-line ``failure.reason``, its ``failure.type`` and
the traceback as an artifact; it never propagates, so one job never stops a grid. Only a
stop (`bench.harness.training.signals.RunInterrupted`, KeyboardInterrupt) propagates, after the run
is checkpointed and marked KILLED. With a run folder the job checkpoints as it trains and
resumes a killed run (`bench.harness.training.runfolder`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import platform
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any

from bench.api import BenchError, ConfigError, Job, LossExploded, RunRecord, Sink
from bench.harness.training.recorder import Recorder, git_commit, job_params, one_line
from bench.harness.training.resume import agree_start, resume_point

__all__ = ["run_job", "load_model", "job_params", "git_commit", "Recorder"]

log = logging.getLogger(__name__)


def run_job(job: Job, sink: Sink, progress: Any = None) -> RunRecord:
    """Run one job to the end and return its record (status FINISHED, FAILED or KILLED).

    With ``job.work_dir`` the job runs in that folder (`bench.harness.training.runfolder`):
    it holds the folder's lock, writes the resumable checkpoint per ``job.checkpoint_every`` /
    ``checkpoint_minutes``, and per ``job.resume`` continues a run of the same job left
    KILLED or RUNNING (a killed process) into the same tracking run (``sink.reopen``).
    Without one it runs in a temporary folder and never resumes. Under torchrun rank 0
    holds the folder and decides; every rank restores the checkpoint
    (`bench.harness.training.resume.agree_start`).

    Args:
        job: a validated job from `bench.harness.planning.plan.plan_jobs`.
        sink: where the record goes as it happens (`bench.api.Sink`: ``start`` or, to
            resume, ``reopen``; ``flush`` before each checkpoint; ``end``).
        progress: a factory ``(total, desc) -> progress`` (see `bench.harness.training.progress`),
            or None for no progress display.

    Raises:
        RunLocked: another live process runs this job in ``job.work_dir`` (nothing recorded).
        ConfigError: ``job.resume == "require"`` without a resumable run (nothing recorded).
        RunInterrupted / KeyboardInterrupt: re-raised after the run is checkpointed, flushed
            and marked KILLED.
    """
    from bench.harness.training import distributed
    from bench.harness.training.runfolder import RunFolder, job_key

    world, device = distributed.setup(job.device)
    if world.enabled:  # torchrun: this rank's device; rank 0 alone records, holds the run
        job = dataclasses.replace(job, device=device)  # folder and writes its checkpoint
        sink = sink if world.is_main else distributed.NullSink()
    record = RunRecord(None, job.name, params=job_params(job), tags=_run_tags(job, world))
    folder = (RunFolder(job.work_dir) if job.work_dir is not None and world.is_main
              else None)
    key = job_key(job)
    if not world.enabled and folder is not None:
        folder.lock(job.label or job.name)
    rec = None
    try:
        resume = (agree_start(job, world, folder, sink) if world.enabled
                  else resume_point(job, folder, sink) if folder is not None else None)
        rec = _open(job, record, sink, world, resume, key)
        if folder is not None:
            folder.write_info(run_id=record.run_id, status="RUNNING", reason="",
                              job_key=key, label=job.label or job.name)
        with contextlib.ExitStack() as stack:
            work = (folder.path if folder is not None else
                    Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-run-"))))
            _run_guarded(job, rec, work, progress, folder, resume, key)
    finally:
        _close(record, sink, rec, folder)
    return world.share(record)  # torchrun: rank 0's record on every rank


def _run_tags(job: Job, world: Any) -> dict[str, str]:
    """The labels every run starts with: commit, device, versions, host, the job's sources."""
    import torch

    return {"git_commit": git_commit(), "device": job.device, "torch": torch.__version__,
            "host": f"{platform.node()} {platform.processor() or platform.machine()}",
            "threads": str(torch.get_num_threads()), "likelihood": job.method_cls.likelihood,
            "job": job.label, **{f"source.{k}": v for k, v in job.sources.items()},
            **world.tags()}


def _open(job: Job, record: RunRecord, sink: Sink, world: Any, resume: dict | None,
          key: str) -> Recorder:
    """Start the tracking run, or reopen the one being resumed (its recorded steps are not
    written again); returns the run's recorder."""
    if resume is None:
        record.run_id = sink.start(job.name, record.params, {**record.tags, "job_key": key})
        return Recorder(record, sink)
    record.run_id = resume["run_id"]
    recorded = sink.reopen(record.run_id) if world.is_main else {}
    rec = Recorder(record, sink, recorded)
    rec.set_tags({"resumed_at_step": resume["loop"]["step"]})
    log.info("%s: resuming run %s at step %d", job.label or job.name, record.run_id,
             resume["loop"]["step"])
    return rec


def _close(record: RunRecord, sink: Sink, rec: Recorder | None, folder: Any) -> None:
    """However the job ended: a run still RUNNING is KILLED; the record is flushed and the
    tracking run ended; the run folder settled (its checkpoint removed once FINISHED) and
    unlocked. Never raises past a full disk: the outcome must not be hidden."""
    if record.status == "RUNNING":  # anything else that ended the job (SystemExit, ...)
        record.status = "KILLED"
    try:
        if rec is not None:
            with contextlib.suppress(Exception):
                rec.flush()
            sink.end(record.status)
            # a sink that fell back to a local store mid-run now names the run there
            record.run_id = sink.run_id or record.run_id
    finally:
        if folder is not None:
            if rec is not None:
                folder.settle(status=record.status, reason=record.failure or "")
            if record.status == "FINISHED":
                folder.checkpoint.unlink(missing_ok=True)
            folder.unlock()


def _run_guarded(job: Job, rec: Recorder, work: Path, progress: Any, folder: Any,
                 resume: dict[str, Any] | None, key: str) -> None:
    """`_train_and_evaluate`, turning every outcome into the record's status and reason."""
    from bench.harness.training.loop import StepTimeout
    from bench.harness.training.runfolder import is_disk_full
    from bench.harness.training.signals import RunInterrupted

    record = rec.record
    try:
        _train_and_evaluate(job, rec, work, progress, folder, resume, key)
        record.status = "FINISHED"
    except RunInterrupted as exc:
        record.status = "KILLED"
        rec.set_tags({"failure.reason": f"interrupted by {exc.signame}",
                      "failure.type": "RunInterrupted"})
        raise
    except KeyboardInterrupt:
        record.status = "KILLED"
        rec.set_tags({"failure.reason": "interrupted (KeyboardInterrupt)",
                      "failure.type": "KeyboardInterrupt"})
        raise
    except Exception as exc:  # noqa: BLE001 - a job's failure never stops the grid
        record.status = "FAILED"
        rec.set_tags({"failure.reason": one_line(exc), "failure.type": type(exc).__name__})
        try:  # best effort; on a full disk the reason says it all (and run.json needs room)
            if not is_disk_full(exc):
                tb = work / "traceback.txt"
                tb.write_text("".join(traceback.format_exception(exc)))
                rec.log_artifact(tb)
            if isinstance(exc, LossExploded | StepTimeout) and folder is not None \
                    and folder.checkpoint.is_file():  # the last good state, as the model
                kept = work / "checkpoint.pt"
                shutil.copyfile(folder.checkpoint, kept)
                rec.log_artifact(kept)
        except Exception as e:  # noqa: BLE001
            log.error("%s: the traceback or checkpoint could not be recorded: %s",
                      job.label or job.name, one_line(e))
        if not isinstance(exc, BenchError):
            log.debug("job %s failed", job.label, exc_info=exc)


def _load_splits(job: Job, rec: Recorder, loaded: tuple | None = None):
    from bench.harness.planning.preflight import check_dataset_instance, check_splits

    if loaded is None:  # else read (and fingerprinted) already when choosing to resume
        dataset = job.dataset_cls(job.dataset_params, data_dir=job.data_dir)
        loaded = dataset, dataset.splits()
    dataset, splits = loaded
    check_dataset_instance(dataset, splits)
    rec.set_tags({"dataset_provenance": splits.provenance,
                  "dequantization": splits.dequantization,
                  **{f"split.{k}": v for k, v in splits.split_names.items()}})
    refs = {}
    for field, (cls, params) in job.refs.items():
        refs[field] = cls(params, data_dir=job.data_dir)
        check_splits(refs[field].splits(), cls.name)
    return dataset, splits, refs


def _train_and_evaluate(job: Job, rec: Recorder, work: Path, progress: Any,
                        folder: Any = None, resume: dict[str, Any] | None = None,
                        key: str = "") -> None:
    import torch

    from bench.harness.planning.preflight import check_method_instance
    from bench.harness.running.context import make_context
    from bench.harness.training import distributed
    from bench.harness.training.checkpoint import restore_training
    from bench.harness.training.gradsync import gradient_sync
    from bench.harness.training.loop import train
    from bench.harness.training.optim import Trainer
    from bench.harness.training.runfolder import data_fingerprint

    dataset, splits, refs = _load_splits(job, rec, (resume or {}).pop("loaded", None))
    data_sha = data_fingerprint(splits) if job.work_dir is not None else ""
    if data_sha:  # a resume on other data is refused (bench.harness.training.resume)
        rec.set_tags({"data_sha256": data_sha})
    reason = job.method_cls.supports(job.dataset_cls.kind, tuple(splits.event_shape))
    if reason:
        raise ConfigError(f"method {job.method!r} cannot model dataset {job.dataset!r}: "
                          f"{reason}")
    world = distributed.current()
    torch.manual_seed(job.seed)
    ctx = make_context(device=job.device, seed=world.seed(job.seed), solver=job.solver,
                       max_steps=job.budget.steps, datasets=refs,
                       log_metrics=rec.log_metrics, work_dir=work)
    method = job.method_cls(job.method_params, splits, ctx)
    check_method_instance(method, splits)
    world.replicate(method.modules(), job.seed)  # torchrun: rank 0's weights everywhere
    per_rank, effective = distributed.batch_sizes(method.batch_size(), splits.train.shape[0],
                                                  world.size)
    rec.set_tags({"batch_size_per_rank": per_rank, "effective_batch_size": effective})
    trainer = Trainer(method, job.optim, total_steps=job.budget.steps,
                      execution=job.execution, grad_sync=gradient_sync(world))
    n_par = sum(p.numel() for m in method.modules().values() for p in m.parameters())
    rec.log_metrics({"n_parameters": float(n_par)})
    if resume is not None:
        restore_training(trainer, resume, world.rank)
    checkpoints = (_checkpoints(job, rec, trainer, world, folder, key, data_sha)
                   if job.work_dir is not None else None)
    bar = (progress(job.budget.steps, job.name) if progress is not None and world.is_main
           else None)
    try:
        result = train(method, trainer, splits, job.budget, job.device, rec.log_metrics,
                       set_tags=rec.set_tags, progress=bar,
                       generator=torch.Generator().manual_seed(job.seed),
                       checkpoints=checkpoints, resume=resume)
    finally:
        if bar is not None:
            bar.close()
    world.write_digest(job.name, trainer)  # BENCH_DIST_DEBUG_DIR: replicas' final state
    if not world.is_main:  # rank 0 alone scores, checkpoints and records
        return
    trainer.load_state_dict(result.best_state)
    rec.log_metrics(_summary(result, splits.train.shape[0], effective))
    _checkpoint_and_score(job, rec, trainer, method, dataset, splits, work, result.best_step)


def _checkpoints(job: Job, rec: Recorder, trainer: Any, world: Any, folder: Any, key: str,
                 data_sha: str) -> Any:
    """The loop's resumable checkpoints in the run folder (data parallel: every rank takes
    part in gathering the random streams, rank 0 writes)."""
    from bench.harness.training.checkpoint import (
        make_checkpoint,
        pack,
        rank_state,
        unpack,
        write_checkpoint,
    )
    from bench.harness.training.loop import Checkpoints

    def save(step: int, loop: dict[str, Any], best: dict[str, Any] | None) -> None:
        ranks = None
        if world.enabled:  # each rank's random streams (a collective)
            packed = world.gather_bytes(pack(rank_state(trainer.method)))
            ranks = [unpack(b) for b in packed] if world.is_main else None
        if folder is None:
            return
        rec.flush()  # metrics up to here are stored before the checkpoint says so
        write_checkpoint(folder.checkpoint, make_checkpoint(
            job, trainer, step, loop=loop, best=best, run_id=rec.record.run_id,
            job_key=key, ranks=ranks, data_sha256=data_sha))
        folder.write_info(step=step)

    return Checkpoints(save, job.checkpoint_every, job.checkpoint_minutes)


def _summary(result: Any, train_rows: int, effective: int) -> dict[str, float]:
    """The training's figures: seconds, steps, best step and validation NLL, epoch cost."""
    summary = {"train_seconds": result.train_seconds, "steps_done": float(result.steps),
               "best_step": float(result.best_step), "val_seconds": result.val_seconds}
    if math.isfinite(result.best_val):
        summary["best_val_nll"] = result.best_val
    if result.steps:  # the cost of one epoch, also when the budget ends inside the first
        steps_per_epoch = math.ceil(train_rows / effective)
        summary["steps_per_epoch"] = float(steps_per_epoch)
        summary["epoch_seconds_est"] = result.train_seconds / result.steps * steps_per_epoch
    return summary


def _checkpoint_and_score(job: Job, rec: Recorder, trainer: Any, method: Any, dataset: Any,
                          splits: Any, work: Path, best_step: int) -> None:
    """With the evaluation weights in place: write the checkpoint, then run every scorer
    of the job (`bench.harness.scoring.scorers`: the built-in ones and the plug-ins')."""
    from bench.api import ScoreContext
    from bench.harness.scoring.scorers import run_scorers, scorers_of
    from bench.harness.training.checkpoint import save_checkpoint

    scorers = scorers_of(job)
    with trainer.averaged():
        rec.log_artifact(save_checkpoint(work / "checkpoint.pt", job, trainer, best_step))
        run_scorers(scorers, method, splits, ScoreContext(job, dataset, work), rec)


def load_model(checkpoint: dict[str, Any], registry, *, data_dir: Path | None = None,
               device: str = "cpu", solver=None):
    """Rebuild the method of a checkpoint written by `run_job`, with its evaluation weights
    (the EMA average when the run kept one). Reads the dataset to construct the method."""
    from bench.harness.planning.plan import resolve_refs
    from bench.harness.planning.selection import build_params
    from bench.harness.running.context import make_context
    from bench.harness.training.checkpoint import load_into

    m_cls = registry.get("method", checkpoint["method"])
    d_cls = registry.get("dataset", checkpoint["dataset"])
    m_params = build_params(m_cls.Params, _typed(m_cls.Params, checkpoint["method_params"]),
                            f"method {m_cls.name!r}")
    d_params = build_params(d_cls.Params, _typed(d_cls.Params, checkpoint["dataset_params"]),
                            f"dataset {d_cls.name!r}")
    splits = d_cls(d_params, data_dir=data_dir).splits()
    refs = {field: cls(params, data_dir=data_dir)
            for field, (cls, params) in resolve_refs(registry, m_params).items()}
    ctx = make_context(device=device, seed=int(checkpoint.get("seed", 0)), solver=solver,
                       datasets=refs)
    method = m_cls(m_params, splits, ctx)
    load_into(method, checkpoint, averaged=True)
    return method


def _typed(params_cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint values (lists where tuples were) back to the dataclass's field types."""
    names = {f.name for f in dataclasses.fields(params_cls)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
