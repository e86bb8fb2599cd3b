"""Discrete-time diffusion (DDPM, Ho et al. 2020) and its variance-preserving SDE view.

Time index ``t`` in {0, ..., T-1} (0-indexed, as in Ho et al.'s code: index t is the
paper's x_{t+1}); ``q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I)`` with
``ab_t = prod_{j<=t} (1 - beta_j)``. The negative ELBO of the reverse chain is

    L_T + sum_{t>=1} KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) + L_0,

where L_T = KL(q(x_T | x_0) || N(0, I)) and L_0 = -log p(x_0 | x_1) is a Gaussian decoder
density (continuous data) or Ho et al.'s discretized Gaussian (8-bit data in [-1, 1]).
All terms are in nats per example (summed over dimensions).

Continuous time (Song et al. 2021): s in [0, 1] runs data -> noise with
``beta(s) = T * beta_j`` at the cell centres s = (j + 1/2)/T (piecewise linear in s),
``ab(s) = exp(-int_0^s beta)`` and ``sigma(s) = sqrt(1 - ab(s))``, so that ab((t+1)/T) ~ ab_t
and the network index of continuous time s is ``sT - 1``. The probability-flow ODE is
``dx/ds = -1/2 beta(s) (x + score(s, x))``; `VPProbabilityFlow` returns it in the harness's
convention t = 1 - s (t=0 noise, t=1 data).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench.api.errors import ConfigError

__all__ = [
    "SCHEDULES",
    "VARIANCES",
    "DECODERS",
    "make_betas",
    "normal_kl",
    "gaussian_log_likelihood",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "DiffusionSchedule",
    "VPProbabilityFlow",
]

SCHEDULES = ("linear", "cosine")
VARIANCES = ("fixedlarge", "fixedsmall")
DECODERS = ("gaussian", "discretized")


def make_betas(schedule: str, T: int) -> Tensor:
    """Betas (T,) in float64.

    ``linear``: Ho et al.'s 1e-4 .. 0.02 for T = 1000, scaled by 1000 / T for other T (Nichol
    and Dhariwal's rule, which keeps beta(s) = T beta fixed). ``cosine``: Nichol and
    Dhariwal's ab(u) = cos^2(pi/2 (u + 0.008) / 1.008), betas clipped at 0.999.
    """
    if T < 2:
        raise ConfigError(f"the number of diffusion steps T must be >= 2, got {T}")
    if schedule == "linear":
        scale = 1000.0 / T
        return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
    if schedule == "cosine":
        u = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        ab = f / f[0]
        return (1 - ab[1:] / ab[:-1]).clamp(max=0.999)
    raise ConfigError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats (broadcasting)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def gaussian_log_likelihood(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise log N(x; mean, e^logvar) in nats."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Ho et al.'s tanh approximation of the standard normal CDF (monotone, limits 0 and 1)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Elementwise log-probability of the 8-bit bin of x under N(mean, e^(2 log_scale)).

    x lies on the grid {-1, -1 + 2/255, ..., 1} (uint8 v -> 2 v / 255 - 1); bins have half
    width 1/255 and the end bins take the tails, so the 256 probabilities sum to 1. Clamped
    at 1e-12 before the log, as in Ho et al.'s code.
    """
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    """(n,) -> (n, 1, ..., 1) in x's dtype and device."""
    return v.to(dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.dim() - 1)))


def _sum_flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


