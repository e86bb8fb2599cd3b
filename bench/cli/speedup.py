"""``bench speedup``: per-iteration training cost of methods trained with the same network and
batch on the same machine, back to back (at the start, half and end of training), and their
wall-clock to a target validation NLL, bracketed by a geometric grid of validations (the
analysis lives in `bench.record.speedup`)."""

from __future__ import annotations

import math
from pathlib import Path

import click

from bench.api.errors import BenchError, ConfigError
from bench.cli.common import (
    make_solver,
    progress_factory,
    registry_of,
    sink_factory,
    solver_options,
)

__all__ = ["speedup"]

SHARED = ("net", "hidden", "activation", "batch_size")


def _check_shared(registry, methods: list[str], shared: dict[str, str | None]) -> None:
    """Plan phase: every method must declare every shared parameter (before any data)."""
    from bench.harness.planning.selection import param_fields, parse_selection

    for sel in methods:
        name = parse_selection(sel)[0]
        fields = param_fields(registry.get("method", name).Params)
        missing = [k for k in shared if k not in fields]
        if missing:
            raise ConfigError(f"method {name!r} has no parameter {missing[0]!r}: it cannot "
                              f"share the network and batch of the study "
                              f"(shared: {', '.join(shared)})")


@click.command()
@click.option("-d", "--dataset", required=True, help="Dataset selection.")
@click.option("-m", "--method", "methods", multiple=True, default=("interflow", "cnf"),
              show_default=True, help="Methods to compare (the first is the reference).")
@click.option("--budget", type=float, default=600, show_default=True,
              help="Total training seconds, split equally between the methods.")
@click.option("--steps", type=int, default=None, help="Optional cap on steps per method.")
@click.option("--net", default="concatsquash", show_default=True, help="Shared network type.")
@click.option("--hidden", default=None, help="Shared hidden widths, e.g. (860,860); "
              "default: --n-hidden layers of --hidden-mult x data dimension (FFJORD's rule).")
@click.option("--hidden-mult", type=int, default=20, show_default=True)
@click.option("--n-hidden", type=int, default=2, show_default=True)
@click.option("--activation", default="softplus", show_default=True)
@click.option("--batch-size", type=int, default=1000, show_default=True)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Further parameter overrides (as for run).")
@click.option("--evals", type=int, default=10, show_default=True,
              help="Validations per method at training times geometric from --first-eval "
              "to the per-method budget.")
@click.option("--first-eval", type=float, default=1.0, show_default=True,
              help="Training seconds of the first grid validation.")
@click.option("--first-step-eval/--no-first-step-eval", default=True, show_default=True,
              help="Also validate after the first training step (brackets a crossing "
              "faster than --first-eval).")
@click.option("--val-rows", type=int, default=None,
              help="Validate on the first N validation rows (cheaper; default all).")
@click.option("--target", type=float, default=None,
              help="Target validation NLL (default: the worst best-val NLL among the methods).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--test/--no-test", "with_test", default=False, show_default=True,
              help="Also evaluate the test NLL of each method's best checkpoint.")
@solver_options
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option("--results-dir", type=click.Path(file_okay=False), default="results",
              show_default=True)
@click.option("--tracking-uri", default=None)
@click.option("--experiment", default="bench", show_default=True)
@click.option("-q", "--quiet", is_flag=True)
@click.pass_context
def speedup(ctx, dataset, methods, budget, steps, net, hidden, hidden_mult, n_hidden,
            activation, batch_size, sets, evals, first_eval, first_step_eval, val_rows, target,
            seed, device, with_test, solver, rtol, atol, divergence, probes, data_dir,
            results_dir, tracking_uri, experiment, quiet):
    """Per-iteration cost (start, half, end) and bracketed time-to-target of methods sharing
    one network and batch."""
    from bench.harness.planning.plan import parse_sets
    from bench.record.speedup import eval_grid, from_record, speedup_table
    from bench.record.tables import render

    methods = list(methods)
    if budget <= 0 or evals < 1 or len(methods) < 2:
        raise ConfigError("speedup needs --budget > 0, --evals >= 1 and at least two methods")
    registry = registry_of(ctx)
    shared = {"net": net, "hidden": hidden, "activation": activation,
              "batch_size": str(batch_size)}
    _check_shared(registry, methods, shared)
    per_method = budget / len(methods)
    # validations after the first step and geometric from --first-eval to the budget: dense
    # early, so that a fast method's crossing of the target is bracketed
    times = eval_grid(per_method, first_eval, evals, first_step_eval)
    data_path = Path(data_dir) if data_dir else None
    plan = dict(steps=steps, max_seconds=per_method, eval_at_seconds=times, patience=10**9,
                val_rows=val_rows,
                solver=make_solver(solver, rtol, atol, divergence, probes), device=device,
                data_dir=data_path, evaluate_test=with_test, n_samples=0)
    jobs, ds = _plan_study(registry, methods, dataset, seed, shared, parse_sets(sets), plan,
                           (hidden_mult, n_hidden))
    new_sink, uri = sink_factory(results_dir, tracking_uri, experiment)
    records = _train(jobs, new_sink, progress_factory(quiet), per_method, ds.name, shared)
    results = [from_record(r) for r in records]
    tab, tgt, note = speedup_table(results, per_method, target)
    test_nll = {r.method: r.metrics["test_nll"] for r in records if "test_nll" in r.metrics}
    if test_nll:
        tab["test_nll"] = [test_nll.get(m, math.nan) for m in tab.index]
    grid = ", ".join(f"{t:.3g}" for t in times)
    files = _write_outputs(tab, results, tgt, Path(results_dir) / "speedup", ds.name,
                           f"{note}; budget {per_method:.0f} s training per method; "
                           f"validations at training seconds {grid} (0: after the first "
                           f"step); device {device}")
    _record_study(new_sink(), ds.name, tab, tgt, files, records,
                  {"study": "speedup", "dataset": ds.name, "methods": ",".join(methods),
                   "budget": budget, "eval_at_seconds": grid, "target": target,
                   **{f"shared_{k}": v for k, v in shared.items()}}, note)
    click.echo(render(tab[_shown_columns(tab)], "markdown"))
    click.echo(f"{note}; written {', '.join(str(f) for f in files)}; recorded in {uri}",
               err=True)


