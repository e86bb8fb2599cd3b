"""History of `bench regress`: each run as one tracking-store run, and each figure drawn
across commits (the way asv draws numpy's and pandas' benchmarks).

A regress run is a run of the experiment ``regress`` (any `bench.api.Sink`; the CLI uses the
MLflow store the other commands use) with tags ``git_commit``, ``mode``, ``passed`` and the
machine, and one metric per figure (timing ratios and quality test NLLs under their figure
names).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.api import DataError

__all__ = ["HistoryPoint", "REGRESS_EXPERIMENT", "load_history", "plot_history",
           "record_regress"]

log = logging.getLogger(__name__)
REGRESS_EXPERIMENT = "regress"


@dataclass
class HistoryPoint:
    """One regress run: its commit, mode, whether it passed, figure -> value."""

    commit: str
    mode: str
    passed: bool
    figures: dict[str, float] = field(default_factory=dict)


def record_regress(sink, figures: dict[str, float], commit: str, mode: str, passed: bool,
                   machine: dict[str, Any]) -> str:
    """Write one regress run to ``sink`` (a `bench.api.Sink`); returns its run id."""
    name = f"regress {mode} {commit[:12] or 'no-git'}"
    tags = {"git_commit": commit, "mode": mode, "passed": str(passed).lower(),
            **{f"machine.{k}": str(v) for k, v in machine.items()}}
    run_id = sink.start(name, {"mode": mode}, tags)
    sink.log_metrics({k: float(v) for k, v in figures.items()})
    sink.end("FINISHED")
    return run_id


def load_history(records, mode: str) -> list[HistoryPoint]:
    """The regress runs of ``mode`` among ``records`` (`bench.api.RunRecord`s, oldest
    first, e.g. `bench.record.mlflow_sink.load_records(uri, "regress")`)."""
    return [HistoryPoint(r.tags.get("git_commit", ""), mode, r.tags.get("passed") == "true",
                         dict(r.metrics))
            for r in records if r.tags.get("mode") == mode and r.status == "FINISHED"]


def _outside(value: float, base: dict | None, threshold: float) -> bool:
    if base is None or base["kind"] == "info":
        return False
    if base["kind"] == "timing":
        return value > base["ratio"] * base.get("factor", threshold)
    return abs(value - base["value"]) > base["band"]


def plot_history(points: list[HistoryPoint], baseline: dict[str, dict], threshold: float,
                 out: Path) -> Path:
    """One panel per figure, x = commit order (first appearance in the store): every run's
    value as a dot (runs of one commit share its x), the median per commit as a line, the
    baseline dashed and the passing region shaded (timing: up to baseline x threshold;
    quality: baseline +- band); a value outside the region is red.

    Raises:
        DataError: no recorded runs to draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not points:
        raise DataError("no regress runs recorded in the tracking store: run bench regress")
    commits = list(dict.fromkeys(p.commit for p in points))
    x_of = {c: i for i, c in enumerate(commits)}
    labels = [(c[:7] + ("*" if c.endswith("-dirty") else "")) or "?" for c in commits]
    names = sorted({k for p in points for k in p.figures} | set(baseline))
    cols = 3 if len(names) > 4 else max(1, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        _panel(ax, name, points, baseline.get(name), threshold, x_of, labels)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"bench regress ({points[-1].mode}) across commits (* uncommitted changes): "
                 f"dots = runs, line = median per commit, dashed = baseline, green = passing "
                 "(timing ratio <= baseline x its factor; NLL within its band), "
                 "red = outside", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _panel(ax, name: str, points: list[HistoryPoint], base: dict | None, threshold: float,
           x_of: dict[str, int], labels: list[str]) -> None:
    """One figure's panel of `plot_history`: its passing region, the runs and the median per
    commit."""
    import statistics

    if base is not None and base["kind"] == "info":
        ax.axhline(base["value"], color="tab:gray", lw=1, ls=":")
    elif base is not None:
        if base["kind"] == "timing":
            ref, lo, hi = base["ratio"], 0.0, base["ratio"] * base.get("factor", threshold)
        else:
            ref, lo, hi = (base["value"], base["value"] - base["band"],
                           base["value"] + base["band"])
        ax.axhspan(lo, hi, color="tab:green", alpha=0.12, lw=0)
        ax.axhline(ref, color="tab:green", lw=1, ls="--")
    runs = [(x_of[p.commit], p.figures[name]) for p in points if name in p.figures]
    per_commit: dict[int, list[float]] = {}
    for x, y in runs:
        per_commit.setdefault(x, []).append(y)
    xs = sorted(per_commit)
    ax.plot(xs, [statistics.median(per_commit[x]) for x in xs], color="tab:blue", lw=1)
    for x, y in runs:
        bad = _outside(y, base, threshold)
        ax.plot(x, y, ls="", marker="o", ms=5 if bad else 3,
                color="tab:red" if bad else "tab:blue")
    ax.set_title(name, fontsize=9)
    timing = base is None or base["kind"] == "timing"
    ax.set_ylabel("seconds" if "_seconds_" in name else
                  "ratio to reference" if timing else "test NLL (nats)", fontsize=8)
    if runs and base is not None and timing:
        top = base["ratio"] * base.get("factor", threshold)
        ax.set_ylim(0, max(max(y for _, y in runs), top) * 1.15)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=6)
    ax.tick_params(axis="y", labelsize=7)
