"""The launcher protocol: where the jobs of a planned grid run.

selection strings -> plan (`Job`s) -> `JobSpec`s -> ``Launcher.submit`` -> `RunRecord`s.

A launcher receives plain `JobSpec`s (JSON-able: plug-in names, typed parameters, the job
key), rebuilds each `Job` where it runs it (``bench.harness.planning.jobspec.from_spec``)
and returns one `RunRecord` per spec, in the order of the specs. A job that fails, or that
cannot even start, is a FAILED record with its reason (``record.failure``), never an
exception that stops the rest of the grid; only a stop asked for by the user (Ctrl-C,
SIGTERM) propagates.

Implementations: `bench.launch.local.LocalLauncher` (this process, one job after another)
and `bench.launch.ray.RayLauncher` (one Ray task per job). A SLURM launcher would submit
one ``submitit`` job per spec whose function rebuilds the job from the spec's JSON and
returns the record as a dict; a KubeRay launcher is the Ray launcher pointed at the
cluster's address (``ray://head:10001``). Nothing here imports the rest of bench.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from bench.api.jobs import JobSpec
from bench.api.records import RunRecord

__all__ = ["Launcher", "failed_record"]


@runtime_checkable
class Launcher(Protocol):
    """Runs job specs and returns their records."""

    def submit(self, specs: Sequence[JobSpec]) -> list[RunRecord]:
        """Run every spec; one `RunRecord` per spec, in their order (FAILED ones included)."""


def failed_record(spec: JobSpec, reason: str, run_id: str | None = None) -> RunRecord:
    """The record of a job that failed before (or without) a record of its own."""
    return RunRecord(run_id=run_id, name=f"{spec.method}-{spec.dataset}-s{spec.seed}",
                     params={"method": spec.method, "dataset": spec.dataset,
                             "seed": spec.seed},
                     tags={"failure.reason": reason, "label": spec.label}, status="FAILED")
