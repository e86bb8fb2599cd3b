"""InterFlow: its loss has the right minimiser, and short training approaches the truth."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench.api import DatasetRef, OptimConfig, SolverConfig, Splits
from bench.harness import make_context
from bench.harness.planning.selection import build_params
from bench.harness.training.optim import Trainer
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


def test_rank_two_data_is_declined_in_one_line(registry):
    cls = registry.get("method", "interflow")
    msg = cls.supports("image", (32, 32))
    assert "flat vectors" in msg and "images" in msg and "(32, 32)" in msg and "\n" not in msg
    assert cls.supports("tabular", (43,)) is None
    assert cls.supports("image", (3, 32, 32)) is None


def _images(shape=(1, 8, 8), n=300, seed=0):
    """8-bit-like images in [-1, 1]: a bright square on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    x = 0.2 * torch.randn(n, *shape, generator=g) - 0.5
    x[..., 2:6, 2:6] += 1.0
    x = x.clamp(-1, 1)
    return Splits(x[: n - 100], x[n - 100: n - 50], x[n - 50:], shape, "squares",
                  dequantization="uniform-8bit")


def test_image_loss_is_the_vector_loss_of_the_flattened_images(registry):
    """Same generator state, same field (applied to the flattened image): the loss on
    (n, 1, 8, 8) images equals the loss on the (n, 64) vectors, and the base is N(0, I)
    of the image shape. Summing over one axis only, or broadcasting t wrongly, breaks it."""
    splits = _images()
    vec = Splits(*(s.reshape(s.shape[0], -1) for s in (splits.train, splits.val,
                                                       splits.test)), (64,), "flat")
    image_m, vector_m = _make(registry, splits), _make(registry, vec)
    assert isinstance(image_m.v, torch.nn.Module) and image_m.base_sample(3).shape == (3, 1, 8, 8)
    g = torch.Generator().manual_seed(5)
    w, b = torch.randn(64, 64, generator=g) / 8, torch.randn(64, generator=g)

    def field(t, x):  # a time-dependent linear field on the flattened event
        n = x.shape[0]
        return ((x.reshape(n, -1) @ w.T) * torch.cos(t).reshape(n, 1) + b).reshape(x.shape)

    image_m.v = vector_m.v = field
    image_m.gen.manual_seed(1)
    vector_m.gen.manual_seed(1)
    with torch.no_grad():
        li, lv = image_m.loss(splits.train[:50], 0), vector_m.loss(vec.train[:50], 0)
    torch.testing.assert_close(li, lv, rtol=1e-6, atol=1e-5)
    assert abs(float(li)) > 1.0  # not a trivially zero loss


def test_image_defaults_follow_the_papers_and_vectors_are_unchanged(registry):
    cls = registry.get("method", "interflow")
    assert cls.default_optim("tabular") == {"lr": 1e-3, "schedule": "cosine", "grad_clip": 1.0}
    assert cls.default_optim("toy2d") == cls.default_optim("tabular")
    image = OptimConfig(**cls.default_optim("image"))
    assert (image.lr, image.schedule, image.grad_clip, image.ema, image.ema_warmup) == (
        2e-4, "constant", 1.0, 0.9999, True)
    p = cls.Params()
    assert (p.unet_ch, p.unet_ch_mult, p.unet_num_res_blocks, p.unet_attn_resolutions) == (
        128, None, 2, (16,))


def test_image_training_decreases_the_loss(registry, one_thread):
    """A few harness steps of the tiny velocity U-Net on (1, 8, 8) images: finite losses,
    lower on average at the end; with Hutchinson's trace the likelihood is an "estimate"."""
    torch.manual_seed(0)
    splits = _images()
    solver = SolverConfig(rtol=1e-3, atol=1e-3, divergence="hutchinson")
    method = _make(registry, splits, make_context(solver=solver), batch_size=32)
    trainer = Trainer(method, OptimConfig(**{**method.default_optim("image"), "lr": 2e-3}),
                      total_steps=40)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(40):
        idx = torch.randint(0, splits.train.shape[0], (32,), generator=g)
        losses.append(trainer.step(splits.train[idx], step)["loss"])
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5, losses
    with torch.no_grad(), trainer.averaged():
        ll = method.log_prob(splits.test[:4])
    assert ll.kind == "estimate" and "div=hutchinson" in ll.estimator
    assert ll.values.shape == (4,) and torch.isfinite(ll.values).all()


def test_base_with_wrong_shape_is_a_usage_error(registry):
    from bench.api.errors import ConfigError

    data = registry.dataset("gaussian[dim=3,n_train=100,n_val=10,n_test=10]")
    ctx = make_context(datasets={"base": registry.dataset("8gaussians")})
    with pytest.raises(ConfigError, match="shape"):
        _make(registry, data.splits(), ctx, base="8gaussians")
