"""A suite's results page (`bench suite report NAME`): ``docs/results/<name>.md`` and its
figures under ``docs/results/<name>/``, built from the suite's records alone (never a rerun).

Per dataset: a table per headline metric of every method configuration (mean over seeds
with its 95% Student-t interval, each run's value with its standard error over test rows,
every number labelled with its test split, estimator and kind), the published numbers
beside ours where the data match (and "not comparable" with the reason where they do not),
and the anytime curves (`bench.record.suite_plots`). Then the speed-up figures of the
suite's study (`bench.record.suite_stats`), a reading computed from the numbers where
InterFlow is not better, and the provenance: commits, machines, versions, data and the
compute the suite took.

The page is a function of the records: the same records give the same bytes (sorted
orders, fixed number formats, SVG figures without dates), so CI can regenerate a committed
page and fail on any difference. Configurations are named by the suite's method labels
(tag ``suite.method``) where the runs carry them, else as the comparison tables name them
(`bench.record.configs`); the rows come from `bench.record.tables.long_results`.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench.api import DataError, RunRecord
from bench.api.metric_specs import QUALITY, headline, specs_for
from bench.api.scoring import find_spec
from bench.api.suites import Suite
from bench.record.configs import newest_per_seed
from bench.record.report_plots import finished_runs, val_curves
from bench.record.suite_plots import plot_anytime, seed_band
from bench.record.suite_reading import (
    _f,
    _md,
    published_lines,
    reading_lines,
    study_lines,
    suite_labels,
    suite_rows,
)
from bench.record.suite_stats import LEVEL, t_interval
from bench.record.tables import FLOOR, TRUTH

__all__ = ["write_suite_page", "page_path", "COMPUTE_METRICS"]

#: the recorded seconds of a run that make the suite's compute (training, validation,
#: test likelihood, sampling, FID): the harness records no other wall-clock
COMPUTE_METRICS = ("train_seconds", "val_seconds", "eval_seconds", "sample_seconds",
                   "fid_seconds")
#: besides the headline metrics, tabulated where recorded: the gap to a closed-form truth,
#: the sample metrics of vector data and the feature metrics of images
EXTRA_METRICS = ("test_nll_gap", "steps_done", *QUALITY)


def page_path(suite: Suite, root: Path) -> Path:
    """``<root>/docs/results/<suite.name>.md``."""
    return Path(root) / "docs" / "results" / f"{suite.name}.md"


def _per_run(group: pd.DataFrame) -> str:
    """Each run's value ± its standard error over test rows, by seed."""
    parts = []
    for seed, v, se in sorted(zip(group["seed"], group["value"], group["se"], strict=True)):
        parts.append(f"s{int(seed)}: {_f(v)}" + (f" ± {_f(se)}" if math.isfinite(se) else ""))
    return "; ".join(parts)


def _title(metric: str, specs: dict) -> str:
    """``metric (unit, test split, lower is better)`` from its spec."""
    spec = find_spec(metric, specs)
    parts = [spec.unit] if spec is not None and spec.unit != "none" else []
    parts += ["test split"] if metric.startswith("test_") else []
    parts += [spec.direction] if spec is not None and spec.better else []
    return f"{metric} ({', '.join(parts)})" if parts else metric


def _metric_table(long: pd.DataFrame, col: str, metric: str, specs: dict) -> list[str]:
    """One dataset configuration's table of ``metric``: a row per configuration."""
    part = long[(long["dataset"] == col) & ~long["method"].isin(("truth", "floor"))]
    rows = []
    for row, g in sorted(part.groupby("row"), key=lambda kv: kv[0]):
        ci = t_interval(list(g["value"]))
        interval = f"[{_f(ci.lo)}, {_f(ci.hi)}]" if ci.defined else "one seed: none"
        rows.append([row, str(ci.n), _f(ci.mean), interval, _per_run(g),
                     "; ".join(sorted(set(g["estimator"])))])
    header = ["configuration (kind)", "seeds", "mean", f"{LEVEL:.0%} CI (t, n-1 dof)",
              "per run: value ± se over test rows", "estimator"]
    variant = col.split(" [", 1)[1].rstrip("]") if " [" in col else ""
    title = _title(metric, specs) + (f", sampler {variant}" if variant else "")
    out = [f"**{title}**", "", *_md(header, rows), ""]
    truth = long[(long["dataset"] == col) & (long["row"] == TRUTH)]
    if not truth.empty:
        vals = sorted(set(truth["value"]))
        out += ["Truth (the dataset's closed-form density on the same test rows): "
                + ", ".join(_f(v) for v in vals) + ".", ""]
    floor = long[(long["dataset"] == col) & (long["row"] == FLOOR)]
    if not floor.empty:
        out += ["Floor (the same metric between training rows and the test rows, what "
                "sampling the data itself reaches): "
                + ", ".join(f"{_f(v)} ± {_f(se)}" if math.isfinite(se) else _f(v)
                            for v, se in sorted(set(zip(floor["value"], floor["se"],
                                                        strict=True))))
                + ".", ""]
    desc = specs[metric].description if metric in specs else ""
    return out + ([f"{metric}: {desc}.", ""] if desc else [])


