"""The suite page's rows and its computed words (`bench.record.suite_page`): the rows of a
metric named by the suite's method labels, the published numbers beside ours (or why they
are not comparable), the speed-up study's table, and the reading of where InterFlow is not
better. Every sentence is computed from the records; none is written by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from bench.api import DataError, RunRecord
from bench.api.metric_specs import BUILTIN_SPECS, headline, specs_for
from bench.api.scoring import find_spec
from bench.api.suites import Suite
from bench.record import speedup
from bench.record.configs import config_labels, method_config, newest_per_seed
from bench.record.reference import Published, _reduced, load_reference
from bench.record.suite_stats import LEVEL, Pair, pair_speedup, t_interval, welch_interval
from bench.record.tables import TRUTH, _family, _tag, long_results

__all__ = ["suite_labels", "suite_rows", "published_lines", "study_lines", "reading_lines",
           "INTERFLOW"]

INTERFLOW = "interflow"


def _f(v: float) -> str:
    """A number on the page: 3 decimals (3 significant digits below 0.1, 4 past 1e6)."""
    if not math.isfinite(v):
        return "n/a"
    if v != 0 and abs(v) < 0.1:
        return f"{v:#.3g}" if abs(v) >= 1e-4 else f"{v:.2e}"
    return f"{v:.3f}" if abs(v) < 1e6 else f"{v:.4g}"


def _md(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table (cells with their pipes escaped)."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return [line(header), "|" + "|".join(":--" for _ in header) + "|", *map(line, rows)]


def suite_labels(records: Sequence[RunRecord]) -> dict[str | None, str]:
    """Run id -> configuration name: the suite's method label (tag ``suite.method``) where
    every run carries one, else the comparison tables' short label; a suite label whose
    runs are more than one configuration (an entry changed between runs) is followed by
    the table's label, so no two configurations share a row."""
    tables = config_labels(records)
    if not (records and all(r.tags.get("suite.method") for r in records)):
        return tables
    configs: dict[str, set] = {}
    for r in records:
        configs.setdefault(r.tags["suite.method"], set()).add(method_config(r))
    return {r.run_id: r.tags["suite.method"] + (f" {tables[r.run_id]}"
                                                 if len(configs[r.tags["suite.method"]]) > 1
                                                 else "") for r in records}


def suite_rows(records: Sequence[RunRecord], metric: str) -> tuple[pd.DataFrame, list[str]]:
    """`long_results` of ``metric`` on ``records`` (one dataset), rows renamed by
    `suite_labels` (the likelihood and kind the tables append are kept), with each entry's
    ``estimator`` and ``is_interflow``; and the notes."""
    long, notes = long_results(records, metric)
    if long.empty:
        return long, notes
    fin = [r for r in records if r.status == "FINISHED"]
    # the runs the rows come from: their labels are the ones long_results gave the rows
    shown = set(long.loc[long["method"] != "truth", "run_id"])
    tables = config_labels([r for r in fin if r.run_id in shown])
    ours = suite_labels(fin)
    specs = specs_for(fin)
    est: dict[tuple, str] = {}
    # the label tag of the metric's spec (a record written before specs had labels: the
    # built-in spec's)
    label = next((s.label for s in (find_spec(metric, specs), find_spec(metric, BUILTIN_SPECS))
                  if s is not None and s.label), "")
    for r in fin:
        for key, lik, _ in _family(r, metric, specs):
            est[(r.run_id, float(r.metrics[key]))] = (_tag(r, lik, "estimator")
                                                       or r.tags.get(label) or "unrecorded")
    names, estimators, flows = [], [], []
    for row, run_id, value, method in zip(long["row"], long["run_id"], long["value"],
                                          long["method"], strict=True):
        if method in ("truth", "floor") or run_id not in tables:
            names.append(row)
            estimators.append("training rows vs test rows" if method == "floor"
                              else "closed-form density")
        else:
            names.append(ours[run_id] + row[len(tables[run_id]):])
            estimators.append(est.get((run_id, float(value)), "unrecorded"))
        flows.append(method == INTERFLOW)
    return long.assign(row=names, estimator=estimators, is_interflow=flows), notes


