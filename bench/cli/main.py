"""The ``bench`` command group: run, list, table, speedup, check.

Importing this module is cheap: torch, mlflow and the plug-ins load inside the commands,
so ``bench --help`` answers at once. This is the only place that maps errors to exit codes:
a `ConfigError` (bad selection, parameter, budget) exits 2, any other bench error 1, each
with one line on stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from bench.api.errors import BenchError, ConfigError
from bench.cli.common import registry_of

__all__ = ["main"]


class _Group(click.Group):
    """Turns errors into one line on stderr and an exit code (2 for usage errors)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except BenchError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugins", multiple=True, type=click.Path(file_okay=False),
              help="Extra plug-in folder (repeatable; also BENCH_PLUGINS).")
@click.option("-v", "--verbose", count=True, help="More logging.")
@click.version_option(package_name="ctgen-bench")
@click.pass_context
def main(ctx, plugins, verbose):
    """bench: train and compare continuous-time generative models (InterFlow, CNF, DDPM)."""
    logging.basicConfig(level=logging.WARNING - 10 * verbose, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = {"plugins": plugins}


def _choices(params_cls: type) -> dict[str, list[str]]:
    """Field -> its allowed values, for the fields typed ``Literal[...]`` (or an optional
    one): what ``bench list`` shows beside each default."""
    import types
    import typing

    from bench.harness.planning.selection import param_fields

    out = {}
    for name, tp in param_fields(params_cls).items():
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
        if typing.get_origin(tp) is typing.Literal:
            out[name] = [str(a) for a in typing.get_args(tp)]
    return out


#: the plug-in kinds in the order ``bench list`` shows them (a kind the registry lacks is skipped)
LIST_KINDS = ("method", "dataset", "scorer")


def _plugin_row(kind: str, name: str, p) -> dict:
    """What ``bench list`` knows of one plug-in: name, source, and when it loads its
    description and parameters (defaults, allowed values, domains), else the reason."""
    import dataclasses

    from bench.harness.planning.selection import domains

    row = {"kind": kind, "name": name, "available": p.available, "source": p.source}
    if not p.available:
        return row | {"reason": p.error}
    params = getattr(p.cls, "Params", None)
    describe = getattr(p.cls, "describe", None)
    row["description"] = describe() if callable(describe) else (p.cls.__doc__ or "").strip(
        ).split("\n")[0]
    if params is not None and dataclasses.is_dataclass(params):
        row["params"] = {f.name: (f.default if f.default is not dataclasses.MISSING else None)
                         for f in dataclasses.fields(params)}
        row["choices"] = _choices(params)
        row["domains"] = domains(params)
    if kind == "method":
        row["optim"] = p.cls.optim
    if kind == "scorer":
        row["metrics"] = [s.name for s in p.cls.specs]
    return row


def _detail_lines(r: dict, params_cls) -> list[str]:
    """The parameter lines of one plug-in (``bench list -v`` / ``bench list NAME``)."""
    from bench.harness.planning.selection import domains

    lines = []
    if r.get("params"):
        shown = domains(params_cls, short=True)
        ps = ", ".join(f"{k}={v}" + (f" ({'|'.join(r['choices'][k])})" if k in r["choices"]
                                     else "") + (f" ({shown[k]})" if k in shown else "")
                       for k, v in r["params"].items())
        lines.append(f"  {'':<14} [{ps}]")
    if r.get("optim"):
        lines.append(f"  {'':<14} optimisation defaults: "
                     + ", ".join(f"{k}={v}" for k, v in r["optim"].items()))
    return lines


@main.command("list")
@click.argument("name", required=False)
@click.option("-v", "--verbose", "verbose", is_flag=True,
              help="Show every plug-in's parameters (defaults, allowed values, domains).")
@click.option("--json", "as_json", is_flag=True, help="Everything, as JSON (pure JSON on stdout).")
@click.pass_context
def list_(ctx, name, verbose, as_json):
    """Show the plug-ins, one line each (unavailable ones with their reason); NAME or -v
    shows parameters too."""
    from bench.api import ConfigError
    from bench.harness.scoring.scorers import BUILTIN_SCORERS

    registry = registry_of(ctx)
    registry.add_builtin("scorer", BUILTIN_SCORERS, "built in (bench.harness.scoring.scorers)")
    kinds = [k for k in LIST_KINDS if k in registry.plugins]
    rows = [_plugin_row(kind, n, registry.plugins[kind][n])
            for kind in kinds for n in registry.names(kind) if name in (None, n)]
    if name is not None and not rows:
        from bench.harness.planning.selection import closest

        every = [n for k in kinds for n in registry.names(k)]
        raise ConfigError(f"no plug-in named {name!r}{closest(name, every)}")
    if as_json:
        click.echo(json.dumps(rows, indent=1, default=str))
        return
    for kind in kinds:
        shown = [r for r in rows if r["kind"] == kind]
        if name is not None and not shown:
            continue
        click.echo(f"{kind}s:")
        for r in shown:
            if not r["available"]:
                click.echo(f"  {r['name']:<14} UNAVAILABLE: {r['reason']}")
                continue
            click.echo(f"  {r['name']:<14} {r['description']}")
            if verbose or name is not None:
                cls = registry.plugins[kind][r["name"]].cls
                for line in _detail_lines(r, getattr(cls, "Params", None)):
                    click.echo(line)
    if verbose or name is not None:
        from bench.harness.planning.plan import OPTIM_FIELDS

        click.echo(f"shared optimisation settings (every method): {', '.join(OPTIM_FIELDS)}")
    else:
        click.echo("(bench list NAME or bench list -v: parameters, allowed values, domains)")


@main.command()
@click.option("--results-dir", type=click.Path(file_okay=False), default="results",
              show_default=True)
@click.option("--tracking-uri", default=None,
              help="The store to read: an MLflow URI (default results/mlflow.db) or "
                   "jsonl://FOLDER.")
@click.option("--experiment", default="bench", show_default=True)
@click.option("--metric", default="test_nll", show_default=True,
              help="Metric to tabulate (test_nll covers every likelihood of a run; any "
                   "recorded metric works, e.g. test_nll_gap, test_bpd, train_seconds).")
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv", "latex", "json"]),
              default="markdown", show_default=True, help="What to print.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Also write the table here (format from the extension: .md, .csv, .tex).")
@click.option("--reference", is_flag=True,
              help="Put the published numbers (results/reference/*.csv) beside ours, with "
                   "our split and data per column (test_nll, test_bpd or fid).")
def table(results_dir, tracking_uri, experiment, metric, fmt, out, reference):
    """Configurations x datasets table of recorded runs: mean +- std over seeds (count)."""
    from bench.cli.common import source_of
    from bench.record.tables import comparison_table, export, render

    records = source_of(results_dir, tracking_uri).records(experiment)
    if reference:
        from bench.record.reference import reference_table

        tab, notes = reference_table(records, metric)
    else:
        tab, notes = comparison_table(records, metric)
    click.echo(render(tab, fmt))
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if out:
        export(tab, Path(out))
        click.echo(f"written {out}", err=True)


def _register() -> None:
    from bench.cli.check import check
    from bench.cli.fid import fid
    from bench.cli.regress import regress
    from bench.cli.report import report
    from bench.cli.run import run
    from bench.cli.speedup import speedup
    from bench.cli.suite import suite

    for cmd in (run, speedup, check, fid, report, regress, suite):
        main.add_command(cmd)


_register()

if __name__ == "__main__":
    main()
