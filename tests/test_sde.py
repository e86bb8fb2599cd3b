"""The SDE engine against closed forms: eps = 0 is the ODE, the forward and backward SDEs
keep the interpolant's marginals, and the backward-SDE likelihood estimate agrees with the
exact ODE likelihood of a Gaussian problem within its standard error."""

from __future__ import annotations

import pytest
import torch

from bench.api import SolverConfig
from bench.api.errors import ConfigError
from bench.science.ode import integrate, log_likelihood
from bench.science.sde import SDEConfig, sde_integrate, sde_log_likelihood
from bench.science.si_objectives import GaussianMixturePath
from bench.science.si_paths import build_stochastic_interpolant

D = torch.float64


def _gauss(path="linear", gamma="sqrt"):
    it = build_stochastic_interpolant(path, gamma)
    m = torch.tensor([[1.0, -0.5]], dtype=D)
    s = torch.tensor([[0.6, 1.4]], dtype=D)
    return GaussianMixturePath(it, torch.ones(1, dtype=D), m, s)


@pytest.mark.parametrize("gamma", ["sqrt", "none"])
def test_eps_zero_is_the_ode(gamma):
    gm = _gauss(gamma=gamma)
    x0 = torch.randn(64, 2, dtype=D)
    ode = integrate(gm.velocity, x0, 0.0, 1.0, SolverConfig(rtol=1e-10, atol=1e-10)).x
    g = torch.Generator().manual_seed(0)
    heun = sde_integrate(gm.velocity, None, x0, 0.0, 1.0, SDEConfig(200, "heun", 0.0), g)
    assert float((heun - ode).abs().max()) < 1e-4
    errs = [float((sde_integrate(gm.velocity, None, x0, 0.0, 1.0,
                                 SDEConfig(k, "euler", 0.0), g) - ode).abs().max())
            for k in (50, 100)]
    assert 1.6 < errs[0] / errs[1] < 2.4  # Euler: first order


@pytest.mark.parametrize(("method", "schedule"), [("heun", "constant"), ("euler", "t1mt")])
def test_forward_and_backward_sde_keep_the_marginals(method, schedule):
    gm = _gauss()
    g = torch.Generator().manual_seed(1)
    cfg = SDEConfig(100, method, 1.0, schedule)
    x1 = sde_integrate(gm.velocity, gm.score, torch.randn(10_000, 2, generator=g, dtype=D),
                       0.0, 1.0, cfg, g)
    torch.testing.assert_close(x1.mean(0), gm.m[0], atol=0.05, rtol=0)
    torch.testing.assert_close(x1.std(0), gm.s[0], atol=0.05, rtol=0)
    x0 = sde_integrate(gm.velocity, gm.score, gm.sample(10_000, g), 1.0, 0.0, cfg, g)
    torch.testing.assert_close(x0.mean(0), torch.zeros(2, dtype=D), atol=0.05, rtol=0)
    torch.testing.assert_close(x0.std(0), torch.ones(2, dtype=D), atol=0.05, rtol=0)
    with pytest.raises(ConfigError, match="score"):
        sde_integrate(gm.velocity, None, x0, 0.0, 1.0, cfg, g)


def test_sde_likelihood_agrees_with_the_exact_ode_likelihood():
    """The paper's estimator (no control variate) within 4 standard errors of the exact
    ODE likelihood; the Ito control variate keeps the mean and cuts the error > 5x."""
    gm = _gauss()
    g = torch.Generator().manual_seed(2)
    x = gm.sample(4, g)
    base = lambda y: gm.log_prob(0.0, y)  # noqa: E731
    exact = log_likelihood(gm.velocity, x, base, SolverConfig(rtol=1e-9, atol=1e-9)).values
    torch.testing.assert_close(exact, gm.log_prob(1.0, x))  # the ODE engine is exact here
    cfg = SDEConfig(steps=100, eps=1.0)
    plain = sde_log_likelihood(gm.velocity, gm.score, x, base, cfg, g, n_paths=400,
                               control_variate=False)
    z = (plain.values - exact) / plain.se
    assert (z.abs() < 4).all(), z
    assert (plain.se > 0.02).all()  # a real spread, so the check above has teeth
    cv = sde_log_likelihood(gm.velocity, gm.score, x, base, cfg, g, n_paths=100)
    assert (cv.se * 100**0.5 * 5 < plain.se * 400**0.5).all()  # per-path spread
    assert ((cv.values - exact).abs() < 4 * cv.se + 0.05).all()  # + O(h) bias
    # a wrong score (sign flipped) is caught
    bad = sde_log_likelihood(gm.velocity, lambda t, y: -gm.score(t, y), x, base, cfg, g,
                             n_paths=100)
    assert ((bad.values - exact).abs() > 1.0).any()


def test_hutchinson_divergence_gives_the_same_mean():
    gm = _gauss("trig", "t1mt")
    g = torch.Generator().manual_seed(3)
    x = gm.sample(2, g)
    base = lambda y: gm.log_prob(0.0, y)  # noqa: E731
    cfg = SDEConfig(steps=50, eps=0.5)
    ex = sde_log_likelihood(gm.velocity, gm.score, x, base, cfg, g, n_paths=300)
    hu = sde_log_likelihood(gm.velocity, gm.score, x, base, cfg, g, n_paths=300,
                            divergence="hutchinson")
    assert ((ex.values - hu.values).abs() < 4 * (ex.se**2 + hu.se**2).sqrt() + 0.01).all()


@pytest.mark.parametrize("bad", [dict(steps=0), dict(method="rk4"), dict(eps=-1.0),
                                 dict(schedule="cosine")])
def test_bad_settings_raise(bad):
    with pytest.raises(ConfigError):
        SDEConfig(**bad)