def _published(ds: str, metrics: Sequence[str]) -> tuple[list[Published], str]:
    try:
        pubs = load_reference()
    except DataError as e:
        return [], str(e)
    return [p for p in pubs if p.dataset == ds and p.metric in metrics], ""


def published_lines(ds: str, fin: Sequence[RunRecord]) -> list[str]:
    """The published numbers of ``ds`` beside ours where our data are the full standard
    split; else "not comparable" with the reason; "no published number" with the reason
    when results/reference has none for ``ds``."""
    metrics = [m for m in headline(specs_for(fin)) if any(m in r.metrics for r in fin)]
    pubs, why = _published(ds, metrics)
    if not pubs:
        truth = any("true_test_nll" in r.metrics for r in fin)
        return [f"Published numbers: no published number for {ds} ("
                + (why or f"results/reference/ gives no {', '.join(metrics)} for {ds}")
                + ("; the dataset's closed-form density, the truth above, is the reference "
                   "here" if truth else "") + ").", ""]
    reasons = sorted({w for w in (_reduced(r) for r in fin) if w})
    listed = "; ".join(f"{p.method} {p.metric} {p.cell()}" for p in pubs)
    if reasons:
        return [f"Published numbers: not comparable ({'; '.join(reasons)}). For orientation "
                f"only, published on {pubs[0].split}: {listed}.", ""]
    rows = []
    for metric in sorted({p.metric for p in pubs}):
        long, _ = suite_rows(fin, metric)
        for row, g in sorted(long[long["method"] != "truth"].groupby("row"),
                             key=lambda kv: kv[0]):
            ci = t_interval(list(g["value"]))
            rows.append([f"{row} (ours)", metric, _f(ci.mean) + (
                f" [{_f(ci.lo)}, {_f(ci.hi)}]" if ci.defined else f" ({ci.n} seed)")])
        rows += [[f"{p.method} [published]", metric, p.cell()] for p in pubs
                 if p.metric == metric]
    notes = sorted({f"- {p.method}: {p.kind}; {p.split}; {p.estimator}; {p.citation}; "
                    f"{p.status}" for p in pubs})
    return ["Published numbers beside ours (the same split; ours: mean with its "
            f"{LEVEL:.0%} t interval; ✓ read in the paper's text, † not checked against it):",
            "", *_md(["", "metric", "value"], rows), "", *notes, ""]


def _runs_by(records: Sequence[RunRecord]) -> dict[tuple[str, str, int], RunRecord]:
    """(dataset, configuration name, seed) -> the newest finished run."""
    fin, _ = newest_per_seed([r for r in records if r.status == "FINISHED"])
    out = {}
    for ds in sorted({r.dataset for r in fin}):
        mine = [r for r in fin if r.dataset == ds]
        names = suite_labels(mine)
        out.update({(ds, names[r.run_id], r.seed): r for r in mine})
    return out


def _ratio_text(ratio: tuple[float, str, float, float]) -> str:
    value, status, lo, hi = ratio
    if status == speedup.UNDETERMINED:
        return "undetermined"
    sign = {speedup.EXACT: "", speedup.LOWER: ">= ", speedup.UPPER: "<= "}[status]
    return f"{sign}{value:.3g}x [{lo:.3g}, {hi:.3g}]"


def study_pairs(suite: Suite, records: Sequence[RunRecord]
                ) -> list[tuple[str, str, Pair, str]]:
    """(dataset, other configuration, `Pair`, the other's method) of the suite's study,
    sorted; [] without a study."""
    if suite.study is None:
        return []
    runs, ref = _runs_by(records), suite.study.reference
    out = []
    for (ds, name, seed), rec in sorted(runs.items()):
        mine = runs.get((ds, ref, seed))
        if name != ref and mine is not None and _trained(rec) and _trained(mine):
            out.append((ds, name, pair_speedup(mine, rec, suite.study.target), rec.method))
    return out


