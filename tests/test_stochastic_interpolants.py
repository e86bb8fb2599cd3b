"""Objectives of stochastic interpolants against closed forms: the score/denoiser sign
convention, each loss minimised by its exact target, the mixture fields solving the transport
equation, and short training approaching the closed-form b and s in d = 4 and d = 100."""

from __future__ import annotations

import pytest
import torch

from bench.science.nets import build_net
from bench.science.si_objectives import (
    GaussianMixturePath,
    interpolant_losses,
    relative_l2,
)
from bench.science.si_paths import build_stochastic_interpolant

D = torch.float64


def _mixture(it, d=2, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(k, generator=g, dtype=D) + 0.5
    m = 2.0 * torch.randn(k, d, generator=g, dtype=D)
    s = torch.rand(k, d, generator=g, dtype=D) + 0.3
    return GaussianMixturePath(it, w, m, s)


INTERPS = [("linear", "sqrt", False), ("trig", "t1mt", False), ("vp", "sqrt", False),
           ("encdec", "sin2", False), ("trig", "none", True), ("mirror", "sqrt", False)]


def _it(path, gamma, one_sided):
    return build_stochastic_interpolant(path, gamma, one_sided=one_sided)


@pytest.mark.parametrize("case", INTERPS, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_closed_forms_solve_the_transport_equation(case):
    """d_t log rho + div b + b . s = 0 and s = grad log rho, b = v - (scale scale') s."""
    it = _it(*case)
    gm = _mixture(it)
    x = torch.randn(16, 2, dtype=D, requires_grad=True)
    for t0 in (0.2, 0.45, 0.7):
        t = torch.full((16,), t0, dtype=D)
        lp = gm.log_prob(t, x)
        (grad,) = torch.autograd.grad(lp.sum(), x)
        torch.testing.assert_close(gm.score(t, x), grad)
        h = 1e-5
        dlog = (gm.log_prob(t + h, x) - gm.log_prob(t - h, x)) / (2 * h)
        b = gm.velocity(t, x)
        div = sum(torch.autograd.grad(b[:, i].sum(), x, retain_graph=True)[0][:, i]
                  for i in range(2))
        torch.testing.assert_close(dlog + div + (b * grad).sum(1), torch.zeros(16, dtype=D),
                                   atol=1e-6, rtol=0)
        rate = it.noise_scale_rate(torch.tensor(t0, dtype=D))
        torch.testing.assert_close(b, gm.v(t, x) - rate * gm.score(t, x))


@pytest.mark.parametrize("case", INTERPS[:2] + INTERPS[4:5], ids=lambda c: c[0] + c[1])
def test_sign_convention_by_regression(case):
    """E[noise | x_t] estimated by linear regression of the noise on x_t (jointly Gaussian
    for one Gaussian x_1) equals the closed-form denoiser, and the score is -eta / scale:
    a flipped sign breaks both."""
    it = _it(*case)
    gm = _mixture(it, d=2, k=1)
    g = torch.Generator().manual_seed(1)
    n, t0 = 400_000, 0.4
    x_0 = torch.randn(n, 2, generator=g, dtype=D)
    x_1, z = gm.sample(n, g), torch.randn(n, 2, generator=g, dtype=D)
    p = it.sample(x_0, x_1, torch.full((n,), t0, dtype=D), z)
    xc = torch.cat([p.x_t, torch.ones(n, 1, dtype=D)], 1)
    coef = torch.linalg.lstsq(xc, p.noise).solution  # E[noise | x] = [x, 1] coef
    xq = torch.randn(50, 2, dtype=D)
    eta_mc = torch.cat([xq, torch.ones(50, 1, dtype=D)], 1) @ coef
    eta = gm.denoiser(t0, xq)
    torch.testing.assert_close(eta, eta_mc, atol=0.02, rtol=0)
    scale = it.noise_scale(torch.tensor(t0, dtype=D))
    torch.testing.assert_close(gm.score(t0, xq), -eta / scale)
    xg = xq.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(t0, xg).sum(), xg)
    torch.testing.assert_close(grad, -eta_mc / scale, atol=0.05, rtol=0)


@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("case", INTERPS[:3] + INTERPS[4:5], ids=lambda c: c[0] + c[1])
def test_each_loss_is_minimised_by_its_closed_form(case, antithetic):
    """L(f* + delta) - L(f*) = E|delta|^2 (the cross term vanishes at the conditional mean):
    measured with common random numbers on a Gaussian problem, for b, v, s and eta."""
    it = _it(*case)
    gm = _mixture(it, d=2, k=1, seed=2)
    g = torch.Generator().manual_seed(3)
    n = 200_000
    x_0 = torch.randn(n, 2, generator=g, dtype=D)
    x_1, z = gm.sample(n, g), torch.randn(n, 2, generator=g, dtype=D)
    t = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=D)
    exact = {"b": gm.velocity, "v": gm.v, "s": gm.score, "eta": gm.denoiser}
    base = interpolant_losses(exact, it, x_0, x_1, t, z, antithetic)
    for delta in (torch.tensor([0.3, 0.0], dtype=D), torch.tensor([-0.1, 0.2], dtype=D)):
        moved = {k: (lambda tt, xx, f=f, d=delta: f(tt, xx) + d) for k, f in exact.items()}
        for k, val in interpolant_losses(moved, it, x_0, x_1, t, z, antithetic).items():
            gap = float(val - base[k])
            want = float((delta**2).sum())
            assert gap > 0 and abs(gap - want) < 0.15 * want + 0.01, (k, gap, want)
    # a wrong sign of the score is far from optimal
    flipped = {"s": lambda tt, xx: -gm.score(tt, xx)}
    assert float(interpolant_losses(flipped, it, x_0, x_1, t, z)["s"]) > float(base["s"]) + 0.5


@pytest.mark.parametrize("d", [4, 100])
def test_training_approaches_the_closed_form_b_and_s(d):
    """Small MLPs trained 300 steps on a 3-component mixture (gamma = sqrt(2t(1-t))):
    the relative L2 errors of b and s against the closed forms fall with training."""
    torch.manual_seed(0)
    it = build_stochastic_interpolant("linear", "sqrt", t_min=1e-2)
    gm = _mixture(it, d=d, k=3, seed=4)
    gm.w, gm.m, gm.s = gm.w.float(), gm.m.float() / d**0.25, gm.s.float()
    nets = {k: build_net(d, (64, 64), "silu", "mlp") for k in ("b", "s")}
    params = [p for n in nets.values() for p in n.parameters()]
    opt = torch.optim.Adam(params, lr=2e-3)
    g = torch.Generator().manual_seed(5)
    te = 0.1 + 0.8 * torch.rand(1000, generator=g)
    pe = it.sample(torch.randn(1000, d, generator=g), gm.sample(1000, g), te,
                   torch.randn(1000, d, generator=g))
    exact = {"b": gm.velocity, "s": gm.score}

    def errors():
        return {k: relative_l2(nets[k], exact[k], te, pe.x_t) for k in nets}

    history = [errors()]
    for step in range(1, 301):
        n = 128
        t = 1e-2 + 0.98 * torch.rand(n, generator=g)
        x_0, z = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
        losses = interpolant_losses(nets, it, x_0, gm.sample(n, g), t, z, antithetic=True)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        if step in (50, 300):
            history.append(errors())
    for k in nets:
        e = [h[k] for h in history]
        assert e[2] < e[1] < e[0] and e[2] < 0.8 * e[0], (k, e)
