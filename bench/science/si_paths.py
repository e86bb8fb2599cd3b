"""Stochastic interpolants (Albergo, Boffi and Vanden-Eijnden 2023): a deterministic path of
`bench.science.interpolants` plus a latent z ~ N(0, I) scaled by a `Gamma` (``g, dg`` and the
regular product ``g_dg`` = gamma gamma-dot). t=0 base, t=1 data.

- `StochasticInterpolant(path, gamma)`: x_t = a x_0 + b x_1 + gamma z (two-sided); with the
  variance-preserving `VPTrigonometric` path a^2 + b^2 + gamma^2 = 1 when x_0, x_1 are
  standardised; `EncoderDecoder` has a = b = 0 at t = 1/2 (x_{1/2} = z, needs gamma > 0);
- `OneSided(path)`: gamma = 0 and x_0 ~ N(0, I) plays the latent (noise x_0, scale a_t);
- `Mirror(gamma)`: x_0 = x_1 (the data at both ends), x_t = x_1 + gamma z: only a score.

Every variant answers the same calls (`coefficients`, `sample`, ``noise``, ``noise_scale``);
the denoiser target is ``noise(x_0, z)`` and s = -E[noise | x_t] / noise_scale(t).

End points. gamma = sqrt(a t (1 - t)) has gamma-dot = a (1 - 2t) / (2 gamma), infinite at
t = 0 and 1, and every s = -eta / gamma is singular there. So training times are drawn, and
the learned fields evaluated, on the closed interval ``[t_min, 1 - t_min]``
(`StochasticInterpolant.clamp_time`) whenever a latent or a score is involved; the drifts
use ``g_dg`` = a (1 - 2t) / 2, regular; antithetic pairs (+z, -z) cancel the O(gamma-dot)
part of the loss's variance (gamma-dot z . (b(x+) - b(x-)) ~ 2 gamma gamma-dot z.grad b z).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from bench.api.errors import ConfigError
from bench.science.interpolants import (
    INTERPOLANTS,
    GeneralInterpolant,
    Interpolant,
    _bcast,
)

__all__ = [
    "VPTrigonometric", "EncoderDecoder", "Gamma", "NoGamma", "SqrtGamma", "T1mTGamma",
    "Sin2Gamma", "GAMMAS", "get_gamma",
    "StochasticSample", "StochasticInterpolant", "OneSided", "Mirror", "PATHS",
    "build_stochastic_interpolant",
]


# -- the latent's scale gamma(t), gamma(0) = gamma(1) = 0 ----------------------------------
class Gamma(ABC):
    """gamma(t) >= 0 with gamma(0) = gamma(1) = 0: ``g``, ``dg`` and ``g_dg`` = g dg/dt."""

    name = "gamma"

    @abstractmethod
    def g(self, t: Tensor) -> Tensor:
        """gamma(t)."""

    @abstractmethod
    def dg(self, t: Tensor) -> Tensor:
        """d gamma / dt."""

    def g_dg(self, t: Tensor) -> Tensor:
        """gamma(t) gamma'(t) = (1/2) d gamma^2 / dt."""
        return self.g(t) * self.dg(t)


class NoGamma(Gamma):
    """gamma = 0: the deterministic interpolant (ICLR 2023 InterFlow)."""

    name = "none"

    def g(self, t):
        return torch.zeros_like(t)

    def dg(self, t):
        return torch.zeros_like(t)

    def g_dg(self, t):
        return torch.zeros_like(t)


class SqrtGamma(Gamma):
    """gamma = sqrt(a t (1 - t)) (a = 2: the paper's); gamma' = a (1 - 2t) / (2 gamma) is
    infinite at t = 0, 1, gamma gamma' = a (1 - 2t) / 2 is not."""

    name = "sqrt"

    def __init__(self, a: float = 2.0) -> None:
        if not a > 0:
            raise ConfigError(f"gamma_a must be > 0, got {a}")
        self.a_ = float(a)

    def g(self, t):  # clamped: adaptive solvers may step a little past t = 1
        return torch.sqrt((self.a_ * t * (1.0 - t)).clamp_min(0.0))

    def dg(self, t):
        return self.g_dg(t) / self.g(t)

    def g_dg(self, t):
        return 0.5 * self.a_ * (1.0 - 2.0 * t)


class T1mTGamma(Gamma):
    """gamma = t (1 - t)."""

    name = "t1mt"

    def g(self, t):
        return t * (1.0 - t)

    def dg(self, t):
        return 1.0 - 2.0 * t


class Sin2Gamma(Gamma):
    """gamma = sin^2(pi t)."""

    name = "sin2"

    def g(self, t):
        return torch.sin(math.pi * t) ** 2

    def dg(self, t):
        return math.pi * torch.sin(2.0 * math.pi * t)


