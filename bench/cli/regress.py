"""``bench regress``: the performance and quality regression check against the committed
baseline (logic: `bench.harness.running.regress`; history and plot: `bench.record.history`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from bench.cli.common import registry_of

__all__ = ["regress"]

log = logging.getLogger(__name__)
BASELINE = "results/benchmarks/baseline.json"


def _table(checks) -> str:
    rows = [("figure", "kind", "baseline", "now", "limit", "status")]
    for c in checks:
        fmt = (lambda v: "-" if v is None else f"{v:.4g}")  # noqa: E731
        limit = ("-" if c.limit is None else
                 f"<= {c.limit:.4g}" if c.kind == "timing" else f"+- {c.limit:.3g}")
        rows.append((c.figure, c.kind, fmt(c.baseline), fmt(c.now), limit, c.status))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


@click.command()
@click.option("--full", is_flag=True, help="Full mode: more rounds, bigger problems, longer "
              "trainings (for GPU machines; its own baseline entry).")
@click.option("--rebaseline", is_flag=True, help="Measure and WRITE the baseline of this mode "
              "(suite run --repeats times, quality over --seeds seeds) instead of checking.")
@click.option("--repeats", type=int, default=5, show_default=True,
              help="Suite runs of a rebaseline (each figure's median ratio, its spread and "
                   "its factor = max(1.10, spread^3)).")
@click.option("--busy/--no-busy", default=True, show_default=True,
              help="Rebaseline: run every second suite run beside a CPU-bound busy-loop "
                   "process, so that the spread includes background load.")
@click.option("--seeds", type=int, default=3, show_default=True,
              help="Seeds of a rebaseline's quality trainings (the band's spread).")
@click.option("--threshold", type=float, default=None,
              help="Largest passing timing ratio now/baseline for every timing figure "
                   "(default: each figure's factor in the baseline).")
@click.option("--only", "only", multiple=True, help="Only this figure (repeatable).")
@click.option("--skip", type=click.Choice(["timing", "quality", "default"]), multiple=True,
              help="Skip the timing suite, the quality trainings, or the default commands "
                   "(full mode: `bench run --method interflow --dataset miniboone` timed "
                   "whole).")
@click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False),
              default=BASELINE, show_default=True)
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None,
              help="Draw each figure across the recorded runs into this PNG (no measurement).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Data root of the real-data quality case (default BENCH_DATA_DIR).")
@click.option("--results-dir", type=click.Path(file_okay=False), default="results",
              show_default=True)
@click.option("--tracking-uri", default=None, help="MLflow URI (default results/mlflow.db).")
@click.option("--no-record", is_flag=True, help="Do not record this run in the store.")
@click.option("--json", "as_json", is_flag=True, help="Pure JSON on stdout.")
@click.pass_context
def regress(ctx, full, rebaseline, repeats, busy, seeds, threshold, only, skip,
            baseline_path, plot_out, device, data_dir, results_dir, tracking_uri, no_record,
            as_json):
    """Time the hot paths (ratios to bare references, by CPU time and by wall clock) and
    train short fixed-seed models; exit 1 when a ratio exceeds its baseline x its factor
    or a test NLL leaves its band.

    Re-baseline deliberately with `bench regress --rebaseline` (and --full on the machine of
    the full mode), then commit results/benchmarks/baseline.json.
    """
    from bench.api.errors import ConfigError
    from bench.cli.common import sink_factory
    from bench.harness.running import regress as rg
    from bench.record.history import REGRESS_EXPERIMENT

    mode = "full" if full else "fast"
    data = rg.load_baseline(Path(baseline_path))
    base = data["modes"].get(mode, {})
    default_threshold = base.get("threshold", rg.TIMING_THRESHOLD)
    new_sink, uri = sink_factory(results_dir, tracking_uri, REGRESS_EXPERIMENT)
    if plot_out:
        return _plot(uri, mode, base, threshold or default_threshold, Path(plot_out), as_json)
    if repeats < 1 or seeds < 1:
        raise ConfigError("--repeats and --seeds must be >= 1")
    if threshold is not None and not threshold > 1:
        raise ConfigError(f"--threshold must be > 1, got {threshold}")
    run_timing = "timing" not in skip and (not only or any(not f.startswith("nll_")
                                                             for f in only))
    run_qual = "quality" not in skip and (not only or any(f.startswith("nll_") for f in only))
    m = _measure(ctx, mode, only, skip, rebaseline, repeats, busy, seeds, run_timing, run_qual,
                 Path(data_dir) if data_dir else None, device)
    if rebaseline:
        new = rg.make_baseline(m["timing_runs"], m["quality"], m["machine"], m["commit"],
                               default_threshold, m["info"], m["loaded"])
        rg.save_baseline(Path(baseline_path), data, mode, new)
        out = {"rebaselined": str(baseline_path), "mode": mode, "baseline": new}
        click.echo(json.dumps(out, indent=1) if as_json else
                   f"wrote the {mode} baseline ({len(new['figures'])} figures) to "
                   f"{baseline_path}")
        return
    if not base:
        raise ConfigError(f"no {mode} baseline in {baseline_path}: run bench regress "
                          f"{'--full ' if full else ''}--rebaseline first")
    passed = _check(base, m, only, skip, run_timing, run_qual, threshold, default_threshold,
                    None if no_record else new_sink, mode, as_json)
    if not passed:
        ctx.exit(1)


def _plot(uri: str, mode: str, base: dict, threshold: float, out: Path, as_json: bool) -> None:
    """``--plot``: the recorded history of every figure against its baseline limit."""
    from bench.record.history import REGRESS_EXPERIMENT, load_history, plot_history
    from bench.record.stores import open_source

    points = load_history(open_source(uri).records(REGRESS_EXPERIMENT), mode)
    path = plot_history(points, base.get("figures", {}), threshold, out)
    click.echo(json.dumps({"plot": str(path), "runs": len(points)}) if as_json else path)


def _measure(ctx, mode, only, skip, rebaseline, repeats, busy, seeds, run_timing, run_qual,
             data_dir, device) -> dict:
    """Run the timing suite (``repeats`` interleaved runs when re-baselining, every other one
    beside a busy loop with ``--busy``) and the quality trainings; with the machine and
    commit they ran on."""
    from bench.harness.running import regress as rg
    from bench.harness.running.run import git_commit

    timing_figs = tuple(f for f in only if not f.startswith("nll_"))
    quality_figs = tuple(f for f in only if f.startswith("nll_"))
    n_runs = repeats if rebaseline else 1
    loaded = tuple(i for i in range(n_runs) if rebaseline and busy and i % 2 == 1)
    timing_runs = []
    for i in range(n_runs if run_timing else 0):
        with rg.busy_loop(1 if i in loaded else 0):
            timing_runs.append(rg.run_suite(mode, timing_figs, device))
    quality = rg.run_quality(registry_of(ctx), mode, tuple(range(seeds if rebaseline else 1)),
                             quality_figs, data_dir, device) if run_qual else {}
    info: dict[str, float] = {}
    if run_qual and "default" not in skip:
        default_quality, info = rg.run_default(mode, quality_figs, data_dir, device)
        quality.update(default_quality)
    return {"timing_runs": timing_runs, "quality": quality, "info": info, "loaded": loaded,
            "machine": rg.machine_info(device), "commit": git_commit()}


def _check(base, m, only, skip, run_timing, run_qual, threshold, default_threshold,
           new_sink, mode, as_json) -> bool:
    """Compare the figures with the baseline, record them (unless ``new_sink`` is None),
    print the table or JSON and every regression; returns whether all passed."""
    from bench.harness.running import regress as rg
    from bench.record.history import record_regress

    timing, quality, info = (m["timing_runs"][0] if m["timing_runs"] else {}), m["quality"], \
        m["info"]
    selected = tuple(only) or tuple(
        k for k, v in base["figures"].items()
        if (v["kind"] == "timing" and run_timing) or (v["kind"] == "quality" and run_qual
                                                       and not (k.startswith("nll_default_")
                                                                and "default" in skip))) \
        or ("-",)
    checks = rg.compare(base["figures"], timing, quality, threshold, selected, info,
                        default_threshold)
    passed = not any(c.failed for c in checks)
    if new_sink is not None:
        figures = {**{k: v["ratio"] for k, v in timing.items()},
                   **{k: v["value"] for k, v in quality.items()}, **info}
        record_regress(new_sink(), figures, m["commit"], mode, passed, m["machine"])
    if as_json:
        click.echo(json.dumps({"mode": mode, "passed": passed, "threshold": threshold,
                               "default_threshold": default_threshold,
                               "commit": m["commit"], "baseline_machine": base.get("machine"),
                               "checks": [c.as_dict() for c in checks],
                               "timing": timing, "quality": quality, "info": info},
                              indent=1))
    else:
        click.echo(_table(checks))
    for c in checks:
        if c.failed:
            click.echo(f"REGRESSION {c.line()}", err=True)
    return passed
