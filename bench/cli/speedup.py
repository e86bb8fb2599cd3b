"""Runs the speed-up study behind `bench speedup` (the analysis lives in `bench.speedup`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from bench.api.errors import ConfigError

__all__ = ["run_speedup"]


def _shared_overrides(registry, methods, shared, hidden_rule, dim) -> dict[str, str]:
    from bench.harness.selection import param_fields, parse_selection

    shared = dict(shared)
    if not shared.get("hidden"):
        n_hidden, mult = hidden_rule
        shared["hidden"] = "(" + ",".join([str(mult * dim)] * n_hidden) + ")"
    for sel in methods:
        name = parse_selection(sel)[0]
        fields = param_fields(registry.get("method", name).Params)
        missing = [k for k in shared if k not in fields]
        if missing:
            raise ConfigError(f"method {name!r} has no parameter {missing[0]!r}: it cannot "
                             "share the network and batch of the study")
    return shared


def run_speedup(registry, *, dataset: str, methods: list[str], budget: float,
                steps: int | None, shared: dict[str, str | None], hidden_rule: tuple[int, int],
                sets: list[tuple[str, str]], evals: int, target: float | None, seed: int,
                device: str, with_test: bool, data_dir: Path | None, results_dir: Path,
                tracking_uri: str | None, experiment: str, quiet: bool,
                echo: Callable[[str], None] = print):
    """Train each method for budget/len(methods) seconds with identical network and batch,
    then write the table (markdown, CSV) and the plot to results/speedup/ and to MLflow."""
    from bench.science.ode import SolverConfig
    from bench.harness.run import RunConfig, run_one
    from bench.record.speedup import from_tracker, plot, speedup_table, stamp
    from bench.record.tables import render
    from bench.record.mlflow_sink import Tracker, default_tracking_uri

    if budget <= 0 or evals < 1 or len(methods) < 2:
        raise ConfigError("speedup needs --budget > 0, --evals >= 1 and at least two methods")
    ds = registry.dataset(dataset, data_dir=data_dir)
    dim = ds.splits().dim
    common = _shared_overrides(registry, methods, shared, hidden_rule, dim)
    from bench.harness.selection import route_overrides

    extra, _ = route_overrides(registry, methods, [], sets)
    per_method = budget / len(methods)
    # evaluations at geometrically spaced training times (budget/2^k, ..., budget/2, budget):
    # the early ones resolve the time to reach the target of a fast method
    times = tuple(per_method / 2**k for k in range(evals - 1, -1, -1))
    cfg = RunConfig(steps=steps, max_seconds=per_method, eval_at_seconds=times,
                    patience=10**9, device=device, quiet=quiet, solver=SolverConfig(),
                    data_dir=data_dir, evaluate_test=with_test, n_samples=0)
    uri = tracking_uri or default_tracking_uri(results_dir)
    results, test_nll = [], {}
    for sel, own in zip(methods, extra, strict=True):
        tracker = Tracker(uri, experiment, artifact_root=results_dir / "artifacts")
        echo(f"training {sel} for {per_method:.0f} s on {ds.name} "
             f"(net {common['net']} {common['hidden']}, batch {common['batch_size']})")
        res = run_one(sel, dataset, seed, cfg, registry, tracker, {**common, **own}, None)
        sr = from_tracker(res.method, res.run_id, tracker)
        sr.n_parameters = int(tracker.history.get("n_parameters", [(0, 0.0)])[-1][1])
        if "test_nll" in res.metrics:
            test_nll[res.method] = res.metrics["test_nll"]
        results.append(sr)
    tab, tgt, note = speedup_table(results, per_method, target)
    if test_nll:
        tab["test_nll"] = [test_nll.get(m, math.nan) for m in tab.index]
    out_dir = results_dir / "speedup"
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"{ds.name}-{stamp()}"
    md = Path(f"{base}.md")
    md.write_text(f"# speed-up study on {ds.name}\n\n{note}; budget {per_method:.0f} s "
                  f"training per method; device {device}\n\n{render(tab, 'markdown')}\n")
    csv = Path(f"{base}.csv")
    tab.to_csv(csv)
    png = plot(results, tgt, Path(f"{base}.png"))
    parent = Tracker(uri, experiment, artifact_root=results_dir / "artifacts")
    parent.start(f"speedup-{ds.name}", {"study": "speedup", "dataset": ds.name,
                                         "methods": ",".join(methods), "budget": budget,
                                         **{f"shared_{k}": v for k, v in common.items()}},
                 {"child_runs": ",".join(r.run_id or "" for r in results),
                  "target_note": note})
    for p in (md, csv, png):
        parent.log_artifact(p)
    ratios = {m: float(tab.loc[m, tab.columns[tab.columns.str.startswith("cost_ratio")][0]])
              for m in tab.index}
    parent.log_metrics({f"cost_ratio_{m}": v for m, v in ratios.items()}, None)
    parent.end("FINISHED")
    cols = [c for c in ("parameters", "steps", "s_per_it_median", "s_per_it_min",
                        "s_per_it_max", "cost_growth", "best_val_nll", "time_to_target")
            if c in tab.columns]
    echo(render(tab[cols + [c for c in tab.columns if "ratio" in c]], "markdown"))
    echo(f"{note}; written {md}, {csv}, {png}")
    return tab
