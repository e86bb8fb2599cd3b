"""Objectives of stochastic interpolants and their closed forms on Gaussian mixtures.

x_t = a x_0 + b x_1 + gamma z (`bench.science.si_paths.StochasticInterpolant`), t=0 base,
t=1 data. Let rho_t be the density of x_t. Since x_t | (x_0, x_1) ~ N(I_t, gamma^2 I),

    grad rho_t(x) = E[-(x - I_t) / gamma^2 N(x; I_t, gamma^2)] ,  x - I_t = gamma z,

so the SIGN CONVENTION is

    s(t, x) = grad log rho_t(x) = -E[z | x_t = x] / gamma(t) = -eta_z(t, x) / gamma(t),

with the denoiser eta_z = E[z | x_t] (for `OneSided`, z -> x_0 and gamma -> a(t)). The
drift of the probability flow is b = E[dI/dt + gamma' z | x_t] = v + gamma' eta_z
= v - gamma gamma' s, with v = E[dI/dt | x_t]. Each field f is the unique minimiser of the
quadratic loss E[|f(x_t)|^2 - 2 target . f(x_t)] (= E|f - E[target | x_t]|^2 + const) with

    target(b) = dI/dt + gamma' z,  target(v) = dI/dt,  target(eta) = z,  target(s) = -z/gamma.

Losses are summed over the non-batch dimensions and averaged over the batch; with
``antithetic`` each term is the average over a draw and its antithetic partner, the same
(x_1, t) with the Gaussian part flipped: z -> -z, or x_0 -> -x_0 for `OneSided`, where x_0
is the latent and z does not enter x_t (`StochasticInterpolant.antithetic`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench.science.si_paths import StochasticInterpolant, StochasticSample

__all__ = ["TARGETS", "OBJECTIVES", "quadratic_loss", "interpolant_losses",
           "GaussianMixturePath", "relative_l2", "DriftField", "ScoreField"]

Field = Callable[[Tensor, Tensor], Tensor]

#: what each learned field regresses on
TARGETS: dict[str, Callable[[StochasticSample], Tensor]] = {
    "b": lambda p: p.dx_t,
    "v": lambda p: p.dI,
    "eta": lambda p: p.noise,
    "s": lambda p: -p.noise / p.scale,
}


#: objective -> the fields it learns (b: drift, s: score, eta: denoiser, v: E[dI/dt | x_t])
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "velocity": ("b",),
    "velocity_score": ("b", "s"),
    "velocity_denoiser": ("b", "eta"),
    "split": ("v", "eta"),
}


def _bc(c: Tensor, x: Tensor) -> Tensor:
    """A coefficient of t () or (n,) against x (n, *shape)."""
    return c if c.dim() == 0 else c.reshape(-1, *([1] * (x.dim() - 1)))


class DriftField(nn.Module):
    """b(t, x) from the learned fields: b itself, or v + gamma' eta = v - gamma gamma' s
    (``split``); times are clamped to [t_min, 1 - t_min].

    Args:
        nets: learned name (keys of `TARGETS`) -> network f(t, x).
    """

    def __init__(self, nets: dict[str, nn.Module], it: StochasticInterpolant) -> None:
        super().__init__()
        self.nets, self.it = nn.ModuleDict(nets), it

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        tc = self.it.clamp_time(torch.as_tensor(t, dtype=x.dtype, device=x.device))
        if "b" in self.nets:
            return self.nets["b"](tc, x)
        rate = self.it.noise_scale_rate(tc) / self.it.noise_scale(tc)  # gamma'
        return self.nets["v"](tc, x) + _bc(rate, x) * self.nets["eta"](tc, x)


class ScoreField(nn.Module):
    """s(t, x) from a learned score or denoiser (s = -eta / scale(t)), clamped times."""

    def __init__(self, nets: dict[str, nn.Module], it: StochasticInterpolant) -> None:
        super().__init__()
        self.nets, self.it = nn.ModuleDict(nets), it

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        tc = self.it.clamp_time(torch.as_tensor(t, dtype=x.dtype, device=x.device))
        if "s" in self.nets:
            return self.nets["s"](tc, x)
        return -self.nets["eta"](tc, x) / _bc(self.it.noise_scale(tc), x)


def quadratic_loss(pred: Tensor, target: Tensor) -> Tensor:
    """mean_n sum_i (pred^2 - 2 target pred): (n, *shape) -> scalar."""
    n = pred.shape[0]
    pred, target = pred.reshape(n, -1), target.reshape(n, -1)
    return ((pred * pred).sum(1) - 2 * (target * pred).sum(1)).mean()


def interpolant_losses(fields: dict[str, Field], it: StochasticInterpolant, x_0: Tensor,
                       x_1: Tensor, t: Tensor, z: Tensor, antithetic: bool = False
                       ) -> dict[str, Tensor]:
    """The quadratic loss of each field (keys of `TARGETS`) on one batch.

    Args:
        fields: name -> f(t, x) with t (n,) and x (n, *shape); evaluated at clamped times.
        it: the interpolant; x_0, x_1, z: (n, *shape); t: (n,) in [t_min, 1 - t_min].
        antithetic: average each loss over the draw and its antithetic partner
            (`StochasticInterpolant.antithetic`: -z, or -x_0 when one-sided).
    Returns:
        name -> scalar loss.
    """
    draws = [(x_0, z), it.antithetic(x_0, z)] if antithetic else [(x_0, z)]
    tc = it.clamp_time(t)
    out = {k: t.new_zeros(()) for k in fields}
    for x_0d, zd in draws:
        p = it.sample(x_0d, x_1, t, zd)
        for k, f in fields.items():
            out[k] = out[k] + quadratic_loss(f(tc, p.x_t), TARGETS[k](p)) / len(draws)
    return out


def relative_l2(learned: Field, exact: Field, t: Tensor, x: Tensor) -> float:
    """sqrt(E|f - f*|^2 / E|f*|^2) over the rows (t (n,), x (n, d))."""
    with torch.no_grad():
        f, g = learned(t, x), exact(t, x)
    return float(((f - g) ** 2).sum().sqrt() / (g**2).sum().sqrt())


class GaussianMixturePath:
    """Exact fields of x_0 ~ N(0, I), x_1 ~ sum_k w_k N(m_k, diag(s_k^2)) (independent).

    Given component k, x_t ~ N(b m_k, diag(V_k)), V_k = a^2 + b^2 s_k^2 + gamma^2, and
    (x, noise, x_1) are jointly Gaussian, so with r_k(x) the posterior of component k and
    u_k = (x - b m_k) / V_k:

        rho_t = sum_k w_k N(b m_k, V_k),   s = -sum_k r_k u_k,
        eta = E[noise | x] = scale(t) sum_k r_k u_k   (= -scale s),
        b = sum_k r_k [b' m_k + (a a' + b b' s_k^2 + gamma gamma') u_k],
        v = the same without gamma gamma'.

    (`Mirror`: a = 0, b = 1.) Fields take t as a float or a (n,) / (n, 1) tensor.

    Args:
        it: the interpolant; weights (K,); means, scales (K, d).
    """

    def __init__(self, it: StochasticInterpolant, weights: Tensor, means: Tensor,
                 scales: Tensor) -> None:
        self.it, self.w, self.m, self.s = it, weights / weights.sum(), means, scales

    def _parts(self, t, x: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.reshape(-1, 1, 1) if t.dim() > 0 else t  # (n, 1, 1) against (n, K, d)
        c = self.it.coefficients(t)
        var = c["a"] ** 2 + c["b"] ** 2 * self.s**2 + c["g"] ** 2  # (n|1, K, d)
        diff = x[:, None, :] - c["b"] * self.m  # (n, K, d)
        logn = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)  # (n, K)
        logp = logn + torch.log(self.w)
        return c, var, diff / var, logp

    def log_prob(self, t, x: Tensor) -> Tensor:
        """log rho_t(x): (n, d) -> (n,)."""
        return torch.logsumexp(self._parts(t, x)[3], dim=1)

    def score(self, t, x: Tensor) -> Tensor:
        _, _, u, logp = self._parts(t, x)
        r = torch.softmax(logp, dim=1)[..., None]
        return -(r * u).sum(1)

    def denoiser(self, t, x: Tensor) -> Tensor:
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        scale = self.it.noise_scale(tt.reshape(-1, 1) if tt.dim() > 0 else tt)
        return -scale * self.score(t, x)

    def _drift(self, t, x: Tensor, with_gamma: bool) -> Tensor:
        c, _, u, logp = self._parts(t, x)
        r = torch.softmax(logp, dim=1)[..., None]
        rate = c["a"] * c["da"] + c["b"] * c["db"] * self.s**2
        rate = rate + c["g_dg"] if with_gamma else rate
        return (r * (c["db"] * self.m + rate * u)).sum(1)

    def velocity(self, t, x: Tensor) -> Tensor:
        """b(t, x), the probability-flow drift."""
        return self._drift(t, x, True)

    def v(self, t, x: Tensor) -> Tensor:
        """v(t, x) = E[dI/dt | x_t = x]."""
        return self._drift(t, x, False)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws of x_1 (n, d)."""
        k = torch.multinomial(self.w, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.m.shape[1], generator=generator, dtype=self.m.dtype)
        return self.m[k] + self.s[k] * eps
