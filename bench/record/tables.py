"""Recorded runs (`bench.api.RunRecord`) -> comparison tables: configurations x datasets,
mean ± std over seeds (count).

Like is compared with like: a row is one full method configuration (the method, its
parameters ``p_method_*`` and the shared optimisation settings ``optim_*``), a column one
dataset configuration (the dataset, its parameters ``p_dataset_*``, its test split and
provenance). Labels name only what differs, e.g. ``interflow[interpolant=linear]`` beside
``interflow[interpolant=trig]``. Every likelihood a run recorded is its own row, labelled
with its kind (exact or bound) and ", hutchinson" when the divergence was estimated. The
truth row of a column comes from the compared runs of that column. Runs left out
(FAILED, RUNNING, KILLED) are counted in the notes.

Sample metrics (``mmd2``, ``energy``, ``swd``, `bench.harness.scoring.vector_samples`): each named
sampler's ``<metric>.<sampler>`` is its own column beside the default sampler's, e.g.
``checkerboard [ode]`` next to ``checkerboard [sde]``; the floor row (``<metric>_floor``:
training rows against the test rows) plays the truth row's part; a one-seed cell shows the
estimate's own standard error, ``v ± se (1)``; so does a gap to the truth (``test_nll_gap``,
its paired standard error over test rows).

Seeds are distinct: a rerun of one configuration and seed on one dataset configuration
supersedes the earlier runs (the newest counts: records come oldest first, as
`bench.record.mlflow_read.load_records` gives them), and the notes say how many were
superseded. The header names the metric's unit (`bench.record.units`).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.api import ConfigError, RunRecord
from bench.api.metric_specs import BUILTIN_SPECS, specs_for
from bench.api.scoring import MetricSpec, find_spec
from bench.record.configs import (
    SPLIT_FIELDS,
    config_labels,
    dataset_config,
    method_config,
    newest_per_seed,
    short_labels,
)
from bench.record.units import unit_of

# config_labels and newest_per_seed (bench.record.configs) are re-exported for the readers
__all__ = ["long_results", "comparison_table", "render", "export", "config_labels",
           "newest_per_seed"]

SUFFIXES = ("_se", "_nfe", "_gap")
TRUTH = "truth (closed form)"
FLOOR = "floor (train vs test rows)"
#: the built-in sample-based metrics (specs with ``variants="sampler"``), with a ``_floor``
SAMPLE_METRICS = tuple(n for n, s in BUILTIN_SPECS.items() if s.variants == "sampler"
                       and s.reference)


def _tag(rec: RunRecord, key: str, what: str) -> str | None:
    """Tag ``<key>.<what>`` (kind, estimator) of a metric, or of the likelihood it derives
    from (``test_bpd*`` from ``test_nll*``, ``best_val_nll`` from ``val_nll``)."""
    candidates = [key, key.replace("test_bpd", "test_nll", 1)]
    if key.startswith("best_"):
        candidates.append(key[len("best_"):])
    for c in candidates:
        if f"{c}.{what}" in rec.tags:
            return rec.tags[f"{c}.{what}"]
    return None


def _family(rec: RunRecord, metric: str, specs: dict[str, MetricSpec] | None = None
            ) -> list[tuple[str, str, str]]:
    """(metric key, likelihood key, its short name) of ``metric`` in a run: ``test_nll``
    covers ``test_nll_<name>`` of each extra likelihood (a metric tagged with its kind);
    ``test_nll_gap`` the gap of each."""
    base, suffix = metric, ""
    for s in SUFFIXES:
        if metric.endswith(s) and len(metric) > len(s):
            base, suffix = metric[:-len(s)], s
            break
    if _sampled(base, specs):  # one entry per sampler: mmd2, mmd2.ode, mmd2.sde, ...
        names = [base] + sorted(k for k in rec.metrics if k.startswith(base + ".")
                                and not k.endswith(SUFFIXES))
        return [(n + suffix, n, n[len(base) + 1:]) for n in names if n + suffix in rec.metrics]
    names = [base] + sorted(k for k in rec.metrics
                            if k.startswith(base + "_") and not k.endswith(SUFFIXES)
                            and _tag(rec, k, "kind") is not None)
    return [(n + suffix, n, n[len(base) + 1:]) for n in names if n + suffix in rec.metrics]


def _sampled(metric: str, specs: dict[str, MetricSpec] | None = None) -> bool:
    """Whether ``metric`` is a family of per-sampler keys (its spec's ``variants``)."""
    spec = (specs or BUILTIN_SPECS).get(metric)
    return spec is not None and spec.variants == "sampler"


def _reference_key(metric: str, specs: dict[str, MetricSpec]) -> str:
    """The key of the truth (floor) figure tabulated beside ``metric``."""
    spec = specs.get(metric)
    if spec is not None and spec.reference:
        return spec.reference
    return f"{metric}_floor" if _sampled(metric, specs) else f"true_{metric}"


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, int | float) and not math.isnan(v)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def long_results(records: Sequence[RunRecord], metric: str = "test_nll"
                 ) -> tuple[pd.DataFrame, list[str]]:
    """One row per (finished run, likelihood): ``row`` and ``dataset`` labels, method,
    seed, run id, kind, value (truth rows have method "truth"); and the notes. Of reruns of
    one configuration and seed only the newest counts (`newest_per_seed`)."""
    runs = [r for r in records if r.method and r.dataset]
    notes = []
    left = Counter(r.status for r in runs if r.status != "FINISHED")
    if left:
        notes.append(f"{_plural(sum(left.values()), 'run')} left out: "
                     + ", ".join(f"{n} {s}" for s, n in sorted(left.items())))
    finished, superseded = newest_per_seed([r for r in runs if r.status == "FINISHED"])
    specs = specs_for(finished)
    if superseded:
        notes.append(f"{_plural(superseded, 'rerun')} of the same configuration and seed "
                     f"superseded by the newest")
    entries, missing = [], []
    for r in finished:
        found = False
        for key, lik, extra in _family(r, metric, specs):
            value = r.metrics[key]
            if not _finite(value):
                continue
            kind = _tag(r, lik, "kind") or ""
            if "hutchinson" in (_tag(r, lik, "estimator") or ""):
                kind += ", hutchinson"  # an unbiased estimate, not the exact divergence
            se = r.metrics.get(f"{key}_se")
            entries.append((r, extra, kind.strip(", "), float(value),
                            float(se) if _finite(se) else math.nan))
            found = True
        if not found:
            missing.append(f"{r.method} on {r.dataset}")
    if missing:
        shown = ", ".join(sorted(set(missing))[:4]) + (", ..." if len(set(missing)) > 4 else "")
        notes.append(f"{_plural(len(missing), 'finished run')} without {metric}: {shown}")
    m_lab = short_labels({method_config(r) for r, *_ in entries})
    d_lab = short_labels({dataset_config(r) for r, *_ in entries}, hide=SPLIT_FIELDS)
    rows = []
    sampled = _sampled(metric, specs)
    for r, extra, kind, value, se in entries:
        label, col = m_lab[method_config(r)], d_lab[dataset_config(r)]
        if sampled:  # samplers side by side: a column each
            col += f" [{extra}]" if extra else ""
        else:
            label += f" [{extra}]" if extra else ""
        label += f" ({kind})" if kind else ""
        rows.append({"row": label, "dataset": col, "method": r.method, "seed": r.seed,
                     "run_id": r.run_id, "kind": kind, "value": value, "se": se})
    rows += _reference_rows(entries, metric, specs, d_lab, notes)
    cols = ["row", "dataset", "method", "seed", "run_id", "kind", "value", "se"]
    return pd.DataFrame(rows, columns=cols), notes