GAMMAS: dict[str, Callable[[float], Gamma]] = {
    "none": lambda a: NoGamma(),
    "sqrt": SqrtGamma,
    "t1mt": lambda a: T1mTGamma(),
    "sin2": lambda a: Sin2Gamma(),
}


def get_gamma(name: str, a: float = 2.0) -> Gamma:
    if name not in GAMMAS:
        raise ConfigError(f"unknown gamma {name!r}; valid: {', '.join(GAMMAS)}")
    return GAMMAS[name](a)


# -- the paths that need a latent ---------------------------------------------------------
class VPTrigonometric(Interpolant):
    """a = sqrt(1 - gamma^2) cos(pi t / 2), b = sqrt(1 - gamma^2) sin(pi t / 2): with the
    latent, a^2 + b^2 + gamma^2 = 1 (variance preserving). Needs gamma < 1 on [0, 1]."""

    name = "vp"

    def __init__(self, gamma: Gamma) -> None:
        half = torch.tensor(0.5, dtype=torch.float64)
        if float(gamma.g(half)) >= 1.0:  # every gamma here peaks at t = 1/2
            raise ConfigError(f"the vp path needs gamma < 1; gamma {gamma.name} reaches "
                              f"{float(gamma.g(half)):g} at t=1/2")
        self.gamma = gamma

    def _r(self, t):
        return torch.sqrt(1.0 - self.gamma.g(t) ** 2)

    def a(self, t):
        return self._r(t) * torch.cos(0.5 * math.pi * t)

    def b(self, t):
        return self._r(t) * torch.sin(0.5 * math.pi * t)

    def da(self, t):  # d sqrt(1 - g^2)/dt = -g g' / sqrt(1 - g^2), regular
        r = self._r(t)
        return (-self.gamma.g_dg(t) / r * torch.cos(0.5 * math.pi * t)
                - 0.5 * math.pi * r * torch.sin(0.5 * math.pi * t))

    def db(self, t):
        r = self._r(t)
        return (-self.gamma.g_dg(t) / r * torch.sin(0.5 * math.pi * t)
                + 0.5 * math.pi * r * torch.cos(0.5 * math.pi * t))


class EncoderDecoder(Interpolant):
    """a = cos^2(pi t) on [0, 1/2), b = cos^2(pi t) on [1/2, 1], else 0 (C^1): x_0 is
    encoded into the latent at t = 1/2 (a = b = 0) and decoded into x_1; needs gamma > 0
    (the paper pairs it with gamma = sin^2(pi t))."""

    name = "encdec"
    needs_latent = True

    def a(self, t):
        return torch.where(t < 0.5, torch.cos(math.pi * t) ** 2, torch.zeros_like(t))

    def b(self, t):
        return torch.where(t >= 0.5, torch.cos(math.pi * t) ** 2, torch.zeros_like(t))

    def da(self, t):
        return torch.where(t < 0.5, -math.pi * torch.sin(2 * math.pi * t), torch.zeros_like(t))

    def db(self, t):
        return torch.where(t >= 0.5, -math.pi * torch.sin(2 * math.pi * t),
                           torch.zeros_like(t))


# -- the stochastic interpolant -----------------------------------------------------------
@dataclass
class StochasticSample:
    """x_t = I_t + gamma z and what the objectives regress on, all (n, *shape) but t (n,).

    Attributes:
        dI: dI_t/dt (target of v); dx_t: dI_t/dt + gamma'(t) z (target of b);
        noise: the Gaussian part whose conditional mean is the denoiser eta;
        scale: (n, 1, ...) its coefficient in x_t, so s(x_t) = -E[noise | x_t] / scale.
    """

    t: Tensor
    x_t: Tensor
    dI: Tensor
    dx_t: Tensor
    noise: Tensor
    scale: Tensor


