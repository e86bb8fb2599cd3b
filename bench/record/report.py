"""Recorded runs (`bench.api.RunRecord`) -> one markdown report with its images beside it.

The report holds what a tracking store knows: what it holds (runs per status, commits,
devices), one row per run with the labels of its numbers (test split, estimator, kind), the
comparison tables (`bench.record.tables`), validation NLL against training wall-clock and
cost per iteration against iteration (one axis per dataset, every method on it), the samples
each run drew, and the speed-up studies (`bench.record.speedup`). It reads records, never a
tracker (`load` is the one door to a store, through a `bench.api.records.Source`); the
figures are drawn by `bench.record.report_plots`.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd

from bench.api import ConfigError, DataError, RunRecord
from bench.api.metric_specs import HEADLINE, QUALITY, headline, specs_for
from bench.api.records import Source
from bench.record import speedup
from bench.record.report_plots import (
    Curve,
    YRange,
    colors_of,
    cost_curves,
    finished_runs,
    plot_cost,
    plot_val,
    robust_ylim,
    rolling_median,
    run_labels,
    studies,
    val_curves,
)
from bench.record.tables import comparison_table, render
from bench.record.units import unit_of

__all__ = ["HISTORY", "METRICS", "load", "local_artifact", "write_report",
           # the series and figures, from bench.record.report_plots
           "Curve", "studies", "val_curves", "cost_curves", "rolling_median", "plot_val",
           "plot_cost", "YRange", "robust_ylim", "run_labels"]

log = logging.getLogger(__name__)
#: per-step series the report draws (with those of the speed-up study)
HISTORY = ("val_nll", "train_seconds_at_eval", "step_seconds")
#: the built-in metrics tabulated when any finished run recorded them; with them, every
#: metric whose spec the runs carry says ``headline`` (a plug-in scorer's), then the
#: sample-quality figures (`bench.api.metric_specs.QUALITY`)
METRICS = HEADLINE


def load(source: Source | str, experiment: str = "bench") -> list[RunRecord]:
    """Every run of the experiment with the histories the report draws, from a
    `bench.api.records.Source` or a tracking URI (MLflow, or ``jsonl://FOLDER``).

    Raises:
        DataError: the experiment holds no run.
    """
    if isinstance(source, str):
        from bench.record.stores import open_source

        source = open_source(source)
    keys = tuple(dict.fromkeys(HISTORY + tuple(speedup.HISTORY)))
    records = source.records(experiment, history=keys)
    if not records:
        raise DataError(f"no runs in experiment {experiment!r} of {source.uri}: run "
                        f"`bench run` first (or pass --tracking-uri / --experiment)")
    return records


def local_artifact(uri: str) -> Path | None:
    """A local path or ``file:`` URI as an existing file, else None (remote stores)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
    elif parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] in (":\\", ":/")):
        path = Path(uri)
    else:
        return None
    return path if path.is_file() else None