def _plan_study(registry, methods, dataset, seed, shared, own, plan, width):
    """Validate the whole study (with a provisional width) before any data is read, then fix
    FFJORD's width rule (``hidden_mult`` x data dimension, ``n_hidden`` layers) from the data
    when no ``--hidden`` was given; returns the jobs and the dataset."""
    from bench.harness.planning.plan import plan_jobs, resolve_dataset

    plan_jobs(registry, methods, [dataset], [seed],
              [(k, v) for k, v in shared.items() if v is not None] + own, **plan)
    d_cls, d_params = resolve_dataset(registry, dataset)
    ds = d_cls(d_params, data_dir=plan["data_dir"])
    if not shared["hidden"]:
        hidden_mult, n_hidden = width
        shared["hidden"] = "(" + ",".join([str(hidden_mult * ds.splits().dim)] * n_hidden) + ")"
    jobs = plan_jobs(registry, methods, [dataset], [seed],
                     [(k, v) for k, v in shared.items()] + own, **plan)
    return jobs, ds


def _train(jobs, new_sink, progress, per_method: float, dataset: str, shared: dict) -> list:
    """Train each method in turn; the study stops at the first run that does not finish."""
    from bench.harness.running.run import run_job

    records = []
    for job in jobs:
        click.echo(f"training {job.method} for {per_method:.0f} s on {dataset} (net "
                   f"{shared['net']} {shared['hidden']}, batch {shared['batch_size']})",
                   err=True)
        record = run_job(job, new_sink(), progress)
        if record.status != "FINISHED":
            raise BenchError(f"the study stops: {job.label}: {record.status}: "
                             f"{record.failure}")
        records.append(record)
    return records


def _write_outputs(tab, results, tgt, out_dir: Path, dataset: str, header: str) -> list[Path]:
    """The study's table (markdown with its header line, CSV) and plot."""
    from bench.record.speedup import plot, stamp
    from bench.record.tables import render

    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"{dataset}-{stamp()}"
    md, csv = Path(f"{base}.md"), Path(f"{base}.csv")
    md.write_text(f"# speed-up study on {dataset}\n\n{header}\n\n{render(tab, 'markdown')}\n")
    tab.to_csv(csv)
    return [md, csv, plot(results, tgt, Path(f"{base}.png"))]


def _study_metrics(tab, tgt: float) -> dict[str, float]:
    """The parent run's metrics: cost ratios (overall and at each named point), seconds per
    iteration and the bracketed times to target, per method, against the first method."""
    from bench.record.speedup import NAMED_POINTS

    base = tab.index[0]
    metrics = {"target_val_nll": tgt}
    for m in tab.index:
        metrics[f"cost_ratio_{m}"] = tab.loc[m, f"cost_ratio_vs_{base}"]
        for point in NAMED_POINTS:
            metrics[f"cost_ratio_{point}_{m}"] = tab.loc[m, f"cost_ratio_{point}_vs_{base}"]
            metrics[f"s_per_it_{point}_{m}"] = tab.loc[m, f"s_per_it_{point}"]
        for col in ("time_to_target_s", "time_to_target_lo_s", "time_to_target_hi_s",
                    f"time_to_target_ratio_vs_{base}", "time_to_target_ratio_lo",
                    "time_to_target_ratio_hi"):
            metrics[f"{col.replace(f'_vs_{base}', '')}_{m}"] = tab.loc[m, col]
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


def _record_study(parent, dataset: str, tab, tgt: float, files: list[Path], records: list,
                  params: dict, note: str) -> None:
    """One parent run for the study: its parameters, the child runs, files and figures."""
    parent.start(f"speedup-{dataset}", params,
                 {"child_runs": ",".join(r.run_id or "" for r in records),
                  "target_note": note})
    for f in files:
        parent.log_artifact(f)
    parent.log_metrics(_study_metrics(tab, tgt))
    parent.set_tags({f"{col}_{m}": str(tab.loc[m, col]) for m in tab.index
                     for col in ("time_to_target", "time_to_target_bound",
                                 "time_to_target_ratio", "time_to_target_ratio_bound")})
    parent.end("FINISHED")


def _shown_columns(tab) -> list[str]:
    from bench.record.speedup import NAMED_POINTS

    base = tab.index[0]
    return [c for c in ("parameters", "steps", "s_per_it_median", "s_per_it_start",
                        "s_per_it_half", "s_per_it_end", "cost_growth",
                        "nfe_forward_last10pct", "nfe_backward_last10pct", "best_val_nll",
                        "time_to_target", f"cost_ratio_vs_{base}",
                        *(f"cost_ratio_{p}_vs_{base}" for p in NAMED_POINTS),
                        "time_to_target_ratio") if c in tab.columns]