def _reference_rows(entries: list, metric: str, specs: dict[str, MetricSpec], d_lab: dict,
                    notes: list[str]) -> list[dict[str, Any]]:
    """The truth (floor) rows of each column, from the runs in it (`_reference_key`); a
    truth that differs among a column's runs adds a note."""
    sampled = _sampled(metric, specs)
    key = _reference_key(metric, specs)
    rows: list[dict[str, Any]] = []
    truth: dict[str, dict[str | None, tuple[float, float]]] = defaultdict(dict)
    for r, extra, *_ in entries:
        col = d_lab[dataset_config(r)]
        if sampled and extra:
            col += f" [{extra}]"
        t, t_se = r.metrics.get(key), r.metrics.get(f"{key}_se")
        pair = (float(t), float(t_se) if _finite(t_se) else math.nan) if _finite(t) else None
        if pair is not None and (not sampled or pair not in truth[col].values()):
            truth[col][r.run_id] = pair  # a floor once per distinct value (seed, rows)
    what = "floor" if sampled else "true"
    for col, values in sorted(truth.items()):
        vals = [v for v, _ in values.values()]
        if not sampled and max(vals) - min(vals) > 1e-6 * max(1.0, abs(vals[0])):
            notes.append(f"the {what} {metric} of {col} differs among its runs "
                         f"({min(vals):.4f} to {max(vals):.4f}): different test data?")
        for run_id, (v, se) in values.items():
            rows.append({"row": FLOOR if sampled else TRUTH, "dataset": col,
                         "method": "floor" if sampled else "truth", "seed": None,
                         "run_id": run_id,
                         "kind": "" if sampled else "exact", "value": v, "se": se})
    return rows


def _num(v: float) -> str:
    return f"{v:.3f}" if abs(v) < 1e6 else f"{v:.4g}"


def _num_g(v: float) -> str:
    return f"{v:.3g}"


def _cell(values: pd.Series, se: pd.Series | None = None, num=_num, how: str = "mean"
          ) -> str:
    """mean ± std over seeds (count), or the spec's other aggregate ``how`` ("median 1.2
    (3)"); one value: with ``se`` its own standard error."""
    n = len(values)
    if n == 1:
        if se is not None and _finite(se.iloc[0]):
            return f"{num(values.iloc[0])} ± {num(se.iloc[0])} (1)"
        return f"{num(values.iloc[0])} (1)"
    if how != "mean":
        return f"{how} {num(float(values.agg(how)))} ({n})"
    return f"{num(values.mean())} ± {num(values.std(ddof=1))} ({n})"