def _trained(rec: RunRecord) -> bool:
    """Whether a run took training steps (a closed-form fit takes none: no cost per
    iteration, no anytime curve to cross a target)."""
    return rec.metrics.get("steps_done", 0.0) > 0 or bool(rec.history.get("step_seconds"))


def _untrained(records: Sequence[RunRecord]) -> list[str]:
    runs = _runs_by(records)
    return sorted({name for (_, name, _), r in runs.items() if not _trained(r)})


def study_lines(suite: Suite, records: Sequence[RunRecord]) -> list[str]:
    """The speed-up section: per dataset, seed by seed, each method against the study's
    reference: seconds per iteration and their ratio, time to the target with its bracket
    and their ratio."""
    if suite.study is None:
        return []
    pairs = study_pairs(suite, records)
    ref = suite.study.reference
    out = ["## Speed-up", "",
           f"Each method against {ref}, seed by seed (the same seed of both). Cost: seconds "
           "per training iteration (median of the recorded step times; \"mean\" where only "
           "the training seconds over steps were recorded). Target: "
           + ("the suite's target validation NLL" if suite.study.target is not None else
              "the worse of the two best validation NLLs (the slower method's best)")
           + "; time to it interpolated between the bracketing validations [before, after] "
           "(`bench.record.speedup.crossing`). Ratios are the other method's over "
           f"{ref}'s: above 1, {ref} is cheaper or faster; the ratio's range [lo, hi] "
           "comes from the brackets."
           + (" Shared by every method: " + ", ".join(f"{k}={v}" for k, v in
                                                      sorted(suite.study.shared.items()))
              + "." if suite.study.shared else ""), ""]
    fits = _untrained(records)
    if fits:
        out += [f"Not in the study: {', '.join(fits)} (no training steps: a closed-form fit "
                "has no cost per iteration and no curve to cross a target).", ""]
    if not pairs:
        return out + [f"No seed has finished, trained runs of {ref} and another method.", ""]
    head = ["dataset", "method", "seed", f"s/it {ref}", "s/it method", "cost ratio",
            "target val NLL", f"{ref}: time to target", "method: time to target",
            "time ratio [range]"]
    rows = [[ds, name, str(p.seed), f"{p.cost:.4g} ({p.cost_how})", f"{p.other_cost:.4g}",
             f"{p.cost_ratio:.3g}x", _f(p.target), p.time.text(math.inf),
             p.other_time.text(math.inf), _ratio_text(p.ratio)] for ds, name, p, _ in pairs]
    return out + _md(head, rows) + [""] + _study_summary(pairs, ref)


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def _study_summary(pairs: list[tuple[str, str, Pair, str]], ref: str) -> list[str]:
    """Per dataset and method: the cost ratio and the time ratio over its seeds (median,
    min to max; time ratios that are bounds or undetermined counted apart)."""
    out = []
    for ds, name in sorted({(ds, name) for ds, name, _, _ in pairs}):
        mine = [p for d, n, p, _ in pairs if (d, n) == (ds, name)]
        cost = np.array([p.cost_ratio for p in mine])
        exact = np.array([p.ratio[0] for p in mine if p.ratio[1] == speedup.EXACT])
        text = (f"- {ds}, {name} over {ref}: cost ratio median {np.median(cost):.3g}x "
                f"(min {cost.min():.3g}x, max {cost.max():.3g}x, {_seeds(len(mine))})")
        if exact.size:
            text += (f"; time-to-target ratio median {np.median(exact):.3g}x (min "
                     f"{exact.min():.3g}x, max {exact.max():.3g}x) over the "
                     f"{_seeds(exact.size)} whose crossings are both bracketed")
        lower = np.array([p.ratio[0] for p in mine if p.ratio[1] == speedup.LOWER])
        if lower.size:
            text += (f"; time-to-target ratio >= {lower.min():.3g}x on {_seeds(lower.size)} "
                     "(lower bounds: the smallest shown)")
        rest = len(mine) - exact.size - lower.size
        out.append(text + (f"; {_seeds(rest)} with an upper-bound or undetermined time "
                           "ratio (see the table)" if rest else "") + ".")
    return out + [""]


