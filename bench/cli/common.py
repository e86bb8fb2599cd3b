"""What the commands share: the registry of the invocation, option groups, the solver, the
sink and progress factories."""

from __future__ import annotations

from pathlib import Path

import click

from bench.harness.planning.defaults import DEFAULTS

__all__ = ["registry_of", "solver_options", "store_options", "make_solver", "sink_factory",
           "progress_factory"]


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
                     help="MLflow URI: a SQLite file (default results/mlflow.db) or a team "
                          "server, http://HOST:PORT (checked before anything runs; if it "
                          "dies mid-run, the run continues in results/fallback/mlflow.db)."),
        click.option("--experiment", default="bench", show_default=True),
    ]):
        f = opt(f)
    return f


def make_solver(solver, rtol, atol, divergence, probes, val_tol=None):
    from bench.api import SolverConfig

    return SolverConfig(method=solver, rtol=rtol, atol=atol, divergence=divergence,
                        n_probes=probes, val_tol=val_tol)


def sink_factory(results_dir: str, tracking_uri: str | None, experiment: str):
    """A function returning a fresh MLflow sink per run, and the store's URI.

    The store is checked here (`check_tracking_uri`: an HTTP server within seconds; a
    SQLite store opened, created if new, and its folder writable): call this before reading
    any data, so an unusable store stops the command at once (ConfigError, exit 2). Sinks
    on a server fall back to ``results_dir/fallback/mlflow.db`` when it dies mid-run.
    """
    from bench.record.mlflow_sink import default_tracking_uri, usable_dir
    from bench.record.store import check_tracking_uri, check_writable, is_http, make_client

    results = usable_dir(Path(results_dir))  # the run folders live there
    uri = default_tracking_uri(results) if tracking_uri is None else tracking_uri
    check_tracking_uri(uri)
    make_client(uri)  # a store that cannot be opened or written: one line, exit 2, now
    check_writable(uri)
    fallback = results / "fallback" if is_http(uri) else None

    def new_sink():
        from bench.record.mlflow_sink import MlflowSink

        # a server's experiment keeps its artifacts where the server says (shared)
        return MlflowSink(uri, experiment, fallback_dir=fallback,
                          artifact_root=None if fallback else results / "artifacts")

    return new_sink, uri


def progress_factory(quiet: bool):
    if quiet:
        return None
    from bench.harness.training.progress import make_progress

    return lambda total, desc: make_progress(total, desc)
