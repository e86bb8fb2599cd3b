"""The regression baseline of `bench regress`: the pass/fail rules, the baseline file
(results/benchmarks/baseline.json) and the comparison of measured figures with it.

Rules (also in README and results/benchmarks/README.md):
- a timing ratio regresses when ``now > baseline * factor``, with each figure's own
  ``factor = max(FACTOR_FLOOR, spread ** SPREAD_POWER)`` (`timing_factor`), ``spread`` =
  max / min of its ratio over the rebaseline's suite runs, half of them beside a CPU-bound
  busy-loop process (`busy_loop`), so that the spread includes background load; a ratio
  below ``baseline / factor`` passes, flagged "faster" (rebaseline to keep the gain);
  ``--threshold`` overrides every factor; a baseline without per-figure factors uses its
  mode's ``threshold`` (1.5 before the wall figures);
- a quality figure fails outside ``baseline +- band``, where ``band = 3 * max(sd over the
  rebaseline's seeds, standard error of the test NLL)``: the check reruns seed 0, which on
  another machine (another BLAS, a GPU) may differ as much as another seed would;
- a figure of the baseline that was not measured fails ("missing"); a measured figure the
  baseline lacks passes, flagged "new";
- info figures (the default command's wall-clock and its split into training, validation
  and test seconds, full mode) are recorded, shown and drawn, never pass/fail: absolute
  seconds depend on the machine.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.api import ConfigError, DataError

__all__ = ["Check", "TIMING_THRESHOLD", "WALL", "SPREAD_POWER", "FACTOR_FLOOR", "BAND_SIGMAS",
           "timing_factor", "make_baseline", "load_baseline", "save_baseline", "compare"]

TIMING_THRESHOLD = 1.5  # the factor of a baseline without per-figure factors
WALL = "_wall"  # suffix of a wall-clock figure
#: A timing figure's factor = max(FACTOR_FLOOR, spread ** SPREAD_POWER). In log terms the
#: limit lies 3 ranges of the rebaseline's runs above their median: for normal noise the
#: range of 5 runs is 2.3 sd on average (above 0.85 sd with probability 0.95), so the
#: limit sits ~7 sd above the median (more than ~2.5 sd with probability 0.95). The floor
#: guards a spread that comes out small by chance (1.006 was measured over 4 runs of
#: interflow_step_wall, 1.04 over 7) and still catches one extra forward pass per InterFlow
#: training step (~1.3x; results/benchmarks/README.md).
SPREAD_POWER = 3.0
FACTOR_FLOOR = 1.10
BAND_SIGMAS = 3.0


@dataclass
class Check:
    """One figure compared with the baseline: status ok | regressed | faster | outside band
    | missing | new; ``limit`` is the largest passing ratio (timing) or the band's
    half-width (quality)."""

    figure: str
    kind: str
    baseline: float | None
    now: float | None
    limit: float | None
    status: str

    @property
    def failed(self) -> bool:
        return self.status in ("regressed", "outside band", "missing")

    def line(self) -> str:
        """The one-line failure message."""
        if self.kind == "info":
            return f"{self.figure}: {self.now:.4g} (info)"
        if self.status == "missing":
            return f"{self.figure}: in the baseline ({self.baseline:.4g}) but not measured"
        if self.kind == "timing":
            factor = self.limit / self.baseline
            return (f"{self.figure}: ratio {self.now:.3f} vs baseline {self.baseline:.3f} "
                    f"({self.now / self.baseline:.2f}x; threshold {factor:.2f}x"
                    f" = {self.limit:.3f})")
        return (f"{self.figure}: test NLL {self.now:.4f} outside baseline {self.baseline:.4f} "
                f"+- {self.limit:.4f}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failed": self.failed}


# -- the baseline -------------------------------------------------------------------------
def timing_factor(spread: float) -> float:
    """A timing figure's largest passing ratio now / baseline from the max / min spread of
    its rebaseline runs (rule and derivation: `SPREAD_POWER`, `FACTOR_FLOOR`)."""
    return max(FACTOR_FLOOR, spread ** SPREAD_POWER)


def make_baseline(timing_runs: list[dict[str, dict]], quality: dict[str, dict],
                  machine: dict[str, Any], commit: str, threshold: float = TIMING_THRESHOLD,
                  info: dict[str, float] | None = None, loaded_runs: tuple[int, ...] = ()
                  ) -> dict[str, Any]:
    """A mode's baseline: each timing figure's median ratio over repeated suite runs, its
    spread max/min and its factor (`timing_factor`), each quality figure's value with its
    band, each info figure's value (never a threshold). ``loaded_runs``: the indices of the
    suite runs taken beside a busy loop (recorded)."""
    figures: dict[str, dict[str, Any]] = {}
    for name in sorted({k for run in timing_runs for k in run}):
        ratios = [run[name]["ratio"] for run in timing_runs if name in run]
        spread = max(ratios) / min(ratios)
        figures[name] = {"kind": "timing", "ratio": statistics.median(ratios),
                         "runs": ratios, "spread": spread, "factor": timing_factor(spread)}
    for name, q in quality.items():
        sd = statistics.stdev(q["values"]) if len(q["values"]) > 1 else 0.0
        se = q["se"] if q["se"] == q["se"] else 0.0
        figures[name] = {"kind": "quality", "value": q["value"], "values": q["values"],
                         "sd_seeds": sd, "se": se, "band": BAND_SIGMAS * max(sd, se)}
    for name, value in (info or {}).items():
        figures[name] = {"kind": "info", "value": value}
    return {"machine": machine, "commit": commit, "threshold": threshold,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "factor_rule": f"factor = max({FACTOR_FLOOR}, spread ** {SPREAD_POWER}), spread"
                           f" = max/min over the {len(timing_runs)} suite runs (runs "
                           f"{list(loaded_runs)} beside a CPU-bound busy loop); a check "
                           "fails when now > ratio * factor",
            "figures": figures}


def load_baseline(path: Path) -> dict[str, Any]:
    """The whole baseline file ({"modes": {mode: baseline}}); empty modes if absent."""
    path = Path(path)
    if not path.is_file():
        return {"schema": 1, "modes": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not a baseline file ({e})") from None
    if not isinstance(data, dict) or "modes" not in data:
        raise DataError(f"{path}: not a baseline file (no 'modes')")
    return data


def save_baseline(path: Path, data: dict[str, Any], mode: str, baseline: dict[str, Any]
                  ) -> None:
    """Write ``baseline`` as ``mode``'s entry of the file (other modes kept)."""
    path = Path(path)
    data = {**data, "schema": 1, "modes": {**data.get("modes", {}), mode: baseline}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


# -- comparing ----------------------------------------------------------------------------
def compare(baseline: dict[str, dict], timing: dict[str, dict], quality: dict[str, dict],
            threshold: float | None = None, selected: tuple[str, ...] = (),
            info: dict[str, float] | None = None,
            default_threshold: float = TIMING_THRESHOLD) -> list[Check]:
    """Every figure of the baseline and of the measurement, checked by the module's rules.

    Args:
        baseline: figure -> entry (``make_baseline``'s ``figures``).
        timing, quality: what `run_suite` / `run_quality` measured.
        threshold: if given, the largest passing ratio now / baseline of every timing
            figure (> 1), instead of each figure's own ``factor``.
        selected: when only some figures were run, the others are not "missing".
        info: info figures measured (status "info", never failing; never "missing").
        default_threshold: the factor of a timing entry without its own (older baselines).
    """
    for value in (threshold, default_threshold):
        if value is not None and not value > 1:
            raise ConfigError(f"threshold must be > 1, got {value}")
    now = {**{k: ("timing", v["ratio"]) for k, v in timing.items()},
           **{k: ("quality", v["value"]) for k, v in quality.items()},
           **{k: ("info", v) for k, v in (info or {}).items()}}
    checks = []
    for name in sorted(set(baseline) | set(now)):
        if (baseline.get(name) or {}).get("kind", now.get(name, ("",))[0]) == "info":
            if name in now:
                checks.append(Check(name, "info", (baseline.get(name) or {}).get("value"),
                                    now[name][1], None, "info"))
            continue
        base = baseline.get(name)
        if base is None:
            kind, value = now[name]
            checks.append(Check(name, kind, None, value, None, "new"))
            continue
        kind = base["kind"]
        ref = base["ratio"] if kind == "timing" else base["value"]
        if name not in now:
            if not selected or name in selected:
                checks.append(Check(name, kind, ref, None, None, "missing"))
            continue
        value = now[name][1]
        if kind == "timing":
            factor = threshold or base.get("factor", default_threshold)
            limit = ref * factor
            status = ("regressed" if value > limit
                      else "faster" if value < ref / factor else "ok")
        else:
            limit = base["band"]
            status = "outside band" if abs(value - ref) > limit else "ok"
        checks.append(Check(name, kind, ref, value, limit, status))
    return checks
