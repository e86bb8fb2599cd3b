"""``bench run``: plan the grid, then run every job in isolation and record it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from bench.cli.common import (
    make_solver,
    progress_factory,
    registry_of,
    sink_factory,
    solver_options,
    store_options,
)
from bench.harness.planning.defaults import DEFAULTS

__all__ = ["run"]


@click.command()
@click.option("-m", "--method", "methods", multiple=True, required=True,
              help='Method selection, e.g. "interflow[lr=3e-4,interpolant=linear]" (repeatable).')
@click.option("-d", "--dataset", "datasets", multiple=True, required=True,
              help="Dataset selection, e.g. miniboone or \"gaussian[dim=8]\" (repeatable).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a parameter of the selected methods/datasets or of the shared "
                   "optimisation (lr, schedule, grad_clip, ema, ...); prefix method. or "
                   "dataset. to disambiguate.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds.")
@click.option("--steps", type=int, default=None,
              help="Training steps [default: the dataset's kind's, "
                   f"{DEFAULTS.budget_help('steps')}].")
@click.option("--max-seconds", type=float, default=None, help="Training wall-clock budget.")
@click.option("--eval-every", type=int, default=None,
              help="Validation NLL every N steps [default: the dataset's kind's, "
                   f"{DEFAULTS.budget_help('eval_every')}].")
@click.option("--patience", type=int, default=DEFAULTS.patience, show_default=True,
              help="Early stop after N evaluations without improvement.")
@click.option("--n-samples", type=int, default=DEFAULTS.n_samples, show_default=True,
              help="Samples drawn for the 2-D samples PNG.")
@click.option("--val-rows", type=int, default=None,
              help="Validate on the first N validation rows only [default: all].")
@click.option("--test-rows", type=int, default=None,
              help="Score the first N test rows only (recorded in the split tag) "
                   "[default: all].")
@click.option("--fid-samples", type=int, default=None,
              help="Generated images scored by FID/KID (0: off) [default: 1000 on images].")
@click.option("--fid-ref", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True, help="Split whose Inception features are FID's reference.")
@click.option("--fid-ref-rows", type=int, default=None,
              help="Use the first N images of the reference split [default: all].")
@click.option("--device", default="cpu", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32",
              show_default=True, help="Training autocast precision (evaluation is fp32).")
@click.option("--channels-last", is_flag=True, help="NHWC memory format for image training.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the method's modules for training.")
@solver_options
@click.option("--val-tol", type=float, default=DEFAULTS.val_tol, show_default=True,
              help="rtol = atol of the validation solves (the early-stopping signal); the "
                   "test NLL uses --rtol/--atol.")
@store_options
@click.option("--resume", "resume", flag_value="require", default=None,
              help="Continue each job from its checkpoint in <results-dir>/runs/<job key>/ "
                   "(an error if a job has none) [default: resume a job left KILLED or "
                   "RUNNING, else start afresh].")
@click.option("--fresh", "resume", flag_value="never",
              help="Start new runs, ignoring any checkpoint.")
@click.option("--checkpoint-every", type=int, default=None,
              help="Write the resumable checkpoint every N steps [default: at every "
                   "validation].")
@click.option("--checkpoint-minutes", type=float, default=DEFAULTS.checkpoint_minutes,
              show_default=True,
              help="Also write it every M minutes (0: off).")
@click.option("--explosion-factor", type=float, default=DEFAULTS.explosion_factor,
              show_default=True,
              help="Stop a run as diverged when a step's |loss| exceeds this factor x "
                   "max(1, |loss| of the first step); a non-finite loss always stops it "
                   "(0: only that).")
@click.option("--launcher", type=click.Choice(["local", "ray"]), default="local",
              show_default=True,
              help="Where the jobs run: in this process, or as Ray tasks (pip install "
                   "'bench[ray]').")
@click.option("--address", default=None,
              help="With --launcher ray: the cluster's address (auto, host:port) "
                   "[default: a new local cluster].")
@click.option("--dry-run", is_flag=True, help="Print the validated plan and stop.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@click.option("--json", "as_json", is_flag=True, help="Print the records (or plan) as JSON.")
@click.pass_context
def run(ctx, methods, datasets, sets, seeds, steps, max_seconds, eval_every, patience,
        n_samples, val_rows, test_rows, fid_samples, fid_ref, fid_ref_rows, device,
        precision, channels_last, compile_, solver, rtol, atol, divergence, probes, val_tol,
        data_dir,
        results_dir, tracking_uri, experiment, resume, checkpoint_every, checkpoint_minutes,
        explosion_factor, launcher, address, dry_run, quiet, as_json):
    """Train and evaluate every (method, dataset, seed) combination; record them in MLflow.

    The whole grid is validated before any data is read or any run is opened; each job then
    runs in isolation: a failed job is recorded FAILED with its reason and the others go
    on; the exit code is 1 if any failed or was killed. Each job runs in its own folder
    <results-dir>/runs/<job key>/ with periodic checkpoints; launching a job again resumes
    it when its last run was killed (--resume insists, --fresh starts afresh). Ctrl-C or
    SIGTERM checkpoints the running job, marks it KILLED and exits 130 / 143.
    """
    from bench.api import ConfigError, Execution, SampleEval
    from bench.harness.planning.plan import parse_seeds, parse_sets, plan_jobs, plan_table

    registry = registry_of(ctx)
    sample_eval = SampleEval(samples=fid_samples, reference=fid_ref,
                             reference_rows=fid_ref_rows)
    execution = Execution(precision=precision, channels_last=channels_last, compile=compile_)
    jobs = plan_jobs(registry, methods, datasets, parse_seeds(seeds), parse_sets(sets),
                     steps=steps, max_seconds=max_seconds, eval_every=eval_every,
                     patience=patience, solver=make_solver(solver, rtol, atol, divergence,
                                                           probes, val_tol),
                     device=device, data_dir=Path(data_dir) if data_dir else None,
                     n_samples=n_samples, val_rows=val_rows, test_rows=test_rows,
                     sample_eval=sample_eval, execution=execution)
    jobs = _with_run_folders(jobs, Path(results_dir), resume or "auto", checkpoint_every,
                             checkpoint_minutes, explosion_factor)
    if dry_run:
        rows = plan_table(jobs)
        if as_json:  # with the job key: a job's identity (lab.plan gives the same one)
            rows = [{**row, "job key": j.work_dir.name} for row, j in zip(rows, jobs,
                                                                         strict=True)]
            click.echo(json.dumps(rows, indent=1, default=str))
        else:
            from tabulate import tabulate

            click.echo(tabulate(rows, headers="keys", tablefmt="github"))
            click.echo(f"{len(jobs)} job(s) planned; nothing was run", err=True)
        return
    if address and launcher != "ray":
        raise ConfigError("--address needs --launcher ray")
    if launcher == "ray":
        from bench.launch.ray_grid import launch_ray

        sys.exit(launch_ray(ctx, jobs, address=address, as_json=as_json, quiet=quiet))
    from bench.harness.running.run import run_job
    from bench.harness.training.distributed import launch_env, main_rank_sinks

    new_sink, uri = sink_factory(results_dir, tracking_uri, experiment)
    main_rank = launch_env().is_main  # under torchrun only rank 0 records and prints
    new_sink = main_rank_sinks(new_sink)
    progress = progress_factory(quiet or as_json or not main_rank)
    from bench.api import BenchError
    from bench.harness.training.signals import RunInterrupted, catch_stops

    records, failed = [], []
    with catch_stops():
        for job in jobs:
            try:
                record = run_job(job, new_sink(), progress)
            except RunInterrupted as exc:
                click.echo(f"error: {job.label}: KILLED ({exc}); its checkpoint is in "
                           f"{job.work_dir}: run the same command again to resume", err=True)
                sys.exit(exc.exit_code)
            except (BenchError, OSError) as exc:  # this job could not start (locked, nothing
                failed.append((job, None))        # to resume, a full disk): the grid goes on
                from bench.harness.training.recorder import one_line

                click.echo(f"error: {job.label}: {one_line(exc)}", err=True)
                continue
            records.append(record)
            if record.status != "FINISHED":
                failed.append((job, record))
                if main_rank:
                    click.echo(f"error: {job.label}: {record.status}: {record.failure}",
                               err=True)
            elif not as_json and main_rank:
                click.echo(result_line(record))
    if not main_rank:
        sys.exit(1 if failed else 0)
    if as_json:
        click.echo(json.dumps([_json(r) for r in records], indent=1, default=float))
    elif not quiet:
        click.echo(f"recorded in {uri} (experiment {experiment!r})", err=True)
    if failed and len(jobs) > 1:  # one job: its own line above already said why
        click.echo(f"error: {len(failed)} of {len(jobs)} run(s) did not finish: "
                   + "; ".join(f"{j.label} ({r.status}: {r.failure})" if r is not None
                               else f"{j.label} (not started)" for j, r in failed),
                   err=True)
    if failed:
        sys.exit(1)


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
    m = r.metrics
    parts = []
    if "test_nll" in m:
        parts.append(f"test NLL {m['test_nll']:.3f} +- {m['test_nll_se']:.3f} nats")
    for k in sorted(m):
        if k.startswith("test_nll_") and not k.endswith(("_se", "_nfe", "_gap")):
            parts.append(f"{k[9:]} {m[k]:.3f}")
    if "test_bpd" in m:
        parts.append(f"{m['test_bpd']:.3f} bits/dim")
    if "fid" in m:
        parts.append(f"FID {m['fid']:.2f} (n={int(m.get('fid_n_samples', 0))}), "
                     f"KID {m.get('kid', float('nan')):.4f}")
    if "true_test_nll" in m:
        parts.append(f"true {m['true_test_nll']:.3f}")
    parts.append(f"train {m.get('train_seconds', 0.0):.1f}s, "
                 f"{int(m.get('steps_done', 0))} steps")
    return f"{r.method} on {r.dataset} (seed {r.seed}): " + "; ".join(parts)
