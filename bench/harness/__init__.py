"""The harness: registry (discovery), selection grammar, plan (typed jobs validated before any
data is read), the training loop (optimiser, schedule, clipping, EMA, checkpoints, budgets),
evaluation (the same scoring for every method), costs, and ``run_job(job, sink)``.

Imports `bench.api` and `bench.science`; reaches a sink only through `bench.api.Sink`.
Importing the package is cheap (the plan must answer in well under a second): torch loads
with the modules that need it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_context"]


def __getattr__(name: str) -> Any:
    if name == "make_context":
        from bench.harness.running.context import make_context

        return make_context
    raise AttributeError(f"module 'bench.harness' has no attribute {name!r}")
