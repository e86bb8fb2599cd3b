"""The `RunContext` a method gets: device, seed, the evaluation solver and the ODE engine."""

from __future__ import annotations

from typing import Any

from bench.api import RunContext, SolverConfig
from bench.science.ode import ODEEngine

__all__ = ["make_context"]


def make_context(device: str = "cpu", seed: int = 0, solver: SolverConfig | None = None,
                 **kwargs: Any) -> RunContext:
    """A `RunContext` whose ``engine`` is the one ODE engine with ``solver`` (default
    settings when None) and the run's probe seed."""
    solver = solver if solver is not None else SolverConfig()
    return RunContext(device=device, seed=seed, solver=solver,
                      engine=ODEEngine(solver, seed), **kwargs)
