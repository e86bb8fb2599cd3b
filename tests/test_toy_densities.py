"""The closed-form densities of the 2-D toys: normalised, equal to a direct integration of
their generative process, and the density their samples come from."""

from __future__ import annotations

import math

import pytest
import torch

from bench.harness.planning.registry import Registry


def _toy(name: str):
    cls = Registry().get("dataset", name)
    return cls(cls.Params())


@pytest.mark.parametrize("name", ["8gaussians", "rings"])
def test_the_density_integrates_to_one(name):
    toy = _toy(name)
    # midpoint rule on [-6, 6]^2, step 0.01 (the narrowest feature has scale 0.08): for a
    # smooth density the error is far below 1e-6; the mass outside the box is < 1e-12
    h = 0.01
    axis = torch.arange(-6 + h / 2, 6, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    p = toy.log_prob(torch.stack([xx.ravel(), yy.ravel()], 1)).exp()
    assert float(p.sum() * h * h) == pytest.approx(1.0, abs=1e-6)


def test_rings_density_equals_the_angle_integral_of_its_process():
    toy = _toy("rings")
    pts = torch.tensor([[0.0, 0.0], [0.9, 0.0], [1.3, -0.4], [0.0, 2.71], [-2.5, -2.5],
                        [3.6, 0.05], [5.0, 0.0]], dtype=torch.float64)
    # the mixture over rings of the angle-averaged Gaussian, by the trapezoid rule in theta
    # (periodic and analytic: exponentially accurate; 4000 nodes give ~1e-15 relative)
    theta = torch.arange(4000, dtype=torch.float64) * (2 * math.pi / 4000)
    circle = torch.stack([theta.cos(), theta.sin()], 1)
    s2 = 0.08 ** 2
    dens = torch.zeros(len(pts), dtype=torch.float64)
    for r in (0.9, 1.8, 2.7, 3.6):
        d2 = ((pts[:, None, :] - r * circle[None]) ** 2).sum(-1)
        dens += 0.25 * (torch.exp(-d2 / (2 * s2)) / (2 * math.pi * s2)).mean(1)
    got = toy.log_prob(pts)
    finite = dens > 1e-300
    assert torch.allclose(got[finite], dens[finite].log(), rtol=0, atol=1e-9)


def test_rings_samples_come_from_its_density():
    toy = _toy("rings")
    x = toy._sample(20000, torch.Generator().manual_seed(0))
    lp = toy.log_prob(x)
    # E[log p(X)] under the model's own samples is minus its entropy; the same number by
    # the grid (the integral of -p log p), 5 standard errors of the sample mean
    h = 0.01
    axis = torch.arange(-6 + h / 2, 6, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    g = toy.log_prob(torch.stack([xx.ravel(), yy.ravel()], 1))
    neg_entropy = float((g.exp() * torch.nan_to_num(g, neginf=0.0)).sum() * h * h)
    assert abs(float(lp.mean()) - neg_entropy) < 5 * float(lp.std()) / math.sqrt(len(lp))
