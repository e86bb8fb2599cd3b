"""Learned (Fourier) interpolants and the max-min over the path (bench.science.learned_paths)."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from bench.api.errors import ConfigError
from bench.science.interpolants import GeneralInterpolant, Interpolant, Trigonometric
from bench.science.learned_paths import (
    FourierInterpolant,
    gaussian_density_kinetic_energy,
    gaussian_ot_kinetic_energy,
    interpolant_kinetic_energy,
    path_length,
    velocity_objective,
)
from bench.science.nets import build_net

log = logging.getLogger(__name__)


def _random(modes: int = 5, seed: int = 0, **kw) -> FourierInterpolant:
    it = FourierInterpolant(modes, **kw).double()
    with torch.no_grad():
        it.raw.copy_(torch.randn(2, modes, generator=torch.Generator().manual_seed(seed)))
    return it


def test_boundary_conditions_for_random_parameters():
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for seed in range(5):
        it = _random(seed=seed)
        assert it.raw.abs().min() > 0.0
        a, b = it.a(t), it.b(t)
        torch.testing.assert_close(a, torch.tensor([1.0, 0.0], dtype=torch.float64),
                                   rtol=0, atol=1e-14)
        torch.testing.assert_close(b, torch.tensor([0.0, 1.0], dtype=torch.float64),
                                   rtol=0, atol=1e-14)
        mid = torch.tensor([0.3, 0.5], dtype=torch.float64)  # the parameters do matter inside
        assert (it.a(mid) - Trigonometric().a(mid)).abs().max() > 1e-3


def test_derivatives_match_finite_differences_float64():
    it = _random(modes=4, seed=1)
    t = torch.linspace(0.01, 0.99, 37, dtype=torch.float64)
    h = 1e-6
    for f, df in ((it.a, it.da), (it.b, it.db)):
        fd = (f(t + h) - f(t - h)) / (2 * h)
        torch.testing.assert_close(df(t), fd, rtol=0, atol=1e-7)


def test_zero_parameters_are_the_trigonometric_path_and_sample_matches_interface():
    it = FourierInterpolant(3)
    assert isinstance(it, Interpolant) and isinstance(it, torch.nn.Module)
    g = torch.Generator().manual_seed(0)
    x_0, x_1 = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    t = torch.rand(8, generator=g)
    got, ref = it.sample(x_0, x_1, t), Trigonometric().sample(x_0, x_1, t)
    torch.testing.assert_close(got.x_t, ref.x_t, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.dx_t, ref.dx_t, rtol=0, atol=1e-6)
    it2 = _random(3, seed=2).float()
    s = it2.sample(x_0, x_1, t)
    tb = t[:, None]
    torch.testing.assert_close(s.x_t, it2.a(tb) * x_0 + it2.b(tb) * x_1)
    torch.testing.assert_close(s.dx_t, it2.da(tb) * x_0 + it2.db(tb) * x_1)


def test_bad_settings_raise_config_error():
    with pytest.raises(ConfigError):
        FourierInterpolant(0)
    with pytest.raises(ConfigError):
        FourierInterpolant(2, lr_factor=0.0)


def _grads(adversarial: bool, lr_factor: float = 1.0):
    torch.manual_seed(0)
    v = build_net(2, (16,), "silu", "mlp")
    it = FourierInterpolant(3, lr_factor=lr_factor, adversarial=adversarial)
    with torch.no_grad():
        it.raw.copy_(torch.tensor([[0.2, -0.1, 0.05], [-0.3, 0.1, 0.02]]) / lr_factor)
    g = torch.Generator().manual_seed(1)
    x_0, x_1 = torch.randn(64, 2, generator=g), 2 + torch.randn(64, 2, generator=g)
    loss = velocity_objective(v, it, x_0, x_1, torch.rand(64, generator=g))
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in v.parameters()], it.raw.grad.clone()


def test_gradient_reversal_negates_exactly_the_interpolant_gradients():
    loss_a, gv_a, gi_a = _grads(adversarial=True)
    loss_p, gv_p, gi_p = _grads(adversarial=False)
    assert loss_a == loss_p  # the forward pass is unchanged
    for a, p in zip(gv_a, gv_p, strict=True):
        assert torch.equal(a, p)  # the velocity's gradients are untouched
    assert gi_p.abs().min() > 0
    assert torch.equal(gi_a, -gi_p)
    # lr_factor f: coefficients f * raw, so d/d raw = f * d/d coefficients
    _, _, gi_half = _grads(adversarial=True, lr_factor=0.5)
    torch.testing.assert_close(gi_half, 0.5 * gi_a, rtol=1e-5, atol=1e-7)


def _ot_path(s: float) -> GeneralInterpolant:
    """b = t, a = sqrt((1 - t)(1 - t + 2 s t)): rho_t = N(t m, (1 - t + s t)^2 I)."""
    def a(t):
        return torch.sqrt((1 - t) * (1 - t + 2 * s * t))

    def da(t):
        return (-(1 - t + 2 * s * t) + (1 - t) * (2 * s - 1)) / (2 * a(t))

    return GeneralInterpolant(a, lambda t: t, da, torch.ones_like, name="ot")


def test_gaussian_kinetic_energies_order_and_ot_attained():
    m, s = torch.tensor([1.5, -0.5]), 1.7
    d = m.numel()
    ot = gaussian_ot_kinetic_energy(m, s)
    assert ot == pytest.approx(float(m.pow(2).sum()) + d * (s - 1) ** 2)
    # the displacement interpolation is in the family (a'(1) is singular: many nodes)
    assert gaussian_density_kinetic_energy(_ot_path(s), m, s, n_t=400) == pytest.approx(
        ot, rel=1e-3)
    m0, m1 = float(d), float(m.pow(2).sum()) + d * s * s
    for seed in range(4):
        it = _random(4, seed=seed)
        with torch.no_grad():
            it.raw.mul_(0.3)
        dens = gaussian_density_kinetic_energy(it, m, s)
        # Benamou-Brenier below, Jensen (E|v*|^2 <= E|dI/dt|^2) above
        assert ot < dens < interpolant_kinetic_energy(it, m0, m1)


def _samplers(m: torch.Tensor, s: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (lambda n: torch.randn(n, m.numel(), generator=g),
            lambda n: m + s * torch.randn(n, m.numel(), generator=g))


def test_path_length_of_the_exact_velocity_matches_closed_form():
    m, s = torch.tensor([2.0, 1.0]), 0.6
    it = _random(3, seed=3).float()
    with torch.no_grad():
        it.raw.mul_(0.2)

    def v_star(t, x):  # E[dI/dt | x_t] of the Gaussian path
        tb = t[:, None]
        a, b, da, db = it.a(tb), it.b(tb), it.da(tb), it.db(tb)
        sig = torch.sqrt(a * a + s * s * b * b)
        return db * m + (a * da + s * s * b * db) / (sig * sig) * (x - b * m)

    x0s, x1s = _samplers(m, s, 0)
    pl = path_length(v_star, it, x0s, x1s, n=4096, n_t=16)
    exact = gaussian_density_kinetic_energy(it, m, s)
    assert abs(pl.velocity - exact) < 4 * pl.velocity_se
    dot = interpolant_kinetic_energy(it, 2.0, float(m.pow(2).sum()) + 2 * s * s)
    assert abs(pl.interpolant - dot) < 4 * pl.interpolant_se
    assert pl.velocity < pl.interpolant


def _train(interpolant, m, s, steps: int = 600, seed: int = 1):
    torch.manual_seed(seed)
    v = build_net(2, (64, 64), "silu", "mlp")
    params = [*v.parameters()]
    if isinstance(interpolant, torch.nn.Module):
        params += [*interpolant.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)  # ONE optimiser over v and the path
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(1.0, k / steps))))
    x0s, x1s = _samplers(m, s, seed)
    g = torch.Generator().manual_seed(seed + 100)
    for _ in range(steps):
        loss = velocity_objective(v, interpolant, x0s(256), x1s(256),
                                  torch.rand(256, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return path_length(v, interpolant, *_samplers(m, s, 7), n=4096, n_t=16)


def test_max_min_shortens_the_path_towards_optimal_transport():
    m, s = torch.tensor([4.0, 0.0]), 1.0
    ot = gaussian_ot_kinetic_energy(m, s)  # 16
    trig_exact = gaussian_density_kinetic_energy(Trigonometric(), m, s)  # 4 pi^2 / 4 + ...
    trig = _train(Trigonometric(), m, s)
    learned_path = FourierInterpolant(4, lr_factor=0.3)
    learned = _train(learned_path, m, s)
    learned_exact = gaussian_density_kinetic_energy(learned_path, m, s)
    log.info("path length: trig %.3f +- %.3f (exact %.3f), learned %.3f +- %.3f "
             "(exact %.3f), OT %.3f", trig.velocity, trig.velocity_se, trig_exact,
             learned.velocity, learned.velocity_se, learned_exact, ot)
    # the fixed-path velocity is fitted: its path length is the density's
    assert trig.velocity == pytest.approx(trig_exact, rel=0.03)
    # the max-min shortens it, beyond the Monte Carlo error, towards OT
    se = math.hypot(trig.velocity_se, learned.velocity_se)
    assert learned.velocity < trig.velocity - 10 * se
    assert learned.velocity < trig_exact - 0.4 * (trig_exact - ot)
    assert ot < learned_exact < trig_exact - 0.25 * (trig_exact - ot)


# -- interflow[interpolant=learned]: the harness's one optimiser and its checkpoints -----
def _interflow(registry, **over):
    from bench.api import SolverConfig, Splits
    from bench.harness import make_context
    from bench.harness.planning.selection import build_params

    g = torch.Generator().manual_seed(0)
    x = torch.randn(800, 2, generator=g) * 0.5 + torch.tensor([3.0, 0.0])
    splits = Splits(x[:600], x[600:700], x[700:], (2,), "gauss")
    cls = registry.get("method", "interflow")
    params = build_params(cls.Params, {**cls.test_params, **over}, "interflow")
    ctx = make_context(solver=SolverConfig(rtol=1e-5, atol=1e-5))
    ctx.max_steps = 20
    return cls(params, splits, ctx), splits


def test_interflow_learned_path_is_trained_recorded_and_checkpointed(registry):
    from bench.api import OptimConfig
    from bench.harness.training.optim import Trainer

    method, splits = _interflow(registry, interpolant="learned", path_modes=3,
                                path_lr_factor=0.5)
    path = method.modules()["path"]
    assert isinstance(path, FourierInterpolant) and path.modes == 3
    trainer = Trainer(method, OptimConfig(lr=1e-2), total_steps=20)
    assert any(p is path.raw for p in trainer.params)  # one optimiser over v and the path
    first = trainer.step(splits.train[:64], 0)
    assert path.raw.abs().min() > 0  # the path moved
    assert "path" in trainer.state_dict()["modules"]
    # at step 0 the path is the trig one: E|dI/dt|^2 = (pi/2)^2 (E|x0|^2 + E|x1|^2) / 2
    m1 = float(splits.train.pow(2).sum(1).mean())
    dot = interpolant_kinetic_energy(Trigonometric(), 2.0, m1)
    assert first["path_dI2"] == pytest.approx(dot, rel=0.05)
    assert first["path_length_se"] > 0 and first["path_length"] >= 0
    mid = trainer.step(splits.train[64:128], 1)
    assert "path_length" not in mid  # recorded every tenth of the budget, not every step
    assert "path_length" in trainer.step(splits.train[:64], 2)
    assert "path_length" in trainer.step(splits.train[:64], 19)  # the last step


def test_interflow_learned_path_refuses_a_latent(registry):
    from bench.harness.planning.selection import build_params

    cls = registry.get("method", "interflow")
    with pytest.raises(Exception, match="interpolant=learned needs gamma=none"):
        build_params(cls.Params, {"interpolant": "learned", "gamma": "sqrt"}, "interflow")