def _metrics(records: Sequence[RunRecord]) -> list[str]:
    fin = [r for r in records if r.status == "FINISHED"]
    specs = specs_for(fin)
    wanted = (*headline(specs), *EXTRA_METRICS)
    return [m for m in wanted if any(m in r.metrics for r in fin)]


def _columns(long: pd.DataFrame) -> list[str]:
    """A metric's columns (the dataset, then one per named sampler, ``8gaussians [ode]``),
    without a sampler's column that only repeats the default one (the default sampler's
    figures are recorded under both keys)."""
    cols = sorted(set(long["dataset"]))
    first = long[long["dataset"] == cols[0]]
    seen = set(zip(first["run_id"], first["value"], strict=True))
    return [cols[0]] + [c for c in cols[1:] if not set(zip(
        long.loc[long["dataset"] == c, "run_id"], long.loc[long["dataset"] == c, "value"],
        strict=True)) <= seen]


def _dataset_section(suite: Suite, ds: str, records: Sequence[RunRecord], root: Path
                     ) -> tuple[list[str], list[Path]]:
    """A dataset's tables, published numbers, anytime figure; the figure's path."""
    mine = [r for r in records if r.dataset == ds]
    fin = [r for r in mine if r.status == "FINISHED"]
    specs = specs_for(fin)
    out = [f"## {ds}", ""]
    splits = sorted({r.tags.get("test_split", "unrecorded") for r in fin})
    out += [f"Test split: {'; '.join(splits)}. Train split: "
            + "; ".join(sorted({r.tags.get("split.train", "unrecorded") for r in fin})) + ".",
            ""]
    notes: list[str] = []
    for metric in _metrics(mine):
        long, more = suite_rows(mine, metric)
        notes += [n for n in more if n not in notes]
        if long.empty:
            continue
        for col in _columns(long):
            out += _metric_table(long, col, metric, specs)
    out += [f"- note: {n}" for n in notes] + ([""] if notes else [])
    out += published_lines(ds, fin)
    figure, paths = _anytime(suite, ds, fin, root)
    return out + figure, paths


def _anytime(suite: Suite, ds: str, fin: Sequence[RunRecord], root: Path
             ) -> tuple[list[str], list[Path]]:
    fin, _ = newest_per_seed(list(fin))  # a rerun of a configuration and seed supersedes
    curves = val_curves(fin).get(ds, [])
    if not curves:
        return ["No validation NLL history recorded on this dataset: no anytime curves.",
                ""], []
    names = suite_labels(finished_runs(fin))
    kind = {r.run_id: r.tags.get("val_nll.kind", "kind unrecorded") for r in fin}
    groups: dict[str, list] = {}
    for c in curves:  # a configuration's name with the kind of its validation NLL
        groups.setdefault(f"{names[c.run_id]} ({kind[c.run_id]})", []).append(c)
    bands = [seed_band(label, groups[label]) for label in sorted(groups)]
    truths = {round(r.metrics["true_test_nll"], 9) for r in fin if "true_test_nll" in r.metrics}
    truth = truths.pop() if len(truths) == 1 else None
    rel = Path(suite.name) / f"anytime-{_slug(ds)}.svg"
    path = plot_anytime(bands, f"{suite.name}, {ds}: validation NLL vs training time",
                        page_path(suite, root).parent / rel, truth)
    text = ("Anytime curves: validation NLL against training wall-clock (log scale, "
            "evaluation time excluded). Line: the median over seeds; band: the minimum to "
            "maximum over seeds; at time t each seed counts its latest validation at or "
            "before t; dots: every validation. Each configuration is named with the kind of "
            "its validation NLL (a bound is not directly comparable with an exact NLL).")
    return [text, "", f"![{ds}: validation NLL vs training time]({rel.as_posix()})", ""], \
        [path]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _counts(values: Sequence[str]) -> str:
    return ", ".join(f"{v} ({n})" for v, n in sorted(Counter(values).items()))


