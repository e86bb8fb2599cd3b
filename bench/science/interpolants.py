"""Deterministic interpolant paths x_t = a_t x_0 + b_t x_1: Albergo and Vanden-Eijnden
(ICLR 2023). The stochastic family (a latent gamma_t z on top of these paths, Albergo, Boffi
and Vanden-Eijnden 2023) lives in `bench.science.si_paths`.

t=0 is the base density, t=1 the data, so a_0 = b_1 = 1 and a_1 = b_0 = 0. A deterministic
path is an `Interpolant` that overrides the four hooks ``a, b, da, db`` (or a
`GeneralInterpolant` built from callables); the paths that need a latent (`VPTrigonometric`,
`EncoderDecoder`) are in `bench.science.si_paths`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from bench.api.errors import ConfigError

__all__ = [
    "PathSample", "Interpolant", "Trigonometric", "Linear", "Quadratic", "GeneralInterpolant",
    "INTERPOLANTS", "get_interpolant",
]


@dataclass
class PathSample:
    """A point on the path and its time derivative: x_t = I_t(x_0, x_1), dx_t = dI_t/dt."""

    t: Tensor
    x_t: Tensor
    dx_t: Tensor


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1)))


class Interpolant(ABC):
    """I_t(x_0, x_1) = a(t) x_0 + b(t) x_1. Subclasses override a, b, da, db."""

    name = "general"

    @abstractmethod
    def a(self, t: Tensor) -> Tensor:
        """Coefficient of x_0."""

    @abstractmethod
    def b(self, t: Tensor) -> Tensor:
        """Coefficient of x_1."""

    @abstractmethod
    def da(self, t: Tensor) -> Tensor:
        """d a / dt."""

    @abstractmethod
    def db(self, t: Tensor) -> Tensor:
        """d b / dt."""

    def sample(self, x_0: Tensor, x_1: Tensor, t: Tensor) -> PathSample:
        """Args: x_0, x_1 of shape (n, *shape); t of shape (n,)."""
        tb = _bcast(t, x_0)
        x_t = self.a(tb) * x_0 + self.b(tb) * x_1
        dx_t = self.da(tb) * x_0 + self.db(tb) * x_1
        return PathSample(t=t, x_t=x_t, dx_t=dx_t)


class Trigonometric(Interpolant):
    """a = cos(pi t / 2), b = sin(pi t / 2): the InterFlow paper's default."""

    name = "trig"

    def a(self, t):
        return torch.cos(0.5 * math.pi * t)

    def b(self, t):
        return torch.sin(0.5 * math.pi * t)

    def da(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def db(self, t):
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)


class Linear(Interpolant):
    """a = 1 - t, b = t (rectified flow / flow matching's straight path)."""

    name = "linear"

    def a(self, t):
        return 1.0 - t

    def b(self, t):
        return t

    def da(self, t):
        return -torch.ones_like(t)

    def db(self, t):
        return torch.ones_like(t)


class Quadratic(Interpolant):
    """a = 1 - t^2, b = 1 - (1 - t)^2: slow start near the base, slow arrival at the data."""

    name = "quadratic"

    def a(self, t):
        return 1.0 - t * t

    def b(self, t):
        return 1.0 - (1.0 - t) ** 2

    def da(self, t):
        return -2.0 * t

    def db(self, t):
        return 2.0 * (1.0 - t)


class GeneralInterpolant(Interpolant):
    """Any a_t x_0 + b_t x_1 from four callables of a tensor t."""

    def __init__(self, a: Callable, b: Callable, da: Callable, db: Callable, name="custom"):
        self._a, self._b, self._da, self._db, self.name = a, b, da, db, name

    def a(self, t):
        return self._a(t)

    def b(self, t):
        return self._b(t)

    def da(self, t):
        return self._da(t)

    def db(self, t):
        return self._db(t)


INTERPOLANTS: dict[str, type[Interpolant]] = {
    "trig": Trigonometric,
    "linear": Linear,
    "quadratic": Quadratic,
}


def get_interpolant(name: str) -> Interpolant:
    if name not in INTERPOLANTS:
        raise ConfigError(f"unknown interpolant {name!r}; valid: {', '.join(INTERPOLANTS)}")
    return INTERPOLANTS[name]()
