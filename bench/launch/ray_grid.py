"""``bench run --launcher ray``: a planned grid as Ray tasks, one job per task.

The driver (the ``bench run`` process) has planned and validated the grid. Each job becomes a
Ray task with its resources (``cpus_per_job`` CPUs; one GPU when the job's device is CUDA)
that runs that single job through the CLI in a child process, ``python -m bench run -m
<method> -d <dataset> --seeds <seed> <the shared options> --json``, writing to the same
tracking store as every other job. The child dies with the Ray worker that started it
(``PR_SET_PDEATHSIG``), so a lost node leaves no process writing to the store; Ray retries a
task whose worker or node died (and one whose child was killed by a signal), and the
relaunched job continues from its last checkpoint (``bench run`` resumes a killed job of the
same key). The driver prints one line per finished job on stderr, then the records (a
table, or JSON with ``--json``: JSON only on stdout), and exits non-zero naming every job
that did not finish.

Ray is an optional extra (``pip install bench[ray]``), imported only inside functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from bench.api import BenchError, Job

__all__ = ["launch_ray", "GridTask", "Outcome", "grid_tasks", "run_tasks", "ChildKilled"]

log = logging.getLogger(__name__)
# options of `bench run` the launcher sets per job or that only concern the driver
_DRIVER_ONLY = {"methods", "datasets", "seeds", "sets", "launcher", "address", "dry_run",
                "quiet", "as_json", "tracking_uri", "device", "cpus_per_job", "ray_cpus"}
_ENV_PREFIXES = ("BENCH_", "MLFLOW_")  # the driver's settings every child needs
_TAIL = 1500


class ChildKilled(Exception):
    """The job's process was killed by a signal (worker lost, OOM killer): Ray retries."""


@dataclasses.dataclass(frozen=True)
class GridTask:
    """One job of the grid as a Ray task.

    Attributes:
        label: the job's label (its selection as written). seed: its seed.
        argv: the child's arguments after ``python -m bench``.
        num_cpus, num_gpus: the Ray resources the task asks for.
    """

    label: str
    seed: int
    argv: tuple[str, ...]
    num_cpus: float
    num_gpus: float


@dataclasses.dataclass
class Outcome:
    """What became of one task: the child's records (its ``--json`` output) or why none."""

    task: GridTask
    status: str
    records: list[dict[str, Any]]
    failure: str = ""
    node: str = ""
    seconds: float = 0.0


def _long_opt(param: click.Option) -> str:
    return max(param.opts, key=lambda o: (o.startswith("--"), len(o)))


def _argv_of(ctx: click.Context, skip: set[str]) -> list[str]:
    """The options the user set in one click context, back to arguments (paths made
    absolute, the default results folder included, so that they hold in another cwd)."""
    defaults = (click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)
    out: list[str] = []
    for p in ctx.command.params:
        if not isinstance(p, click.Option) or p.name in skip or p.name not in ctx.params:
            continue
        value, opt = ctx.params[p.name], _long_opt(p)
        is_path = isinstance(p.type, click.Path)
        if value is None or (ctx.get_parameter_source(p.name) in defaults and not is_path):
            continue
        if p.count:
            out += [opt] * int(value)
        elif p.is_flag and p.secondary_opts:
            out.append(opt if value else p.secondary_opts[0])
        elif p.is_flag:  # --x, or several flags sharing one name (--resume/--fresh)
            out += [opt] if (value is True if isinstance(value, bool)
                             else value == p.flag_value) else []
        elif p.multiple:
            out += [a for v in value for a in (opt, str(Path(v).resolve()) if is_path
                                                else str(v))]
        else:
            out += [opt, str(Path(value).resolve()) if is_path else str(value)]
    return out


