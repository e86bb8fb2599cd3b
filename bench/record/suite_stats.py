"""The suite page's numbers (`bench.record.suite_page`): confidence intervals over seeds and
the speed-up figures of InterFlow against each other method, seed by seed.

Intervals over seeds are Student-t intervals: the seeds' mean ± t(0.975, n-1) x s/sqrt(n)
with s the sample standard deviation (n-1 in its denominator); a difference of two
configurations' means uses Welch's interval (each side its own variance,
Welch-Satterthwaite degrees of freedom). One seed gives no interval.

The speed-up figures reuse `bench.record.speedup`: per seed, InterFlow's run and the other
method's run of that seed on that dataset; the target is the worse of the two best
validation NLLs (the slower method's best, the level both reached); the time each took to
reach it is `speedup.crossing` (bracketed by evaluations, a bound where the bracket is
open) and their ratio `speedup.ratio_bound`. The cost per iteration is the median of the
recorded step seconds (``step_seconds``), or, where a record carries no per-step series,
the mean (``train_seconds / steps_done``), and the table says which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.api import RunRecord
from bench.record import speedup

__all__ = ["Interval", "t_interval", "welch_interval", "Pair", "pair_speedup", "LEVEL"]

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean (or a difference of means) with its two-sided ``LEVEL`` interval [lo, hi]
    (NaN with fewer than two seeds on a side), from ``dof`` degrees of freedom."""

    mean: float
    lo: float
    hi: float
    n: int
    dof: float

    @property
    def defined(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def contains(self, value: float) -> bool:
        return self.defined and self.lo <= value <= self.hi


def _t(dof: float, level: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, dof))


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean of ``values`` with the Student-t interval: mean ± t(0.5 + level/2, n-1) x
    s/sqrt(n) (s with n-1 in its denominator)."""
    v = np.asarray(values, dtype=float)
    n = int(v.size)
    mean = float(v.mean()) if n else math.nan
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, math.nan)
    half = _t(n - 1, level) * float(v.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, float(n - 1))


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """mean(a) - mean(b) with Welch's interval: ± t(0.5 + level/2, dof) x sqrt(s_a^2/n_a +
    s_b^2/n_b), dof by Welch-Satterthwaite; NaN bounds with fewer than two values on a
    side. Two sides without any spread give the zero-width interval at the difference."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(x.mean() - y.mean()) if x.size and y.size else math.nan
    n = int(x.size + y.size)
    if x.size < 2 or y.size < 2:
        return Interval(diff, math.nan, math.nan, n, math.nan)
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(diff, diff, diff, n, math.inf)
    dof = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    half = _t(dof, level) * se
    return Interval(diff, diff - half, diff + half, n, float(dof))


@dataclass(frozen=True)
class Pair:
    """InterFlow's run against another method's run of one seed on one dataset.

    Attributes:
        cost, other_cost: seconds per iteration of each; ``cost_how``: "median" or "mean".
        target: the worse of the two best validation NLLs (NaN: one has none).
        time, other_time: `speedup.Crossing` of the target by each.
        ratio: (value, status, lo, hi) of other_time / time (`speedup.ratio_bound`).
    """

    seed: int
    cost: float
    other_cost: float
    cost_how: str
    target: float
    time: speedup.Crossing
    other_time: speedup.Crossing
    ratio: tuple[float, str, float, float]

    @property
    def cost_ratio(self) -> float:
        """The other method's seconds per iteration over InterFlow's."""
        return self.other_cost / self.cost if self.cost > 0 else math.nan


def _cost(rec: RunRecord) -> tuple[float, str]:
    stats = speedup.summarize_costs(speedup.from_record(rec))
    if "s_per_it_median" in stats:
        return stats["s_per_it_median"], "median"
    steps, secs = rec.metrics.get("steps_done", 0.0), rec.metrics.get("train_seconds")
    if steps and secs is not None:
        return float(secs) / float(steps), "mean"
    return math.nan, "unrecorded"


def _best(res: speedup.SpeedupResult) -> float:
    vals = [v for _, t, v in res.val if math.isfinite(v) and math.isfinite(t)]
    return min(vals) if vals else math.nan


def pair_speedup(ours: RunRecord, other: RunRecord, target: float | None = None) -> Pair:
    """The speed-up figures of one seed: the reference run ``ours`` (InterFlow) against
    ``other``; the target validation NLL is ``target`` when given, else the worse of the
    two best validation NLLs."""
    a, b = speedup.from_record(ours), speedup.from_record(other)
    best_a, best_b = _best(a), _best(b)
    if target is None:
        target = max(best_a, best_b) if math.isfinite(best_a) and math.isfinite(best_b) \
            else math.nan
    cost, how = _cost(ours)
    other_cost, other_how = _cost(other)
    time, other_time = speedup.crossing(a, target), speedup.crossing(b, target)
    return Pair(ours.seed, cost, other_cost, how if how == other_how else f"{how}/{other_how}",
                target, time, other_time, speedup.ratio_bound(other_time, time))