def _fmt(value: object) -> str:
    """A table cell: numbers to 4 significant digits, text as it is."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.4g}"
    return str(value)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _truth(records: Sequence[RunRecord], dataset: str) -> float | None:
    vals = {round(r.metrics["true_test_nll"], 9) for r in finished_runs(records)
            if r.dataset == dataset and "true_test_nll" in r.metrics}
    return vals.pop() if len(vals) == 1 else None


def _counts(values: Sequence[str]) -> str:
    return ", ".join(f"{v} ({n})" for v, n in Counter(values).most_common())


def _commit(rec: RunRecord) -> str:
    full = rec.tags.get("git_commit", "unrecorded")
    return full[:10] + ("-dirty" if full.endswith("-dirty") else "")


def _device(rec: RunRecord) -> str:
    return f"{rec.tags.get('device', '?')} ({rec.tags.get('host', '?')}, " \
        f"threads {rec.tags.get('threads', '?')})"


def _header(records: Sequence[RunRecord], source: str) -> list[str]:
    bench_runs = [r for r in records if r.method and r.dataset]
    status = Counter(r.status for r in bench_runs)
    grid = Counter((r.dataset, r.method) for r in bench_runs if r.status == "FINISHED")
    lines = ["# Benchmark report", "",
             f"Store: `{source}`; written {time.strftime('%Y-%m-%d %H:%M %Z')}.", "",
             "## What the store holds", "",
             f"- runs: {len(bench_runs)} ("
             + ", ".join(f"{n} {s}" for s, n in sorted(status.items())) + ")"
             + (f", and {len(studies(records))} speed-up "
                f"{'study' if len(studies(records)) == 1 else 'studies'}"
                if studies(records) else ""),
             "- finished runs per dataset: " + "; ".join(
                 f"{d}: " + ", ".join(f"{m} ({n})" for (dd, m), n in sorted(grid.items())
                                      if dd == d)
                 for d in sorted({d for d, _ in grid})),
             f"- git commits: {_counts([_commit(r) for r in bench_runs])}",
             f"- devices: {_counts([_device(r) for r in bench_runs])}",
             f"- torch: {_counts([r.tags.get('torch', '?') for r in bench_runs])}",
             "- data: " + "; ".join(
                 f"{d}: " + " / ".join(sorted({r.tags.get("dataset_provenance", "?")
                                               for r in bench_runs if r.dataset == d}))
                 for d in sorted({r.dataset for r in bench_runs})), "",
             "Every number carries its label: the test split it was scored on (a subset or a "
             "reduced split says so), the estimator that produced it and its kind (**exact** "
             "likelihood, or a **bound**; \"hutchinson\" marks an unbiased estimate of the "
             "divergence). Tables give mean ± std over seeds (count). Runs that did not "
             "finish are listed under Runs and left out of the tables and plots.", ""]
    return lines


def _run_rows(records: Sequence[RunRecord]) -> list[str]:
    rows = []
    study_kids = {k.run_id for _, kids in studies(records) for k in kids}
    for r in records:
        if not (r.method and r.dataset):
            continue
        m = r.metrics
        nll = (f"{m['test_nll']:.3f} ± {m.get('test_nll_se', math.nan):.3f}"
               if "test_nll" in m else "")
        name = r.name + (" (speed-up study)" if r.run_id in study_kids else "")
        rows.append({"run": name, "status": r.status + (f": {r.failure}" if r.failure
                                                          else ""),
                     "steps": int(m["steps_done"]) if "steps_done" in m else "",
                     "train s": f"{m['train_seconds']:.1f}" if "train_seconds" in m else "",
                     f"test_nll ({unit_of('test_nll')})": nll,
                     "kind": r.tags.get("test_nll.kind", ""),
                     "estimator": r.tags.get("test_nll.estimator", ""),
                     "test split": r.tags.get("test_split", ""),
                     "commit": _commit(r)})
    if not rows:
        return []
    tab = pd.DataFrame(rows).set_index("run")
    return ["## Runs", "", "One row per run; the test NLL with its standard error over test "
            "rows.", "", tab.to_markdown(), ""]


def _tables(records: Sequence[RunRecord]) -> list[str]:
    study_kids = {k.run_id for _, kids in studies(records) for k in kids}
    records = [r for r in records if r.run_id not in study_kids]  # they have their section
    out = ["## Comparison tables", ""]
    specs = specs_for(r for r in records if r.status == "FINISHED")
    for metric in (*headline(specs), *QUALITY):
        if not any(metric in r.metrics for r in records if r.status == "FINISHED"):
            continue
        try:
            tab, notes = comparison_table(records, metric)
        except ConfigError as e:
            out += [f"{metric}: {e}", ""]
            continue
        about = specs[metric].description
        out += [f"### {metric}", "", render(tab, "markdown"), ""]
        out += ([f"- {metric}: {about}"] if about else []) + [f"- note: {n}" for n in notes]
        out += [""] if about or notes else []
    return out


def _link(path: Path, out_dir: Path) -> str:
    return path.relative_to(out_dir).as_posix()


def _plots(records: Sequence[RunRecord], out_dir: Path, colors: dict[str, str]) -> list[str]:
    out = []
    vals, costs = val_curves(records), cost_curves(records)
    if vals:
        out += ["## Validation NLL against training wall-clock", "",
                "Every method on one axis per dataset; x: seconds of training when the "
                f"evaluation ran (log scale), y: validation NLL in {unit_of('val_nll')}, each "
                "curve named by its configuration and seed, with its kind in the legend (a "
                "bound, e.g. DDPM's estimate of its ELBO, is not directly comparable with an "
                "exact NLL). The y-axis shows the bulk of the curves (Tukey's far-out fences "
                "over their values); what falls outside, such as a diverged run, is counted "
                "on the plot.", ""]
        for ds, curves in vals.items():
            png = plot_val(curves, f"{ds}: validation NLL vs training time",
                           out_dir / "plots" / f"val_nll-{_slug(ds)}.png", colors,
                           _truth(records, ds))
            out += [f"![validation NLL vs training time on {ds}]({_link(png, out_dir)})", ""]
    if costs:
        out += ["## Cost per iteration", "",
                "Milliseconds per training step against the step (log-log); dots are steps, "
                "the line a rolling median. The tables give seconds per step: the median over "
                "all steps, over the first and the last tenth, and their ratio (cost growth). "
                "Closed-form fits take no steps and are not drawn.", ""]
        for ds, curves in costs.items():
            png = plot_cost(curves, f"{ds}: training cost per iteration",
                            out_dir / "plots" / f"cost-{_slug(ds)}.png", colors)
            out += [f"![cost per iteration on {ds}]({_link(png, out_dir)})", ""]
            by_id = {r.run_id: r for r in records}
            rows = {c.label: speedup.summarize_costs(speedup.from_record(by_id[c.run_id]))
                    for c in curves}
            tab = pd.DataFrame(rows).T
            cols = [k for k in ("steps", "s_per_it_median", "s_per_it_first10pct",
                                "s_per_it_last10pct", "cost_growth") if k in tab.columns]
            out += [tab[cols].to_markdown(floatfmt=".4g"), ""]
    return out


def _samples(records: Sequence[RunRecord], out_dir: Path) -> list[str]:
    out, missing = [], []
    for ds in sorted({r.dataset for r in finished_runs(records)}):
        shown = []
        for r in sorted((r for r in finished_runs(records) if r.dataset == ds),
                        key=lambda r: (r.method, r.seed)):
            src = local_artifact(r.artifacts.get("samples.png", ""))
            if src is None:
                if "samples.png" in r.artifacts:
                    missing.append(r.name)
                continue
            dst = out_dir / "samples" / f"{_slug(ds)}-{_slug(r.method)}-s{r.seed}-" \
                f"{str(r.run_id)[:6]}.png"
            shutil.copyfile(src, dst)
            nll = (f"<br>test NLL {r.metrics['test_nll']:.3f} {unit_of('test_nll')} "
                   f"({r.tags.get('test_nll.kind', '')})" if "test_nll" in r.metrics else "")
            shown.append(f"| **{r.method}**<br>seed {r.seed}{nll} "
                         f"| ![{r.method} samples on {ds}]({_link(dst, out_dir)}) |")
        if shown:
            out += [f"### {ds}", "", "| run | samples |", "|:--|:--|", *shown, ""]
    if not out:
        return []
    head = ["## Samples", "", "Each run's own samples figure (2-D data: model samples beside "
            "the test split; images: a grid of generated images).", ""]
    tail = [f"- note: samples of {', '.join(missing)} are not local files (remote store)", ""]
    return head + out + (tail if missing else [])


def _studies(records: Sequence[RunRecord], out_dir: Path) -> list[str]:
    found = studies(records)
    if not found:
        return []
    out = ["## Speed-up study", "",
           "Methods trained back to back with the same network and batch on the same "
           "machine (`bench speedup`): seconds per iteration and training time to a target "
           "validation NLL.", ""]
    for parent, kids in found:
        results = [speedup.from_record(k) for k in kids]
        budget = float(parent.params.get("budget", math.nan)) / len(kids)
        tab, target, note = speedup.speedup_table(results, budget)
        ds = parent.params.get("dataset", kids[0].dataset)
        png = speedup.plot(results, target, out_dir / "plots"
                           / f"speedup-{_slug(str(ds))}-{str(parent.run_id)[:6]}.png")
        cols = [c for c in ("parameters", "steps", "s_per_it_median", "cost_growth",
                            "best_val_nll", "time_to_target") if c in tab.columns]
        cols += [c for c in tab.columns if c.startswith("cost_ratio")]
        cols += (["time_to_target_ratio"] if "time_to_target_ratio" in tab.columns else
                 [c for c in tab.columns if c.startswith("time_to_target_ratio_vs")])
        shared = ", ".join(f"{k[len('shared_'):]}={v}" for k, v in parent.params.items()
                           if k.startswith("shared_"))
        out += [f"### {ds} ({parent.name}; {shared}; {budget:.0f} s per method, device "
                f"{kids[0].tags.get('device', '?')})", "", f"{note}.", "",
                tab[cols].T.apply(lambda col: col.map(_fmt)).to_markdown(), "",
                f"![speed-up study on {ds}]({_link(png, out_dir)})", ""]
    return out


def write_report(records: Sequence[RunRecord], out_dir: Path, source: str = "") -> Path:
    """Write ``out_dir/report.md`` with its images under ``plots/`` and ``samples/``.

    Raises:
        DataError: no runs, or no finished run to report on.
    """
    if not any(r.method and r.dataset for r in records):
        raise DataError(f"no benchmark runs in {source or 'the records'}: run `bench run` "
                        f"first")
    if not finished_runs(records) and not studies(records):
        left = Counter(r.status for r in records if r.method)
        raise DataError("no finished runs to report on ("
                        + ", ".join(f"{n} {s}" for s, n in sorted(left.items())) + ")")
    out_dir = Path(out_dir)
    for sub in ("plots", "samples"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)  # no stale images of older reports
        (out_dir / sub).mkdir(parents=True)
    colors = colors_of([r.method for r in records if r.method])
    lines = (_header(records, source) + _run_rows(records) + _tables(records)
             + _plots(records, out_dir, colors) + _samples(records, out_dir)
             + _studies(records, out_dir))
    path = out_dir / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    log.info("report written to %s", path)
    return path
