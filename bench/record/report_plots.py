"""The report's series and figures (`bench.record.report`): finished runs grouped by
dataset, validation NLL against training wall-clock and cost per iteration against
iteration, every method on one axis per dataset, one colour per method in every figure.
Curves are named by configuration and seed (``interflow[interpolant=linear] seed 0``), and
the validation axis is clipped robustly (`robust_ylim`), so one diverged run does not
flatten every other curve. matplotlib (Agg) loads only to draw."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.api import RunRecord
from bench.record.tables import config_labels
from bench.record.units import unit_of

__all__ = ["Curve", "studies", "finished_runs", "val_curves", "rolling_median",
           "cost_curves", "colors_of", "plot_val", "plot_cost", "YRange", "robust_ylim",
           "run_labels"]


@dataclass
class Curve:
    """One run's series on a plot: x, y (raw) and, for step costs, a rolling median
    ``smooth`` at the iterations ``smooth_x``."""

    label: str
    method: str
    x: np.ndarray
    y: np.ndarray
    smooth_x: np.ndarray | None = None
    smooth: np.ndarray | None = None
    run_id: str | None = None



def studies(records: Sequence[RunRecord]) -> list[tuple[RunRecord, list[RunRecord]]]:
    """Finished speed-up studies (parent run, its finished child runs in order)."""
    by_id = {r.run_id: r for r in records}
    out = []
    for r in records:
        if r.params.get("study") != "speedup" or r.status != "FINISHED":
            continue
        kids = [by_id[i] for i in r.tags.get("child_runs", "").split(",") if i in by_id]
        kids = [k for k in kids if k.status == "FINISHED"]
        if len(kids) >= 2:
            out.append((r, kids))
    return out


def finished_runs(records: Sequence[RunRecord]) -> list[RunRecord]:
    """Finished benchmark runs, without the speed-up studies' own runs (drawn apart)."""
    study_kids = {k.run_id for _, kids in studies(records) for k in kids}
    return [r for r in records if r.method and r.dataset and r.status == "FINISHED"
            and r.run_id not in study_kids]


def run_labels(runs: Sequence[RunRecord]) -> dict[str | None, str]:
    """Run id -> ``configuration seed s`` (the configuration as the tables label it among
    the runs of its dataset: the method and the settings that differ), then " rerun k" for
    the k-th run (oldest first) of one configuration and seed."""
    out: dict[str | None, str] = {}
    for ds in {r.dataset for r in runs}:
        mine = [r for r in runs if r.dataset == ds]
        config = config_labels(mine)
        seen: Counter = Counter()
        for r in mine:
            label = f"{config[r.run_id]} seed {r.seed}"
            seen[label] += 1
            out[r.run_id] = label + (f" rerun {seen[label]}" if seen[label] > 1 else "")
    return out


def val_curves(records: Sequence[RunRecord]) -> dict[str, list[Curve]]:
    """Per dataset: (training seconds at each evaluation, validation NLL) of each finished
    run, labelled ``configuration seed s (kind)`` (`run_labels`, the kind from the run's
    ``val_nll.kind`` tag)."""
    by_ds: dict[str, list[Curve]] = defaultdict(list)
    runs = [r for r in finished_runs(records) if r.history.get("val_nll")]
    names = run_labels(runs)
    labels = {r.run_id: f"{names[r.run_id]} ({r.tags.get('val_nll.kind', 'kind unrecorded')})"
              for r in runs}
    for r in runs:
        secs = dict(r.history.get("train_seconds_at_eval", []))
        pts = sorted((secs[s], v) for s, v in r.history["val_nll"]
                     if s in secs and math.isfinite(v) and math.isfinite(secs[s]))
        if pts:
            x, y = (np.array(a, dtype=float) for a in zip(*pts, strict=True))
            by_ds[r.dataset].append(Curve(labels[r.run_id], r.method, x, y,
                                          run_id=r.run_id))
    return dict(sorted(by_ds.items()))


