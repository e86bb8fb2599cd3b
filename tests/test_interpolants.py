"""Every interpolant: boundary conditions and time derivatives against finite differences
(float64), the variance-preserving identity, and the errors of impossible combinations."""

from __future__ import annotations

import pytest
import torch

from bench.api.errors import ConfigError
from bench.science.interpolants import INTERPOLANTS, get_interpolant
from bench.science.si_paths import (
    GAMMAS,
    PATHS,
    Mirror,
    OneSided,
    StochasticInterpolant,
    build_stochastic_interpolant,
    get_gamma,
)

D = torch.float64


def _valid(path: str, gamma: str) -> bool:
    if path in ("encdec", "mirror") and gamma == "none":
        return False
    return not (path == "vp" and gamma == "sin2")


CASES = [(p, g) for p in PATHS for g in GAMMAS if _valid(p, g)]


def _all() -> list[tuple[str, StochasticInterpolant]]:
    out = [(f"{p}+{g}", build_stochastic_interpolant(p, g)) for p, g in CASES]
    out += [(f"{p}+one-sided", build_stochastic_interpolant(p, "none", one_sided=True))
            for p in INTERPOLANTS]
    return out


@pytest.mark.parametrize(("name", "it"), _all(), ids=[n for n, _ in _all()])
def test_boundary_conditions(name, it):
    g = torch.Generator().manual_seed(0)
    x_0, x_1, z = (torch.randn(5, 3, generator=g, dtype=D) for _ in range(3))
    if isinstance(it, Mirror):
        x_0 = x_1  # the mirror's coupling: the data at both ends
    for t, want in ((0.0, x_0), (1.0, x_1)):
        p = it.sample(x_0, x_1, torch.full((5,), t, dtype=D), z)
        torch.testing.assert_close(p.x_t, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("name", "it"), _all(), ids=[n for n, _ in _all()])
def test_time_derivatives_match_finite_differences(name, it):
    t = torch.tensor([0.03, 0.2, 0.37, 0.5, 0.61, 0.8, 0.97], dtype=D)
    h = 1e-7  # encdec is C^1 only at 1/2: its central difference is off by pi^2 h / 2
    c, cp, cm = it.coefficients(t), it.coefficients(t + h), it.coefficients(t - h)
    for k in ("a", "b", "g"):
        fd = (cp[k] - cm[k]) / (2 * h)
        torch.testing.assert_close(c["d" + k], fd, atol=1e-6, rtol=1e-6, msg=f"{name} d{k}")
    fd = (cp["g"] ** 2 - cm["g"] ** 2) / (4 * h)
    torch.testing.assert_close(c["g_dg"], fd, atol=1e-6, rtol=1e-6)
    # and the path's own derivative: d x_t / dt = dI/dt + gamma' z (the b target)
    g = torch.Generator().manual_seed(1)
    x_0, x_1, z = (torch.randn(7, 2, generator=g, dtype=D) for _ in range(3))
    p = it.sample(x_0, x_1, t, z)
    fd = (it.sample(x_0, x_1, t + h, z).x_t - it.sample(x_0, x_1, t - h, z).x_t) / (2 * h)
    torch.testing.assert_close(p.dx_t, fd, atol=1e-5, rtol=1e-6)


def test_sqrt_gamma_singular_derivative_and_its_regular_product():
    g = get_gamma("sqrt", 2.0)
    ends = torch.tensor([0.0, 1.0], dtype=D)
    assert torch.isinf(g.dg(ends)).all()
    torch.testing.assert_close(g.g_dg(ends), torch.tensor([1.0, -1.0], dtype=D))
    assert torch.isfinite(g.g(torch.tensor([1.0 + 1e-9], dtype=D))).all()  # solver overshoot
    it = build_stochastic_interpolant("linear", "sqrt", t_min=1e-3)
    torch.testing.assert_close(it.clamp_time(torch.tensor([0.0, 0.5, 1.0], dtype=D)),
                               torch.tensor([1e-3, 0.5, 1 - 1e-3], dtype=D))


@pytest.mark.parametrize("gamma", ["sqrt", "t1mt"])
def test_vp_path_preserves_variance(gamma):
    it = build_stochastic_interpolant("vp", gamma)
    t = torch.linspace(0, 1, 101, dtype=D)
    c = it.coefficients(t)
    torch.testing.assert_close(c["a"] ** 2 + c["b"] ** 2 + c["g"] ** 2, torch.ones_like(t))
    assert float(c["g"].max()) > 0.1


def test_encoder_decoder_passes_through_the_latent():
    it = build_stochastic_interpolant("encdec", "sin2")
    c = it.coefficients(torch.tensor(0.5, dtype=D))
    assert float(c["a"]) == 0 and abs(float(c["b"])) < 1e-15 and float(c["g"]) == 1.0


def test_deterministic_case_is_the_old_interpolant():
    g = torch.Generator().manual_seed(2)
    x_0, x_1, z = (torch.randn(9, 3, generator=g) for _ in range(3))
    t = torch.rand(9, generator=g)
    for name in INTERPOLANTS:
        old = get_interpolant(name).sample(x_0, x_1, t)
        new = build_stochastic_interpolant(name, "none").sample(x_0, x_1, t, z)
        assert torch.equal(old.x_t, new.x_t) and torch.equal(old.dx_t, new.dx_t)


def test_noise_and_its_scale():
    g = torch.Generator().manual_seed(3)
    x_0, x_1, z = (torch.randn(4, 2, generator=g, dtype=D) for _ in range(3))
    t = torch.full((4,), 0.3, dtype=D)
    one = build_stochastic_interpolant("trig", "none", one_sided=True)
    assert isinstance(one, OneSided)
    p = one.sample(x_0, x_1, t, z)
    assert torch.equal(p.noise, x_0)
    torch.testing.assert_close(p.x_t - one.path.b(t)[:, None] * x_1, p.scale * p.noise)
    two = build_stochastic_interpolant("linear", "t1mt")
    p = two.sample(x_0, x_1, t, z)
    assert torch.equal(p.noise, z)
    torch.testing.assert_close(p.x_t - 0.7 * x_0 - 0.3 * x_1, p.scale * p.noise)


@pytest.mark.parametrize(("path", "gamma", "one_sided"), [
    ("encdec", "none", False), ("vp", "sin2", False), ("mirror", "none", False),
    ("linear", "sqrt", True), ("nope", "none", False), ("linear", "nope", False)])
def test_impossible_combinations_raise_config_error(path, gamma, one_sided):
    with pytest.raises(ConfigError):
        build_stochastic_interpolant(path, gamma, one_sided=one_sided)


def test_vp_with_a_too_large_sqrt_gamma_raises():
    with pytest.raises(ConfigError, match="gamma < 1"):
        build_stochastic_interpolant("vp", "sqrt", gamma_a=4.0)
