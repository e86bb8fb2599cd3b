"""The ``bench`` command line: run, list, table (and speedup).

Importing this module is cheap: torch, mlflow and the plug-ins load inside the commands,
so ``bench --help`` answers at once. Errors are one line; usage errors exit 2.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import sys
from pathlib import Path

import click

from bench.api.errors import BenchError, ConfigError

__all__ = ["main"]


class _Group(click.Group):
    """Turns `BenchError` into one line on stderr and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BenchError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)


def _registry(ctx):
    from bench.harness.registry import Registry

    return Registry(extra_dirs=list(ctx.obj.get("plugins", ())))


def _parse_sets(items: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out.append((k.strip(), v.strip()))
    return out


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugins", multiple=True, type=click.Path(file_okay=False),
              help="Extra plug-in folder (repeatable; also BENCH_PLUGINS).")
@click.option("-v", "--verbose", count=True, help="More logging.")
@click.version_option(package_name="bench")
@click.pass_context
def main(ctx, plugins, verbose):
    """bench: train and compare continuous-time generative models (InterFlow, CNF, DDPM)."""
    logging.basicConfig(level=logging.WARNING - 10 * verbose,
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = {"plugins": plugins}


@main.command()
@click.option("-m", "--method", "methods", multiple=True, required=True,
              help='Method selection, e.g. "interflow[lr=3e-4,interpolant=linear]" (repeatable).')
@click.option("-d", "--dataset", "datasets", multiple=True, required=True,
              help="Dataset selection, e.g. miniboone or \"gaussian[dim=8]\" (repeatable).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a parameter of the selected methods/datasets "
                   "(prefix method. or dataset. to disambiguate).")
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
@click.option("--device", default="cpu", show_default=True)
@click.option("--rtol", type=float, default=1e-5, show_default=True, help="Eval ODE rtol.")
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Eval ODE atol.")
@click.option("--solver", default="dopri5", show_default=True, help="Eval ODE solver.")
@click.option("--divergence", type=click.Choice(["exact", "hutchinson"]), default="exact",
              show_default=True)
@click.option("--probes", type=int, default=1, show_default=True,
              help="Hutchinson probes per solve.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Data root (default BENCH_DATA_DIR or ~/.cache/bench/data).")
@click.option("--results-dir", type=click.Path(file_okay=False), default="results",
              show_default=True)
@click.option("--tracking-uri", default=None, help="MLflow URI (default results/mlflow.db).")
@click.option("--experiment", default="bench", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the final metrics as JSON.")
@click.pass_context
def run(ctx, methods, datasets, sets, seeds, steps, max_seconds, eval_every, patience, n_samples,
        device,
        rtol, atol, solver, divergence, probes, data_dir, results_dir, tracking_uri,
        experiment, quiet, as_json):
    """Train and evaluate every (method, dataset, seed) combination; record them in MLflow."""
    from bench.science.ode import SolverConfig
    from bench.harness.run import RunConfig, run_one
    from bench.harness.selection import build_params, parse_selection, route_overrides
    from bench.record.mlflow_sink import Tracker, default_tracking_uri

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    registry = _registry(ctx)
    per_m, per_d = route_overrides(registry, methods, datasets, _parse_sets(sets))
    for sel, extra in zip(methods, per_m, strict=True):  # check all input before any run
        name, over = parse_selection(sel)
        build_params(registry.get("method", name).Params, {**extra, **over}, f"method {name!r}")
    for sel, extra in zip(datasets, per_d, strict=True):
        name, over = parse_selection(sel)
        build_params(registry.get("dataset", name).Params, {**extra, **over},
                     f"dataset {name!r}")
    cfg = RunConfig(steps=steps or 1, max_seconds=max_seconds, eval_every=eval_every or 1,
                    patience=patience, device=device, quiet=quiet, n_samples=n_samples,
                    solver=SolverConfig(method=solver, rtol=rtol, atol=atol,
                                        divergence=divergence, n_probes=probes),
                    data_dir=Path(data_dir) if data_dir else None)
    results_dir = Path(results_dir)
    uri = tracking_uri or default_tracking_uri(results_dir)
    failures, records = [], []
    combos = itertools.product(zip(methods, per_m, strict=True),
                               zip(datasets, per_d, strict=True), seed_list)
    budgets = {}
    for sel in datasets:
        default = registry.get("dataset", parse_selection(sel)[0]).default_budget
        budgets[sel] = dataclasses.replace(
            cfg, steps=steps if steps is not None else (None if max_seconds else default["steps"]),
            eval_every=eval_every or default["eval_every"])
    for (m_sel, m_set), (d_sel, d_set), seed in combos:
        cfg = budgets[d_sel]
        tracker = Tracker(uri, experiment, artifact_root=results_dir / "artifacts")
        try:
            res = run_one(m_sel, d_sel, seed, cfg, registry, tracker, m_set, d_set)
        except BenchError as e:
            if isinstance(e, ConfigError):
                raise
            failures.append(f"{m_sel} on {d_sel} seed {seed}: {e}")
            click.echo(f"error: {failures[-1]}", err=True)
            continue
        records.append({"run_id": res.run_id, "method": res.method, "dataset": res.dataset,
                        "seed": res.seed, **res.metrics})
        if not as_json:
            _print_result(res)
    if as_json:
        click.echo(json.dumps(records, indent=1, default=float))
    if not quiet and not as_json:
        click.echo(f"recorded in {uri} (experiment {experiment!r})")
    if failures:
        sys.exit(1)


def _print_result(res) -> None:
    m = res.metrics
    parts = [f"{res.method} on {res.dataset} (seed {res.seed}):"]
    if "test_nll" in m:
        parts.append(f"test NLL {m['test_nll']:.3f} +- {m['test_nll_se']:.3f} nats")
    for k in sorted(m):
        if k.startswith("test_nll_") and not k.endswith(("_se", "_nfe", "_gap")):
            parts.append(f"{k[9:]} {m[k]:.3f}")
    if "true_test_nll" in m:
        parts.append(f"true {m['true_test_nll']:.3f}")
    parts.append(f"train {m['train_seconds']:.1f}s, {int(m['steps_done'])} steps")
    click.echo(" ".join(parts[:1]) + " " + "; ".join(parts[1:]))


@main.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_(ctx, as_json):
    """Show methods and datasets, their parameters, and unavailable plug-ins with reasons."""
    import dataclasses

    registry = _registry(ctx)
    rows = []
    for kind in ("method", "dataset"):
        for name in registry.names(kind):
            p = registry.plugins[kind][name]
            row = {"kind": kind, "name": name, "available": p.available, "source": p.source}
            if p.available:
                row["params"] = {f.name: (f.default if f.default is not dataclasses.MISSING
                                          else None) for f in dataclasses.fields(p.cls.Params)}
                row["description"] = p.cls.describe()
            else:
                row["reason"] = p.error
            rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=1, default=str))
        return
    for kind in ("method", "dataset"):
        click.echo(f"{kind}s:")
        for r in (r for r in rows if r["kind"] == kind):
            if not r["available"]:
                click.echo(f"  {r['name']:<14} UNAVAILABLE: {r['reason']}")
                continue
            click.echo(f"  {r['name']:<14} {r['description']}")
            if r["params"]:
                ps = ", ".join(f"{k}={v}" for k, v in r["params"].items())
                click.echo(f"  {'':<14} [{ps}]")


