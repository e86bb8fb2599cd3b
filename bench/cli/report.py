"""``bench report``: one markdown report of a tracking store (tables, speed-up studies,
validation NLL against wall-clock, cost per iteration, samples), images beside it (the work
lives in `bench.record.report`)."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["report"]


@click.command()
@click.option("--results-dir", type=click.Path(file_okay=False), default="results",
              show_default=True)
@click.option("--tracking-uri", default=None,
              help="The store to read: an MLflow URI (default results/mlflow.db) or "
                   "jsonl://FOLDER.")
@click.option("--experiment", default="bench", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder for report.md and its images [default: "
                   "<results-dir>/report].")
def report(results_dir, tracking_uri, experiment, out_dir):
    """Write a markdown report of the recorded runs, with its plots beside it."""
    from bench.cli.common import source_of
    from bench.record.report import load, write_report

    source = source_of(results_dir, tracking_uri)  # an unreachable store: one line, now
    out = Path(out_dir) if out_dir else Path(results_dir) / "report"
    path = write_report(load(source, experiment), out,
                        source=f"{source.uri} (experiment {experiment})")
    click.echo(str(path))
