"""Learned interpolants: the path-length ablation of Albergo and Vanden-Eijnden (ICLR 2023).

Parameterisation. x_t = a(t) x_0 + b(t) x_1 with truncated sine series on top of the
trigonometric interpolant,

    a(t) = cos(pi t / 2) + sum_{k=1}^K alpha_k sin(k pi t),
    b(t) = sin(pi t / 2) + sum_{k=1}^K beta_k  sin(k pi t),

so a(0) = b(1) = 1 and a(1) = b(0) = 0 for every (alpha, beta) (each sine vanishes at both
ends), and (alpha, beta) = 0 is exactly the paper's default `Trigonometric` path: training
starts from the fixed interpolant the ablation compares against. sin(k pi t), k >= 1, is
complete in L2(0, 1), so any coefficient with these end values is reachable as K grows (a
linear base would serve as well; the trigonometric one makes "before" the baseline).

The max-min. With v* = E[dI/dt | x_t] and the tower property E[dI/dt . v(x_t)] =
E[v*(x_t) . v(x_t)], the velocity loss completes the square:

    G(v) = E[|v_t(x_t)|^2 - 2 dI/dt . v_t(x_t)] = E|v - v*|^2 - E|v*|^2,

so  min_v G = G(v*) = -E_t E|v*_t(x_t)|^2 = -int_0^1 int rho_t |v*_t|^2 dx dt, minus the
kinetic energy ("path length") of the interpolant density rho_t. Hence

    max_I min_v G(v) = -min_I int_0^1 int rho_t |v*_t|^2 dx dt  <=  -W_2(rho_0, rho_1)^2

(Benamou-Brenier: W_2^2 is the least action of any density path with its velocity); by
Jensen E|v*|^2 <= E|dI/dt|^2. Maximising over the interpolant therefore shortens the path
towards optimal transport. For x_0 ~ N(0, I), x_1 ~ N(m, s^2 I) independent the bound is
attained in the family: b = t, a = sqrt((1 - t)(1 - t + 2 s t)) give rho_t = N(t m,
(1 - t + s t)^2 I), the displacement interpolation, with action |m|^2 + d (s - 1)^2.

One optimiser. The coefficients enter the graph through a gradient reversal (identity
forward, negated gradient backward), so a descent step of the single optimiser on G is an
ascent step for (alpha, beta) and a descent step for v: simultaneous gradient
descent-ascent. The coefficients are stored as ``raw`` with (alpha, beta) = lr_factor * raw:
under Adam/AdamW (invariant to the gradient's scale) the coefficients then move lr_factor
times as fast as the other parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bench.api.errors import ConfigError
from bench.science.interpolants import Interpolant

__all__ = ["GradReverse", "reverse_grad", "FourierInterpolant", "velocity_objective",
           "PathLength", "path_length", "path_metrics", "interpolant_kinetic_energy",
           "gaussian_density_kinetic_energy", "gaussian_ot_kinetic_energy", "gauss_legendre"]

Sampler = Callable[[int], Tensor]


class GradReverse(torch.autograd.Function):
    """Identity forward; the gradient is negated backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        return -grad


def reverse_grad(x: Tensor) -> Tensor:
    """x, whose gradient is negated in the backward pass."""
    return GradReverse.apply(x)


