"""Running a suite resumably into its own store, and its state.

A suite ``NAME`` lives in ``results/suites/NAME/``: ``store/`` (a JSON-lines store,
experiment ``NAME``), ``runs/<job key>/`` (each job's run folder: checkpoint, lock,
``run.json``) and ``records.jsonl`` (the export, `bench.record.suite_records`). A job's
state comes from the store and its folder: **done** (a FINISHED run of its key), **running**
(its folder locked by a live process), **failed** (its last run FAILED; rerun only with
``retry_failed``), **killed** (its last run KILLED, or RUNNING in a process that died:
resumed from its checkpoint), **left** (never started). `run_suite` runs the killed and
left ones (and the failed ones when asked): a finished job is never run again.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.api import ConfigError, Job, JobSpec, RunRecord
from bench.api.suites import Suite
from bench.record.suite_records import ANYTIME_HISTORY, STUDY_HISTORY, suite_dir

__all__ = ["SuiteJob", "STATES", "store_uri", "planned", "store_records", "with_states",
           "run_suite", "finished_records", "history_of"]

STATES = ("done", "running", "failed", "killed", "left")


@dataclasses.dataclass
class SuiteJob:
    """One planned job of a suite and where it stands.

    Attributes:
        job: the planned job (its run folder set). key: its job key. label: its method
            entry's label. state: one of `STATES`. run_id: its newest run (None: none).
        reason: why it failed or was killed. record: its finished run, when done.
    """

    job: Job
    key: str
    label: str
    state: str = "left"
    run_id: str | None = None
    reason: str = ""
    record: RunRecord | None = None

    @property
    def tags(self) -> dict[str, str]:
        return {"suite.method": self.label}


def store_uri(root: Path, suite: Suite) -> str:
    return f"jsonl://{(suite_dir(root, suite.name) / 'store').resolve()}"


def planned(registry, suite: Suite, root: Path, *, data_dir: Path | None = None,
            device: str | None = None) -> list[SuiteJob]:
    """The suite's jobs, planned as ``bench run`` plans them, each in its run folder
    ``results/suites/NAME/runs/<job key>`` (resumed when its last run was killed)."""
    from bench.harness.planning.suites import entry_labels, plan_suite, runnable_part
    from bench.harness.training.runfolder import job_key

    jobs = plan_suite(registry, suite, data_dir=data_dir, device=device)
    labels = entry_labels(runnable_part(registry, suite), len(jobs))
    runs = suite_dir(root, suite.name) / "runs"
    out = []
    for job, label in zip(jobs, labels, strict=True):
        key = job_key(job)
        out.append(SuiteJob(dataclasses.replace(job, work_dir=runs / key, resume="auto"),
                            key, label))
    return out


def history_of(suite: Suite) -> tuple[str, ...]:
    """The histories a suite's records keep (the study's per-step cost too)."""
    return ANYTIME_HISTORY + (STUDY_HISTORY if suite.study is not None else ())


def store_records(root: Path, suite: Suite) -> list[RunRecord]:
    """Every run in the suite's store, oldest first ([] before its first run)."""
    from bench.record.jsonl import JsonlSource

    folder = suite_dir(root, suite.name) / "store"
    if not folder.is_dir():
        return []
    return JsonlSource(folder).records(suite.name, history=history_of(suite))


