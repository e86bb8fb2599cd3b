"""Antithetic sampling pairs a draw with the one whose Gaussian part is flipped: -z with a
latent, -x_0 when the interpolant is one-sided (z does not enter x_t there, so flipping it
would change nothing and only double the cost)."""

from __future__ import annotations

import pytest
import torch

from bench.api import ConfigError, SolverConfig
from bench.harness import make_context
from bench.harness.planning.selection import build_params
from bench.science.si_objectives import TARGETS, GaussianMixturePath, interpolant_losses
from bench.science.si_paths import build_stochastic_interpolant

D = torch.float64
CASES = [("linear", "none", True), ("trig", "none", True), ("linear", "sqrt", False),
         ("trig", "t1mt", False)]


def _gaussian(it) -> GaussianMixturePath:
    """One Gaussian component, anisotropic and off-centre: every field in closed form."""
    return GaussianMixturePath(it, torch.ones(1, dtype=D), torch.tensor([[1.0, -2.0]], dtype=D),
                               torch.tensor([[0.5, 2.0]], dtype=D))


def _draws(n: int, gm: GaussianMixturePath, seed: int):
    g = torch.Generator().manual_seed(seed)
    x_0, x_1 = torch.randn(n, 2, generator=g, dtype=D), gm.sample(n, g)
    z, t = torch.randn(n, 2, generator=g, dtype=D), 1e-2 + 0.98 * torch.rand(n, generator=g,
                                                                              dtype=D)
    return x_0, x_1, z, t


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_the_partner_flips_the_part_that_enters_x_t(case):
    """The antithetic loss is the mean of the losses at the draw and at its partner, and the
    partner's x_t differs from the draw's (the bug this guards: flipping z on a one-sided
    interpolant left x_t, and so the loss, unchanged)."""
    it = build_stochastic_interpolant(case[0], case[1], t_min=1e-2, one_sided=case[2])
    gm = _gaussian(it)
    x_0, x_1, z, t = _draws(4096, gm, seed=1)
    fields = {"b": gm.velocity, "s": gm.score}
    x_0m, z_m = it.antithetic(x_0, z)
    assert not torch.equal(it.sample(x_0, x_1, t, z).x_t, it.sample(x_0m, x_1, t, z_m).x_t)
    if case[2]:
        assert torch.equal(x_0m, -x_0)
    else:
        assert torch.equal(z_m, -z) and torch.equal(x_0m, x_0)
    anti = interpolant_losses(fields, it, x_0, x_1, t, z, antithetic=True)
    plain = interpolant_losses(fields, it, x_0, x_1, t, z)
    partner = interpolant_losses(fields, it, x_0m, x_1, t, z_m)
    for k in fields:
        # the same float64 sums in another order: a few ulps of the loss's magnitude
        torch.testing.assert_close(anti[k], (plain[k] + partner[k]) / 2, rtol=1e-12, atol=0)
        assert abs(float(anti[k] - plain[k])) > 1e-6 * abs(float(plain[k]))


def _score_row_loss(it, gm, x_0, x_1, t, z):
    """Per row: |s|^2 - 2 target . s at the exact score."""
    p = it.sample(x_0, x_1, t, z)
    f = gm.score(it.clamp_time(t), p.x_t)
    return (f * f).sum(1) - 2 * (TARGETS["s"](p) * f).sum(1)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_antithetic_score_loss_has_lower_variance_at_equal_cost(case):
    """The score's target -noise / scale is odd in the Gaussian part and singular where the
    scale vanishes; the pair cancels it. Per network evaluation, the variance of a pair's
    mean, Var((l + l') / 2), against the variance of two independent rows, Var(l) / 2
    (measured: ratio 0.09 linear, 0.10 trig one-sided). The ratio is estimated on 40
    independent groups of 10,000 rows; it must lie below 1 by at least 5 standard errors
    of the group mean."""
    it = build_stochastic_interpolant(case[0], case[1], t_min=1e-2, one_sided=case[2])
    gm = _gaussian(it)
    ratios = []
    for group in range(40):
        x_0, x_1, z, t = _draws(10_000, gm, seed=100 + group)
        l_plain = _score_row_loss(it, gm, x_0, x_1, t, z)
        x_0m, z_m = it.antithetic(x_0, z)
        l_pair = (l_plain + _score_row_loss(it, gm, x_0m, x_1, t, z_m)) / 2
        ratios.append(float(l_pair.var() / (l_plain.var() / 2)))
    r = torch.tensor(ratios, dtype=D)
    mean, se = float(r.mean()), float(r.std() / len(ratios) ** 0.5)
    assert mean + 5 * se < 1.0, (mean, se)


def _interflow(registry, splits, **over):
    cls = registry.get("method", "interflow")
    params = build_params(cls.Params, {**cls.test_params, **over}, "interflow")
    return cls(params, splits, make_context(seed=0, solver=SolverConfig(rtol=1e-4, atol=1e-4)))


def test_deterministic_interflow_pairs_x0_with_minus_x0(registry, toy_splits):
    """``interflow[antithetic=true]`` (gamma=none, the ICLR 2023 loss): the loss is the mean
    of the plain loss at x_0 and at -x_0 for the same (x_1, t)."""
    anti = _interflow(registry, toy_splits, antithetic=True)
    plain = _interflow(registry, toy_splits)
    plain.v.load_state_dict(anti.v.state_dict())
    g = torch.Generator().manual_seed(7)
    batch = toy_splits.train[:64]
    x_0, t = torch.randn(64, 2, generator=g), torch.rand(64, generator=g)
    for m in (anti, plain):
        m.sample_time = lambda n, t=t: t[:n]
    anti.base_sample = lambda n: x_0[:n]
    got = anti.loss(batch)
    plain.base_sample = lambda n: x_0[:n]
    at_x0 = plain.loss(batch)
    plain.base_sample = lambda n: -x_0[:n]
    at_minus = plain.loss(batch)
    # float32 means over 64 and 128 rows of the same terms: rounding of ~1e-6 relative
    torch.testing.assert_close(got, (at_x0 + at_minus) / 2, rtol=1e-5, atol=1e-6)
    assert abs(float((at_x0 - at_minus).detach())) > 1e-3  # the partner is another draw


def test_antithetic_with_a_non_gaussian_base_is_refused(registry):
    cls = registry.get("method", "interflow")
    with pytest.raises((ConfigError, ValueError), match="symmetric N\\(0, I\\) base"):
        build_params(cls.Params, {"antithetic": True, "base": "8gaussians"}, "interflow")