def _sets_for(job: Job, sets: Sequence[tuple[str, str]]) -> list[str]:
    """The ``--set`` items of the grid that apply to this job's method or dataset (an item
    for another method would be refused by a grid of this job alone)."""
    from bench.harness.planning.plan import OPTIM_FIELDS
    from bench.harness.planning.selection import param_fields

    m_keys = set(param_fields(job.method_cls.Params)) | set(OPTIM_FIELDS)
    d_keys = set(param_fields(job.dataset_cls.Params))
    out = []
    for key, val in sets:
        target, name = key.split(".", 1) if "." in key else (None, key)
        if (target in (None, "method") and name in m_keys) or \
                (target in (None, "dataset") and name in d_keys):
            out += ["--set", f"{key}={val}"]
    return out


def _child_device(device: str) -> tuple[str, float]:
    """(the child's device, GPUs to ask for): Ray's CUDA_VISIBLE_DEVICES shows the task
    only its GPU, which is then ``cuda`` (index 0) whatever index the driver named."""
    if device.split(":")[0] == "cuda":
        return "cuda", 1.0
    return device, 0.0


def grid_tasks(ctx: click.Context, jobs: Sequence[Job], tracking_uri: str,
               cpus_per_job: float = 1.0) -> list[GridTask]:
    """One `GridTask` per planned job of a ``bench run`` invocation.

    Args:
        ctx: the ``bench run`` click context (its parameters and the root's).
        jobs: ``plan_jobs`` of that invocation, in plan order (methods x datasets x seeds).
        tracking_uri: the store every job writes to (resolved by the driver).
    """
    from bench.harness.planning.plan import parse_seeds, parse_sets

    p = ctx.params
    grid = list(itertools.product(p["methods"], p["datasets"], parse_seeds(p["seeds"])))
    if len(grid) != len(jobs) or any(j.seed != s for j, (_, _, s) in zip(jobs, grid,
                                                                          strict=True)):
        raise BenchError("the planned jobs do not match the grid of the selections")
    root = ctx.find_root()
    head = _argv_of(root, set()) if root is not ctx else []
    shared = _argv_of(ctx, _DRIVER_ONLY) + ["--tracking-uri", tracking_uri, "--json"]
    sets = parse_sets(p.get("sets") or ())
    tasks = []
    for job, (m_sel, d_sel, seed) in zip(jobs, grid, strict=True):
        device, gpus = _child_device(job.device)
        argv = [*head, "run", "-m", m_sel, "-d", d_sel, "--seeds", str(seed),
                "--device", device, *_sets_for(job, sets), *shared]
        tasks.append(GridTask(job.label, seed, tuple(argv), float(cpus_per_job), gpus))
    return tasks


# The child's first act: SIGKILL me when my parent (the Ray worker) dies, then become
# ``python -m bench ...``; the setting survives exec. (Done in the child itself rather than in
# a preexec_fn, which is unsafe in the threaded worker.)
_BOOT = ("import ctypes, os, signal, sys; "
         "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0); "
         "os.getppid() == int(sys.argv[1]) or os._exit(1); "
         "os.execv(sys.executable, [sys.executable, '-m', 'bench', *sys.argv[2:]])")


def _parse_records(stdout: str) -> list[dict[str, Any]]:
    """The child's ``--json`` records (tolerating lines some library printed before)."""
    for start in [0] + [i + 1 for i, c in enumerate(stdout) if c == "\n"]:
        if stdout.startswith("[", start):
            try:
                out = json.loads(stdout[start:])
            except json.JSONDecodeError:
                continue
            if isinstance(out, list):
                return [r for r in out if isinstance(r, dict)]
    return []


