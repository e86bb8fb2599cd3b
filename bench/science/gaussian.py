"""Closed-form Gaussian densities and Gaussian-to-Gaussian interpolant paths (exact velocity
and marginal density), used by the synthetic datasets and by the closed-form tests.

Gaussian to Gaussian: x_0 ~ N(0, I), x_1 ~ N(m, diag(s^2)) independent, and the path
x_t = a_t x_0 + b_t x_1. Then rho_t = N(b_t m, diag(a_t^2 + b_t^2 s^2)) and the exact
velocity E[dI/dt | x_t = x] is

    v(t, x) = b'_t m + (a_t a'_t + b_t b'_t s^2) / (a_t^2 + b_t^2 s^2) * (x - b_t m).

`GaussianStats` holds a fitted full-covariance Gaussian (the ``gaussian_mle`` method's).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bench.science.interpolants import Interpolant

__all__ = ["GaussianPath", "GaussianStats", "gaussian_log_prob"]


def gaussian_log_prob(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """log N(x; mean, diag(var)) summed over the last dimension; x (n, d) -> (n,)."""
    return -0.5 * (((x - mean) ** 2) / var + torch.log(2 * math.pi * var)).sum(-1)


class GaussianPath(nn.Module):
    """Exact velocity and marginal density of a Gaussian-to-Gaussian interpolant."""

    def __init__(self, interpolant: Interpolant, m: Tensor, s: Tensor) -> None:
        super().__init__()
        self.interpolant = interpolant
        self.register_buffer("m", m)
        self.register_buffer("s", s)

    def _t(self, t) -> Tensor:
        return torch.as_tensor(t, dtype=self.m.dtype, device=self.m.device)

    def mean_var(self, t) -> tuple[Tensor, Tensor]:
        t = self._t(t)
        a, b = self.interpolant.a(t), self.interpolant.b(t)
        return b * self.m, a * a + b * b * self.s**2

    def forward(self, t, x: Tensor) -> Tensor:
        t = self._t(t)
        it = self.interpolant
        a, b, da, db = it.a(t), it.b(t), it.da(t), it.db(t)
        mean, var = b * self.m, a * a + b * b * self.s**2
        return db * self.m + (a * da + b * db * self.s**2) / var * (x - mean)

    def log_prob(self, x: Tensor, t=1.0) -> Tensor:
        mean, var = self.mean_var(t)
        return gaussian_log_prob(x, mean, var)


class GaussianStats(nn.Module):
    """A full-covariance Gaussian N(mean, L L^T) as buffers (saved with the module's state).

    Args:
        mean: (d,) mean; scale_tril: (d, d) lower Cholesky factor L of the covariance.
    """

    def __init__(self, mean: Tensor, scale_tril: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("scale_tril", scale_tril)

    def dist(self) -> torch.distributions.MultivariateNormal:
        return torch.distributions.MultivariateNormal(self.mean, scale_tril=self.scale_tril)
