"""2-D toy densities of the FFJORD / InterFlow papers, and a correlated Gaussian in d dims.

Generated on the fly from a fixed data seed, so every method and seed sees the same train,
validation and test rows. Datasets with a closed-form density (checkerboard, 8 Gaussians,
correlated Gaussian) expose the exact ``log_prob``, and the harness records the true test
NLL beside each model's.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.api import Dataset, Splits, at_least

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = ["Checkerboard", "EightGaussians", "Spirals", "Moons", "Rings", "CorrelatedGaussian"]


@dataclass
class ToyParams:
    n_train: int = field(default=100_000, metadata=at_least(1))
    n_val: int = field(default=5_000, metadata=at_least(1))
    n_test: int = field(default=10_000, metadata=at_least(1))
    data_seed: int = 1234


class Toy(Dataset):
    """Base of the synthetic datasets: subclasses implement `_sample(n, generator)`."""

    kind = "toy2d"
    Params = ToyParams
    synthetic = True
    test_params = {"n_train": 2000, "n_val": 300, "n_test": 300}
    event_shape: tuple[int, ...] = (2,)

    @abstractmethod
    def _sample(self, n: int, g: torch.Generator) -> Tensor:
        """n float64 draws (n, *event_shape) using generator g."""

    def load(self) -> Splits:
        import torch

        p = self.params
        g = torch.Generator().manual_seed(p.data_seed)
        train, val, test = (self._sample(n, g).float() for n in (p.n_train, p.n_val, p.n_test))
        prov = (f"synthetic {self.name}: {p.n_train}/{p.n_val}/{p.n_test} rows drawn with "
                f"data_seed={p.data_seed}")
        names = {k: f"synthetic {k} ({n} rows)" for k, n in
                 (("train", p.n_train), ("val", p.n_val), ("test", p.n_test))}
        return Splits(train, val, test, self.event_shape, prov, names)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        import torch

        g = generator if generator is not None else torch.Generator().manual_seed(0)
        return self._sample(n, g).float()


def _rand(n: int, g: torch.Generator, *shape: int) -> Tensor:
    import torch

    return torch.rand(n, *shape, generator=g, dtype=torch.float64)


def _randn(n: int, g: torch.Generator, *shape: int) -> Tensor:
    import torch

    return torch.randn(n, *shape, generator=g, dtype=torch.float64)


class Checkerboard(Toy):
    """Checkerboard on [-4, 4]^2: uniform on 8 squares of side 2 (density 1/32)."""

    name = "checkerboard"
    has_log_prob = True

    def _sample(self, n, g):
        import torch

        x1 = _rand(n, g) * 4 - 2
        x2 = _rand(n, g) - torch.randint(0, 2, (n,), generator=g).double() * 2
        x2 = x2 + torch.floor(x1) % 2
        return torch.stack([x1, x2], 1) * 2

    def log_prob(self, x: Tensor) -> Tensor:
        import torch

        u, w = x[:, 0] / 2, x[:, 1] / 2
        k = torch.floor(u) % 2
        r = w - k
        inside = (u >= -2) & (u < 2) & (((r >= 0) & (r < 1)) | ((r >= -2) & (r < -1)))
        lp = torch.full_like(u, -math.log(32.0))
        return torch.where(inside, lp, torch.full_like(u, -math.inf))


class EightGaussians(Toy):
    """Eight Gaussians on a circle of radius 4/sqrt(2), std 0.5/sqrt(2) (FFJORD's scaling)."""

    name = "8gaussians"
    has_log_prob = True
    _scale = 1.414

    def _centers(self, dtype: torch.dtype | None = None) -> Tensor:
        """The 8 centres (8, 2), float64 unless ``dtype`` says otherwise."""
        import torch

        dtype = torch.float64 if dtype is None else dtype
        s = 1.0 / math.sqrt(2)
        c = torch.tensor([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)],
                         dtype=dtype)
        return 4.0 * c / self._scale

    def _sample(self, n, g):
        import torch

        idx = torch.randint(0, 8, (n,), generator=g)
        return self._centers()[idx] + _randn(n, g, 2) * (0.5 / self._scale)

    def log_prob(self, x: Tensor) -> Tensor:
        import torch

        from bench.science.gaussian import gaussian_log_prob

        c = self._centers(x.dtype).to(x.device)
        var = torch.full((2,), (0.5 / self._scale) ** 2, dtype=x.dtype, device=x.device)
        comp = torch.stack([gaussian_log_prob(x, c[k], var) for k in range(8)], 1)
        return torch.logsumexp(comp, 1) - math.log(8.0)


