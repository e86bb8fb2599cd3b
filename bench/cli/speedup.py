"""``bench speedup``: per-iteration training cost of methods trained with the same network and
batch on the same machine, back to back, and their wall-clock to a target validation NLL
(the analysis lives in `bench.record.speedup`)."""

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
    from bench.harness.selection import param_fields, parse_selection

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
@click.option("--evals", type=int, default=8, show_default=True,
              help="Validation evaluations per method, at training times budget/2^k.")
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
            activation, batch_size, sets, evals, target, seed, device, with_test, solver, rtol,
            atol, divergence, probes, data_dir, results_dir, tracking_uri, experiment, quiet):
    """Per-iteration cost and time-to-target of methods sharing one network and batch."""
    from bench.harness.plan import parse_sets, plan_jobs, resolve_dataset
    from bench.harness.run import run_job
    from bench.record.speedup import from_record, plot, speedup_table, stamp
    from bench.record.tables import render

    methods = list(methods)
    if budget <= 0 or evals < 1 or len(methods) < 2:
        raise ConfigError("speedup needs --budget > 0, --evals >= 1 and at least two methods")
    registry = registry_of(ctx)
    shared = {"net": net, "hidden": hidden, "activation": activation,
              "batch_size": str(batch_size)}
    _check_shared(registry, methods, shared)
    per_method = budget / len(methods)
    # evaluations at geometrically spaced training times (budget/2^k, ..., budget/2, budget):
    # the early ones resolve the time to reach the target of a fast method
    times = tuple(per_method / 2**k for k in range(evals - 1, -1, -1))
    data_path = Path(data_dir) if data_dir else None
    plan = dict(steps=steps, max_seconds=per_method, eval_at_seconds=times, patience=10**9,
                solver=make_solver(solver, rtol, atol, divergence, probes), device=device,
                data_dir=data_path, evaluate_test=with_test, n_samples=0)
    own = parse_sets(sets)
    # validate the whole study (with a provisional width) before any data is read
    plan_jobs(registry, methods, [dataset], [seed],
              [(k, v) for k, v in shared.items() if v is not None] + own, **plan)
    d_cls, d_params = resolve_dataset(registry, dataset)
    ds = d_cls(d_params, data_dir=data_path)
    if not shared["hidden"]:
        shared["hidden"] = "(" + ",".join([str(hidden_mult * ds.splits().dim)] * n_hidden) + ")"
    jobs = plan_jobs(registry, methods, [dataset], [seed],
                     [(k, v) for k, v in shared.items()] + own, **plan)
    new_sink, uri = sink_factory(results_dir, tracking_uri, experiment)
    progress = progress_factory(quiet)
    results, test_nll = [], {}
    for job in jobs:
        click.echo(f"training {job.method} for {per_method:.0f} s on {ds.name} (net {net} "
                   f"{shared['hidden']}, batch {batch_size})", err=True)
        record = run_job(job, new_sink(), progress)
        if record.status != "FINISHED":
            raise BenchError(f"the study stops: {job.label}: {record.status}: "
                             f"{record.failure}")
        results.append(from_record(record))
        if "test_nll" in record.metrics:
            test_nll[record.method] = record.metrics["test_nll"]
    tab, tgt, note = speedup_table(results, per_method, target)
    if test_nll:
        tab["test_nll"] = [test_nll.get(m, math.nan) for m in tab.index]
    out_dir = Path(results_dir) / "speedup"
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"{ds.name}-{stamp()}"
    md, csv = Path(f"{base}.md"), Path(f"{base}.csv")
    md.write_text(f"# speed-up study on {ds.name}\n\n{note}; budget {per_method:.0f} s "
                  f"training per method; device {device}\n\n{render(tab, 'markdown')}\n")
    tab.to_csv(csv)
    png = plot(results, tgt, Path(f"{base}.png"))
    parent = new_sink()
    parent.start(f"speedup-{ds.name}", {"study": "speedup", "dataset": ds.name,
                                         "methods": ",".join(methods), "budget": budget,
                                         **{f"shared_{k}": v for k, v in shared.items()}},
                 {"child_runs": ",".join(r.run_id or "" for r in results),
                  "target_note": note})
    for p in (md, csv, png):
        parent.log_artifact(p)
    ratio_col = [c for c in tab.columns if c.startswith("cost_ratio")][0]
    parent.log_metrics({f"cost_ratio_{m}": float(tab.loc[m, ratio_col]) for m in tab.index})
    parent.end("FINISHED")
    cols = [c for c in ("parameters", "steps", "s_per_it_median", "s_per_it_min",
                        "s_per_it_max", "cost_growth", "nfe_forward_last10pct",
                        "nfe_backward_last10pct", "best_val_nll", "time_to_target")
            if c in tab.columns]
    click.echo(render(tab[cols + [c for c in tab.columns if "ratio" in c]], "markdown"))
    click.echo(f"{note}; written {md}, {csv}, {png}; recorded in {uri}", err=True)