class FourierInterpolant(nn.Module, Interpolant):
    """a(t) = cos(pi t/2) + sum_k alpha_k sin(k pi t), b(t) = sin(pi t/2) + sum_k beta_k
    sin(k pi t), k = 1..modes, learned by the max-min (module docstring).

    Args:
        modes: K, the number of sine modes of each coefficient.
        lr_factor: (alpha, beta) = lr_factor * raw (their relative learning rate under Adam).
        adversarial: reverse the gradient of (alpha, beta) (False: plain descent, e.g. to
            compare gradients, or to fit a path by minimising a loss).

    Attributes:
        raw: (2, modes) parameter, rows alpha / lr_factor and beta / lr_factor; zero at
            construction (the trigonometric path).
    """

    name = "learned"

    def __init__(self, modes: int = 4, lr_factor: float = 1.0, adversarial: bool = True
                 ) -> None:
        nn.Module.__init__(self)
        if modes < 1:
            raise ConfigError(f"path_modes must be >= 1, got {modes}")
        if not lr_factor > 0:
            raise ConfigError(f"path_lr_factor must be > 0, got {lr_factor}")
        self.modes, self.lr_factor, self.adversarial = int(modes), float(lr_factor), adversarial
        self.raw = nn.Parameter(torch.zeros(2, self.modes))

    def coefficients(self) -> Tensor:
        """(alpha, beta) of shape (2, modes), gradient-reversed when adversarial."""
        c = self.lr_factor * self.raw
        return reverse_grad(c) if self.adversarial else c

    def _modes(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """sin(k pi t) and d/dt of it, each of shape (*t.shape, modes)."""
        k = torch.arange(1, self.modes + 1, device=t.device, dtype=t.dtype) * math.pi
        kt = t.unsqueeze(-1) * k
        return torch.sin(kt), k * torch.cos(kt)

    def _series(self, t: Tensor, row: int, derivative: bool) -> Tensor:
        sin, dsin = self._modes(t)
        c = self.coefficients()[row].to(t.dtype)
        return (dsin if derivative else sin) @ c

    def a(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * t) + self._series(t, 0, False)

    def b(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t) + self._series(t, 1, False)

    def da(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t) + self._series(t, 0, True)

    def db(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t) + self._series(t, 1, True)

    def extra_repr(self) -> str:
        return f"modes={self.modes}, lr_factor={self.lr_factor}, adversarial={self.adversarial}"


def velocity_objective(v: nn.Module, interpolant: Interpolant, x_0: Tensor, x_1: Tensor,
                       t: Tensor) -> Tensor:
    """G(v) = mean over the batch of |v_t(x_t)|^2 - 2 dI/dt . v_t(x_t) (summed over every
    non-batch dimension); x_0, x_1 (n, *shape), t (n,). Minimised by v, maximised by a
    `FourierInterpolant` through its gradient reversal."""
    path = interpolant.sample(x_0, x_1, t)
    n = x_0.shape[0]
    out = v(path.t, path.x_t).reshape(n, -1)
    dx_t = path.dx_t.reshape(n, -1)
    return ((out * out).sum(1) - 2 * (dx_t * out).sum(1)).mean()


def gauss_legendre(n: int, lo: float = 0.0, hi: float = 1.0) -> tuple[Tensor, Tensor]:
    """Gauss-Legendre nodes and weights on [lo, hi] (float64, weights sum to hi - lo)."""
    x, w = np.polynomial.legendre.leggauss(n)
    half = 0.5 * (hi - lo)
    return (torch.from_numpy(lo + half * (x + 1.0)), torch.from_numpy(half * w))


@dataclass
class PathLength:
    """Kinetic energies along a path, E_t over a Gauss-Legendre rule in t (``n_t`` nodes),
    Monte Carlo in (x_0, x_1) with ``n`` fresh draws per node.

    Attributes:
        velocity, velocity_se: E_t E|v_t(x_t)|^2 of a velocity and its standard error;
        interpolant, interpolant_se: E_t E|dI/dt|^2 on the same draws (an upper bound of
            the density's kinetic energy E|v*|^2, Jensen).
    """

    velocity: float
    velocity_se: float
    interpolant: float
    interpolant_se: float
    n: int
    n_t: int


@torch.no_grad()
def path_length(v: nn.Module, interpolant: Interpolant, x0_sampler: Sampler,
                x1_sampler: Sampler, n: int = 4096, n_t: int = 16) -> PathLength:
    """The kinetic energy int_0^1 E|v_t(x_t)|^2 dt of a velocity along ``interpolant``.

    Args:
        v: v(t, x) with t (n,) and x (n, *shape).
        x0_sampler, x1_sampler: ``f(n) -> (n, *shape)`` independent draws of each end.
        n: draws per time node; n_t: Gauss-Legendre nodes in t (the t-quadrature error is
            negligible for smooth fields; the standard error is the Monte Carlo one,
            sqrt(sum_i w_i^2 var_i / n)).
    """
    nodes, weights = gauss_legendre(n_t)
    vel, vel_var, dot, dot_var = 0.0, 0.0, 0.0, 0.0
    for t_i, w_i in zip(nodes.tolist(), weights.tolist(), strict=True):
        x_0, x_1 = x0_sampler(n), x1_sampler(n)
        t = torch.full((n,), t_i, dtype=x_0.dtype, device=x_0.device)
        path = interpolant.sample(x_0, x_1, t)
        e_v = v(t, path.x_t).reshape(n, -1).pow(2).sum(1).double()
        e_i = path.dx_t.reshape(n, -1).pow(2).sum(1).double()
        vel += w_i * float(e_v.mean())
        vel_var += w_i**2 * float(e_v.var()) / n
        dot += w_i * float(e_i.mean())
        dot_var += w_i**2 * float(e_i.var()) / n
    return PathLength(vel, math.sqrt(vel_var), dot, math.sqrt(dot_var), n, n_t)


def path_metrics(v: nn.Module, interpolant: Interpolant, rows: Tensor,
                 event_shape: tuple[int, ...], *, base: Any = None, seed: int, n: int,
                 n_t: int, device: str) -> dict[str, float]:
    """`path_length` of the live network ``v`` between the base (N(0, I), or ``base``'s
    ``sample(k, generator=)``) and training ``rows``, the same draws at every call (``seed``),
    as recorded metrics: ``path_length`` (its kinetic energy), ``path_length_se`` and
    ``path_dI2`` = E|dI/dt|^2. ``v`` runs in eval mode (no dropout) and fp32 (also inside a
    bf16 training step), its mode restored after."""
    gen = torch.Generator().manual_seed(seed)

    def x0(k: int) -> Tensor:
        if base is not None:
            return base.sample(k, generator=gen).to(device)
        return torch.randn(k, *event_shape, generator=gen).to(device)

    def x1(k: int) -> Tensor:
        return rows[torch.randint(0, rows.shape[0], (k,), generator=gen)].to(device)

    was_training = v.training
    v.eval()
    try:
        with torch.autocast(torch.device(device).type, enabled=False):
            pl = path_length(v, interpolant, x0, x1, n=n, n_t=n_t)
    finally:
        v.train(was_training)
    return {"path_length": pl.velocity, "path_length_se": pl.velocity_se,
            "path_dI2": pl.interpolant}


@torch.no_grad()
def interpolant_kinetic_energy(interpolant: Interpolant, m0: float, m1: float,
                               cross: float = 0.0, n_t: int = 64) -> float:
    """Exact E|dI/dt|^2 = int_0^1 a'^2 m0 + 2 a' b' cross + b'^2 m1 dt from the second
    moments m0 = E|x_0|^2, m1 = E|x_1|^2, cross = E[x_0 . x_1] (0 for independent ends with
    one of mean zero), by a Gauss-Legendre rule of ``n_t`` nodes (exact to rounding for
    the smooth coefficients here)."""
    t, w = gauss_legendre(n_t)
    da, db = interpolant.da(t), interpolant.db(t)
    return float((w * (da * da * m0 + 2 * da * db * cross + db * db * m1)).sum())


@torch.no_grad()
def gaussian_density_kinetic_energy(interpolant: Interpolant, m: Tensor, s: float,
                                    n_t: int = 64) -> float:
    """Exact kinetic energy E|v*|^2 = -min_v G of the interpolant density for x_0 ~ N(0, I)
    and x_1 ~ N(m, s^2 I) independent in d = len(m): rho_t = N(b m, sigma^2 I) with
    sigma^2 = a^2 + s^2 b^2, v*_t(x) = b' m + (sigma'/sigma)(x - b m), so
    E|v*|^2 = int_0^1 |m|^2 b'^2 + d sigma'^2 dt, sigma' = (a a' + s^2 b b') / sigma."""
    t, w = gauss_legendre(n_t)
    a, b, da, db = interpolant.a(t), interpolant.b(t), interpolant.da(t), interpolant.db(t)
    sigma = torch.sqrt(a * a + s * s * b * b)
    dsigma = (a * da + s * s * b * db) / sigma
    m = torch.as_tensor(m, dtype=torch.float64)
    return float((w * (m.pow(2).sum() * db * db + m.numel() * dsigma * dsigma)).sum())


def gaussian_ot_kinetic_energy(m: Tensor, s: float) -> float:
    """W_2^2(N(0, I), N(m, s^2 I)) = |m|^2 + d (s - 1)^2: the action of the OT path (the map
    x -> m + s x, straight lines)."""
    m = torch.as_tensor(m, dtype=torch.float64)
    return float(m.pow(2).sum() + m.numel() * (s - 1.0) ** 2)