class Spirals(Toy):
    """Two interleaved spirals with uniform and Gaussian noise (no closed-form density)."""

    name = "spirals"

    def _sample(self, n, g):
        import torch

        h = n // 2 + 1
        m = torch.sqrt(_rand(h, g)) * 540 * (2 * math.pi) / 360
        d1 = torch.stack([-torch.cos(m) * m + _rand(h, g) * 0.5,
                          torch.sin(m) * m + _rand(h, g) * 0.5], 1)
        x = torch.cat([d1, -d1])[torch.randperm(2 * h, generator=g)[:n]] / 3
        return x + _randn(n, g, 2) * 0.1


class Moons(Toy):
    """Two moons (scikit-learn's shape) with Gaussian noise 0.1, scaled to about [-3, 3]."""

    name = "moons"

    def _sample(self, n, g):
        import torch

        theta = _rand(n, g) * math.pi
        upper = torch.rand(n, generator=g) < 0.5
        x = torch.where(upper, torch.cos(theta), 1 - torch.cos(theta))
        y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
        pts = torch.stack([x, y], 1) + _randn(n, g, 2) * 0.1
        return (pts - torch.tensor([0.5, 0.25], dtype=pts.dtype)) * 2


class Rings(Toy):
    """Four concentric rings (radii 0.9 k, k = 1..4, equally likely, uniform angle), Gaussian
    noise 0.08.

    Density: a ring of radius R blurred by N(0, s^2 I) integrates over the angle to
    exp(-(rho^2 + R^2) / 2s^2) I0(rho R / s^2) / (2 pi s^2) at radius rho (I0 the modified
    Bessel function), so log p = log(1/4) + logsumexp_R [-log(2 pi s^2) - (rho - R)^2 / 2s^2
    + log i0e(rho R / s^2)], with the exponentially scaled i0e = exp(-z) I0(z) (no overflow).
    """

    name = "rings"
    has_log_prob = True
    _radii = (0.9, 1.8, 2.7, 3.6)
    _noise = 0.08

    def _sample(self, n, g):
        import torch

        ring = torch.randint(0, 4, (n,), generator=g).double() + 1
        theta = _rand(n, g) * 2 * math.pi
        pts = torch.stack([torch.cos(theta), torch.sin(theta)], 1) * ring[:, None]
        return pts * 0.9 + _randn(n, g, 2) * self._noise

    def log_prob(self, x: Tensor) -> Tensor:
        import torch

        s2 = self._noise ** 2
        rho = x.double().norm(dim=1, keepdim=True)
        radii = torch.tensor(self._radii, dtype=torch.float64, device=x.device)
        terms = (-(rho - radii) ** 2 / (2 * s2) + torch.log(torch.special.i0e(rho * radii / s2))
                 - math.log(2 * math.pi * s2))
        return (torch.logsumexp(terms, dim=1) - math.log(len(self._radii))).to(x.dtype)


@dataclass
class GaussianParams(ToyParams):
    dim: int = field(default=16, metadata=at_least(1))
    cov_seed: int = 0


class CorrelatedGaussian(Toy):
    """A correlated d-dimensional Gaussian N(mu, L L^T) with a fixed random mean and factor."""

    name = "gaussian"
    Params = GaussianParams
    has_log_prob = True
    test_params = {"n_train": 2000, "n_val": 300, "n_test": 300, "dim": 4}
    event_shape = None  # (dim,): known from the parameters (set on the instance)

    @classmethod
    def shape(cls, params) -> tuple[int, ...]:
        return (params.dim,)

    def __init__(self, params=None, data_dir=None) -> None:
        import torch

        super().__init__(params, data_dir)
        d = self.params.dim
        self.event_shape = (d,)
        g = torch.Generator().manual_seed(self.params.cov_seed)
        a = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
        self.scale_tril = torch.linalg.cholesky(a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64))
        self.mean = torch.randn(d, generator=g, dtype=torch.float64)

    def _sample(self, n, g):
        return self.mean + _randn(n, g, self.params.dim) @ self.scale_tril.T

    def log_prob(self, x: Tensor) -> Tensor:
        import torch

        dist = torch.distributions.MultivariateNormal(
            self.mean.to(x), scale_tril=self.scale_tril.to(x))
        return dist.log_prob(x)
