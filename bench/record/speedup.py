"""The speed-up study's analysis: per-iteration training cost of methods trained with the
same network and batch on the same machine, back to back, and their wall-clock to a target
validation NLL.

The question it answers is the InterFlow paper's: how much cheaper is a stochastic-
interpolant flow to train than a maximum-likelihood CNF, at what likelihood? Every step's
seconds and NFE come from the harness's own loop, so all methods are timed by the same code;
validation NLL comes from the same likelihood engine. The analysis reads `RunRecord`s (their
``history``), never a tracker.

Time to target (`crossing`): validations sit on a time grid (`eval_grid`: one after the
first step, then geometric from ``first`` seconds to the budget). The crossing is bracketed by
the last evaluation above the target and the first at or below it, and estimated by linear
interpolation of validation NLL against training seconds between the two. Where the bracket
is open the figure is a bound and says so: met at the first evaluation, the crossing is
``<= t_first`` (an upper bound); never met, it is ``> t_last`` (a lower bound, "> budget").
A ratio of two times carries the combined bound status (`ratio_bound`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.api import RunRecord
from bench.api.errors import ConfigError

__all__ = ["SpeedupResult", "Crossing", "HISTORY", "NAMED_POINTS", "eval_grid", "from_record",
           "summarize_costs", "crossing", "time_to_target", "ratio_bound", "speedup_table",
           "plot", "stamp"]

log = logging.getLogger(__name__)
FIXED_ITERS = (1, 10, 100, 1000)
#: named points of training: the median seconds per iteration over the first, the middle and
#: the last tenth of a method's own steps
NAMED_POINTS = ("start", "half", "end")
EXACT, UPPER, LOWER, UNDETERMINED = "exact", "upper bound", "lower bound", "undetermined"
#: the per-step series the study reads (pass to `bench.record.mlflow_sink.load_records`)
HISTORY = ("step_seconds", "nfe_forward", "nfe_backward", "val_nll", "train_seconds_at_eval")


@dataclass
class SpeedupResult:
    """The histories of one method's run in the study.

    Attributes:
        step_seconds: (step, seconds of that training step).
        val: (step, training seconds at that evaluation, validation NLL).
        nfe_forward, nfe_backward: (step, function evaluations of the step's forward
            solve / of its backward (adjoint) solve); empty for simulation-free methods.
    """

    method: str
    run_id: str | None
    step_seconds: list[tuple[int, float]]
    val: list[tuple[int, float, float]]
    nfe_forward: list[tuple[int, float]] = field(default_factory=list)
    nfe_backward: list[tuple[int, float]] = field(default_factory=list)
    n_parameters: int = 0
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Crossing:
    """When a method's validation NLL first reaches the target, with its bracket.

    Attributes:
        seconds: the estimate: the interpolated crossing (``exact``), ``t_first``
            (``upper bound``: met at the first evaluation), ``t_last`` (``lower bound``:
            never met), NaN when there is no finite evaluation.
        before, after: the bracket: the crossing lies in (before, after]; ``before`` is 0
            when met at the first evaluation, ``after`` is inf when never met.
        status: ``exact`` (bracketed), ``upper bound``, ``lower bound`` or ``undetermined``.
    """

    seconds: float
    before: float
    after: float
    status: str

    def text(self, budget: float) -> str:
        """The table's wording, e.g. ``37.2 s [30.1, 45.0]``, ``<= 1.0 s (upper bound: met
        at the first evaluation)``, ``> budget (60 s)``."""
        if self.status == EXACT:
            return f"{self.seconds:.3g} s [{self.before:.3g}, {self.after:.3g}]"
        if self.status == UPPER:
            return f"<= {self.seconds:.3g} s (upper bound: met at the first evaluation)"
        if self.status == LOWER:
            if self.seconds >= 0.99 * budget:
                return f"> budget ({budget:g} s)"
            return f"> {self.seconds:.3g} s (lower bound: not met by the last evaluation)"
        return "undetermined (no validation)"


def eval_grid(budget: float, first: float, points: int,
              first_step: bool = True) -> tuple[float, ...]:
    """Training times of the validations: ``points`` geometric from ``first`` to ``budget``
    seconds (the budget alone when ``points`` is 1), and 0 first when ``first_step`` (the
    loop then validates after the first step: the nearly untrained model, which brackets a
    crossing faster than ``first``).

    Raises:
        ConfigError: ``first`` not in (0, budget), or ``points`` < 1.
    """
    if points < 1 or not 0 < first < budget:
        raise ConfigError(f"the evaluation grid needs 0 < --first-eval < the per-method "
                          f"budget ({budget:g} s) and --evals >= 1 (got {first:g}, {points})")
    if points == 1:
        grid = [budget]
    else:
        ratio = (budget / first) ** (1 / (points - 1))
        grid = [first * ratio**k for k in range(points - 1)] + [budget]
    return tuple(([0.0] if first_step else []) + grid)


def from_record(rec: RunRecord, method: str | None = None) -> SpeedupResult:
    """The study's view of a run: its step times, NFE (forward and backward apart) and
    validation curve from ``rec.history``, its parameter count from ``rec.metrics``."""
    h = rec.history
    secs_at = dict(h.get("train_seconds_at_eval", []))
    val = [(s, secs_at.get(s, math.nan), v) for s, v in h.get("val_nll", [])]
    return SpeedupResult(method or rec.method, rec.run_id, list(h.get("step_seconds", [])),
                         val, list(h.get("nfe_forward", [])), list(h.get("nfe_backward", [])),
                         n_parameters=int(rec.metrics.get("n_parameters", 0)))


def _window(values: np.ndarray, start: int, width: int) -> float:
    """Median of step times in [start, start + width) (1-based iterations)."""
    chunk = values[start - 1:start - 1 + width]
    return float(np.median(chunk)) if len(chunk) else math.nan


def summarize_costs(res: SpeedupResult) -> dict[str, float]:
    """Median/min/max seconds per iteration, seconds at fixed iterations and at the named
    points (``s_per_it_start``/``_half``/``_end``: median over the first, the middle and the
    last tenth of the steps), cost growth (end over start), mean NFE per solve over the
    first and last tenth of the steps (``nfe_forward_*`` and ``nfe_backward_*`` apart), and
    the best validation NLL."""
    secs = np.array([v for _, v in sorted(res.step_seconds)])
    n = len(secs)
    out = {"steps": float(n)}
    if n == 0:
        return out
    tenth = max(1, n // 10)
    mid = (n - tenth) // 2
    out.update({
        "s_per_it_median": float(np.median(secs)),
        "s_per_it_min": float(secs.min()),
        "s_per_it_max": float(secs.max()),
        "s_per_it_first10pct": float(np.median(secs[:tenth])),
        "s_per_it_last10pct": float(np.median(secs[-tenth:])),
        "s_per_it_start": float(np.median(secs[:tenth])),
        "s_per_it_half": float(np.median(secs[mid:mid + tenth])),
        "s_per_it_end": float(np.median(secs[-tenth:])),
    })
    out["cost_growth"] = out["s_per_it_last10pct"] / out["s_per_it_first10pct"]
    for it in FIXED_ITERS:
        if it <= n:
            out[f"s_per_it_at_{it}"] = _window(secs, it, max(1, min(10, it)))
    for name, series in (("nfe_forward", res.nfe_forward), ("nfe_backward", res.nfe_backward)):
        nfe = np.array([v for _, v in sorted(series)])
        if len(nfe) and nfe.any():  # per solve, the first and last tenth of the steps
            part = max(1, len(nfe) // 10)
            out[f"{name}_first10pct"] = float(np.mean(nfe[:part]))
            out[f"{name}_last10pct"] = float(np.mean(nfe[-part:]))
    best = [v for _, _, v in res.val if math.isfinite(v)]
    if best:
        out["best_val_nll"] = float(min(best))
    return out


def crossing(res: SpeedupResult, target: float) -> Crossing:
    """The first crossing of ``target`` by the validation NLL against training seconds.

    Rule: take the evaluations in time order; the first with NLL <= target at ``t_after``
    and the one before it (NLL above, at ``t_before``) bracket the crossing, estimated by
    linear interpolation of NLL against seconds between them (``t_after`` itself when the
    earlier NLL is not finite). Met at the first evaluation: ``upper bound`` (crossing in
    (0, t_first]); never met: ``lower bound`` (crossing > t_last).
    """
    evals = sorted((t, v) for _, t, v in res.val if math.isfinite(t))
    if not evals or not math.isfinite(target):
        return Crossing(math.nan, math.nan, math.nan, UNDETERMINED)
    for i, (t1, v1) in enumerate(evals):
        if math.isfinite(v1) and v1 <= target:
            if i == 0:
                return Crossing(t1, 0.0, t1, UPPER)
            t0, v0 = evals[i - 1]
            est = t1 if not math.isfinite(v0) else t0 + (v0 - target) / (v0 - v1) * (t1 - t0)
            return Crossing(est, t0, t1, EXACT)
    return Crossing(evals[-1][0], evals[-1][0], math.inf, LOWER)


def time_to_target(res: SpeedupResult, target: float) -> float | None:
    """The estimated training seconds to reach ``target`` (`crossing`; an upper bound when
    met at the first evaluation), None when never met."""
    c = crossing(res, target)
    return c.seconds if c.status in (EXACT, UPPER) else None


_DIRECTION = {EXACT: 0, LOWER: 1, UPPER: -1}


def ratio_bound(num: Crossing, den: Crossing) -> tuple[float, str, float, float]:
    """``num.seconds / den.seconds`` with its bound status and its range from the brackets.

    A lower-bound numerator or an upper-bound denominator makes the ratio a lower bound
    (">="), the reverse an upper bound ("<="); both directions at once leave it
    ``undetermined`` (value NaN).

    Returns:
        (value, status, lo, hi): the ratio lies in [lo, hi] (0 and inf where open) when each
        validation curve is monotone between its evaluations.
    """
    if UNDETERMINED in (num.status, den.status):
        return math.nan, UNDETERMINED, math.nan, math.nan
    if num is den:
        return 1.0, EXACT, 1.0, 1.0
    d = {_DIRECTION[num.status], -_DIRECTION[den.status]} - {0}
    lo = num.before / den.after if den.after > 0 else math.inf
    hi = num.after / den.before if den.before > 0 else math.inf
    if len(d) > 1:
        return math.nan, UNDETERMINED, lo, hi
    status = {1: LOWER, -1: UPPER}[d.pop()] if d else EXACT
    return num.seconds / den.seconds, status, lo, hi


def _ratio_text(value: float, status: str) -> str:
    if status == UNDETERMINED:
        return "undetermined (bounds in opposite directions)"
    sign = {EXACT: "", LOWER: ">= ", UPPER: "<= "}[status]
    return f"{sign}{value:.3g}x" + ("" if status == EXACT else f" ({status})")


def speedup_table(results: list[SpeedupResult], budget: float,
                  target: float | None = None) -> tuple[pd.DataFrame, float, str]:
    """One row per method; the target defaults to the worst best-val-NLL among methods.

    Time to target: ``time_to_target_s`` (the estimate, NaN when never met), its bracket
    ``time_to_target_lo_s``/``_hi_s``, ``time_to_target_bound`` and the wording
    ``time_to_target``. Against the first method: ``cost_ratio_vs_<m>`` (median s/it),
    ``cost_ratio_<point>_vs_<m>`` at the `NAMED_POINTS`, ``time_to_target_ratio_vs_<m>``
    with ``time_to_target_ratio_bound``, its range ``time_to_target_ratio_lo``/``_hi`` and
    the wording ``time_to_target_ratio`` (e.g. ">= 8.1x (lower bound)").
    """
    stats = {r.method: summarize_costs(r) for r in results}
    bests = [s["best_val_nll"] for s in stats.values() if "best_val_nll" in s]
    given = target is not None
    if target is None:
        target = max(bests) if bests else math.nan
    cross = {r.method: crossing(r, target) for r in results}
    base = results[0].method
    rows = []
    for r in results:
        c = cross[r.method]
        value, status, lo, hi = ratio_bound(c, cross[base])
        rows.append({
            "method": r.method, "parameters": r.n_parameters, **stats[r.method],
            "time_to_target_s": c.seconds if c.status in (EXACT, UPPER) else math.nan,
            "time_to_target_lo_s": c.before, "time_to_target_hi_s": c.after,
            "time_to_target_bound": c.status, "time_to_target": c.text(budget),
            "time_to_target_ratio_vs_" + base: value,
            "time_to_target_ratio_bound": status,
            "time_to_target_ratio_lo": lo, "time_to_target_ratio_hi": hi,
            "time_to_target_ratio": _ratio_text(value, status)})
    tab = pd.DataFrame(rows).set_index("method")
    tab.insert(tab.columns.get_loc("time_to_target_ratio_vs_" + base),
               "cost_ratio_vs_" + base,
               tab["s_per_it_median"] / tab.loc[base, "s_per_it_median"])
    for point in NAMED_POINTS:
        col = f"s_per_it_{point}"
        tab.insert(tab.columns.get_loc("time_to_target_ratio_vs_" + base),
                   f"cost_ratio_{point}_vs_{base}", tab[col] / tab.loc[base, col])
    how = "as given" if given else "worst best-val among methods"
    note = (f"target val NLL {target:.3f} nats ({how}); time to target interpolated between "
            f"the bracketing evaluations" if bests or given else "no validation NLL recorded")
    return tab, target, note


def plot(results: list[SpeedupResult], target: float, path: Path) -> Path:
    """Cost per iteration vs iteration (left); validation NLL vs training seconds (right),
    with each method's crossing of the target: x with its bracket, or < (met at the first
    evaluation: upper bound) / > (never met: lower bound)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        steps, secs = zip(*sorted(r.step_seconds), strict=True) if r.step_seconds else ([], [])
        line = ax1.plot(steps, secs, ".", ms=2, alpha=0.3)[0]
        if len(secs) >= 5:
            med = pd.Series(secs).rolling(max(5, len(secs) // 50), min_periods=1).median()
            ax1.plot(steps, med, color=line.get_color(), label=r.method)
        val = sorted(r.val, key=lambda v: v[1])
        if val:
            ax2.plot([v[1] for v in val], [v[2] for v in val], "o-", ms=3, label=r.method,
                     color=line.get_color())
        c = crossing(r, target)
        if c.status == EXACT:  # the estimate with its bracket, on the target line
            ax2.errorbar([c.seconds], [target], xerr=[[c.seconds - c.before],
                                                      [c.after - c.seconds]],
                         fmt="x", ms=9, capsize=5, elinewidth=2.5, zorder=3,
                         color=line.get_color())
        elif c.status in (UPPER, LOWER):  # an open bracket: an arrow-like marker
            ax2.plot([c.seconds], [target], "<" if c.status == UPPER else ">", ms=9,
                     color=line.get_color())
    ax1.set(xlabel="iteration", ylabel="seconds per iteration", yscale="log", xscale="log",
            title="training cost per iteration")
    ax2.set(xlabel="training wall-clock (s)", ylabel="validation NLL (nats)", xscale="log",
            title="validation NLL vs wall-clock")
    if math.isfinite(target):
        ax2.axhline(target, ls="--", color="gray", label=f"target {target:.2f}")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stamp() -> str:
    """A timestamp for file names of a study's outputs."""
    return time.strftime("%Y%m%d-%H%M%S")
