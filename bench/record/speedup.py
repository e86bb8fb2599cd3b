"""The speed-up study's analysis: per-iteration training cost of methods trained with the
same network and batch on the same machine, back to back, and their wall-clock to a target
validation NLL.

The question it answers is the InterFlow paper's: how much cheaper is a stochastic-
interpolant flow to train than a maximum-likelihood CNF, at what likelihood? Every step's
seconds and NFE come from the harness's own loop, so all methods are timed by the same code;
validation NLL comes from the same likelihood engine. The analysis reads `RunRecord`s (their
``history``), never a tracker.
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

__all__ = ["SpeedupResult", "HISTORY", "from_record", "summarize_costs", "time_to_target",
           "speedup_table", "plot", "stamp"]

log = logging.getLogger(__name__)
FIXED_ITERS = (1, 10, 100, 1000)
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
    """Median/min/max seconds per iteration, seconds at fixed iterations, cost growth,
    mean NFE per solve over the first and last tenth of the steps (``nfe_forward_*`` and
    ``nfe_backward_*`` apart), and the best validation NLL."""
    secs = np.array([v for _, v in sorted(res.step_seconds)])
    n = len(secs)
    out = {"steps": float(n)}
    if n == 0:
        return out
    tenth = max(1, n // 10)
    out.update({
        "s_per_it_median": float(np.median(secs)),
        "s_per_it_min": float(secs.min()),
        "s_per_it_max": float(secs.max()),
        "s_per_it_first10pct": float(np.median(secs[:tenth])),
        "s_per_it_last10pct": float(np.median(secs[-tenth:])),
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


def time_to_target(res: SpeedupResult, target: float) -> float | None:
    """Training seconds at the first evaluation with val NLL <= target, else None."""
    for _, secs, nll in sorted(res.val, key=lambda r: r[1]):
        if math.isfinite(nll) and nll <= target:
            return secs
    return None


def speedup_table(results: list[SpeedupResult], budget: float,
                  target: float | None = None) -> tuple[pd.DataFrame, float, str]:
    """One row per method; the target defaults to the worst best-val-NLL among methods."""
    stats = {r.method: summarize_costs(r) for r in results}
    bests = [s["best_val_nll"] for s in stats.values() if "best_val_nll" in s]
    if target is None:
        target = max(bests) if bests else math.nan
    rows = []
    for r in results:
        s = stats[r.method]
        ttt = time_to_target(r, target) if math.isfinite(target) else None
        row = {"method": r.method, "parameters": r.n_parameters, **s,
               "time_to_target_s": ttt if ttt is not None else math.nan,
               "time_to_target": f"{ttt:.1f} s" if ttt is not None else f"> budget ({budget:g} s)"}
        rows.append(row)
    tab = pd.DataFrame(rows).set_index("method")
    base = results[0].method
    tab["cost_ratio_vs_" + base] = tab["s_per_it_median"] / tab.loc[base, "s_per_it_median"]
    tab["time_to_target_ratio_vs_" + base] = (tab["time_to_target_s"]
                                              / tab.loc[base, "time_to_target_s"])
    note = (f"target val NLL {target:.3f} nats (worst best-val among methods)"
            if bests else "no validation NLL recorded")
    return tab, target, note


def plot(results: list[SpeedupResult], target: float, path: Path) -> Path:
    """Cost per iteration vs iteration (left); validation NLL vs training seconds (right)."""
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
