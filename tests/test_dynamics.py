"""The one ODE engine (bench.science.ode, bench.science.divergence) against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from bench.science.divergence import AugmentedDynamics
from bench.science.gaussian import GaussianPath, gaussian_log_prob
from bench.science.interpolants import INTERPOLANTS, get_interpolant
from bench.science.ode import (
    SolverConfig,
    divergence_exact,
    divergence_hutchinson,
    integrate,
    log_likelihood,
)


def _path(name: str, d: int = 3) -> GaussianPath:
    g = torch.Generator().manual_seed(1)
    m = torch.randn(d, generator=g, dtype=torch.float64)
    s = torch.rand(d, generator=g, dtype=torch.float64) + 0.5
    return GaussianPath(get_interpolant(name), m, s)


@pytest.mark.parametrize("name", sorted(INTERPOLANTS))
@pytest.mark.parametrize("t", [1.0, 0.5])
def test_exact_velocity_reproduces_exact_density(name, t):
    path = _path(name)
    x = torch.randn(64, 3, dtype=torch.float64) * 1.5
    cfg = SolverConfig(rtol=1e-10, atol=1e-10)
    ll = log_likelihood(path, x, lambda z: path.log_prob(z, 0.0), cfg, t=t)
    assert ll.kind == "exact" and ll.nfe > 0
    assert torch.allclose(ll.values, path.log_prob(x, t), atol=1e-4, rtol=0)


def test_sampling_transports_base_to_target():
    path = _path("trig")
    x_0 = torch.randn(8000, 3, dtype=torch.float64)
    x_1 = integrate(path, x_0, 0.0, 1.0, SolverConfig(rtol=1e-6, atol=1e-6)).x
    mean, var = path.mean_var(1.0)
    assert torch.allclose(x_1.mean(0), mean, atol=0.08)
    assert torch.allclose(x_1.var(0), var, rtol=0.08)


class LinearField(torch.nn.Module):
    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = a

    def forward(self, t, x):
        return x @ self.a.T


def _linear(d: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return 0.5 * torch.randn(d, d, generator=g, dtype=torch.float64)


def test_linear_field_matches_matrix_exponential():
    """x_1 = expm(A) x_0, so log p_1(x) = log N(expm(-A) x; 0, I) - tr(A)."""
    a = _linear()
    x = torch.randn(32, 4, dtype=torch.float64)
    std = lambda z: gaussian_log_prob(z, torch.zeros(4, dtype=z.dtype), torch.ones(4))  # noqa: E731
    ll = log_likelihood(LinearField(a), x, std, SolverConfig(rtol=1e-10, atol=1e-10))
    x_0 = x @ torch.linalg.matrix_exp(-a).T
    assert torch.allclose(ll.values, std(x_0) - torch.trace(a), atol=1e-6)


def test_exact_divergence_matches_finite_differences():
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))
    net = net.double()
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    div = divergence_exact(net(x), x)
    h, fd = 1e-6, torch.zeros(7, dtype=torch.float64)
    with torch.no_grad():
        for i in range(5):
            e = torch.zeros(5, dtype=torch.float64)
            e[i] = h
            fd += (net(x + e)[:, i] - net(x - e)[:, i]) / (2 * h)
    assert torch.allclose(div, fd, atol=1e-6)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    """Mean over many probe draws is within 4 standard errors of the exact value."""
    a = _linear()
    x = torch.randn(1, 4, dtype=torch.float64).repeat(2000, 1)
    std = lambda z: gaussian_log_prob(z, torch.zeros(4, dtype=z.dtype), torch.ones(4))  # noqa: E731
    field = LinearField(a)
    exact = log_likelihood(field, x[:1], std, SolverConfig(rtol=1e-9, atol=1e-9)).values
    cfg = SolverConfig(rtol=1e-9, atol=1e-9, divergence="hutchinson", probe=probe)
    est = log_likelihood(field, x, std, cfg, seed=5).values
    se = est.std() / math.sqrt(est.numel())
    assert se > 0  # the estimator really is random here (A is not diagonal)
    assert abs(est.mean() - exact[0]) < 4 * se


def test_hutchinson_with_many_probes_has_lower_variance():
    a = _linear()
    x = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    v = LinearField(a)(0.0, x)
    g = torch.Generator().manual_seed(0)
    one = [divergence_hutchinson(v, x, torch.randn(1, 1, 4, generator=g, dtype=torch.float64))
           for _ in range(400)]
    many = [divergence_hutchinson(v, x, torch.randn(16, 1, 4, generator=g, dtype=torch.float64))
            for _ in range(400)]
    assert torch.stack(many).var() < torch.stack(one).var() / 4


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_divergence_graph_kept_only_with_gradients(divergence):
    """Evaluation (no_grad) gets detached states; with gradients on, the divergence carries
    its graph (double backprop): for v = A x, d/dA sum_n div = n I (exact) and
    sum_n eps_n eps_n^T (Hutchinson), the same numbers either way."""
    a = torch.nn.Parameter(_linear())
    n = 5
    x = torch.randn(n, 4, dtype=torch.float64)
    probes = torch.randn(1, n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    dyn = AugmentedDynamics(lambda t, z: z @ a.T, divergence, probes)
    state = (x, torch.zeros(n, dtype=torch.float64))
    t = torch.tensor(0.5, dtype=torch.float64)
    with torch.no_grad():
        v0, div0 = dyn(t, state)
    assert not v0.requires_grad and not div0.requires_grad
    v1, div1 = dyn(t, state)
    assert div1.requires_grad and dyn.nfe == 2
    assert torch.equal(div0, div1.detach()) and torch.equal(v0, v1.detach())
    (grad,) = torch.autograd.grad(div1.sum(), a)
    expected = (n * torch.eye(4, dtype=torch.float64) if divergence == "exact"
                else torch.einsum("ni,nj->ij", probes[0], probes[0]))
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(INTERPOLANTS))
def test_interpolant_boundaries_and_derivatives(name):
    it = get_interpolant(name)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    assert it.a(zero) == 1 and it.b(zero) == 0 and it.a(one).abs() < 1e-12 and it.b(one) == 1
    h = 1e-6
    assert torch.allclose((it.a(t + h) - it.a(t - h)) / (2 * h), it.da(t), atol=1e-6)
    assert torch.allclose((it.b(t + h) - it.b(t - h)) / (2 * h), it.db(t), atol=1e-6)


def test_validation_tolerance_applies_only_inside_validating():
    """ODEEngine.validating() solves at rtol = atol = val_tol (labelled so, fewer NFE) and
    restores the test tolerances afterwards; without val_tol it changes nothing."""
    import torch

    from bench.api import SolverConfig
    from bench.science.ode import ODEEngine

    a = torch.tensor([[-0.5, 0.3], [0.2, -1.0]])

    def field(t, x):
        return torch.sin(3 * t) * x @ a.T

    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))

    def base(z):
        return -0.5 * (z * z).sum(1)

    engine = ODEEngine(SolverConfig(rtol=1e-7, atol=1e-7, val_tol=1e-2))
    tight = engine.log_likelihood(field, x, base)
    with engine.validating():
        loose = engine.log_likelihood(field, x, base)
    again = engine.log_likelihood(field, x, base)
    assert "rtol=0.01" in loose.estimator and "rtol=1e-07" in tight.estimator
    assert loose.nfe < tight.nfe and again.nfe == tight.nfe
    assert torch.allclose(loose.values, tight.values, rtol=0.1, atol=0.1)  # a looser solve
    plain = ODEEngine(SolverConfig(rtol=1e-7, atol=1e-7))
    with plain.validating():
        assert plain.log_likelihood(field, x, base).nfe == tight.nfe


def test_evaluation_chunks_fitted_to_the_device_and_rows_scored_alike():
    """chunk=None resolves per device type (CPU 1024 rows); an explicit chunk wins; the
    per-row log-likelihoods do not depend on the chunking beyond the solver tolerance."""
    from bench.api import SolverConfig
    from bench.science.ode import ODEEngine

    assert SolverConfig().chunk_for("cpu") == 1024
    assert SolverConfig().chunk_for(torch.device("cuda", 1)) == 16384
    assert SolverConfig(chunk=7).chunk_for("cpu") == 7
    a = torch.tensor([[-0.5, 0.3], [0.2, -1.0]], dtype=torch.float64)

    def field(t, x):
        return torch.sin(3 * t) * x @ a.T

    def base(z):
        return -0.5 * (z * z).sum(1)

    x = torch.randn(2500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    auto = ODEEngine(SolverConfig(rtol=1e-8, atol=1e-8)).log_likelihood(field, x, base)
    one = ODEEngine(SolverConfig(rtol=1e-8, atol=1e-8, chunk=4096)).log_likelihood(
        field, x, base)
    assert auto.values.shape == (2500,)
    torch.testing.assert_close(auto.values, one.values, rtol=0, atol=1e-6)
