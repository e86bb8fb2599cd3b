"""The harness: registry (discovery), selection grammar, plan (typed jobs validated before any
data is read), the training loop (optimiser, schedule, clipping, EMA, checkpoints, budgets),
evaluation (the same scoring for every method), costs, and ``run_job(job, sink)``.

Imports `bench.api` and `bench.science`; reaches a sink only through `bench.api.Sink`.
"""

from bench.harness.context import make_context

__all__ = ["make_context"]
