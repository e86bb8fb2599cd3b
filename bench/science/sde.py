"""SDE sampling and the SDE likelihood estimator of stochastic interpolants (fixed steps).

With b the probability-flow drift and s = grad log rho_t (t=0 base, t=1 data), every
eps(t) >= 0 gives processes with the marginals rho_t:

    forward   dX = b_F dt + sqrt(2 eps) dW,  b_F = b + eps s    (t: 0 -> 1, sampling),
    backward  dY = b_B dt + sqrt(2 eps) dW,  b_B = b - eps s    (t: 1 -> 0, likelihood),

since eps s rho = eps grad rho turns each Fokker-Planck equation into the transport equation
d rho/dt + div(b rho) = 0. eps = 0 is the probability-flow ODE dX = b dt.

Likelihood (derived). Run the backward SDE in reversed time tau = 1 - t from Y(tau=0) = x:
dY = -b_B dtau + sqrt(2 eps) dW. With f = log rho_{1-tau} and d_t f = -div b - b.s
(transport equation), Ito's formula gives

    df(Y) = [div b + b.s - b.s + eps |s|^2 + eps div s] dtau + sqrt(2 eps) s.dW
          = [div b_F + eps |s|^2] dtau + sqrt(2 eps) s.dW,

so log rho_1(x) = log rho_0(Y(t=0)) - int_0^1 (div b_F + eps |s|^2) dt - sqrt(2 eps) int s.dW.
The Ito integral has mean zero, so ``log rho_0(Y_0) - int (div b_F + eps|s|^2) dt`` is an
unbiased estimate of log rho_1(x) when b, s are exact (the paper's estimator; with learned
fields, an estimate of the model's likelihood, never exact). Keeping the Ito term
(``control_variate=True``, left-point Ito sums, mean zero also after discretisation) leaves
the mean unchanged and, with the exact score, cancels the noise pathwise. The estimate is
labelled kind "estimate" and returned with its per-example standard error over paths.

Why not torchsde (0.2.6): its solvers want flat (batch, d) states (ours include images
(n, C, H, W)); the likelihood needs the divergence of b_F and the Ito term at each step of
the same path, i.e. our own step anyway; Euler-Maruyama and Heun for additive noise are a
few lines; and the noise comes from the run's `torch.Generator` (reproducible, float64
capable) with no new dependency.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from bench.api.errors import ConfigError
from bench.science.divergence import divergence_exact, divergence_hutchinson

__all__ = ["EPS_SCHEDULES", "SDE_METHODS", "SDEConfig", "SDELikelihood", "sde_integrate",
           "sde_log_likelihood"]

Field = Callable[[Tensor, Tensor], Tensor]

#: eps(t) = eps * schedule(t)
EPS_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda t: 1.0,
    "t1mt": lambda t: 4.0 * t * (1.0 - t),  # vanishes at both ends, 1 at t = 1/2
}
SDE_METHODS = ("euler", "heun")


@dataclass(frozen=True)
class SDEConfig:
    """Fixed-step SDE settings: ``steps`` on [0, 1], ``method`` "euler" (Euler-Maruyama) or
    "heun" (stochastic Heun for additive noise), eps(t) = ``eps`` * schedule(t)."""

    steps: int = 200
    method: str = "heun"
    eps: float = 1.0
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"sde_steps must be >= 1, got {self.steps}")
        if self.method not in SDE_METHODS:
            raise ConfigError(f"sde_method must be one of {SDE_METHODS}, got {self.method!r}")
        if not self.eps >= 0:
            raise ConfigError(f"eps must be >= 0, got {self.eps}")
        if self.schedule not in EPS_SCHEDULES:
            raise ConfigError(f"eps_schedule must be one of {tuple(EPS_SCHEDULES)}, "
                              f"got {self.schedule!r}")

    def eps_at(self, t: float) -> float:
        return self.eps * EPS_SCHEDULES[self.schedule](t)

    def label(self) -> str:
        return (f"sde {self.method} steps={self.steps} eps={self.eps:g}"
                f" schedule={self.schedule}")


def _times(t0: float, t1: float, steps: int) -> list[float]:
    return [t0 + (t1 - t0) * k / steps for k in range(steps + 1)]


def _tvec(t: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def sde_integrate(b: Field, s: Field | None, x: Tensor, t0: float, t1: float, cfg: SDEConfig,
                  generator: torch.Generator | None = None) -> Tensor:
    """The forward SDE (t1 > t0, drift b + eps s) or the backward one (t1 < t0, drift
    b - eps s) from x (n, *shape) at t0; returns X(t1). Without gradients.

    Args:
        b, s: fields f(t, x) with t (n,); ``s`` may be None when eps = 0.
        generator: CPU generator of the Brownian increments.
    """
    if cfg.eps > 0 and s is None:
        raise ConfigError("an SDE with eps > 0 needs a score")
    sign = 1.0 if t1 > t0 else -1.0

    def drift(t: float, y: Tensor) -> Tensor:
        e = cfg.eps_at(t)
        out = b(_tvec(t, y), y)
        return out + sign * e * s(_tvec(t, y), y) if e > 0 else out

    times = _times(t0, t1, cfg.steps)
    with torch.no_grad():
        for ta, tb in zip(times[:-1], times[1:], strict=True):
            dt = tb - ta
            heun = cfg.method == "heun"
            var = (cfg.eps_at(ta) + cfg.eps_at(tb)) if heun else 2.0 * cfg.eps_at(ta)
            noise = 0.0
            if var > 0:
                xi = torch.randn(x.shape, generator=generator, dtype=x.dtype)
                noise = math.sqrt(var * abs(dt)) * xi.to(x.device)
            f0 = drift(ta, x)
            pred = x + f0 * dt + noise
            x = x + 0.5 * (f0 + drift(tb, pred)) * dt + noise if heun else pred
    return x


@dataclass
class SDELikelihood:
    """Estimates of log rho_1(x) (n,) averaged over paths, their standard errors (n,)
    (NaN with one path), and the field evaluations per path."""

    values: Tensor
    se: Tensor
    nfe: int


def sde_log_likelihood(
    b: Field, s: Field, x: Tensor, base_log_prob: Callable[[Tensor], Tensor], cfg: SDEConfig,
    generator: torch.Generator | None = None, n_paths: int = 1, divergence: str = "exact",
    control_variate: bool = True, t: float = 1.0,
) -> SDELikelihood:
    """The backward-SDE estimate of log rho_t(x) (see the module docstring), Euler-Maruyama
    with ``cfg.steps`` steps from t to 0 whatever ``cfg.method``.

    Args:
        b, s: the drift and score fields f(t, x), t (n,).
        x: (n, *shape) points at time t. base_log_prob: log rho_0, (n, *shape) -> (n,).
        n_paths: independent backward paths per point (their spread gives ``se``).
        divergence: "exact" or "hutchinson" (one fresh Rademacher probe per step).
        control_variate: subtract the mean-zero Ito sum sqrt(2 eps) sum s.dW.
    """
    n = x.shape[0]
    y = x.repeat(n_paths, *([1] * (x.dim() - 1)))
    acc = y.new_zeros(y.shape[0])
    times = _times(t, 0.0, cfg.steps)
    for ta, tb in zip(times[:-1], times[1:], strict=True):
        h, e = ta - tb, cfg.eps_at(ta)
        tv = _tvec(ta, y)
        with torch.enable_grad():
            yg = y.detach().requires_grad_(True)
            bt, st = b(tv, yg), s(tv, yg)
            bf = bt + e * st
            if divergence == "exact":
                div = divergence_exact(bf, yg)
            else:
                probe = torch.randint(0, 2, (1, *y.shape), generator=generator)
                probe = (2.0 * probe - 1.0).to(dtype=y.dtype, device=y.device)
                div = divergence_hutchinson(bf, yg, probe)
        bt, st = bt.detach(), st.detach()
        sq = (st.reshape(st.shape[0], -1) ** 2).sum(1)
        acc = acc + (div.detach() + e * sq) * h
        y = y - (bt - e * st) * h
        if e > 0:
            dw = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
            dw = math.sqrt(h) * dw
            if control_variate:
                acc = acc + math.sqrt(2 * e) * (st * dw).reshape(y.shape[0], -1).sum(1)
            y = y + math.sqrt(2 * e) * dw
    est = (base_log_prob(y.detach()) - acc).reshape(n_paths, n)
    se = est.std(0) / math.sqrt(n_paths) if n_paths > 1 else torch.full_like(est[0], math.nan)
    return SDELikelihood(values=est.mean(0), se=se, nfe=cfg.steps)
