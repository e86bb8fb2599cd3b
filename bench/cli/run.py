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
              help="Training steps [default: the dataset's, 5000 tabular, 15000 2-D].")
@click.option("--max-seconds", type=float, default=None, help="Training wall-clock budget.")
@click.option("--eval-every", type=int, default=None,
              help="Validation NLL every N steps [default: the dataset's, 250 tabular, "
                   "1000 2-D].")
@click.option("--patience", type=int, default=8, show_default=True,
              help="Early stop after N evaluations without improvement.")
@click.option("--n-samples", type=int, default=20000, show_default=True,
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
@click.option("--val-tol", type=float, default=1e-3, show_default=True,
              help="rtol = atol of the validation solves (the early-stopping signal); the "
                   "test NLL uses --rtol/--atol.")
@store_options
@click.option("--dry-run", is_flag=True, help="Print the validated plan and stop.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@click.option("--json", "as_json", is_flag=True, help="Print the records (or plan) as JSON.")
@click.pass_context
def run(ctx, methods, datasets, sets, seeds, steps, max_seconds, eval_every, patience,
        n_samples, val_rows, test_rows, fid_samples, fid_ref, fid_ref_rows, device,
        precision, channels_last, compile_, solver, rtol, atol, divergence, probes, val_tol,
        data_dir,
        results_dir, tracking_uri, experiment, dry_run, quiet, as_json):
    """Train and evaluate every (method, dataset, seed) combination; record them in MLflow.

    The whole grid is validated before any data is read or any run is opened; each job then
    runs in isolation: a failed job is recorded FAILED with its reason and the others go
    on; the exit code is 1 if any failed.
    """
    from bench.api import Execution, SampleEval
    from bench.harness.plan import parse_seeds, parse_sets, plan_jobs, plan_table

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
    if dry_run:
        rows = plan_table(jobs)
        if as_json:
            click.echo(json.dumps(rows, indent=1, default=str))
        else:
            from tabulate import tabulate

            click.echo(tabulate(rows, headers="keys", tablefmt="github"))
            click.echo(f"{len(jobs)} job(s) planned; nothing was run", err=True)
        return
    from bench.harness.distributed import launch_env, main_rank_sinks
    from bench.harness.run import run_job

    new_sink, uri = sink_factory(results_dir, tracking_uri, experiment)
    main_rank = launch_env().is_main  # under torchrun only rank 0 records and prints
    new_sink = main_rank_sinks(new_sink)
    progress = progress_factory(quiet or as_json or not main_rank)
    records, failed = [], []
    for job in jobs:
        record = run_job(job, new_sink(), progress)
        records.append(record)
        if record.status != "FINISHED":
            failed.append((job, record))
            if main_rank:
                click.echo(f"error: {job.label}: {record.status}: {record.failure}", err=True)
        elif not as_json and main_rank:
            click.echo(result_line(record))
    if not main_rank:
        sys.exit(1 if failed else 0)
    if as_json:
        click.echo(json.dumps([_json(r) for r in records], indent=1, default=float))
    elif not quiet:
        click.echo(f"recorded in {uri} (experiment {experiment!r})", err=True)
    if failed:
        click.echo(f"error: {len(failed)} of {len(jobs)} run(s) did not finish: "
                   + "; ".join(f"{j.label} ({r.status}: {r.failure})" for j, r in failed),
                   err=True)
        sys.exit(1)


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
