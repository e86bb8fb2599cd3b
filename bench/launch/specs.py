"""Planned jobs to `JobSpec`s with their job keys, and a spec back to its job where it runs
(the key checked: a plug-in file that differs there is refused, not run as another job)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from bench.api import ConfigError, Job, JobSpec

__all__ = ["specs_of", "job_of", "registry_for"]


def specs_of(jobs: Sequence[Job], plugin_dirs: Sequence[str | Path] = ()) -> list[JobSpec]:
    """The spec of each planned job (with its job key), in plan order."""
    from bench.harness.planning.jobspec import to_spec
    from bench.harness.training.runfolder import job_key

    return [to_spec(job, tuple(plugin_dirs), key=job_key(job)) for job in jobs]


@functools.lru_cache(maxsize=8)
def registry_for(plugin_dirs: tuple[str, ...]):
    """The registry of these plug-in folders (one per process and folder set)."""
    from bench.harness.planning.registry import Registry

    return Registry(extra_dirs=list(plugin_dirs))


def job_of(spec: JobSpec, registry=None) -> Job:
    """The `Job` of a spec.

    Args:
        registry: the planner's own registry (same process: its classes are the code that
            was planned, whatever the files say now; the key is not checked); None: the
            registry of the spec's plug-in folders, loaded here, and the rebuilt job's key
            must be the planner's.

    Raises:
        ConfigError: a bad spec, or a rebuilt job whose key differs from the planner's.
    """
    from bench.harness.planning.jobspec import from_spec
    from bench.harness.training.runfolder import job_key

    if registry is not None:
        return from_spec(spec, registry)
    job = from_spec(spec, registry_for(spec.plugin_dirs))
    if spec.key and job_key(job) != spec.key:
        raise ConfigError(f"{spec.label or spec.method}: job key {job_key(job)} here, "
                          f"{spec.key} where it was planned (a plug-in file differs)")
    return job
