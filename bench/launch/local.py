"""The local launcher: every job in this process, one after another (``bench run``'s
default, and ``bench.lab.run``).

A job that cannot start (its folder locked by another process, nothing to resume, a full
disk, a spec that does not rebuild) is a FAILED record with the reason and the grid goes
on; a stop asked for by the user (`bench.harness.training.signals.RunInterrupted`, after
the running job checkpointed and was marked KILLED) propagates to the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bench.api import BenchError, JobSpec, RunRecord, Sink, failed_record

__all__ = ["LocalLauncher"]


class LocalLauncher:
    """`bench.api.Launcher` that runs the specs here, sequentially.

    Args:
        new_sink: returns a fresh `Sink` per run (MLflow, memory, ...).
        registry: the planner's registry (its plug-in classes); None: one of each spec's
            ``plugin_dirs``.
        progress: ``progress(total, desc)`` bar factory handed to ``run_job`` (None: none).
        on_record: called with (spec, record) as each job ends (the CLI's result lines).
    """

    def __init__(self, new_sink: Callable[[], Sink], *, registry: Any = None,
                 progress: Any = None,
                 on_record: Callable[[JobSpec, RunRecord], None] | None = None) -> None:
        self.new_sink, self.registry = new_sink, registry
        self.progress, self.on_record = progress, on_record
        self.current: JobSpec | None = None  # the spec running now (named on a stop)

    def submit(self, specs: Sequence[JobSpec]) -> list[RunRecord]:
        records = []
        for spec in specs:
            self.current = spec
            record = self._run(spec)
            records.append(record)
            if self.on_record is not None:
                self.on_record(spec, record)
        return records

    def _run(self, spec: JobSpec) -> RunRecord:
        from bench.harness.running.run import run_job
        from bench.harness.training.recorder import one_line
        from bench.launch.specs import job_of

        try:
            job = job_of(spec, self.registry)
            return run_job(job, self.new_sink(), self.progress)
        except (BenchError, OSError) as exc:  # could not start: recorded, the grid goes on
            return failed_record(spec, one_line(exc))