class DiffusionSchedule:
    """The forward chain, its posteriors and the fixed reverse variances (float64 tables).

    Args:
        betas: (T,) noise schedule, e.g. from `make_betas`.
    """

    def __init__(self, betas: Tensor) -> None:
        b = betas.to(torch.float64)
        self.T = b.shape[0]
        self.betas = b
        self.alphas = 1.0 - b
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat([b.new_ones(1), self.alphas_cumprod[:-1]])
        ab, ab_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.posterior_variance = b * (1 - ab_prev) / (1 - ab)
        pv = self.posterior_variance
        # log of the posterior variance, with index 0 (variance 0) replaced by index 1
        self.posterior_log_variance_clipped = torch.log(torch.cat([pv[1:2], pv[1:]]))
        self.posterior_mean_coef1 = b * ab_prev.sqrt() / (1 - ab)
        self.posterior_mean_coef2 = (1 - ab_prev) * self.alphas.sqrt() / (1 - ab)
        # cumulative integral of the continuous beta(s) at the knots s_k = (k + 1/2)/T
        # (below the first knot beta is the constant 2 T c0: the linear extrapolation's
        # integral, so ab(1/T) = exp(-beta_0) for the linear schedule, but never negative)
        c0 = (b[0] / 2 - (b[1] - b[0]) / 8).clamp(min=0).reshape(1)
        self._cum = torch.cat([c0, c0 + torch.cumsum((b[:-1] + b[1:]) / 2, 0)])

    @classmethod
    def from_name(cls, schedule: str, T: int) -> DiffusionSchedule:
        return cls(make_betas(schedule, T))

    def at(self, table: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """table[t] for integer t (n,), shaped (n, 1, ..., 1) like x."""
        return _bcast(table[t.long().cpu()], x)

    # forward process ------------------------------------------------------------------
    def q_mean_var(self, x_0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean sqrt(ab_t) x_0 and variance (1 - ab_t) of q(x_t | x_0); t (n,) integers."""
        ab = self.at(self.alphas_cumprod, t, x_0)
        return ab.sqrt() * x_0, (1 - ab).expand_as(x_0)

    def q_sample(self, x_0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) noise."""
        ab = self.at(self.alphas_cumprod, t, x_0)
        return ab.sqrt() * x_0 + (1 - ab).sqrt() * noise

    def q_posterior(self, x_0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (self.at(self.posterior_mean_coef1, t, x_t) * x_0
                + self.at(self.posterior_mean_coef2, t, x_t) * x_t)
        return mean, self.at(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        ab = self.at(self.alphas_cumprod, t, x_t)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    # reverse process ------------------------------------------------------------------
    def model_log_variance(self, variance: str) -> Tensor:
        """(T,) log sigma_t^2 of p(x_{t-1} | x_t): ``fixedlarge`` beta_t (index 0: the
        posterior variance of index 1, as Ho et al.), ``fixedsmall`` the posterior variance."""
        if variance == "fixedlarge":
            pv = self.posterior_variance
            return torch.log(torch.cat([pv[1:2], self.betas[1:]]))
        if variance == "fixedsmall":
            return self.posterior_log_variance_clipped
        raise ConfigError(f"unknown variance {variance!r}; valid: {', '.join(VARIANCES)}")

    def p_mean(self, x_t: Tensor, t: Tensor, eps: Tensor, clip: bool) -> tuple[Tensor, Tensor]:
        """Mean of p(x_{t-1} | x_t) (the posterior mean at the predicted x_0) and that x_0;
        ``clip`` clamps the predicted x_0 to [-1, 1] (image data)."""
        x_0 = self.predict_x0(x_t, t, eps)
        if clip:
            x_0 = x_0.clamp(-1.0, 1.0)
        return self.q_posterior(x_0, x_t, t)[0], x_0

    # variational bound ----------------------------------------------------------------
    def prior_kl(self, x_0: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per example (n,), nats."""
        t = torch.full((x_0.shape[0],), self.T - 1, dtype=torch.long)
        mean, var = self.q_mean_var(x_0, t)
        zero = torch.zeros_like(x_0)
        return _sum_flat(normal_kl(mean, torch.log(var), zero, zero))

    def vb_term(
        self, x_0: Tensor, x_t: Tensor, t: Tensor, eps: Tensor, variance: str, decoder: str,
        clip: bool,
    ) -> Tensor:
        """One bound term per example (n,), nats: the KL L_{t} for t > 0, the decoder
        negative log-likelihood L_0 for t == 0.

        Args:
            x_0, x_t: (n, *shape) data and its noised version at integer times t (n,).
            eps: (n, *shape) the network's noise prediction at (x_t, t).
            variance: "fixedlarge" | "fixedsmall"; decoder: "gaussian" | "discretized".
        """
        mean, _ = self.p_mean(x_t, t, eps, clip)
        logvar = self.at(self.model_log_variance(variance), t, x_t).expand_as(x_t)
        true_mean, true_logvar = self.q_posterior(x_0, x_t, t)
        kl = _sum_flat(normal_kl(true_mean, true_logvar, mean, logvar))
        if decoder == "gaussian":
            nll = -_sum_flat(gaussian_log_likelihood(x_0, mean, logvar))
        elif decoder == "discretized":
            nll = -_sum_flat(discretized_gaussian_log_likelihood(x_0, mean, 0.5 * logvar))
        else:
            raise ConfigError(f"unknown decoder {decoder!r}; valid: {', '.join(DECODERS)}")
        return torch.where(t.to(kl.device) == 0, nll, kl)

    # continuous-time (VP-SDE) view ----------------------------------------------------
    def index(self, s: Tensor) -> Tensor:
        """Network time index of continuous time s: s T - 1 (s = (t+1)/T <-> index t)."""
        return s * self.T - 1

    def _segment(self, s: Tensor) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(s, dtype=torch.float64).cpu() * self.T - 0.5
        i0 = idx.floor().clamp(0, self.T - 2).long()
        return i0, idx - i0

    def vp_beta(self, s: Tensor) -> Tensor:
        """beta(s) (float64, shape of s): T beta_j at the cell centres s = (j + 1/2)/T, linear
        in between and above the last centre, constant (>= 0) below the first. Then
        int_0^((t+1)/T) beta = sum_(j<=t) beta_j (exact for the linear schedule) ~ -log ab_t:
        the noise level at s = (t+1)/T matches the network index sT - 1 = t."""
        i0, w = self._segment(s)
        b = self.betas
        lin = self.T * (b[i0] + (b[i0 + 1] - b[i0]) * w)
        return torch.where(w < 0, 2 * self.T * self._cum[0], lin)

    def vp_log_alpha_bar(self, s: Tensor) -> Tensor:
        """log ab(s) = -int_0^s beta(u) du (exact for the piecewise-linear beta)."""
        i0, w = self._segment(s)
        b = self.betas
        quad = self._cum[i0] + b[i0] * w + (b[i0 + 1] - b[i0]) * w**2 / 2
        return -torch.where(w < 0, self._cum[0] * (1 + 2 * w), quad)

    def vp_sigma(self, s: Tensor) -> Tensor:
        """sigma(s) = sqrt(1 - ab(s))."""
        return torch.sqrt(-torch.expm1(self.vp_log_alpha_bar(s)))


class VPProbabilityFlow(nn.Module):
    """Velocity v(t, x) = -f_pf(1 - t, x) of the VP probability-flow ODE in harness time.

    ``f_pf(s, x) = -1/2 beta(s) (x + score(s, x))``; t = 1 - s, so t=0 is the noise end
    (base N(0, I)) and t=1 the data.

    Args:
        schedule: gives beta(s).
        score: score(s, x) with s a 0-d tensor and x (n, *shape) -> (n, *shape).
    """

    def __init__(self, schedule: DiffusionSchedule,
                 score: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.schedule = schedule
        self.score = score

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        s = 1.0 - torch.as_tensor(t, dtype=torch.float64)
        beta = self.schedule.vp_beta(s).to(dtype=x.dtype, device=x.device)
        return 0.5 * beta * (x + self.score(s.to(x.dtype), x))