class StochasticInterpolant:
    """x_t = a(t) x_0 + b(t) x_1 + gamma(t) z, z ~ N(0, I) independent of (x_0, x_1).

    Args:
        path: the deterministic part (a, b); gamma: the latent's scale;
        t_min: learned fields are trained and evaluated on [t_min, 1 - t_min] (0: [0, 1]).
    """

    def __init__(self, path: Interpolant, gamma: Gamma, t_min: float = 0.0) -> None:
        if getattr(path, "needs_latent", False) and isinstance(gamma, NoGamma):
            raise ConfigError(f"the {path.name} path needs a latent: set gamma != none")
        if not 0.0 <= t_min < 0.5:
            raise ConfigError(f"t_min must be in [0, 0.5), got {t_min}")
        self.path, self.gamma, self.t_min = path, gamma, float(t_min)
        self.name = f"{path.name}+gamma={gamma.name}"

    @property
    def has_score(self) -> bool:
        """Whether a score follows from a denoiser (a Gaussian part with nonzero scale)."""
        return not isinstance(self.gamma, NoGamma)

    def coefficients(self, t: Tensor) -> dict[str, Tensor]:
        """a, b, g, da, db, dg, g_dg at t (any shape)."""
        p, g = self.path, self.gamma
        return {"a": p.a(t), "b": p.b(t), "g": g.g(t), "da": p.da(t), "db": p.db(t),
                "dg": g.dg(t), "g_dg": g.g_dg(t)}

    def noise(self, x_0: Tensor, z: Tensor) -> Tensor:
        """The Gaussian part of x_t that the denoiser predicts (here z)."""
        return z

    def noise_scale(self, t: Tensor) -> Tensor:
        """Its coefficient in x_t (here gamma(t))."""
        return self.gamma.g(t)

    def noise_scale_rate(self, t: Tensor) -> Tensor:
        """gamma gamma' in b = v - gamma gamma' s, v = E[dI/dt | x_t] (0 when one-sided:
        there dI/dt carries the latent x_0 and b = v)."""
        return self.gamma.g_dg(t)

    def antithetic(self, x_0: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """The antithetic partner of a draw (x_0, z): the Gaussian part flipped (here z)."""
        return x_0, -z

    def clamp_time(self, t: Tensor) -> Tensor:
        """t on [t_min, 1 - t_min] (unchanged when t_min = 0)."""
        return t.clamp(self.t_min, 1.0 - self.t_min) if self.t_min > 0 else t

    def sample(self, x_0: Tensor, x_1: Tensor, t: Tensor, z: Tensor) -> StochasticSample:
        """Args: x_0, x_1, z of shape (n, *shape); t of shape (n,)."""
        tb = _bcast(t, x_0)
        c = self.coefficients(tb)
        x_t = c["a"] * x_0 + c["b"] * x_1 + c["g"] * z
        d_i = c["da"] * x_0 + c["db"] * x_1
        return StochasticSample(t=t, x_t=x_t, dI=d_i, dx_t=d_i + c["dg"] * z,
                                noise=self.noise(x_0, z), scale=self.noise_scale(tb))


class OneSided(StochasticInterpolant):
    """x_t = a(t) x_0 + b(t) x_1 with x_0 ~ N(0, I) the latent (no separate z): the noise
    is x_0 with scale a(t), so s = -E[x_0 | x_t] / a(t)."""

    def __init__(self, path: Interpolant, t_min: float = 0.0) -> None:
        super().__init__(path, NoGamma(), t_min)
        self.name = f"{path.name}+one-sided"

    @property
    def has_score(self) -> bool:
        return True

    def noise(self, x_0, z):
        return x_0

    def noise_scale(self, t):
        return self.path.a(t)

    def antithetic(self, x_0, z):
        """z does not enter x_t: the Gaussian part is x_0 ~ N(0, I), paired with -x_0."""
        return -x_0, z


class Mirror(StochasticInterpolant):
    """x_0 = x_1 (the data at both ends): x_t = x_1 + gamma(t) z; b = -gamma gamma' s, so
    only the score (or denoiser) is learned. ``x_0`` is ignored by `sample`."""

    def __init__(self, gamma: Gamma, t_min: float = 0.0) -> None:
        if isinstance(gamma, NoGamma):
            raise ConfigError("the mirror interpolant needs gamma != none")
        path = GeneralInterpolant(torch.zeros_like, torch.ones_like, torch.zeros_like,
                                  torch.zeros_like, name="mirror")
        super().__init__(path, gamma, t_min)

    def sample(self, x_0, x_1, t, z):
        return super().sample(x_1, x_1, t, z)


#: path names of `build_stochastic_interpolant` (besides those of INTERPOLANTS)
PATHS = (*INTERPOLANTS, "vp", "encdec", "mirror")


def build_stochastic_interpolant(path: str, gamma: str = "none", gamma_a: float = 2.0,
                                 t_min: float = 0.0, one_sided: bool = False
                                 ) -> StochasticInterpolant:
    """The interpolant of a path name and a gamma name (``one_sided``: gamma must be none
    and x_0 ~ N(0, I) is the latent)."""
    g = get_gamma(gamma, gamma_a)
    builders: dict[str, Callable[[], StochasticInterpolant]] = {
        "vp": lambda: StochasticInterpolant(VPTrigonometric(g), g, t_min),
        "encdec": lambda: StochasticInterpolant(EncoderDecoder(), g, t_min),
        "mirror": lambda: Mirror(g, t_min),
        **{k: (lambda k=k: StochasticInterpolant(INTERPOLANTS[k](), g, t_min))
           for k in INTERPOLANTS},
    }
    if path not in builders:
        raise ConfigError(f"unknown interpolant {path!r}; valid: {', '.join(builders)}")
    it = builders[path]()
    if one_sided:
        if it.has_score or isinstance(it, Mirror):
            raise ConfigError("a one-sided interpolant has no separate latent: gamma=none")
        it = OneSided(it.path, t_min)
    return it