def _provenance(records: Sequence[RunRecord]) -> list[str]:
    """Commits, machines, versions, data, failures and the suite's compute."""
    runs = [r for r in records if r.method and r.dataset]
    status = Counter(r.status for r in runs)
    total = sum(float(r.metrics[k]) for r in runs for k in COMPUTE_METRICS
                if k in r.metrics and math.isfinite(float(r.metrics[k])))
    data = [f"  - {ds}: " + " / ".join(sorted({r.tags.get("dataset_provenance", "unrecorded")
                                                for r in runs if r.dataset == ds}))
            + "; data sha256 " + ", ".join(sorted({r.tags.get("data_sha256", "unrecorded")[:12]
                                                    for r in runs if r.dataset == ds}))
            for ds in sorted({r.dataset for r in runs})]
    out = ["## Provenance", "",
           f"- runs: {len(runs)} (" + ", ".join(f"{n} {s}" for s, n in sorted(status.items()))
           + ")",
           f"- commits: {_counts([r.tags.get('git_commit', 'unrecorded') for r in runs])}",
           "- machines: " + _counts([f"{r.tags.get('device', '?')} on "
                                     f"{r.tags.get('host', '?')}, "
                                     f"{r.tags.get('threads', '?')} threads" for r in runs]),
           "- device class: " + _counts([r.tags.get("suite.device_class", "unrecorded")
                                         for r in runs]),
           f"- versions: torch {_counts([r.tags.get('torch', 'unrecorded') for r in runs])}",
           "- data:", *data,
           f"- total compute: {total:.0f} s ({total / 3600:.2f} h), the sum over every run "
           "(finished or not) of its recorded " + ", ".join(COMPUTE_METRICS)
           + " (setup and data loading are not recorded)"]
    failed = sorted(f"{r.name} ({r.status}): {r.failure or 'no reason recorded'}"
                    for r in runs if r.status != "FINISHED")
    out += [f"- not finished: {f}" for f in failed]
    return out + [""]


def _header(suite: Suite) -> list[str]:
    b, p = suite.budget, suite.protocol
    if b.policy == "steps":
        budget = f"equal steps: {b.steps} per job"
    elif b.policy == "both":
        budget = f"{b.seconds_per_job:g} s or {b.steps} steps per job, whichever first"
    else:
        budget = f"equal training wall-clock: {b.seconds_per_job:g} s per job"
    rows = "all" if p.test_rows is None else f"the first {p.test_rows}"
    methods = "; ".join(f"{lab} = `{sel}`" for lab, sel in zip(suite.labels, suite.methods,
                                                                strict=True))
    return [f"# Suite {suite.name}", "",
            f"<!-- generated by `bench suite report {suite.name}` from "
            f"results/suites/{suite.name}/records.jsonl: do not edit by hand -->", "",
            suite.description.strip(), "",
            f"- device class: {suite.device_class}", f"- budget: {budget}",
            f"- protocol: test likelihood by {p.solver} (rtol {p.rtol:g}, atol {p.atol:g}) "
            f"on {rows} test rows; image sample metrics and 2-D sample plots "
            f"{'on' if p.sample_metrics else 'off'} (the sample metrics of vector data are "
            "computed for every run)",
            f"- methods: {methods}", f"- datasets: {', '.join(suite.datasets)}",
            f"- seeds: {', '.join(str(s) for s in suite.seeds)}",
            *([f"- set for every job: {', '.join(f'{k}={v}' for k, v in suite.sets)}"]
              if suite.sets else []), "",
            f"Means are over seeds with a {LEVEL:.0%} confidence interval from Student's t "
            "distribution with n-1 degrees of freedom (n seeds); each run's own standard "
            "error is over its test rows. Kinds: **exact** likelihood, or a **bound**; "
            "\"hutchinson\" marks an unbiased estimate of the divergence.", ""]


def write_suite_page(suite: Suite, records: list[RunRecord], root: Path) -> list[Path]:
    """Write ``docs/results/<suite.name>.md`` and its figures under
    ``docs/results/<suite.name>/`` (relative to ``root``; figures of an older page there
    are removed first); returns the page's path, then the figures'.

    Raises:
        DataError: no finished run of the suite to report on.
    """
    runs = [r for r in records if r.method and r.dataset]
    if not any(r.status == "FINISHED" for r in runs):
        left = Counter(r.status for r in runs)
        raise DataError(f"suite {suite.name!r}: no finished runs to report on ("
                        + (", ".join(f"{n} {s}" for s, n in sorted(left.items()))
                           or "no runs") + ")")
    page = page_path(suite, root)
    shutil.rmtree(page.parent / suite.name, ignore_errors=True)
    lines, figures = _header(suite), []
    declared = {sel.split("[", 1)[0].strip() for sel in suite.datasets}
    for ds in sorted({r.dataset for r in runs} | declared):
        if not any(r.dataset == ds and r.status == "FINISHED" for r in runs):
            lines += [f"## {ds}", "", "No finished run of this dataset in the records.", ""]
            continue
        section, paths = _dataset_section(suite, ds, runs, root)
        lines += section
        figures += paths
    lines += study_lines(suite, runs) + reading_lines(runs, suite) + _provenance(runs)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return [page, *figures]