def run_job_process(argv: Sequence[str], cwd: str | None, env: dict[str, str],
                    attempt: int = 0) -> dict[str, Any]:
    """The body of a Ray task: run one job's ``bench run`` and return its outcome.

    A retry (``attempt`` > 0) drops ``--fresh``, so that the job resumes.

    Returns: {"returncode", "records", "stderr" (its tail), "node", "seconds"}.

    Raises:
        ChildKilled: the child was killed by a signal (Ray retries the task).
    """
    import platform

    child_env = {**os.environ, **env}
    argv = [a for a in argv if not (attempt and a == "--fresh")]
    t0 = time.monotonic()
    with tempfile.TemporaryFile(mode="w+", prefix="bench-ray-") as err:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and CLI
            [sys.executable, "-c", _BOOT, str(os.getpid()), *argv], stdout=subprocess.PIPE,
            stderr=err, text=True, env=child_env,
            cwd=cwd if cwd and Path(cwd).is_dir() else None)
        try:
            stdout, _ = proc.communicate()
        finally:
            if proc.poll() is None:  # the task was cancelled: stop the job cleanly first
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        err.seek(0)
        stderr = err.read()[-_TAIL:]
    if proc.returncode < 0:
        raise ChildKilled(f"job process killed by signal {-proc.returncode}: "
                          f"{stderr.strip()[-300:]}")
    return {"returncode": proc.returncode, "records": _parse_records(stdout),
            "stderr": stderr, "node": platform.node(), "seconds": time.monotonic() - t0}


def _outcome(task: GridTask, result: dict[str, Any]) -> Outcome:
    records = result["records"]
    statuses = {r.get("status") for r in records}
    if result["returncode"] == 0 and records and statuses == {"FINISHED"}:
        status, failure = "FINISHED", ""
    else:
        bad = [r for r in records if r.get("status") != "FINISHED"]
        status = bad[0].get("status", "FAILED") if bad else "FAILED"
        lines = [ln for ln in result["stderr"].strip().splitlines() if ln.strip()]
        failure = (bad[0].get("failure") if bad and bad[0].get("failure")
                   else lines[-1] if lines else f"exit code {result['returncode']}")
    return Outcome(task, status, records, str(failure)[:500], result["node"],
                   result["seconds"])


def run_tasks(tasks: Sequence[GridTask], *, address: str | None = None,
              num_cpus: int | None = None, max_retries: int = 3, cwd: str | None = None,
              env: dict[str, str] | None = None, echo=None) -> list[Outcome]:
    """Run the tasks on Ray and return their outcomes, in the order of ``tasks``.

    A task whose worker or node died, or whose job process was killed by a signal, is
    submitted again (up to ``max_retries`` times; its job resumes from its checkpoint, and
    ``--fresh`` holds for the first attempt only); a job that ran to its end, FINISHED or
    FAILED, is never run again.

    Args:
        address: an existing cluster ("auto", "host:port", "ray://host:port"); None: a
            local cluster of ``num_cpus`` CPUs (all of them by default).
        cwd: the children's working folder where it exists on the node.
        env: variables set in every child (on top of the worker's environment).
        echo: ``echo(line)`` for one progress line per finished or retried task.
    """
    ray = _import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    init = ({"address": address} if address else {"num_cpus": num_cpus})
    # Ray prints its cluster's messages ("(raylet) A worker died ...") on stdout: stderr
    with contextlib.redirect_stdout(sys.stderr):
        ray.init(**init, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=False)
        try:
            return _run(ray, tasks, max_retries, cwd, env, echo)
        finally:
            ray.shutdown()


def _run(ray, tasks: Sequence[GridTask], max_retries: int, cwd: str | None,
         env: dict[str, str] | None, echo) -> list[Outcome]:
    remote = ray.remote(run_job_process)

    def submit(i: int, attempt: int):
        t = tasks[i]
        return remote.options(num_cpus=t.num_cpus, num_gpus=t.num_gpus, max_retries=0,
                              name=t.label[:200]).remote(list(t.argv), cwd, env or {},
                                                        attempt)

    refs = {submit(i, 0): (i, 0) for i in range(len(tasks))}
    outcomes: list[Outcome | None] = [None] * len(tasks)
    done_n, bad_n = 0, 0
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        i, attempt = refs.pop(ready[0])
        task = tasks[i]
        try:
            out = _outcome(task, ray.get(ready[0]))
        except Exception as exc:  # noqa: BLE001 - a lost worker, node or process
            why = _reason(exc)
            if _retryable(ray, exc) and attempt < max_retries:
                if echo is not None:
                    echo(f"RETRY {task.label} (attempt {attempt + 2} of "
                         f"{max_retries + 1}): {why}")
                refs[submit(i, attempt + 1)] = (i, attempt + 1)
                continue
            out = Outcome(task, "FAILED", [], why)
        outcomes[i] = out
        done_n, bad_n = done_n + 1, bad_n + (out.status != "FINISHED")
        if echo is not None:
            where = f" on {out.node}" if out.node else ""
            tail = f": {out.failure}" if out.failure else ""
            echo(f"[{done_n}/{len(tasks)}, {bad_n} not finished] {out.status} "
                 f"{task.label}{where} ({out.seconds:.0f} s){tail}")
    return [o for o in outcomes if o is not None]