def _nll_sentences(records: Sequence[RunRecord]) -> list[str]:
    """Per dataset and headline metric: each other configuration whose mean is better than
    the best InterFlow configuration's, with the difference and its Welch interval."""
    out = []
    fin = [r for r in records if r.status == "FINISHED"]
    specs = specs_for(fin)
    for ds in sorted({r.dataset for r in fin}):
        mine = [r for r in fin if r.dataset == ds]
        for metric in headline(specs):
            spec = specs[metric]
            long, _ = suite_rows(mine, metric)
            if long.empty or spec.better not in ("lower", "higher"):
                continue
            long = long[long["row"] != TRUTH]
            for col in sorted(set(long["dataset"])):
                out += _beaten(long[long["dataset"] == col], col, metric, spec)
    return out


def _beaten(part: pd.DataFrame, col: str, metric: str, spec) -> list[str]:
    sign = 1.0 if spec.better == "lower" else -1.0
    groups = {row: list(g["value"]) for row, g in part.groupby("row")}
    flows = sorted({r for r, f in zip(part["row"], part["is_interflow"], strict=True) if f})
    if not flows:
        return []
    best = min(flows, key=lambda r: (sign * t_interval(groups[r]).mean, r))
    out = []
    for row in sorted(set(groups) - set(flows)):
        d = welch_interval(groups[row], groups[best])
        if not sign * d.mean < 0:
            continue
        word = "lower" if spec.better == "lower" else "higher"
        if d.defined:
            ci = (f"{LEVEL:.0%} Welch t interval of the difference [{_f(d.lo)}, {_f(d.hi)}]"
                  + ("; it includes 0: not significant" if d.contains(0.0) else ""))
        else:
            ci = "one seed on a side: no interval"
        out.append(f"- On {col}, {row}'s {metric} is {word} than the best InterFlow "
                   f"configuration's ({best}) by {_f(abs(d.mean))} {spec.unit} ({ci}).")
    return out


def _study_sentences(suite: Suite, records: Sequence[RunRecord]) -> list[str]:
    out = []
    for ds, name, p, method in study_pairs(suite, records):
        if method == INTERFLOW:  # another InterFlow configuration: not a rival
            continue
        ref = suite.study.reference if suite.study else ""
        if p.cost_ratio < 1:
            out.append(f"- On {ds} (seed {p.seed}), {name} costs less per iteration than "
                       f"{ref} ({p.other_cost:.4g} s vs {p.cost:.4g} s).")
        value, status, _, _ = p.ratio
        if status in (speedup.EXACT, speedup.UPPER) and value < 1:
            out.append(f"- On {ds} (seed {p.seed}), {name} reached the target validation "
                       f"NLL {_f(p.target)} sooner than {ref} (time ratio "
                       f"{_ratio_text(p.ratio)}).")
    return out


def reading_lines(records: Sequence[RunRecord], suite: Suite | None = None) -> list[str]:
    """The reading: every place where InterFlow is not better, computed from the numbers
    (the best InterFlow configuration's mean against each other configuration's, and the
    study's cost and time ratios)."""
    if not any(r.method == INTERFLOW and r.status == "FINISHED" for r in records):
        return ["## Reading", "", "No finished InterFlow run in this suite: nothing to "
                "read against InterFlow.", ""]
    found = _nll_sentences(records) + (_study_sentences(suite, records) if suite else [])
    head = ["## Reading: where InterFlow is not better", "",
            "Computed from the tables above: per dataset and metric, each other "
            "configuration whose mean over seeds is better than the best InterFlow "
            "configuration's (the difference of means with Welch's interval), and, in the "
            "study, each seed where another method was cheaper per iteration or reached "
            "the target sooner.", ""]
    if not found:
        return head + ["In these records no other configuration's mean is better than the "
                       "best InterFlow configuration's on any tabulated metric, and no study "
                       "seed favours another method.", ""]
    return head + found + [""]
