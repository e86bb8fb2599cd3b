"""The report's series and figures (`bench.record.report`): finished runs grouped by
dataset, validation NLL against training wall-clock and cost per iteration against
iteration, every method on one axis per dataset, one colour per method in every figure.
matplotlib (Agg) loads only to draw."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.api import RunRecord

__all__ = ["Curve", "studies", "finished_runs", "val_curves", "rolling_median",
           "cost_curves", "colors_of", "plot_val", "plot_cost"]


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


def _labels(runs: list[RunRecord], base: dict[str, str]) -> dict[str, str]:
    """``base`` label per run id, made unique among the runs of its dataset with the
    seed, then the run id."""
    count = Counter((r.dataset, base[r.run_id]) for r in runs)
    out = {r.run_id: base[r.run_id] + (f" s{r.seed}" if count[r.dataset, base[r.run_id]] > 1
                                       else "") for r in runs}
    count = Counter((r.dataset, out[r.run_id]) for r in runs)
    return {r.run_id: out[r.run_id] + (f" {str(r.run_id)[:6]}"
                                       if count[r.dataset, out[r.run_id]] > 1 else "")
            for r in runs}


def val_curves(records: Sequence[RunRecord]) -> dict[str, list[Curve]]:
    """Per dataset: (training seconds at each evaluation, validation NLL) of each finished
    run, labelled ``method (kind)`` from the run's ``val_nll.kind`` tag."""
    by_ds: dict[str, list[Curve]] = defaultdict(list)
    runs = [r for r in finished_runs(records) if r.history.get("val_nll")]
    base = {r.run_id: f"{r.method} ({r.tags.get('val_nll.kind', 'kind unrecorded')})"
            for r in runs}
    labels = _labels(runs, base)
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
    labels = _labels(runs, {r.run_id: r.method for r in runs})
    for r in runs:
        steps, secs = (np.array(a, dtype=float)
                       for a in zip(*sorted(r.history["step_seconds"]), strict=True))
        at, med = rolling_median(secs)
        by_ds[r.dataset].append(Curve(labels[r.run_id], r.method, steps, secs, steps[at],
                                      med, r.run_id))
    return dict(sorted(by_ds.items()))


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
    training (a closed-form fit) is a dashed horizontal line; the y range follows the
    second half of each curve, so first evaluations far above do not flatten the rest."""
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
    late = [v for c in timed for v in c.y[c.x > 0][len(c.y[c.x > 0]) // 2:]]
    flat = [c.y[-1] for c in curves if c not in timed] + ([truth] if truth is not None else [])
    if late:
        lo, hi = min(late + flat), max(late + flat)
        pad = 0.08 * (hi - lo) if hi > lo else 0.5
        ax.set_ylim(lo - pad, hi + 3 * pad)
        top = max(v for c in timed for v in c.y)
        if top > hi + 3 * pad:
            ax.text(0.99, 0.01, f"early evaluations up to {top:.3g} are above the axis",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                    color="gray")
    ax.set(xscale="log", xlabel="training wall-clock (s, evaluation time excluded)",
           ylabel="validation NLL (nats)", title=title)
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
