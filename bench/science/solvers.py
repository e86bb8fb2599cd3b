"""The solver names and the settings of the CNF training solves, torch-free.

`TrainConfig` validates when it is built, and a method's ``Params`` may build one in its
``__post_init__`` (the plan does, before any data is read), so it lives apart from the
engine (`bench.science.ode`, which imports torch and re-exports both names).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.api.errors import ConfigError
from bench.api.types import ADAPTIVE_SOLVERS, check_divergence

__all__ = ["FIXED_STEP_SOLVERS", "TrainConfig"]

FIXED_STEP_SOLVERS = (
    "euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams",
    "fixed_adams",
)


@dataclass
class TrainConfig:
    """Solver settings of the training solves (separate from the harness's evaluation).

    Defaults are FFJORD's tabular ones: dopri5, atol 1e-8, rtol 1e-6, adjoint, one
    Gaussian Hutchinson probe per solve. Bad settings raise `bench.api.errors.ConfigError`.
    """

    method: str = "dopri5"
    rtol: float = 1e-6
    atol: float = 1e-8
    step_size: float | None = None
    adjoint: bool = True
    divergence: str = "hutchinson"
    probe: str = "gaussian"
    n_probes: int = 1
    kinetic: bool = False
    jacobian: bool = False

    def __post_init__(self) -> None:
        if self.method not in ADAPTIVE_SOLVERS + FIXED_STEP_SOLVERS:
            valid = ", ".join(ADAPTIVE_SOLVERS + FIXED_STEP_SOLVERS)
            raise ConfigError(f"unknown solver {self.method!r}; valid: {valid}")
        if self.method in FIXED_STEP_SOLVERS and not (self.step_size and self.step_size > 0):
            raise ConfigError(f"fixed-step solver {self.method!r} needs a step_size > 0")
        if self.method in ADAPTIVE_SOLVERS and not (self.rtol > 0 and self.atol > 0):
            raise ConfigError("solver tolerances rtol and atol must be > 0")
        check_divergence(self.divergence, self.probe, self.n_probes)

    def options(self) -> dict[str, float]:
        """Solver options for torchdiffeq (the step size of a fixed-step solver)."""
        return {"step_size": self.step_size} if self.method in FIXED_STEP_SOLVERS else {}

    def needs_probes(self) -> bool:
        return self.divergence == "hutchinson" or self.jacobian

    def label(self) -> str:
        div = self.divergence
        if div == "hutchinson":
            div = f"hutchinson({self.probe},k={self.n_probes})"
        tol = (f"h={self.step_size:g}" if self.method in FIXED_STEP_SOLVERS
               else f"rtol={self.rtol:g} atol={self.atol:g}")
        grad = "adjoint" if self.adjoint else "backprop"
        return f"ode {self.method} {tol} div={div} grad={grad}"