def _retryable(ray, exc: BaseException) -> bool:
    """A system failure (worker, node or object lost; job process killed), not a bug."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        return isinstance(exc.cause, ChildKilled)
    return isinstance(exc, ray.exceptions.RayError)


def _reason(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:500]


def _import_ray():
    try:
        import ray
    except ImportError:
        raise BenchError("the Ray launcher needs Ray: pip install 'bench[ray]'") from None
    return ray


def _records_json(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    rows = []
    for o in outcomes:
        rows += o.records or [{"run_id": None, "label": o.task.label, "seed": o.task.seed,
                               "status": o.status, "failure": o.failure}]
    return rows


def launch_ray(ctx: click.Context, jobs: Sequence[Job], *, address: str | None = None,
               num_cpus: int | None = None, cpus_per_job: float = 1.0,
               max_retries: int = 3, as_json: bool = False, quiet: bool = False) -> int:
    """Run a planned ``bench run`` grid as Ray tasks; print the records; the exit code.

    Args:
        ctx: the ``bench run`` click context whose parameters planned ``jobs``.
        jobs: the planned grid (``plan_jobs``), in plan order.
        address: an existing Ray cluster ("auto", "host:port"); None: a local one.
        num_cpus: CPUs of the local cluster (None: all). cpus_per_job: each task's CPUs.
        max_retries: retries of a job whose worker, node or process died.
        as_json: the records as JSON on stdout (nothing else there).

    Returns:
        0 when every job FINISHED, else 1 (after one line on stderr naming each).
    """
    from bench.record.mlflow_sink import MlflowSink, default_tracking_uri

    _import_ray()  # a missing Ray fails before anything else
    p = ctx.params
    results = Path(p["results_dir"]).resolve()
    uri = p.get("tracking_uri") or default_tracking_uri(results)
    MlflowSink(uri, p["experiment"], artifact_root=results / "artifacts")  # store + experiment
    tasks = grid_tasks(ctx, jobs, uri, cpus_per_job)
    env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
    where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
    click.echo(f"{len(tasks)} job(s) to {where}; recording in {uri}", err=True)
    outcomes = run_tasks(tasks, address=address, num_cpus=num_cpus, max_retries=max_retries,
                         cwd=os.getcwd(), env=env,
                         echo=None if quiet else lambda s: click.echo(s, err=True))
    if as_json:
        click.echo(json.dumps(_records_json(outcomes), indent=1, default=float))
    else:
        from tabulate import tabulate

        rows = [{"method": r.get("method", ""), "dataset": r.get("dataset", ""),
                 "seed": r.get("seed", o.task.seed), "status": r.get("status", o.status),
                 "test_nll": r.get("test_nll"), "steps": r.get("steps_done"),
                 "train s": r.get("train_seconds"), "run_id": r.get("run_id")}
                for o in outcomes for r in (o.records or [{}])]
        click.echo(tabulate(rows, headers="keys", tablefmt="github", floatfmt=".3f"))
    failed = [o for o in outcomes if o.status != "FINISHED"]
    if failed:
        click.echo(f"error: {len(failed)} of {len(outcomes)} job(s) did not finish: "
                   + "; ".join(f"{o.task.label} ({o.status}: {o.failure})" for o in failed),
                   err=True)
        return 1
    return 0
