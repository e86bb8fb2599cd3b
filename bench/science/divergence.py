"""Divergence of a velocity field and the augmented dynamics of the one ODE engine.

The engine (`bench.science.ode`) integrates the state

    d/dt (x, acc[, kin][, jac]) = (v, div v[, |v|^2][, |eps^T dv/dx|^2])

with `AugmentedDynamics`, for evaluation (no gradients) and for CNF training (gradients
through the solver or the adjoint) alike. The divergence is exact (one vector-Jacobian
product per dimension) or Hutchinson's estimator ``mean_k eps_k^T (dv/dx) eps_k`` with
probes fixed for a solve, so the ODE stays deterministic for an adaptive solver. The
kinetic energy and the Jacobian Frobenius norm (Finlay et al. 2020, "How to train your
neural ODE", RNODE) are optional extra states; the latter reuses Hutchinson's products.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = [
    "divergence_exact",
    "divergence_hutchinson",
    "draw_probes",
    "AugmentedDynamics",
]


def divergence_exact(v: Tensor, x: Tensor, create_graph: bool = False) -> Tensor:
    """Exact divergence sum_i dv_i/dx_i, one vector-Jacobian product per dimension.

    Args:
        v: (n, *shape) output of a function of x (with its graph).
        x: (n, *shape) input that requires grad.
        create_graph: keep the graph of the products (to differentiate the divergence).
    Returns:
        (n,) divergence.
    """
    n = x.shape[0]
    v_flat = v.reshape(n, -1)
    div = torch.zeros(n, dtype=v.dtype, device=v.device)
    for i in range(v_flat.shape[1]):
        (g,) = torch.autograd.grad(
            v_flat[:, i].sum(), x, retain_graph=True, create_graph=create_graph
        )
        div = div + g.reshape(n, -1)[:, i]
    return div


def _probe_products(
    v: Tensor, x: Tensor, probes: Tensor, create_graph: bool, frobenius: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Means over the probes of eps^T (dv/dx) eps and (if ``frobenius``) of
    |eps^T dv/dx|^2, each (n,)."""
    n = x.shape[0]
    est = torch.zeros(n, dtype=v.dtype, device=v.device)
    frob = torch.zeros(n, dtype=v.dtype, device=v.device)
    k = probes.shape[0]
    for j in range(k):
        (g,) = torch.autograd.grad(  # eps^T dv/dx, (n, *shape)
            v, x, probes[j], retain_graph=True, create_graph=create_graph
        )
        est = est + (g * probes[j]).reshape(n, -1).sum(1)
        if frobenius:
            frob = frob + (g * g).reshape(n, -1).sum(1)
    return est / k, (frob / k if frobenius else None)


def divergence_hutchinson(
    v: Tensor, x: Tensor, probes: Tensor, create_graph: bool = False
) -> Tensor:
    """Hutchinson's estimator mean_k eps_k^T (dv/dx) eps_k.

    Args:
        v, x: (n, *shape) as in `divergence_exact`.
        probes: (k, n, *shape) probe vectors with E[eps eps^T] = I.
        create_graph: keep the graph of the products.
    Returns:
        (n,) unbiased estimate of the divergence.
    """
    return _probe_products(v, x, probes, create_graph)[0]


def draw_probes(
    shape: tuple[int, ...], k: int, kind: str, generator: torch.Generator | None,
    dtype: torch.dtype, device: torch.device | str,
) -> Tensor:
    """(k, *shape) probes with E[eps eps^T] = I, drawn on the CPU (reproducible anywhere).

    Args:
        shape: (n, *event_shape) of the state.
        k: number of probes.
        kind: "rademacher" (+-1) or "gaussian".
        generator: CPU generator (None: the global one).
        dtype, device: of the result.
    """
    eps = torch.randn((k, *shape), generator=generator, dtype=dtype, device="cpu")
    if kind == "rademacher":
        eps = eps.sign()
        eps[eps == 0] = 1.0
    return eps.to(device)


class AugmentedDynamics(nn.Module):
    """d/dt (x[, acc][, kin][, jac]) = (v[, div v][, |v|^2][, |eps^T dv/dx|^2]).

    The one right-hand side of the engine. The graph of the divergence is kept (double
    backprop) only when gradients are enabled: never in evaluation (the engine solves under
    ``no_grad``), not in the adjoint's forward solve, but in its backward solve and when
    backpropagating through the solver. The numbers are the same either way.

    Args:
        field: v(t, x) for x of shape (n, *shape); with the adjoint, the parameters of an
            ``nn.Module`` field are the adjoint's parameters.
        divergence: "exact", "hutchinson", or None for the plain ODE dx/dt = v (state (x,)).
        probes: (k, n, *shape) probes fixed for the solve, needed for "hutchinson" and for
            the Jacobian penalty (which uses them all).
        kinetic, jacobian: whether the state carries the RNODE integrands.
    Attributes:
        nfe: calls so far (the forward solve and, with the adjoint, the backward solve).
    """

    def __init__(
        self, field: nn.Module | Callable[[Tensor, Tensor], Tensor],
        divergence: str | None = "exact", probes: Tensor | None = None,
        kinetic: bool = False, jacobian: bool = False,
    ) -> None:
        super().__init__()
        if divergence not in (None, "exact", "hutchinson"):
            raise ValueError(f"unknown divergence {divergence!r}")
        if divergence is None and (kinetic or jacobian):
            raise ValueError("the RNODE states need the log-density state (a divergence)")
        if (divergence == "hutchinson" or jacobian) and probes is None:
            raise ValueError("Hutchinson's estimator and the Jacobian penalty need probes")
        self.field = field
        self.divergence = divergence
        self.probes = probes
        self.kinetic = kinetic
        self.jacobian = jacobian
        self.nfe = 0

    @property
    def n_states(self) -> int:
        """Number of tensors in the state: x, then acc, kin, jac as configured."""
        if self.divergence is None:
            return 1
        return 2 + int(self.kinetic) + int(self.jacobian)

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.nfe += 1
        create_graph = torch.is_grad_enabled()
        # No gradient with respect to the integration times is ever asked for, but
        # torchdiffeq's adjoint hands func a time that requires grad (``t_`` and ``t`` are
        # one tensor after its in-place ``requires_grad_``), so a time-dependent net
        # would make the adjoint integrate dL/dt too: a state that only costs steps.
        t = t.detach()
        x = state[0]
        if self.divergence is None:
            return (self.field(t, x),)
        n = x.shape[0]
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            v = self.field(t, x)
            div = frob = None
            if self.divergence == "exact":
                div = divergence_exact(v, x, create_graph=create_graph)
            if self.divergence == "hutchinson" or self.jacobian:
                est, frob = _probe_products(v, x, self.probes, create_graph, self.jacobian)
                div = est if div is None else div
        out = [v, div]
        if self.kinetic:
            out.append((v * v).reshape(n, -1).sum(1))
        if self.jacobian:
            out.append(frob)
        if not create_graph:
            out = [o.detach() for o in out]
        return tuple(out)
