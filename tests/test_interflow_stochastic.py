"""InterFlow with stochastic interpolants: the defaults are the ICLR 2023 method bit for bit,
each objective trains through the plug-in, the SDE sampler and the SDE likelihood estimate
are wired (labelled "estimate"), and impossible settings are refused in the plan."""

from __future__ import annotations

import pytest
import torch

from bench.api import SolverConfig, Splits
from bench.harness import make_context
from bench.harness.planning.selection import build_params
from bench.science.interpolants import get_interpolant


def _make(registry, splits, **over):
    cls = registry.get("method", "interflow")
    params = build_params(cls.Params, {**cls.test_params, **over}, "interflow")
    return cls(params, splits, make_context(solver=SolverConfig(rtol=1e-4, atol=1e-4)))


def test_defaults_are_the_deterministic_interflow_bit_for_bit(registry, toy_splits):
    m = _make(registry, toy_splits)
    assert m.stochastic_interpolant is None and set(m.modules()) == {"v"}
    assert m.velocity_field() is m.v
    batch = toy_splits.train[:64]
    m.gen.manual_seed(7)
    got = m.loss(batch, 0)
    g = torch.Generator().manual_seed(7)  # the pre-issue-12 loss, written out
    x_0, t = torch.randn(64, 2, generator=g), torch.rand(64, generator=g)
    path = get_interpolant("trig").sample(x_0, batch, t)
    v = m.v(path.t, path.x_t)
    want = ((v * v).sum(1) - 2 * (path.dx_t * v).sum(1)).mean()
    assert torch.equal(got, want)
    assert set(m.samplers()) == {"ode"} and m.extra_likelihoods(batch) == {}


@pytest.mark.parametrize("over", [
    dict(gamma="sqrt", objective="velocity_score", antithetic=True),
    dict(gamma="t1mt", objective="velocity_denoiser", eps_schedule="t1mt"),
    dict(gamma="sin2", objective="split", interpolant="encdec", sde_method="euler"),
    dict(gamma="none", objective="velocity_denoiser"),  # one-sided
    dict(gamma="sqrt", interpolant="vp", sampler="sde", eps=0.5),  # auto: denoiser
])
def test_objectives_train_sample_and_score(registry, toy_splits, over):
    m = _make(registry, toy_splits, sde_steps=10, **over)
    assert set(m.modules()) == {"v", "s"}
    total, metrics = m.loss(toy_splits.train[:32], 0)
    assert torch.isfinite(total) and metrics and all(k.startswith("loss_") for k in metrics)
    total.backward()
    assert all(p.grad is not None for mod in m.modules().values() for p in mod.parameters())
    with torch.no_grad():
        samplers = m.samplers()
        assert set(samplers) == {"ode", "sde"}
        for draw in samplers.values():
            x = draw(16)
            assert x.shape == (16, 2) and torch.isfinite(x).all()
        exact = m.log_prob(toy_splits.test[:8])
    assert exact.kind == "exact" and torch.isfinite(exact.values).all()
    extra = m.extra_likelihoods(toy_splits.test[:8])
    assert set(extra) == {"sde"} and extra["sde"].kind == "estimate"
    assert extra["sde"].values.shape == (8,) and "sde" in extra["sde"].estimator


def test_sampler_sde_with_eps_zero_is_the_ode_sampler(registry, toy_splits):
    m = _make(registry, toy_splits, gamma="sqrt", objective="velocity_score", sampler="sde",
              eps=0.0, sde_steps=200)
    x0 = m.base_sample(32)
    from bench.science.sde import sde_integrate

    with torch.no_grad():
        sde = sde_integrate(m.velocity_field(), None, x0, 0.0, 1.0, m._sde_config())
        ode = m.ctx.engine.integrate(m.velocity_field(), x0, 0.0, 1.0)
    assert float((sde - ode).abs().max()) < 5e-3


@pytest.mark.parametrize(("over", "match"), [
    (dict(sampler="sde", objective="velocity"), "needs a score"),
    (dict(interpolant="encdec"), "needs a latent"),
    (dict(interpolant="vp", gamma="sin2"), "gamma < 1"),
    (dict(objective="split"), "split needs"),
    (dict(eps=-1.0), "eps"),
])
def test_impossible_settings_are_refused(registry, over, match):
    cls = registry.get("method", "interflow")
    with pytest.raises(Exception, match=match):
        build_params(cls.Params, over, "interflow")


def test_image_shapes_work_with_a_score(registry):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 8, 8, generator=g) * 2 - 1
    splits = Splits(x[:40], x[40:50], x[50:], (1, 8, 8), "img")
    m = _make(registry, splits, gamma="sqrt", objective="velocity_denoiser", sampler="sde",
              sde_steps=3)
    total, _ = m.loss(splits.train[:4], 0)
    assert torch.isfinite(total)
    with torch.no_grad():
        assert m.sample(2).shape == (2, 1, 8, 8)
