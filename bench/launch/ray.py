"""The Ray launcher (``bench run --launcher ray``): one Ray task per job.

Each task receives its `JobSpec` as JSON, rebuilds the `Job` in the Ray worker (the
registry of the spec's plug-in folders; the job key checked against the planner's), runs
``run_job`` with an MLflow sink on the shared store and returns the `RunRecord` as a dict:
no command line is rebuilt and no output parsed. A task asks for ``cpus_per_job`` CPUs and
one GPU when its job's device is CUDA (Ray's ``CUDA_VISIBLE_DEVICES`` then shows it only
its GPU: ``cuda``). A job that fails is a FAILED record; a task whose worker or node died
is submitted again (``max_retries``), and the job resumes from its last checkpoint in its
run folder (a first attempt's ``resume="never"`` becomes ``"auto"``); its lock, held by the
dead worker, died with it.

The same protocol elsewhere: a KubeRay cluster is this launcher with the address of its
head (``ray://head:10001``); a SLURM launcher would hand each spec's JSON to a
``submitit.AutoExecutor`` job whose function is `run_spec` and read back its dict.

Ray is an optional extra (``pip install 'ctgen-bench[ray]'``), imported only when used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.api import BenchError, JobSpec, RunRecord, failed_record

__all__ = ["RayLauncher", "run_spec", "record_dict", "record_of"]

log = logging.getLogger(__name__)
_ENV_PREFIXES = ("BENCH_", "MLFLOW_")  # the driver's settings every task needs


def record_dict(record: RunRecord) -> dict[str, Any]:
    """A `RunRecord` as plain data (what a task returns)."""
    return dataclasses.asdict(record)


def record_of(data: dict[str, Any]) -> RunRecord:
    """The `RunRecord` of `record_dict`'s dict."""
    data = dict(data)
    data["history"] = {k: [(int(s), float(v)) for s, v in pts]
                       for k, pts in (data.get("history") or {}).items()}
    return RunRecord(**data)


def run_spec(spec_json: str, store: dict[str, Any], attempt: int = 0) -> dict[str, Any]:
    """The body of a task: one job from its spec's JSON, recorded in ``store``.

    Args:
        store: where runs are recorded: ``uri`` (an MLflow or ``jsonl://`` URI),
            ``experiment`` and ``results`` (the results folder: artifacts, fallback store).
        attempt: 0 first; a retry resumes the job's checkpoint.

    Returns:
        {"record": `record_dict`, "node": this host, "seconds": the task's time}.
    """
    import platform

    from bench.harness.running.run import run_job
    from bench.harness.training.recorder import one_line
    from bench.launch.specs import job_of
    from bench.record.stores import sink_factory

    t0 = time.monotonic()
    spec = JobSpec.from_json(spec_json)
    if attempt and spec.resume == "never":
        spec = dataclasses.replace(spec, resume="auto")
    if spec.device.split(":")[0] == "cuda":
        spec = dataclasses.replace(spec, device="cuda")
    try:
        new_sink = sink_factory(store["uri"], store["experiment"], Path(store["results"]))
        record = run_job(job_of(spec), new_sink())
    except (BenchError, OSError) as exc:
        record = failed_record(spec, one_line(exc))
    return {"record": record_dict(record), "node": platform.node(),
            "seconds": time.monotonic() - t0}


@dataclasses.dataclass
class RayLauncher:
    """`bench.api.Launcher` running each spec as a Ray task.

    Attributes:
        store: where every task records its run (`run_spec`).
        address: an existing cluster ("auto", "host:port", "ray://host:port"); None: a
            local cluster of ``num_cpus`` CPUs (all of them by default).
        cpus_per_job: each task's CPUs. max_retries: resubmissions of a job whose worker,
            node or object was lost.
        echo: ``echo(line)`` for one line per finished or retried job.
    """

    store: dict[str, Any]
    address: str | None = None
    num_cpus: int | None = None
    cpus_per_job: float = 1.0
    max_retries: int = 3
    echo: Callable[[str], None] | None = None

    def submit(self, specs: Sequence[JobSpec]) -> list[RunRecord]:
        ray = import_ray()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
        init = {"address": self.address} if self.address else {"num_cpus": self.num_cpus}
        # Ray prints its cluster's messages ("(raylet) A worker died") on stdout: stderr
        with contextlib.redirect_stdout(sys.stderr):
            ray.init(**init, log_to_driver=False, logging_level=logging.WARNING,
                     configure_logging=False, runtime_env={"env_vars": env})
            try:
                return self._run(ray, list(specs))
            finally:
                ray.shutdown()

    def _run(self, ray, specs: list[JobSpec]) -> list[RunRecord]:
        remote = ray.remote(run_spec)

        def submit(i: int, attempt: int):
            s = specs[i]
            gpus = 1.0 if s.device.split(":")[0] == "cuda" else 0.0
            return remote.options(num_cpus=self.cpus_per_job, num_gpus=gpus, max_retries=0,
                                  name=s.label[:200]).remote(s.to_json(), self.store, attempt)

        refs = {submit(i, 0): (i, 0) for i in range(len(specs))}
        records: list[RunRecord | None] = [None] * len(specs)
        done_n = bad_n = 0
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            i, attempt = refs.pop(ready[0])
            try:
                out = ray.get(ready[0])
                record, where = record_of(out["record"]), (out["node"], out["seconds"])
            except Exception as exc:  # noqa: BLE001 - a lost worker, node or object; a bug
                why = _reason(exc)
                if _retryable(ray, exc) and attempt < self.max_retries:
                    self._say(f"RETRY {specs[i].label} (attempt {attempt + 2} of "
                              f"{self.max_retries + 1}): {why}")
                    refs[submit(i, attempt + 1)] = (i, attempt + 1)
                    continue
                record, where = failed_record(specs[i], why), ("", 0.0)
            records[i] = record
            done_n, bad_n = done_n + 1, bad_n + (record.status != "FINISHED")
            tail = f": {record.failure}" if record.failure else ""
            node = f" on {where[0]}" if where[0] else ""
            self._say(f"[{done_n}/{len(specs)}, {bad_n} not finished] {record.status} "
                      f"{specs[i].label}{node} ({where[1]:.0f} s){tail}")
        return [r for r in records if r is not None]

    def _say(self, line: str) -> None:
        if self.echo is not None:
            self.echo(line)


def _retryable(ray, exc: BaseException) -> bool:
    """A system failure (worker, node or object lost), not an error of the job's code."""
    return (isinstance(exc, ray.exceptions.RayError)
            and not isinstance(exc, ray.exceptions.RayTaskError))


def _reason(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:500]


def import_ray():
    """The ``ray`` module, or one BenchError line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BenchError("the Ray launcher needs Ray: pip install 'ctgen-bench[ray]'") from None
    return ray
