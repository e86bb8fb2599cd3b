"""What the commands share: the registry of the invocation, option groups, the solver, the
sink and progress factories."""

from __future__ import annotations

from pathlib import Path

import click

from bench.harness.planning.defaults import DEFAULTS

__all__ = ["registry_of", "solver_options", "store_options", "make_solver", "sink_factory",
           "source_of", "progress_factory"]


def registry_of(ctx):
    from bench.harness.planning.registry import Registry

    root = ctx.find_root()
    return Registry(extra_dirs=list((root.obj or {}).get("plugins", ())))


def solver_options(f):
    """The evaluation solver options shared by run and speedup."""
    for opt in reversed([
        click.option("--solver", default=DEFAULTS.solver, show_default=True,
                     help="Eval ODE solver."),
        click.option("--rtol", type=float, default=DEFAULTS.rtol, show_default=True,
                     help="Eval ODE rtol."),
        click.option("--atol", type=float, default=DEFAULTS.atol, show_default=True,
                     help="Eval ODE atol."),
        click.option("--divergence", type=click.Choice(["auto", "exact", "hutchinson"]),
                     default=DEFAULTS.divergence, show_default=True,
                     help="Eval divergence; auto: exact up to 128 dimensions, Hutchinson "
                          "above (labelled an estimate)."),
        click.option("--probes", type=int, default=DEFAULTS.probes, show_default=True,
                     help="Hutchinson probes per solve."),
    ]):
        f = opt(f)
    return f


def store_options(f):
    for opt in reversed([
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Data root (default BENCH_DATA_DIR or ~/.cache/bench/data)."),
        click.option("--results-dir", type=click.Path(file_okay=False), default="results",
                     show_default=True),
        click.option("--tracking-uri", default=None,
                     help="Where runs are recorded: an MLflow URI, a SQLite file (default "
                          "results/mlflow.db) or a team server, http://HOST:PORT (checked "
                          "before anything runs; if it dies mid-run, the run continues in "
                          "results/fallback/mlflow.db); or jsonl://FOLDER, a folder of "
                          "JSON-lines files (jsonl:///abs/path)."),
        click.option("--experiment", default="bench", show_default=True),
    ]):
        f = opt(f)
    return f


def make_solver(solver, rtol, atol, divergence, probes, val_tol=None):
    from bench.api import SolverConfig

    return SolverConfig(method=solver, rtol=rtol, atol=atol, divergence=divergence,
                        n_probes=probes, val_tol=val_tol)


def sink_factory(results_dir: str, tracking_uri: str | None, experiment: str):
    """A function returning a fresh sink per run, and the store's URI: ``jsonl://FOLDER``
    (a folder of JSON-lines files) or an MLflow store (default ``results_dir/mlflow.db``).

    The store is checked here (`bench.record.stores.sink_factory`: an HTTP server within
    seconds; a SQLite store opened, created if new; the folder writable): call this before
    reading any data, so an unusable store stops the command at once (ConfigError, exit 2).
    Sinks on a server fall back to ``results_dir/fallback/mlflow.db`` when it dies mid-run.
    """
    from bench.record.mlflow_sink import usable_dir
    from bench.record.stores import sink_factory as factory
    from bench.record.stores import store_uri

    results = usable_dir(Path(results_dir))  # the run folders live there
    uri = store_uri(tracking_uri, results)
    return factory(uri, experiment, results), uri


def source_of(results_dir: str, tracking_uri: str | None):
    """The recorded runs of ``--tracking-uri`` (default ``results_dir/mlflow.db``) as a
    `bench.api.records.Source`; an unreachable server or a missing JSON-lines folder is
    one line (ConfigError) within seconds."""
    from bench.record.stores import open_source, store_uri

    return open_source(store_uri(tracking_uri, Path(results_dir)))


def progress_factory(quiet: bool):
    if quiet:
        return None
    from bench.harness.training.progress import make_progress

    return lambda total, desc: make_progress(total, desc)