def _se_cells(frame: pd.DataFrame) -> pd.Series:
    """Cells of sample metrics: 3 significant digits, a one-seed cell with its se."""
    return frame.groupby(["row", "dataset"]).apply(
        lambda g: _cell(g["value"], g["se"], _num_g), include_groups=False)


def _truth_cell(values: pd.Series) -> str:
    if values.max() - values.min() <= 1e-6 * max(1.0, abs(values.iloc[0])):
        return _num(values.iloc[0])
    return _cell(values)


def _with_se(metric: str, specs: dict[str, MetricSpec] | None = None) -> bool:
    """Whether a one-seed cell shows the run's own standard error: an estimate or a
    statistic whose spec declares ``se`` (sample metrics, the gap to the truth paired over
    test rows; not a likelihood: its se is over test rows)."""
    spec = (specs or BUILTIN_SPECS).get(metric)
    if spec is None:
        return metric.endswith("_gap")
    return _sampled(metric, specs) or (spec.se and spec.kind in ("estimate", "statistic"))


def _unit(metric: str, specs: dict[str, MetricSpec] | None = None) -> str:
    """The table's header: the metric with its unit, what it was scored on and its
    direction (from its spec, `bench.api.scoring.find_spec`; else `unit_of`)."""
    specs = specs or BUILTIN_SPECS
    spec = find_spec(metric, specs)
    unit = spec.unit if spec is not None else unit_of(metric)
    parts = [unit] if unit != "none" else []
    if metric.startswith("test_"):
        parts.append("test split")
    if _sampled(metric.removesuffix("_se"), specs):
        parts.append("samples vs test split; ± se for one seed, std over seeds else")
    elif metric.endswith("_gap") and (spec is None or spec == BUILTIN_SPECS.get(spec.name)):
        parts.append("± paired se over test rows for one seed, std over seeds else")
    elif _with_se(metric, specs):
        parts.append("± se for one seed, std over seeds else")
    if spec is not None and spec.better and not metric.endswith("_se"):
        parts.append(spec.direction)
    return f"{metric} ({', '.join(parts)})" if parts else metric


def comparison_table(records: Sequence[RunRecord], metric: str = "test_nll"
                     ) -> tuple[pd.DataFrame, list[str]]:
    """Rows: configuration [likelihood] (kind); columns: dataset configurations; cells:
    mean ± std (count) over the finished runs. Returns the table and its notes (runs left
    out, runs without the metric, a truth that differs among a column's runs).

    Raises:
        ConfigError: no finished run recorded ``metric``.
    """
    long, notes = long_results(records, metric)
    if long.empty:
        recorded = sorted({k for r in records if r.status == "FINISHED" for k in r.metrics})
        hint = f"; recorded metrics: {', '.join(recorded[:30])}" if recorded else \
            "; run `bench run` first"
        left = f" ({notes[0]})" if notes and "left out" in notes[0] else ""
        raise ConfigError(f"no finished runs with metric {metric!r} recorded yet{left}{hint}")
    truth = long["row"].isin((TRUTH, FLOOR))
    specs = specs_for(r for r in records if r.status == "FINISHED")
    how = specs[metric].aggregate if metric in specs else "mean"
    if _sampled(metric, specs):
        tab = _se_cells(long)  # the floor is an estimate too: its se, std over runs
    elif _with_se(metric, specs):
        tab = long[~truth].groupby(["row", "dataset"]).apply(
            lambda g: _cell(g["value"], g["se"], how=how), include_groups=False)
    else:
        tab = long[~truth].groupby(["row", "dataset"])["value"].apply(_cell, how=how)
        if truth.any():
            tab = pd.concat([tab, long[truth].groupby(["row", "dataset"])["value"]
                             .apply(_truth_cell)])
    tab = tab.unstack("dataset").fillna("")
    tab = tab[sorted(tab.columns)]
    tab.columns.name = None
    tab.index.name = _unit(metric, specs)
    order = sorted(tab.index, key=lambda s: (s in (TRUTH, FLOOR), s))
    return tab.loc[order], notes


def render(tab: pd.DataFrame, fmt: str) -> str:
    """The table as markdown, csv, latex or json."""
    if fmt == "markdown":
        return tab.to_markdown()
    if fmt == "csv":
        return tab.to_csv()
    if fmt == "latex":
        return tab.to_latex()
    if fmt == "json":
        return tab.to_json(orient="index", indent=1)
    raise ConfigError(f"unknown format {fmt!r}")


def export(tab: pd.DataFrame, path: Path) -> Path:
    """Write the table; the format follows the extension (.md, .csv, .tex, .json)."""
    fmt = {".md": "markdown", ".csv": "csv", ".tex": "latex", ".json": "json"}.get(path.suffix)
    if fmt is None:
        raise ConfigError(f"--out {path}: use a .md, .csv, .tex or .json file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(tab, fmt) + "\n")
    return path
