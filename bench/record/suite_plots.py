"""The suite page's anytime curves (`bench.record.suite_page`): validation NLL against
training wall-clock, one axis per dataset, one line and band per method configuration over
its seeds (benchopt's convergence curves are the model).

A seed's validation NLL is known only at its evaluations, so at time t each seed's value
is its latest evaluation at or before t (what the run would hand back if stopped at t).
The line is the median over seeds at every evaluation time of any seed, the band the
minimum to maximum over seeds (with three seeds, every seed lies inside it); each
evaluation is also drawn as a faint dot. Runs evaluated only before training (closed-form
fits) are a dashed horizontal line at their median.

The figures are SVG written byte for byte the same from the same records: matplotlib's
``svg.hashsalt`` fixed (the ids of the drawing's elements) and no ``Date`` or ``Creator``
in its metadata. The series come from `bench.record.report_plots.val_curves` (the same
as `bench report` draws), the y-range from its `robust_ylim`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.record.report_plots import Curve, _plain_ticks, _pyplot, robust_ylim
from bench.record.units import unit_of

__all__ = ["Band", "seed_band", "plot_anytime", "save_svg", "SVG_SALT"]

#: matplotlib's ``svg.hashsalt`` for every suite figure: element ids that do not change
SVG_SALT = "bench-suite-page"


@dataclass(frozen=True)
class Band:
    """One configuration's seeds on the anytime plot: at each time ``x`` (training
    seconds, > 0) the ``median``, ``lo`` (min) and ``hi`` (max) over the seeds evaluated
    by then; ``flat``: the median final value of seeds never timed (closed-form fits);
    ``seeds``: how many curves it summarises; ``points``: every (seconds, value)."""

    label: str
    x: np.ndarray
    median: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    flat: float | None
    seeds: int
    points: tuple[tuple[float, float], ...]


def _latest(curve: Curve, t: float) -> float:
    """The curve's latest finite evaluation at or before time ``t`` (NaN before its
    first)."""
    keep = (curve.x <= t) & np.isfinite(curve.y)
    return float(curve.y[keep][np.argmax(curve.x[keep])]) if keep.any() else math.nan


def seed_band(label: str, curves: Sequence[Curve]) -> Band:
    """The median and min-max band over ``curves`` (the seeds of one configuration) at
    every evaluation time of any of them: each seed's value at t is its latest evaluation
    at or before t; a time before some seed's first evaluation counts only the seeds
    evaluated by then."""
    timed = [c for c in curves if (c.x > 0).any()]
    flat_vals = [float(c.y[-1]) for c in curves if c not in timed and len(c.y)]
    grid = np.unique(np.concatenate([c.x[c.x > 0] for c in timed] or [np.zeros(0)]))
    med, lo, hi = (np.full(len(grid), math.nan) for _ in range(3))
    for i, t in enumerate(grid):
        vals = np.array([_latest(c, t) for c in timed])
        vals = vals[np.isfinite(vals)]
        if vals.size:
            med[i], lo[i], hi[i] = np.median(vals), vals.min(), vals.max()
    points = tuple(sorted((float(x), float(y)) for c in timed
                          for x, y in zip(c.x, c.y, strict=True) if x > 0))
    flat = float(np.median(flat_vals)) if flat_vals else None
    return Band(label, grid, med, lo, hi, flat, len(curves), points)


def save_svg(fig, path: Path) -> Path:
    """Save ``fig`` as SVG with fixed element ids and no date or creator: the same figure
    gives the same bytes."""
    import matplotlib

    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.hashsalt": SVG_SALT, "svg.fonttype": "path"}):
        fig.savefig(path, format="svg", metadata={"Date": None, "Creator": None})
    return path


def _colors(labels: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(colour, line style) per configuration label: ten colours, then dashed, dotted."""
    styles = ("-", "--", ":")
    return {lab: (f"C{i % 10}", styles[(i // 10) % 3]) for i, lab in enumerate(sorted(labels))}


def plot_anytime(bands: Sequence[Band], title: str, path: Path,
                 truth: float | None = None) -> Path:
    """Validation NLL against training seconds (log x): per configuration its median over
    seeds (line), min-max band and evaluations (dots); closed-form fits dashed; the true
    test NLL dotted when the dataset has one. The y-range is `robust_ylim` of every
    evaluation (what it clips, the plot says)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    style = _colors([b.label for b in bands])
    for b in bands:
        color, ls = style[b.label]
        if len(b.x):
            ax.fill_between(b.x, b.lo, b.hi, color=color, alpha=0.18, lw=0, step="post")
            ax.step(b.x, b.median, where="post", color=color, ls=ls, lw=1.6,
                    label=f"{b.label} ({b.seeds} seeds), best median {np.nanmin(b.median):.3f}")
            px, py = zip(*b.points, strict=True)
            ax.plot(px, py, ".", ms=3, alpha=0.45, color=color)
        if b.flat is not None:
            ax.axhline(b.flat, ls="--", lw=1.4, color=color,
                       label=f"{b.label} ({b.seeds} seeds), closed-form fit {b.flat:.3f}")
    if truth is not None:
        ax.axhline(truth, ls=":", color="black", lw=1.2, label=f"true test NLL {truth:.3f}")
    keep = [b.flat for b in bands if b.flat is not None] + ([truth] if truth is not None
                                                           else [])
    yr = robust_ylim([np.array([y for _, y in b.points]) for b in bands], keep)
    if yr is not None and any(len(b.x) for b in bands):
        ax.set_ylim(yr.lo, yr.hi)
        if yr.note():
            ax.text(0.99, 0.01, yr.note(), transform=ax.transAxes, ha="right", va="bottom",
                    fontsize=8, color="gray")
    if any(len(b.x) for b in bands):
        ax.set_xscale("log")
        _plain_ticks(ax, "x")
    ax.set(xlabel="training wall-clock (s, evaluation time excluded)",
           ylabel=f"validation NLL ({unit_of('val_nll')})", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    try:
        return save_svg(fig, path)
    finally:
        plt.close(fig)
