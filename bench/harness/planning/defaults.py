"""The defaults of a run, in one place: `bench run`'s options,
`bench.harness.planning.plan.plan_jobs` and `bench.lab.run` all read `DEFAULTS`, so a job
planned from Python is the job the command line plans for the same selection (same solver
and validation tolerance, budgets, validation cadence, patience, samples, divergence bound,
checkpoint cadence).

Budgets come from the dataset's declared ``kind`` (`BUDGETS`); a dataset class may set its
own ``default_budget`` (``{"steps": ..., "eval_every": ...}``) to override its kind's.
Imports no torch (the CLI reads these to build its options).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from bench.api import ConfigError, SolverConfig

__all__ = ["RunDefaults", "DEFAULTS", "BUDGETS"]

#: default budget by dataset kind: training steps and validation every N steps (images
#: validate less often: a validation is an ODE solve over the split)
BUDGETS: MappingProxyType[str, MappingProxyType[str, int]] = MappingProxyType({
    "toy2d": MappingProxyType({"steps": 15000, "eval_every": 1000}),
    "tabular": MappingProxyType({"steps": 5000, "eval_every": 250}),
    "image": MappingProxyType({"steps": 5000, "eval_every": 1000}),
})


@dataclass(frozen=True)
class RunDefaults:
    """What a run gets when a setting is not given.

    Attributes:
        solver, rtol, atol, divergence, probes: the evaluation ODE solver (test NLL).
        val_tol: rtol = atol of the validation solves (the early-stopping signal).
        patience: early stop after N validations without improvement.
        n_samples: samples drawn for the 2-D samples figure.
        explosion_factor: a step whose |loss| exceeds this factor x max(1, |first loss|)
            stops the run as diverged (0: only a non-finite loss).
        checkpoint_minutes: the resumable checkpoint is also written every M minutes.
        budgets: steps and validation cadence by dataset kind.
    """

    solver: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    divergence: str = "auto"
    probes: int = 1
    val_tol: float = 1e-3
    patience: int = 4
    n_samples: int = 20_000
    explosion_factor: float = 1e6
    checkpoint_minutes: float = 10.0
    budgets: MappingProxyType[str, MappingProxyType[str, int]] = field(
        default_factory=lambda: BUDGETS)

    def solver_config(self, **over: Any) -> SolverConfig:
        """The evaluation solver with these defaults (``over``: SolverConfig fields)."""
        spec = {"method": self.solver, "rtol": self.rtol, "atol": self.atol,
                "divergence": self.divergence, "n_probes": self.probes,
                "val_tol": self.val_tol}
        return SolverConfig(**{**spec, **over})

    def budget_for(self, dataset_cls: type) -> dict[str, int]:
        """Steps and ``eval_every`` of a dataset: its class's own ``default_budget`` when it
        sets one, else its kind's."""
        own = getattr(dataset_cls, "default_budget", None)
        if own:
            return dict(own)
        kind = getattr(dataset_cls, "kind", "tabular")
        if kind not in self.budgets:
            raise ConfigError(f"dataset {getattr(dataset_cls, 'name', dataset_cls)!r} "
                              f"declares kind {kind!r}; valid: {', '.join(self.budgets)}")
        return dict(self.budgets[kind])

    def budget_help(self, key: str) -> str:
        """``5000 tabular, 15000 toy2d, ...`` for an option's help."""
        return ", ".join(f"{b[key]} {kind}" for kind, b in self.budgets.items())


DEFAULTS = RunDefaults()