def rolling_median(y: np.ndarray, frac: float = 0.3, points: int = 300
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Centred rolling median whose window grows with the position (``max(5, frac * i)``
    values around the i-th, 1-based), so it is equally smooth along a log axis; evaluated
    at up to ``points`` log-spaced positions. Returns (0-based positions, medians)."""
    n = len(y)
    at = np.unique(np.geomspace(1, n, min(n, points)).round().astype(int)) - 1
    med = np.empty(len(at))
    for j, i in enumerate(at):
        half = max(5, int(frac * (i + 1))) // 2
        med[j] = np.median(y[max(0, i - half):i + half + 1])
    return at, med


def cost_curves(records: Sequence[RunRecord]) -> dict[str, list[Curve]]:
    """Per dataset: (iteration, seconds of that training step) of each finished run, with
    its `rolling_median`."""
    by_ds: dict[str, list[Curve]] = defaultdict(list)
    runs = [r for r in finished_runs(records) if r.history.get("step_seconds")]
    labels = run_labels(runs)
    for r in runs:
        steps, secs = (np.array(a, dtype=float)
                       for a in zip(*sorted(r.history["step_seconds"]), strict=True))
        at, med = rolling_median(secs)
        by_ds[r.dataset].append(Curve(labels[r.run_id], r.method, steps, secs, steps[at],
                                      med, r.run_id))
    return dict(sorted(by_ds.items()))


@dataclass(frozen=True)
class YRange:
    """A plot's y-limits and what they leave out: ``clipped`` finite values outside
    [lo, hi], the farthest of them ``extreme`` (None when nothing is clipped)."""

    lo: float
    hi: float
    clipped: int = 0
    extreme: float | None = None

    def note(self) -> str:
        """One line for the plot saying what was clipped ("" when nothing)."""
        if not self.clipped:
            return ""
        what = "value" if self.clipped == 1 else "values"
        return (f"y-axis clipped: {self.clipped} {what} outside it (the farthest "
                f"{self.extreme:.4g}) not shown")


def robust_ylim(series: Sequence[np.ndarray], keep: Sequence[float] = (),
                fence: float = 3.0, pad: float = 0.08) -> YRange | None:
    """Y-limits that show the bulk of every curve and not the outliers of one: the finite
    values of all ``series`` pooled, Tukey's far-out fences (quartiles -/+ ``fence`` x the
    interquartile range, which is floored at 1% of the median's magnitude so that a flat
    curve does not make every other value an outlier), the range of the values inside
    them and of ``keep`` (reference lines always shown), widened by ``pad`` of itself on
    each side. A diverged run's huge (or early evaluations' high) values fall outside and
    are counted in ``clipped``. None when there are no finite values.
    """
    vals = np.concatenate([np.asarray(v, dtype=float).ravel() for v in series] or [[]])
    vals = vals[np.isfinite(vals)]
    ref = np.asarray([v for v in keep if v is not None and math.isfinite(v)], dtype=float)
    if vals.size == 0 and ref.size == 0:
        return None
    inside = ref
    if vals.size:
        q1, med, q3 = np.quantile(vals, [0.25, 0.5, 0.75])
        iqr = max(q3 - q1, 0.01 * max(abs(med), 1e-12))
        inside = np.concatenate([vals[(vals >= q1 - fence * iqr) & (vals <= q3 + fence * iqr)],
                                 ref])
    lo, hi = float(inside.min()), float(inside.max())
    margin = pad * (hi - lo) if hi > lo else max(0.5, 0.01 * abs(hi))
    lo, hi = lo - margin, hi + margin
    out = vals[(vals < lo) | (vals > hi)]
    extreme = float(out[np.argmax(np.abs(out - (lo + hi) / 2))]) if out.size else None
    return YRange(lo, hi, int(out.size), extreme)


def colors_of(methods: Sequence[str]) -> dict[str, str]:
    """One colour per method, the same in every figure."""
    palette = [f"C{i}" for i in range(10)]
    return {m: palette[i % 10] for i, m in enumerate(sorted(set(methods)))}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_ticks(ax, axes: str) -> None:
    """Log-axis ticks as plain numbers (0.5, 2, 30) rather than powers of ten; every minor
    tick labelled where the axis spans less than 4x, else those at 2, 3 and 5."""
    from matplotlib.ticker import FuncFormatter

    for name in axes:
        axis = ax.xaxis if name == "x" else ax.yaxis
        lo, hi = ax.get_xlim() if name == "x" else ax.get_ylim()
        every = hi / lo < 4
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(FuncFormatter(
            lambda v, _, every=every: f"{v:g}" if every or f"{v:.1g}"[0] in "235" else ""))


def plot_val(curves: list[Curve], title: str, path: Path, colors: dict[str, str],
             truth: float | None = None) -> Path:
    """Validation NLL (nats) against training seconds, log x; a run evaluated only before
    training (a closed-form fit) is a dashed horizontal line; the y range is
    `robust_ylim` of every curve's values (reference lines always inside), so neither a
    diverged run nor the first evaluations far above flatten the rest: what it clips, the
    plot says."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    timed = [c for c in curves if (c.x > 0).any()]
    for c in curves:
        if c in timed:
            keep = c.x > 0
            ax.plot(c.x[keep], c.y[keep], "o-", ms=3.5, lw=1.4, color=colors[c.method],
                    label=f"{c.label}, best {c.y.min():.3f}")
        else:
            ax.axhline(c.y[-1], ls="--", lw=1.4, color=colors[c.method],
                       label=f"{c.label}, closed-form fit {c.y[-1]:.3f}")
    if truth is not None:
        ax.axhline(truth, ls=":", color="black", lw=1.2, label=f"true test NLL {truth:.3f}")
    flat = [c.y[-1] for c in curves if c not in timed] + ([truth] if truth is not None else [])
    yr = robust_ylim([c.y[c.x > 0] for c in timed], flat)
    if yr is not None and timed:
        ax.set_ylim(yr.lo, yr.hi)
        if yr.note():
            ax.text(0.99, 0.01, yr.note(), transform=ax.transAxes, ha="right", va="bottom",
                    fontsize=8, color="gray")
    ax.set(xscale="log", xlabel="training wall-clock (s, evaluation time excluded)",
           ylabel=f"validation NLL ({unit_of('val_nll')})", title=title)
    _plain_ticks(ax, "x")
    return _finish(plt, fig, ax, path)


def plot_cost(curves: list[Curve], title: str, path: Path, colors: dict[str, str]) -> Path:
    """Milliseconds per training step against the step (log-log): each step a faint dot,
    the rolling median a line, labelled with the method and its median per step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for c in curves:
        color = colors[c.method]
        ax.plot(c.x, c.y * 1e3, ".", ms=2, alpha=0.2, color=color)
        ax.plot(c.smooth_x, c.smooth * 1e3, lw=1.8, color=color,
                label=f"{c.label}: median {np.median(c.y) * 1e3:.3g} ms/step")
    ax.set(xscale="log", yscale="log", xlabel="iteration (training step)",
           ylabel="milliseconds per training step", title=title)
    _plain_ticks(ax, "xy")
    return _finish(plt, fig, ax, path)


def _finish(plt, fig, ax, path: Path) -> Path:
    """Grid, the legend outside on the right, save at 110 dpi, close."""
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
