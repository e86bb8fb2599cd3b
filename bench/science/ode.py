"""The one ODE engine: sampling, evaluation log-likelihood and CNF training (torchdiffeq).

Every flow-type method (InterFlow, the MLE CNF, DDPM's probability-flow ODE) is scored,
and the CNF is trained, by one routine, `solve`, on one right-hand side,
`bench.science.divergence.AugmentedDynamics`: the state ``(x, acc[, kin][, jac])`` with
``dx/dt = v(t, x)`` and ``d acc/dt = div v(t, x)``. Along a trajectory
``d/dt log rho_t(x_t) = -div v``, so integrating back from time t to 0 gives

    log rho_t(x) = log rho_0(x_0) - int_0^t div v(s, x_s) ds = log rho_0(x_0) + acc(0).

- `log_likelihood` (evaluation): no gradients, rows in chunks (``cfg.chunk_for``), the NFE of
  one solve (the largest chunk's, never a sum over chunks).
- `training_log_likelihood` (CNF training, FFJORD/RNODE): with gradients, through the
  solver's operations (``adjoint=False``) or the adjoint method (`torchdiffeq.odeint_adjoint`,
  FFJORD's choice), which solves a second ODE backwards in time during ``backward()``;
  function evaluations of the forward and the adjoint solve are counted separately.
- `integrate`: the plain ODE dx/dt = v (sampling).

The divergence is exact or Hutchinson's estimator with probes drawn once per solve; the
evaluation's ``divergence="auto"`` takes the exact trace for events of at most 128 dimensions
and Hutchinson's above, and labels the result kind "estimate" when it used Hutchinson's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.api.errors import ContractError
from bench.api.types import (
    ADAPTIVE_SOLVERS,
    DIVERGENCES,
    LogLikelihood,
    SolverConfig,
    check_divergence,
    per_row_problem,
)
from bench.science.divergence import (
    AugmentedDynamics,
    divergence_exact,
    divergence_hutchinson,
    draw_probes,
)
from bench.science.solvers import FIXED_STEP_SOLVERS, TrainConfig

__all__ = [
    "ADAPTIVE_SOLVERS", "DIVERGENCES", "FIXED_STEP_SOLVERS", "AugmentedDynamics",
    "CountingField", "ODEEngine", "ODEResult", "Solution", "SolverConfig", "TrainConfig",
    "TrainingLikelihood", "check_divergence", "divergence_exact", "divergence_hutchinson",
    "draw_probes", "integrate", "log_likelihood", "solve", "standard_normal_log_prob",
    "training_log_likelihood",
]

Field = nn.Module | Callable[[Tensor, Tensor], Tensor]


def standard_normal_log_prob(x: Tensor) -> Tensor:
    """log N(x; 0, I) of (n, *shape) -> (n,): the base density of the flow methods."""
    x = x.reshape(x.shape[0], -1)
    return -0.5 * (x * x).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


class CountingField(nn.Module):
    """Wraps v(t, x) and counts its forward calls (``nfe``)."""

    def __init__(self, field: Field) -> None:
        super().__init__()
        self.field = field
        self.nfe = 0

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += 1
        return self.field(t, x)


@dataclass
class Solution:
    """The end of one solve.

    Attributes:
        state: the state at the final time: (x,) for the plain ODE, else (x, acc[, kin]
            [, jac]), each with a graph when gradients were enabled.
        dynamics: the counted right-hand side; after ``backward()`` its extra calls are
            the adjoint's.
        nfe_forward: function evaluations of this (forward) solve.
    """

    state: tuple[Tensor, ...]
    dynamics: AugmentedDynamics
    nfe_forward: int


def solve(
    field: Field, x: Tensor, t0: float, t1: float, *, method: str, rtol: float, atol: float,
    options: dict[str, float] | None = None, divergence: str | None = None,
    probes: Tensor | None = None, kinetic: bool = False, jacobian: bool = False,
    adjoint: bool = False,
) -> Solution:
    """Integrate the augmented state from (x, 0[, 0][, 0]) at t0 to t1 in the caller's grad
    mode (evaluation wraps it in ``no_grad``).

    Args:
        field: v(t, x) for x of shape (n, *shape).
        x: (n, *shape) the state at t0.
        t0, t1: start and end times (t1 < t0 integrates backwards).
        method, rtol, atol, options: torchdiffeq solver settings.
        divergence: "exact", "hutchinson", or None for the plain ODE.
        probes: (k, n, *shape) fixed probes (Hutchinson, Jacobian penalty).
        kinetic, jacobian: carry the RNODE integrands.
        adjoint: gradients by the adjoint method (`torchdiffeq.odeint_adjoint`).
    """
    from torchdiffeq import odeint, odeint_adjoint

    dyn = AugmentedDynamics(field, divergence, probes, kinetic, jacobian)
    zero = x.new_zeros(x.shape[0])
    state = (x,) + (zero,) * (dyn.n_states - 1)
    times = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
    kwargs = dict(rtol=rtol, atol=atol, method=method, options=options or {})
    if adjoint:
        sol = odeint_adjoint(dyn, state, times, adjoint_params=tuple(dyn.parameters()),
                             **kwargs)
    else:
        sol = odeint(dyn, state, times, **kwargs)
    return Solution(state=tuple(s[-1] for s in sol), dynamics=dyn, nfe_forward=dyn.nfe)


def _base_term(base_log_prob: Callable[[Tensor], Tensor], z: Tensor) -> Tensor:
    """``base_log_prob(z)``, which must be one value per row, (n,): a scalar or an (n, d)
    would broadcast against the divergence integral (n,) into a wrong likelihood, so
    ContractError instead (the sentence of the contract check ``base_log_prob.shape``)."""
    lp = base_log_prob(z)
    owner = getattr(getattr(base_log_prob, "__self__", None), "name", None)
    what = (f"{owner}.{getattr(base_log_prob, '__name__', 'base_log_prob')}(x_0)" if owner
            else f"{getattr(base_log_prob, '__name__', 'base_log_prob')}(x_0)")
    problem = per_row_problem(lp, z.shape[0], what)
    if problem:
        raise ContractError(problem)
    return lp


# -- evaluation ---------------------------------------------------------------------------
@dataclass
class ODEResult:
    """x(t1) (n, *shape) of `integrate` and the function evaluations of the solve."""

    x: Tensor
    nfe: int


def integrate(
    field: Field, x: Tensor, t0: float, t1: float, cfg: SolverConfig, grad: bool = False,
    one_step: bool = False,
) -> ODEResult:
    """Solve dx/dt = field(t, x) from t0 to t1 (with gradients through the solver if
    ``grad``; ``one_step``: one step of rk4, see `ODEEngine.one_step`); returns x(t1) and
    the NFE."""
    if t0 == t1:
        return ODEResult(x=x, nfe=0)
    with torch.enable_grad() if grad else torch.no_grad():
        sol = solve(field, x, t0, t1, method="rk4" if one_step else cfg.method,
                    rtol=cfg.rtol, atol=cfg.atol)
    return ODEResult(x=sol.state[0], nfe=sol.nfe_forward)


def log_likelihood(
    field: Field, x: Tensor, base_log_prob: Callable[[Tensor], Tensor], cfg: SolverConfig,
    t: float = 1.0, seed: int = 0, one_step: bool = False,
) -> LogLikelihood:
    """log rho_t(x) of the flow dX/dt = field(t, X) started from rho_0 = base.

    Args:
        field: v(t, x) with x of shape (n, *shape).
        x: (n, *shape) points at time t.
        base_log_prob: log rho_0 of (n, *shape) -> (n,).
        cfg: solver and divergence settings; rows are processed in chunks of
            ``cfg.chunk_for(x.device)``.
            ``divergence="auto"`` is resolved from the event's dimension
            (`SolverConfig.divergence_for`: exact up to 128 dimensions, Hutchinson above).
        t: the time at which the density is evaluated (1 = data).
        seed: seed of the Hutchinson probes (drawn once per chunk, in order).
        one_step: one step of rk4 instead of the adaptive solve (`ODEEngine.one_step`).
    Returns:
        `bench.api.LogLikelihood` with values (n,), the kind ("exact" with the exact trace,
        "estimate" with Hutchinson's unbiased estimator of it), the estimator label of the
        divergence used, and the NFE of one solve (the largest over the chunks).
    Raises:
        ContractError: ``base_log_prob`` did not return one value per row, (n,).
    """
    if t == 0.0:  # the flow starts at the base density
        return LogLikelihood(values=_base_term(base_log_prob, x), kind="exact",
                             estimator="base density")
    dim = math.prod(x.shape[1:])
    divergence = cfg.divergence_for(dim)
    gen = torch.Generator().manual_seed(seed)
    out, nfe = [], 0
    with torch.no_grad():
        for xc in torch.split(x, cfg.chunk_for(x.device)):
            probes = None
            if divergence == "hutchinson":
                probes = draw_probes(tuple(xc.shape), cfg.n_probes, cfg.probe, gen,
                                     xc.dtype, xc.device)
            sol = solve(field, xc, t, 0.0, method="rk4" if one_step else cfg.method,
                        rtol=cfg.rtol, atol=cfg.atol, divergence=divergence, probes=probes)
            z, acc = sol.state
            out.append(_base_term(base_log_prob, z) + acc)
            nfe = max(nfe, sol.nfe_forward)
    kind = "estimate" if divergence == "hutchinson" else "exact"
    label = cfg.label(dim) + ("; one rk4 step (contract check)" if one_step else "")
    return LogLikelihood(values=torch.cat(out), kind=kind, estimator=label, nfe=nfe)


class ODEEngine:
    """The engine a `FlowMethod` reaches through ``ctx.engine``: `integrate` and
    `log_likelihood` with the harness's solver settings and the run's probe seed."""

    def __init__(self, cfg: SolverConfig, seed: int = 0) -> None:
        self.cfg, self.seed = cfg, seed
        self._one_step = False

    def integrate(self, field: Field, x: Tensor, t0: float, t1: float) -> Tensor:
        """x(t1) (n, *shape) of dx/dt = field(t, x) from x(t0) = x, without gradients."""
        return integrate(field, x, t0, t1, self.cfg, one_step=self._one_step).x

    def log_likelihood(self, field: Field, x: Tensor, base_log_prob: Callable[[Tensor], Tensor],
                       t: float = 1.0) -> LogLikelihood:
        """log rho_t(x) (n,) of the flow started at rho_0 = base (see `log_likelihood`)."""
        return log_likelihood(field, x, base_log_prob, self.cfg, t=t, seed=self.seed,
                              one_step=self._one_step)

    @contextlib.contextmanager
    def one_step(self) -> Iterator[None]:
        """Inside the block, every solve is ONE step of the classical Runge-Kutta method
        over the whole interval: cheap, and a computation of each row on its own (an
        adaptive solver's step sizes depend on every row of the batch). For the contract's
        checks of shapes and row independence before training, never for a reported
        number."""
        saved, self._one_step = self._one_step, True
        try:
            yield
        finally:
            self._one_step = saved

    @contextlib.contextmanager
    def validating(self) -> Iterator[None]:
        """Inside the block, solves use rtol = atol = ``cfg.val_tol`` (the validation
        signal's tolerance; labelled so); a no-op when it is None."""
        if self.cfg.val_tol is None:
            yield
            return
        saved = self.cfg
        self.cfg = dataclasses.replace(saved, rtol=saved.val_tol, atol=saved.val_tol)
        try:
            yield
        finally:
            self.cfg = saved


# -- CNF training (its settings: `bench.science.solvers.TrainConfig`) ---------------------
@dataclass
class TrainingLikelihood:
    """Result of one training solve; ``log_prob`` and the penalties carry gradients.

    Attributes:
        log_prob: (n,) log p_t(x) in nats (Hutchinson: an unbiased estimate).
        z: (n, *shape) the base point x_0 reached at t=0.
        kinetic: (n,) int_0^t |v|^2 ds, or None.
        jacobian: (n,) int_0^t |eps^T dv/dx|^2 ds (mean over the probes), or None.
        nfe_forward: function evaluations of the forward solve.
        dynamics: the counted dynamics; after ``backward()`` its extra calls are the
            adjoint's (`nfe_backward`).
    """

    log_prob: Tensor
    z: Tensor
    kinetic: Tensor | None
    jacobian: Tensor | None
    nfe_forward: int
    dynamics: AugmentedDynamics = dataclasses.field(repr=False)

    @property
    def nfe_backward(self) -> int:
        """Function evaluations of the adjoint solve so far (0 before ``backward()``,
        and always 0 without the adjoint)."""
        return self.dynamics.nfe - self.nfe_forward


def training_log_likelihood(
    field: Field, x: Tensor, base_log_prob: Callable[[Tensor], Tensor], cfg: TrainConfig,
    generator: torch.Generator | None = None, probes: Tensor | None = None, t: float = 1.0,
) -> TrainingLikelihood:
    """log p_t(x) with gradients (in the caller's grad mode), integrating (x, log-density,
    penalties) from t to 0 as one solve of the whole batch.

    Args:
        field: v(t, x); an ``nn.Module`` whose parameters get gradients (with the adjoint
            its parameters are the adjoint's parameters).
        x: (n, *shape) data at time t.
        base_log_prob: log rho_0 of (n, *shape) -> (n,).
        cfg: training solver settings.
        generator: CPU generator of the probes (drawn once for this solve).
        probes: (k, n, *shape) explicit probes instead of drawing cfg.n_probes of them.
        t: the time of x (1 = data).
    Returns:
        `TrainingLikelihood`; call ``backward()`` on a loss built from it.
    """
    if probes is None and cfg.needs_probes():
        probes = draw_probes(tuple(x.shape), cfg.n_probes, cfg.probe, generator, x.dtype,
                             x.device)
    sol = solve(field, x, t, 0.0, method=cfg.method, rtol=cfg.rtol, atol=cfg.atol,
                options=cfg.options(), divergence=cfg.divergence, probes=probes,
                kinetic=cfg.kinetic, jacobian=cfg.jacobian, adjoint=cfg.adjoint)
    z, acc, *extra = sol.state
    # integrating from t down to 0 accumulates minus the integrals
    kinetic = -extra.pop(0) if cfg.kinetic else None
    jacobian = -extra.pop(0) if cfg.jacobian else None
    return TrainingLikelihood(log_prob=_base_term(base_log_prob, z) + acc, z=z,
                              kinetic=kinetic, jacobian=jacobian, nfe_forward=sol.nfe_forward,
                              dynamics=sol.dynamics)