@main.command()
@click.option("--results-dir", type=click.Path(file_okay=False), default="results",
              show_default=True)
@click.option("--tracking-uri", default=None)
@click.option("--experiment", default="bench", show_default=True)
@click.option("--metric", default="test_nll", show_default=True,
              help="Metric to tabulate (test_nll covers every likelihood of a run).")
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv", "latex", "json"]),
              default="markdown", show_default=True, help="What to print.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Also write the table here (format from the extension: .md, .csv, .tex).")
def table(results_dir, tracking_uri, experiment, metric, fmt, out):
    """Methods x datasets table of recorded runs: mean +- std over seeds (count)."""
    from bench.record.tables import comparison_table, export, render
    from bench.record.mlflow_sink import default_tracking_uri, search_runs

    uri = tracking_uri or default_tracking_uri(Path(results_dir))
    runs = search_runs(uri, experiment)
    tab = comparison_table(runs, metric)
    click.echo(render(tab, fmt))
    if out:
        export(tab, Path(out))
        click.echo(f"written {out}", err=True)


@main.command()
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
              help="Target validation NLL (default: the worst final NLL among the methods).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--test/--no-test", "with_test", default=False, show_default=True,
              help="Also evaluate the test NLL of each method's best checkpoint.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option("--results-dir", type=click.Path(file_okay=False), default="results",
              show_default=True)
@click.option("--tracking-uri", default=None)
@click.option("--experiment", default="bench", show_default=True)
@click.option("-q", "--quiet", is_flag=True)
@click.pass_context
def speedup(ctx, dataset, methods, budget, steps, net, hidden, hidden_mult, n_hidden,
            activation, batch_size, sets, evals, target, seed, device, with_test, data_dir,
            results_dir, tracking_uri, experiment, quiet):
    """Per-iteration cost and time-to-target of methods sharing one network and batch."""
    from bench.cli.speedup import run_speedup

    run_speedup(_registry(ctx), dataset=dataset, methods=list(methods), budget=budget,
                steps=steps, shared={"net": net, "hidden": hidden, "activation": activation,
                                     "batch_size": str(batch_size)},
                hidden_rule=(n_hidden, hidden_mult), sets=_parse_sets(sets), evals=evals,
                target=target, seed=seed, device=device, with_test=with_test,
                data_dir=Path(data_dir) if data_dir else None, results_dir=Path(results_dir),
                tracking_uri=tracking_uri, experiment=experiment, quiet=quiet, echo=click.echo)


if __name__ == "__main__":
    main()