def _locked(folder: Path | None) -> bool:
    """Whether a live process holds the run folder's lock (a shared lock is refused)."""
    import fcntl

    if folder is None or not (folder / "lock").is_file():
        return False
    fd = os.open(folder / "lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def with_states(entries: Sequence[SuiteJob], records: Sequence[RunRecord]) -> list[SuiteJob]:
    """Each job's state from the store's ``records`` and its run folder."""
    by_key: dict[str, list[RunRecord]] = {}
    for rec in records:
        by_key.setdefault(rec.tags.get("job_key", ""), []).append(rec)
    out = []
    for e in entries:
        runs = by_key.get(e.key, [])
        done = [r for r in runs if r.status == "FINISHED"]
        last = runs[-1] if runs else None
        if done:
            e = dataclasses.replace(e, state="done", run_id=done[-1].run_id, record=done[-1])
        elif _locked(e.job.work_dir):
            e = dataclasses.replace(e, state="running", run_id=last and last.run_id)
        elif last is None:
            e = dataclasses.replace(e, state="left")
        else:
            state = "failed" if last.status == "FAILED" else "killed"
            reason = last.failure or ("its process died" if last.status == "RUNNING" else "")
            e = dataclasses.replace(e, state=state, run_id=last.run_id, reason=reason)
        out.append(e)
    return out


def finished_records(entries: Sequence[SuiteJob], suite: Suite) -> list[RunRecord]:
    """The finished run of every done job, in the suite's order, tagged with the suite's
    name, the job's method label and the suite's device class."""
    out = []
    for e in entries:
        if e.record is not None:
            tags = {**e.record.tags, "suite": suite.name, "suite.method": e.label,
                    "suite.device_class": suite.device_class}
            out.append(dataclasses.replace(e.record, tags=tags))
    return out


class _Tagged:
    """A sink whose runs start with extra tags (the suite's); everything else delegated."""

    def __init__(self, sink: Any, tags: dict[str, str]) -> None:
        self._sink, self._tags = sink, tags

    def start(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> str | None:
        return self._sink.start(name, params, {**tags, **self._tags})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sink, name)


def _suite_tags(suite: Suite, entry: SuiteJob) -> dict[str, str]:
    return {"suite": suite.name, "suite.method": entry.label,
            "suite.device_class": suite.device_class}


def _one(spec_json: str, store: str, experiment: str, tags: dict[str, str]) -> dict:
    """A worker process: run one spec into the store; its record as a dict."""
    import torch

    from bench.launch.local import LocalLauncher
    from bench.record.jsonl import JsonlSink

    torch.set_num_threads(1)
    spec = JobSpec.from_json(spec_json)
    launcher = LocalLauncher(lambda: _Tagged(JsonlSink(Path(store), experiment), tags))
    return dataclasses.asdict(launcher.submit([spec])[0])


def run_suite(suite: Suite, entries: Sequence[SuiteJob], root: Path, *,
              plugins: Sequence[str] = (), registry: Any = None, parallel: int = 1,
              retry_failed: bool = False, progress: Any = None,
              on_record: Callable[[SuiteJob, RunRecord], None] | None = None
              ) -> list[RunRecord]:
    """Run the suite's killed and left jobs (and failed ones with ``retry_failed``), one
    after another in this process, or in ``parallel`` worker processes (one thread each);
    returns their records in plan order. A stop asked for (Ctrl-C, SIGTERM) propagates
    after the running job is checkpointed and marked KILLED."""
    from bench.launch.local import LocalLauncher
    from bench.launch.specs import specs_of
    from bench.record.jsonl import JsonlSink

    if parallel < 1:
        raise ConfigError(f"--jobs must be >= 1, got {parallel}")
    wanted = ("killed", "left", "failed") if retry_failed else ("killed", "left")
    todo = [e for e in entries if e.state in wanted]
    specs = specs_of([e.job for e in todo], plugins)
    store = suite_dir(root, suite.name) / "store"
    JsonlSink(store, suite.name)  # the store's folder made (or one ConfigError line)
    tags = {s.key: _suite_tags(suite, e) for s, e in zip(specs, todo, strict=True)}
    if parallel == 1:
        launcher = LocalLauncher(
            lambda: _Tagged(JsonlSink(store, suite.name), tags[launcher.current.key]),
            registry=registry, progress=progress,
            on_record=None if on_record is None else
            lambda spec, rec: on_record(todo[specs.index(spec)], rec))
        return launcher.submit(specs)
    import multiprocessing

    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the workers
    records: list[RunRecord | None] = [None] * len(specs)
    with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as ex:
        futures = {ex.submit(_one, s.to_json(), str(store), suite.name, tags[s.key]): i
                   for i, s in enumerate(specs)}
        from concurrent.futures import as_completed

        for fut in as_completed(futures):
            i = futures[fut]
            records[i] = RunRecord(**fut.result())
            if on_record is not None:
                on_record(todo[i], records[i])
    return [r for r in records if r is not None]
