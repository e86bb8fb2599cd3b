"""What a planned job will cost, from measurements, never guessed.

The estimate of a job comes from finished runs of the same configuration (method and
dataset with the same parameters, the same execution) measured on the same device class:
seconds per training step (``train_seconds / steps_done``), seconds per validation and per
network evaluation of the test scoring (``eval_seconds / test_nll_nfe``, scaled by the rows
scored), and the sampling time. Without such runs it is "unknown", unless a probe measured
the configuration on this machine (`probe_records`: a few training steps, a validation and
the test scoring of a few rows, of the untrained network, whose NFE is typically below a
trained one's: a probe's evaluation time is a lower bound, and said so).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.api import Job, RunRecord

__all__ = ["Estimate", "CONFIG_PREFIXES", "config_of", "estimate", "probe_records",
           "fmt_seconds", "total", "export_files", "measured", "plan_estimates"]

#: the recorded parameters that fix a run's cost per step and per evaluation
CONFIG_PREFIXES = ("p_method_", "p_dataset_", "exec_")


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A job's compute, in seconds (None: unknown).

    Attributes:
        train: training seconds. evaluation: validations, test scoring and sampling.
        s_per_step, s_per_nfe: the measurements used (per training step; per network
            evaluation of the test scoring, per row). basis: where they come from.
    """

    train: float | None = None
    evaluation: float | None = None
    s_per_step: float | None = None
    s_per_nfe: float | None = None
    basis: str = "unknown"

    @property
    def seconds(self) -> float | None:
        if self.train is None or self.evaluation is None:
            return None
        return self.train + self.evaluation

    def text(self) -> str:
        if self.seconds is None:
            return "unknown" if self.train is None else f"train {fmt_seconds(self.train)} + ?"
        lower = ">= " if "probe" in self.basis else ""
        return lower + fmt_seconds(self.seconds)


def fmt_seconds(s: float) -> str:
    if s < 1:
        return f"{s:.2g} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def config_of(params: dict[str, Any]) -> tuple:
    """The part of a run's flat parameters that fixes its cost (and what it runs)."""
    import json

    return (params.get("method"), params.get("dataset"),  # tuples as lists (as exported)
            tuple(sorted((k, json.dumps(v, default=str)) for k, v in params.items()
                         if k.startswith(CONFIG_PREFIXES))))


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v == v and v >= 0]
    return statistics.median(values) if values else None


def _rows(planned: int | None, measured: Any) -> float | None:
    """Rows of the job over rows of the measurement: 1 when both are the same setting,
    their ratio when both are numbers, None (unknown) otherwise."""
    if planned == measured:
        return 1.0
    if planned is not None and measured is not None:
        return planned / float(measured)
    return None


