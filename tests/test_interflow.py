"""InterFlow: its loss has the right minimiser, and short training approaches the truth."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.api import DatasetRef, OptimConfig, SolverConfig, Splits
from bench.harness import make_context
from bench.harness.optim import Trainer
from bench.harness.selection import build_params
from bench.science.gaussian import GaussianPath
from bench.science.interpolants import get_interpolant


def _make(registry, splits, ctx=None, base=None, **over):
    cls = registry.get("method", "interflow")
    params = build_params(cls.Params, {**cls.test_params, **over}, "interflow")
    if base is not None:  # a DatasetRef: the plan checks the name, the harness loads it
        params = dataclasses.replace(params, base=DatasetRef(base))
    return cls(params, splits, ctx or make_context(solver=SolverConfig(rtol=1e-6, atol=1e-6)))


def _gauss_splits(m, s, n=4000):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, m.numel(), generator=g) * s + m
    return Splits(x[: n // 2], x[n // 2: 3 * n // 4], x[3 * n // 4:], (m.numel(),), "gauss")


@pytest.mark.parametrize("name", ["trig", "linear"])
def test_loss_is_minimised_by_the_conditional_expectation(registry, name):
    """G(v) = E|v - dI|^2 - E|dI|^2, so the exact velocity beats any perturbation of it."""
    torch.manual_seed(0)
    m, s = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.5])
    exact = GaussianPath(get_interpolant(name), m, s)
    it = get_interpolant(name)
    x_0, x_1 = torch.randn(200_000, 2), torch.randn(200_000, 2) * s + m
    t = torch.rand(200_000)
    path = it.sample(x_0, x_1, t)

    def G(field):
        v = field(t[:, None], path.x_t)
        return ((v * v).sum(1) - 2 * (path.dx_t * v).sum(1)).mean()

    best = G(exact)
    for delta in (torch.tensor([0.1, 0.0]), torch.tensor([0.0, -0.1])):
        assert G(lambda tt, xx, d=delta: exact(tt, xx) + d) > best
    # and the plug-in computes the same functional (same samples -> same value)
    method = _make(registry, _gauss_splits(m, s), interpolant=name)
    with torch.no_grad():
        method.v = lambda tt, xx: exact(tt[:, None], xx)  # noqa: E731
        method.gen.manual_seed(1)
        g1 = method.loss(x_1[:5000], 0)
    assert abs(float(g1) - float(best)) < 0.3


def test_short_training_approaches_true_nll(registry):
    torch.manual_seed(0)
    m, s = torch.tensor([1.0, -1.0]), torch.tensor([0.5, 1.5])
    splits = _gauss_splits(m, s)
    method = _make(registry, splits, hidden=(64, 64), batch_size=256)
    optim = OptimConfig(**{**method.optim, "lr": 3e-3})  # the method's defaults, lr 3e-3
    assert optim.schedule == "cosine" and optim.grad_clip == 1.0
    trainer = Trainer(method, optim, total_steps=400)
    for step in range(400):
        idx = torch.randint(0, splits.train.shape[0], (256,))
        trainer.step(splits.train[idx], step)
    with torch.no_grad():
        nll = -method.log_prob(splits.test).values.mean()
    truth = -torch.distributions.Normal(m, s).log_prob(splits.test).sum(1).mean()
    assert abs(float(nll - truth)) < 0.1


def test_density_to_density_base(registry):
    """8 Gaussians -> checkerboard: the base is another dataset and its density is used."""
    data = registry.dataset("checkerboard[n_train=500,n_val=50,n_test=50]")
    base = registry.dataset("8gaussians")
    ctx = make_context(solver=SolverConfig(rtol=1e-4, atol=1e-4), datasets={"base": base})
    method = _make(registry, data.splits(), ctx, base="8gaussians")
    assert torch.isfinite(method.loss(data.splits().train[:64], 0))
    x_0 = method.base_sample(1000)
    assert torch.isfinite(base.log_prob(x_0)).all()  # samples come from the 8 Gaussians
    with torch.no_grad():
        ll = method.log_prob(data.splits().test)
        assert torch.isfinite(ll.values).all()
        # at t=0 the flow is the identity, so rho_0 is the base density exactly
        at0 = method.log_prob(x_0[:20], t=0.0).values
    assert torch.allclose(at0, base.log_prob(x_0[:20]), atol=1e-5)


def test_image_data_is_declined_in_one_line(registry):
    cls = registry.get("method", "interflow")
    msg = cls.supports("image", (3, 32, 32))
    assert "flat vectors" in msg and "(3, 32, 32)" in msg and "\n" not in msg
    assert cls.supports("tabular", (43,)) is None


def test_base_with_wrong_shape_is_a_usage_error(registry):
    from bench.api.errors import ConfigError

    data = registry.dataset("gaussian[dim=3,n_train=100,n_val=10,n_test=10]")
    ctx = make_context(datasets={"base": registry.dataset("8gaussians")})
    with pytest.raises(ConfigError, match="shape"):
        _make(registry, data.splits(), ctx, base="8gaussians")
