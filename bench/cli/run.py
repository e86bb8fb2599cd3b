"""``bench run``: plan the grid, turn each job into a `JobSpec` and hand the specs to a
launcher (this process, or Ray tasks) that returns their records."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from bench.cli.common import make_solver, progress_factory, registry_of, sink_factory
from bench.cli.run_options import run_options

__all__ = ["run", "result_line"]


@click.command()
@run_options
@click.pass_context
def run(ctx, **o):
    """Train and evaluate every (method, dataset, seed) combination; record each run in the
    tracking store (MLflow by default, or a jsonl://FOLDER).

    The whole grid is validated before any data is read or any run is opened; each job then
    runs in isolation: a failed job is recorded FAILED with its reason and the others go
    on; the exit code is 1 if any failed or was killed. Each job runs in its own folder
    <results-dir>/runs/<job key>/ with periodic checkpoints; launching a job again resumes
    it when its last run was killed (--resume insists, --fresh starts afresh). Ctrl-C or
    SIGTERM checkpoints the running job, marks it KILLED and exits 130 / 143. --config FILE
    reads the options (a grid) from a TOML file; the command line overrides it.
    """
    from bench.api import ConfigError
    from bench.launch.specs import specs_of

    registry = registry_of(ctx)
    jobs = _plan(registry, o)
    if o["dry_run"]:
        _print_plan(jobs, o["as_json"])
        return
    if o["address"] and o["launcher"] != "ray":
        raise ConfigError("--address needs --launcher ray")
    plugins = list((ctx.find_root().obj or {}).get("plugins", ()))
    specs = specs_of(jobs, plugins)
    if o["launcher"] == "ray":
        records, main_rank = _submit_ray(specs, o), True
    else:
        records, main_rank = _submit_local(specs, registry, o)
    if not main_rank:  # under torchrun only rank 0 records and prints
        sys.exit(1 if any(r.status != "FINISHED" for r in records) else 0)
    if o["as_json"]:
        click.echo(json.dumps([_json(r) for r in records], indent=1, default=float))
    failed = [(s, r) for s, r in zip(specs, records, strict=True) if r.status != "FINISHED"]
    if failed and (len(specs) > 1 or o["launcher"] == "ray"):  # one local job: said above
        click.echo(f"error: {len(failed)} of {len(specs)} run(s) did not finish: "
                   + "; ".join(f"{s.label} ({r.status}: {r.failure})" for s, r in failed),
                   err=True)
    if failed:
        sys.exit(1)


def _plan(registry, o: dict[str, Any]) -> list:
    """The validated jobs of the options, each with its run folder."""
    from bench.api import Execution, SampleEval
    from bench.harness.planning.plan import parse_seeds, parse_sets, plan_jobs

    sample_eval = SampleEval(samples=o["fid_samples"], reference=o["fid_ref"],
                             reference_rows=o["fid_ref_rows"], resize=o["fid_resize"],
                             train_rows=o["fid_train_rows"])
    execution = Execution(precision=o["precision"], channels_last=o["channels_last"],
                          compile=o["compile_"])
    solver = make_solver(o["solver"], o["rtol"], o["atol"], o["divergence"], o["probes"],
                         o["val_tol"])
    jobs = plan_jobs(registry, o["methods"], o["datasets"], parse_seeds(o["seeds"]),
                     parse_sets(o["sets"]), steps=o["steps"], max_seconds=o["max_seconds"],
                     eval_every=o["eval_every"], patience=o["patience"], solver=solver,
                     device=o["device"],
                     data_dir=Path(o["data_dir"]) if o["data_dir"] else None,
                     n_samples=o["n_samples"], val_rows=o["val_rows"],
                     test_rows=o["test_rows"], sample_eval=sample_eval, execution=execution)
    return _with_run_folders(jobs, Path(o["results_dir"]), o["resume"] or "auto",
                             o["checkpoint_every"], o["checkpoint_minutes"],
                             o["explosion_factor"])


def _print_plan(jobs: list, as_json: bool) -> None:
    from bench.harness.planning.plan import plan_table

    rows = plan_table(jobs)
    from bench.launch.estimate import plan_estimates  # measured runs of each configuration

    for row, est in zip(rows, plan_estimates(jobs), strict=True):
        row["estimate"] = est.text()
    if as_json:  # with the job key: a job's identity (lab.plan gives the same one)
        rows = [{**row, "job key": j.work_dir.name} for row, j in zip(rows, jobs, strict=True)]
        click.echo(json.dumps(rows, indent=1, default=str))
    else:
        from tabulate import tabulate

        click.echo(tabulate(rows, headers="keys", tablefmt="github"))
        click.echo(f"{len(jobs)} job(s) planned; nothing was run", err=True)


def _submit_local(specs: list, registry, o: dict[str, Any]) -> tuple[list, bool]:
    """The specs run in this process: (records, whether this is the main rank)."""
    from bench.harness.training.distributed import launch_env, main_rank_sinks
    from bench.harness.training.signals import RunInterrupted, catch_stops
    from bench.launch.local import LocalLauncher

    new_sink, uri = sink_factory(o["results_dir"], o["tracking_uri"], o["experiment"])
    main_rank = launch_env().is_main

    def said(spec, record) -> None:
        if not main_rank:
            return
        if record.status != "FINISHED":
            click.echo(f"error: {spec.label}: {record.status}: {record.failure}", err=True)
        elif not o["as_json"]:
            click.echo(result_line(record))

    launcher = LocalLauncher(main_rank_sinks(new_sink), registry=registry, on_record=said,
                             progress=progress_factory(o["quiet"] or o["as_json"]
                                                       or not main_rank))
    with catch_stops():
        try:
            records = launcher.submit(specs)
        except RunInterrupted as exc:
            spec = launcher.current
            click.echo(f"error: {spec.label}: KILLED ({exc}); its checkpoint is in "
                       f"{spec.work_dir}: run the same command again to resume", err=True)
            sys.exit(exc.exit_code)
    if main_rank and not o["quiet"] and not o["as_json"]:
        click.echo(f"recorded in {uri} (experiment {o['experiment']!r})", err=True)
    return records, main_rank


def _submit_ray(specs: list, o: dict[str, Any]) -> list:
    """The specs as Ray tasks, recording into the store the options name."""
    from bench.launch.ray import RayLauncher, import_ray
    from bench.record.mlflow_sink import usable_dir
    from bench.record.stores import store_uri

    import_ray()  # a missing Ray fails before anything else
    results = usable_dir(Path(o["results_dir"])).resolve()
    uri = store_uri(o["tracking_uri"], results)
    sink_factory(str(results), uri, o["experiment"])  # checked; store and experiment made
    where = f"the Ray cluster at {o['address']}" if o["address"] else "a local Ray cluster"
    click.echo(f"{len(specs)} job(s) to {where}; recording in {uri}", err=True)
    launcher = RayLauncher({"uri": uri, "experiment": o["experiment"],
                            "results": str(results)}, address=o["address"],
                           echo=None if o["quiet"] else lambda s: click.echo(s, err=True))
    records = launcher.submit(specs)
    if not o["as_json"]:
        for r in records:
            if r.status == "FINISHED":
                click.echo(result_line(r))
    return records


def _with_run_folders(jobs, results: Path, resume: str, checkpoint_every,
                      checkpoint_minutes, explosion_factor) -> list:
    """Each job with its run folder ``results/runs/<job key>``, checkpoint and resume policy
    and divergence bound (validated here, in the plan phase); with ``resume="require"``
    every job must have a run to resume."""
    import dataclasses

    from bench.api import ConfigError
    from bench.harness.training.runfolder import RunFolder, job_key

    out = []
    for job in jobs:
        job = dataclasses.replace(
            job, budget=dataclasses.replace(job.budget, explosion_factor=explosion_factor),
            checkpoint_every=checkpoint_every, checkpoint_minutes=checkpoint_minutes,
            resume=resume)
        job = dataclasses.replace(job, work_dir=results / "runs" / job_key(job))
        if resume == "require" and not RunFolder(job.work_dir).resumable():
            raise ConfigError(f"--resume: nothing to resume for {job.label or job.name}: "
                              f"{RunFolder(job.work_dir).describe()} ({job.work_dir})")
        out.append(job)
    return out


def _json(r) -> dict:
    return {"run_id": r.run_id, "method": r.method, "dataset": r.dataset, "seed": r.seed,
            "status": r.status, "failure": r.failure, **r.metrics}


def result_line(r) -> str:
    """One line of a finished run: its headline metrics as their specs say (unit, kind,
    se, variants, reference; `bench.api.metric_specs`), then the training's time."""
    from bench.api.metric_specs import headline, specs_for
    from bench.api.scoring import find_spec

    m, specs = r.metrics, specs_for([r])
    parts = []
    for name in (n for n in headline(specs) if n in m):
        spec = specs[name]
        se = f" +- {m[name + '_se']:.2g}" if spec.se and name + "_se" in m else ""
        unit = f" {spec.unit}" if spec.unit != "none" else ""
        kind = f" ({r.tags[name + '.kind']})" if name + ".kind" in r.tags else ""
        parts.append(f"{name} {m[name]:.4g}{se}{unit}{kind}")
        parts += [f"{k[len(name) + 1:]} {m[k]:.4g}" for k in sorted(m)
                  if k != name and find_spec(k, specs) is spec and not k.endswith("_se")]
        if spec.reference in m:
            parts.append(f"{spec.reference} {m[spec.reference]:.4g}")
    parts.append(f"train {m.get('train_seconds', 0.0):.1f}s, "
                 f"{int(m.get('steps_done', 0))} steps")
    return f"{r.method} on {r.dataset} (seed {r.seed}): " + "; ".join(parts)
