"""ODE sampling and log-likelihood for every flow-type method (torchdiffeq).

One engine for InterFlow, the MLE CNF and DDPM's probability-flow ODE: integrate the state
``(x, acc)`` with ``dx/dt = v(t, x)`` and ``d acc/dt = div v(t, x)``. Along a trajectory
``d/dt log rho_t(x_t) = -div v``, so integrating back from time t to 0 gives

    log rho_t(x) = log rho_0(x_0) - int_0^t div v(s, x_s) ds.

The divergence is exact (one vector-Jacobian product per dimension) or Hutchinson's
estimator ``E[eps^T J eps]`` with probes drawn once per solve (so the ODE stays
deterministic for the adaptive solver). Function evaluations are counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from bench.api.types import (
    ADAPTIVE_SOLVERS,
    DIVERGENCES,
    LogLikelihood,
    SolverConfig,
    check_divergence,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "SolverConfig",
    "ODEResult",
    "CountingField",
    "standard_normal_log_prob",
    "divergence_exact",
    "divergence_hutchinson",
    "integrate",
    "log_likelihood",
    "DIVERGENCES",
    "ADAPTIVE_SOLVERS",
    "check_divergence",
    "ODEEngine",
]

@dataclass
class ODEResult:
    x: Tensor
    nfe: int


class CountingField(nn.Module):
    """Wraps v(t, x) and counts its forward calls (``nfe``)."""

    def __init__(self, field: nn.Module | Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.field = field
        self.nfe = 0

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += 1
        return self.field(t, x)


def standard_normal_log_prob(x: Tensor) -> Tensor:
    """log N(x; 0, I) of (n, *shape) -> (n,): the base density of the flow methods."""
    x = x.reshape(x.shape[0], -1)
    return -0.5 * (x * x).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def divergence_exact(v: Tensor, x: Tensor, create_graph: bool = False) -> Tensor:
    """Exact divergence sum_i dv_i/dx_i, one vector-Jacobian product per dimension.

    Args:
        v: (n, *shape) output of a function of x (with its graph).
        x: (n, *shape) input that requires grad.
    Returns:
        (n,) divergence.
    """
    n = x.shape[0]
    v_flat = v.reshape(n, -1)
    d = v_flat.shape[1]
    div = torch.zeros(n, dtype=v.dtype, device=v.device)
    for i in range(d):
        (g,) = torch.autograd.grad(
            v_flat[:, i].sum(), x, retain_graph=True, create_graph=create_graph
        )
        div = div + g.reshape(n, -1)[:, i]
    return div


def divergence_hutchinson(
    v: Tensor, x: Tensor, probes: Tensor, create_graph: bool = False
) -> Tensor:
    """Hutchinson's estimator mean_k eps_k^T (dv/dx) eps_k.

    Args:
        v, x: (n, *shape) as in `divergence_exact`.
        probes: (k, n, *shape) probe vectors with E[eps eps^T] = I.
    Returns:
        (n,) unbiased estimate of the divergence.
    """
    n = x.shape[0]
    est = torch.zeros(n, dtype=v.dtype, device=v.device)
    k = probes.shape[0]
    for j in range(k):
        (g,) = torch.autograd.grad(
            v, x, probes[j], retain_graph=True, create_graph=create_graph
        )
        est = est + (g * probes[j]).reshape(n, -1).sum(1)
    return est / k


def draw_probes(
    shape: tuple[int, ...], k: int, kind: str, generator: torch.Generator | None,
    dtype: torch.dtype, device: torch.device,
) -> Tensor:
    eps = torch.randn((k, *shape), generator=generator, dtype=dtype, device="cpu")
    if kind == "rademacher":
        eps = eps.sign()
        eps[eps == 0] = 1.0
    return eps.to(device)


class AugmentedDynamics(nn.Module):
    """d/dt (x, acc) = (v, div v), with exact or Hutchinson divergence."""

    def __init__(
        self, field: nn.Module | Callable, divergence: str, probes: Tensor | None = None,
        create_graph: bool = False,
    ) -> None:
        super().__init__()
        self.field = field
        self.divergence = divergence
        self.probes = probes
        self.create_graph = create_graph
        self.nfe = 0

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        self.nfe += 1
        x = state[0]
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            v = self.field(t, x)
            if self.divergence == "exact":
                div = divergence_exact(v, x, self.create_graph)
            else:
                div = divergence_hutchinson(v, x, self.probes, self.create_graph)
        if not self.create_graph:
            v, div = v.detach(), div.detach()
        return v, div


def _times(t0: float, t1: float, like: Tensor) -> Tensor:
    return torch.tensor([t0, t1], dtype=like.dtype, device=like.device)


def integrate(
    field: nn.Module | Callable, x: Tensor, t0: float, t1: float, cfg: SolverConfig,
    grad: bool = False,
) -> ODEResult:
    """Solve dx/dt = field(t, x) from t0 to t1; returns x(t1) and the NFE."""
    from torchdiffeq import odeint

    if t0 == t1:
        return ODEResult(x=x, nfe=0)
    counted = CountingField(field)
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        xs = odeint(counted, x, _times(t0, t1, x), rtol=cfg.rtol, atol=cfg.atol,
                    method=cfg.method)
    return ODEResult(x=xs[-1], nfe=counted.nfe)


def log_likelihood(
    field: nn.Module | Callable,
    x: Tensor,
    base_log_prob: Callable[[Tensor], Tensor],
    cfg: SolverConfig,
    t: float = 1.0,
    seed: int = 0,
):
    """log rho_t(x) of the flow dX/dt = field(t, X) started from rho_0 = base.

    Args:
        field: v(t, x) with x of shape (n, *shape).
        x: (n, *shape) points at time t.
        base_log_prob: log rho_0 of (n, *shape) -> (n,).
        cfg: solver and divergence settings; rows are processed in chunks of cfg.chunk.
        t: the time at which the density is evaluated (1 = data).
        seed: seed of the Hutchinson probes (fixed per solve).
    Returns:
        `bench.api.LogLikelihood` with values (n,), kind "exact", estimator label, NFE.
    """
    from torchdiffeq import odeint

    if t == 0.0:  # the flow starts at the base density
        return LogLikelihood(values=base_log_prob(x), kind="exact", estimator="base density")
    gen = torch.Generator().manual_seed(seed)
    out, nfe = [], 0
    for xc in torch.split(x, cfg.chunk):
        probes = None
        if cfg.divergence == "hutchinson":
            probes = draw_probes(tuple(xc.shape), cfg.n_probes, cfg.probe, gen, xc.dtype,
                                 xc.device)
        dyn = AugmentedDynamics(field, cfg.divergence, probes)
        acc0 = torch.zeros(xc.shape[0], dtype=xc.dtype, device=xc.device)
        with torch.no_grad():
            xs, accs = odeint(dyn, (xc, acc0), _times(t, 0.0, xc), rtol=cfg.rtol,
                              atol=cfg.atol, method=cfg.method)
        # acc(0) = -int_0^t div v ds, so log rho_t(x) = log rho_0(x_0) + acc(0)
        out.append(base_log_prob(xs[-1]) + accs[-1])
        nfe = max(nfe, dyn.nfe)  # per solve: the most any chunk needed
    return LogLikelihood(values=torch.cat(out), kind="exact", estimator=cfg.label(), nfe=nfe)


class ODEEngine:
    """The engine a `FlowMethod` reaches through ``ctx.engine``: `integrate` and
    `log_likelihood` with the harness's solver settings and the run's probe seed."""

    def __init__(self, cfg: SolverConfig, seed: int = 0) -> None:
        self.cfg, self.seed = cfg, seed

    def integrate(self, field, x: Tensor, t0: float, t1: float) -> Tensor:
        return integrate(field, x, t0, t1, self.cfg).x

    def log_likelihood(self, field, x: Tensor, base_log_prob, t: float = 1.0) -> LogLikelihood:
        return log_likelihood(field, x, base_log_prob, self.cfg, t=t, seed=self.seed)
