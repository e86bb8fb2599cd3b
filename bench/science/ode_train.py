"""Training-mode log-likelihood of a continuous normalizing flow (FFJORD, RNODE).

The evaluation engine (`bench.science.ode.log_likelihood`) runs without gradients. Maximum
likelihood training needs the gradient of log p(x) with respect to the network, so this
module integrates the augmented state

    d/dt (x, acc, kin, jac) = (v, div v, |v|^2, |eps^T dv/dx|^2)

from the data (t=1) to the base (t=0) with gradients: either through the solver's
operations (``adjoint=False``) or with the adjoint method (`torchdiffeq.odeint_adjoint`,
FFJORD's choice), which solves a second ODE backwards in time during ``backward()``.

The divergence is Hutchinson's estimator with probes drawn once per solve (so the ODE is
deterministic for the adaptive solver), or exact. The kinetic energy and the Jacobian
Frobenius norm (Finlay et al. 2020, "How to train your neural ODE") are optional extra
states. Function evaluations of the forward solve and of the adjoint solve are counted
separately (`TrainingLikelihood.nfe_forward`, `TrainingLikelihood.nfe_backward`).

Double backpropagation is only set up where it is needed: during the adjoint's forward
solve (gradients off) the divergence is computed without ``create_graph``, during its
backward solve and without the adjoint with it. The numbers are the same either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.api.types import ADAPTIVE_SOLVERS, check_divergence
from bench.science.ode import divergence_exact, draw_probes
from bench.api.errors import ConfigError

__all__ = [
    "FIXED_STEP_SOLVERS",
    "TrainConfig",
    "TrainingDynamics",
    "TrainingLikelihood",
    "training_log_likelihood",
]

FIXED_STEP_SOLVERS = (
    "euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams",
    "fixed_adams",
)


@dataclass
class TrainConfig:
    """Solver settings of the training solves (separate from the harness's evaluation).

    Defaults are FFJORD's tabular ones: dopri5, atol 1e-8, rtol 1e-6, adjoint, one
    Gaussian Hutchinson probe per solve.
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


class TrainingDynamics(nn.Module):
    """d/dt (x, acc[, kin][, jac]) = (v, div v[, |v|^2][, |eps^T J|^2]) with a graph.

    Args:
        field: v(t, x) for x of shape (n, *shape).
        divergence: "exact" or "hutchinson".
        probes: (k, n, *shape) probes fixed for the solve (needed for "hutchinson" and for
            the Jacobian penalty, which uses them all).
        kinetic, jacobian: whether the state carries the RNODE integrands.
    Attributes:
        nfe: calls so far (the forward solve and, with the adjoint, the backward solve).
    """

    def __init__(
        self, field: nn.Module | Callable[[Tensor, Tensor], Tensor], divergence: str,
        probes: Tensor | None = None, kinetic: bool = False, jacobian: bool = False,
    ) -> None:
        super().__init__()
        if (divergence == "hutchinson" or jacobian) and probes is None:
            raise ValueError("Hutchinson's estimator and the Jacobian penalty need probes")
        self.field = field
        self.divergence = divergence
        self.probes = probes
        self.kinetic = kinetic
        self.jacobian = jacobian
        self.nfe = 0

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.nfe += 1
        # gradients on: a backward pass will differentiate the divergence (double backprop)
        create_graph = torch.is_grad_enabled()
        # No gradient with respect to the integration times is ever asked for, but
        # torchdiffeq's adjoint hands func a time that requires grad (``t_`` and ``t`` are
        # one tensor after its in-place ``requires_grad_``), so a time-dependent net
        # would make the adjoint integrate dL/dt too: a state that only costs steps.
        t = t.detach()
        x = state[0]
        n = x.shape[0]
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            v = self.field(t, x)
            div = eps_j = None
            if self.divergence == "exact":
                div = divergence_exact(v, x, create_graph=create_graph)
            if self.probes is not None and (self.divergence == "hutchinson" or self.jacobian):
                k = self.probes.shape[0]
                est = x.new_zeros(n)
                frob = x.new_zeros(n)
                for j in range(k):
                    (g,) = torch.autograd.grad(
                        v, x, self.probes[j], retain_graph=True, create_graph=create_graph
                    )  # eps^T dv/dx, (n, *shape)
                    est = est + (g * self.probes[j]).reshape(n, -1).sum(1)
                    frob = frob + (g * g).reshape(n, -1).sum(1)
                if div is None:
                    div = est / k
                eps_j = frob / k
        out = [v, div]
        if self.kinetic:
            out.append((v * v).reshape(n, -1).sum(1))
        if self.jacobian:
            out.append(eps_j)
        if not create_graph:
            out = [o.detach() for o in out]
        return tuple(out)


@dataclass
class TrainingLikelihood:
    """Result of one training solve; ``log_prob`` and the penalties carry gradients.

    Attributes:
        log_prob: (n,) log p_1(x) in nats (Hutchinson: an unbiased estimate).
        z: (n, *shape) the base point x_0 reached at t=0.
        kinetic: (n,) int_0^1 |v|^2 dt, or None.
        jacobian: (n,) int_0^1 |eps^T dv/dx|^2 dt (mean over the probes), or None.
        nfe_forward: function evaluations of the forward solve.
        dynamics: the counted dynamics; after ``backward()`` its extra calls are the
            adjoint's (`nfe_backward`).
    """

    log_prob: Tensor
    z: Tensor
    kinetic: Tensor | None
    jacobian: Tensor | None
    nfe_forward: int
    dynamics: TrainingDynamics = dataclasses.field(repr=False)

    @property
    def nfe_backward(self) -> int:
        """Function evaluations of the adjoint solve so far (0 before ``backward()``,
        and always 0 without the adjoint)."""
        return self.dynamics.nfe - self.nfe_forward


def training_log_likelihood(
    field: nn.Module | Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    base_log_prob: Callable[[Tensor], Tensor],
    cfg: TrainConfig,
    generator: torch.Generator | None = None,
    probes: Tensor | None = None,
    t: float = 1.0,
) -> TrainingLikelihood:
    """log p_t(x) with gradients, integrating (x, log-density, penalties) from t to 0.

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
    from torchdiffeq import odeint, odeint_adjoint

    if probes is None and cfg.needs_probes():
        probes = draw_probes(tuple(x.shape), cfg.n_probes, cfg.probe, generator, x.dtype,
                             x.device)
    dyn = TrainingDynamics(field, cfg.divergence, probes, cfg.kinetic, cfg.jacobian)
    zero = x.new_zeros(x.shape[0])
    state = (x, zero) + (zero,) * (int(cfg.kinetic) + int(cfg.jacobian))
    times = torch.tensor([t, 0.0], dtype=x.dtype, device=x.device)
    kwargs = dict(rtol=cfg.rtol, atol=cfg.atol, method=cfg.method, options=cfg.options())
    if cfg.adjoint:
        params = tuple(dyn.parameters())
        sol = odeint_adjoint(dyn, state, times, adjoint_params=params, **kwargs)
    else:
        sol = odeint(dyn, state, times, **kwargs)
    nfe_forward = dyn.nfe
    final = [s[-1] for s in sol]
    z, acc, extra = final[0], final[1], final[2:]
    # integrating from t down to 0 accumulates minus the integrals
    kinetic = -extra.pop(0) if cfg.kinetic else None
    jacobian = -extra.pop(0) if cfg.jacobian else None
    return TrainingLikelihood(
        log_prob=base_log_prob(z) + acc, z=z, kinetic=kinetic, jacobian=jacobian,
        nfe_forward=nfe_forward, dynamics=dyn,
    )