def _validations(job: Job, train: float, s_per_step: float | None) -> int | None:
    b = job.budget
    if b.eval_at_seconds:
        return len(b.eval_at_seconds)
    steps = b.steps
    if b.max_seconds is not None and s_per_step:
        steps = min(steps or 10**12, int(train / s_per_step))
    return None if steps is None else max(1, steps // b.eval_every)


def _evaluation(job: Job, recs: Sequence[RunRecord], n_val: int | None) -> float | None:
    """Validations + test scoring + sampling of ``job``, from the runs ``recs``."""
    parts = []
    for r in recs:
        m, p = r.metrics, r.params
        vals = [v for _, v in r.history.get("val_seconds", [])] or (
            [m["val_seconds"]] if "val_seconds" in m else [])
        val_ratio = _rows(job.budget.val_rows, p.get("val_rows"))
        test_ratio = _rows(job.budget.test_rows, p.get("test_rows"))
        if n_val is None or val_ratio is None or (job.evaluate_test and test_ratio is None):
            continue
        val = n_val * statistics.fmean(vals) * val_ratio if vals else 0.0
        test = m.get("eval_seconds", 0.0) * (test_ratio or 0.0) if job.evaluate_test else 0.0
        sampling = sum(v for k, v in m.items() if k.startswith(("sample_seconds",
                                                                "fid_seconds")))
        parts.append(val + test + (sampling if job.n_samples or job.sample_eval.samples
                                   else 0.0))
    return _median(parts)


def estimate(job: Job, records: Sequence[RunRecord], basis: str) -> Estimate:
    """The job's estimate from the FINISHED runs of its configuration among ``records``
    (the caller keeps only those of the right device class); ``basis`` names them."""
    from bench.harness.training.recorder import job_params

    want = config_of(job_params(job))
    recs = [r for r in records if r.status == "FINISHED" and config_of(r.params) == want]
    trainable = getattr(job.method_cls, "trainable", True)
    known_train = job.budget.max_seconds if job.budget.steps is None and trainable else None
    if not recs:
        return Estimate(train=known_train)
    s_step = _median([r.metrics["train_seconds"] / r.metrics["steps_done"] for r in recs
                      if "train_seconds" in r.metrics and r.metrics.get("steps_done")])
    if not trainable:  # a closed-form fit: its measured fitting time, whatever the budget
        known_train = _median([r.metrics.get("train_seconds", -1.0) for r in recs])
    s_nfe = _median([r.metrics["eval_seconds"] / r.metrics["test_nll_nfe"]
                     / float(r.params.get("test_rows") or 1) for r in recs
                     if r.metrics.get("test_nll_nfe") and "eval_seconds" in r.metrics])
    train = known_train
    if trainable and job.budget.steps is not None and s_step is not None:
        train = job.budget.steps * s_step
        if job.budget.max_seconds is not None:
            train = min(train, job.budget.max_seconds)
    n_val = None if train is None else _validations(job, train, s_step)
    return Estimate(train=train, evaluation=_evaluation(job, recs, n_val), s_per_step=s_step,
                    s_per_nfe=s_nfe, basis=f"{len(recs)} run(s) {basis}")


def total(estimates: Sequence[Estimate]) -> float | None:
    """The sum of the estimates (None when any is unknown)."""
    secs = [e.seconds for e in estimates]
    return None if any(s is None for s in secs) else float(sum(secs))  # type: ignore[misc]


def probe_records(jobs: Sequence[Job], steps: int = 5, rows: int = 64) -> list[RunRecord]:
    """One short run per distinct configuration of ``jobs`` on this machine: ``steps``
    training steps, one validation (the job's rows) and the test scoring of ``rows`` rows,
    in a temporary folder, recorded nowhere. A configuration that fails to run gives no
    record."""
    from bench.harness.running.run import run_job
    from bench.harness.training.recorder import job_params
    from bench.record.memory import MemorySink

    out, seen = [], set()
    for job in jobs:
        config = config_of(job_params(job))
        if config in seen:
            continue
        seen.add(config)
        b = job.budget  # the job's own validation rows; ``rows`` test rows, scaled to the
        budget = dataclasses.replace(  # job's when it sets them (else unknown: all rows)
            b, steps=steps, max_seconds=None, eval_every=steps, eval_at_seconds=(),
            test_rows=rows)
        probe = dataclasses.replace(job, budget=budget, work_dir=None, resume="never")
        record = run_job(probe, MemorySink())
        if record.status == "FINISHED":
            out.append(record)
    return out


def export_files(root: Path) -> list[Path]:
    """Every suite export under ``root/results/suites`` and the source checkout's."""
    from bench.harness.planning.registry import checkout_root

    roots = [Path(root)] + ([checkout_root()] if checkout_root() is not None else [])
    found = {p.resolve() for r in roots for p in (r / "results" / "suites").glob(
        "*/records.jsonl")}
    return sorted(found)


def measured(root: Path, device_class: str | None = None,
             device: str | None = None) -> list[RunRecord]:
    """The exported suite runs measured on ``device_class`` (or, without one, on any class
    of ``device``'s type: "cpu-..." for cpu, "gpu-..." for cuda)."""
    from bench.harness.planning.suites import device_of
    from bench.record.suite_records import read_records

    out = []
    for path in export_files(root):
        for r in read_records(path):
            cls = r.tags.get("suite.device_class", "")
            if cls == device_class or (device_class is None and device is not None and cls
                                       and device_of(cls) == device.split(":")[0]):
                out.append(r)
    return out


def plan_estimates(jobs: Sequence[Job], root: Path = Path(".")) -> list[Estimate]:
    """`bench run --dry-run`'s estimate of each job: from the exported suite runs of its
    configuration measured on its device's type, else unknown."""
    cache: dict[str, list[RunRecord]] = {}
    out = []
    for job in jobs:
        if job.device not in cache:
            cache[job.device] = measured(root, device=job.device)
        classes = sorted({r.tags.get("suite.device_class", "") for r in cache[job.device]})
        out.append(estimate(job, cache[job.device], "measured on " + ", ".join(classes)))
    return out
