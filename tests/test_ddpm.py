"""Tests of DDPM (methods/ddpm.py) and its science (bench/diffusion.py).

Closed forms used: the forward marginals q(x_t | x_0) = N(sqrt(ab_t) x_0, 1 - ab_t); under the
VP-SDE a Gaussian N(m, diag(s^2)) has marginals N(sqrt(ab(s)) m, ab(s) s^2 + 1 - ab(s)), so
its exact score is known and the probability-flow ODE must reproduce the Gaussian density.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from bench.api import OptimConfig, RunContext, SolverConfig, Splits
from bench.harness import make_context
from bench.harness.planning.registry import Registry
from bench.harness.planning.selection import build_params
from bench.harness.training.checkpoint import restore, snapshot
from bench.harness.training.optim import Trainer
from bench.science.diffusion import (
    DiffusionSchedule,
    VPProbabilityFlow,
    discretized_gaussian_log_likelihood,
    normal_kl,
)
from bench.science.gaussian import gaussian_log_prob
from bench.science.ode import log_likelihood

F64 = torch.float64
LOOSE = SolverConfig(rtol=1e-3, atol=1e-3)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ddpm_cls():
    return Registry().get("method", "ddpm")


def make(cls, splits: Splits, ctx: RunContext | None = None, **overrides):
    params = build_params(cls.Params, {**cls.test_params, **overrides}, "method 'ddpm'")
    return cls(params, splits, ctx or make_context(solver=LOOSE))


def trainer_of(method, **optim) -> Trainer:
    """The harness's trainer with DDPM's defaults for vectors (lr 1e-3, clipping at 1)."""
    return Trainer(method, OptimConfig(**{**method.default_optim("tabular"), **optim}))


def splits_of(x: Tensor) -> Splits:
    n = x.shape[0]
    a, b = int(0.8 * n), int(0.9 * n)
    return Splits(x[:a], x[a:b], x[b:], tuple(x.shape[1:]), "test data")


# schedule ------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_closed_form_marginals_match_forward_chain(schedule: str) -> None:
    sch = DiffusionSchedule.from_name(schedule, 1000)
    g = torch.Generator().manual_seed(0)
    x_0 = torch.tensor([-1.5, 0.3, 2.0], dtype=F64)
    n = 5000
    x = x_0.expand(n, 3).clone()
    checks = {0, 9, 99, 499, 999}
    for t in range(sch.T):  # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z
        beta = sch.betas[t]
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(n, 3, generator=g, dtype=F64)
        if t in checks:
            mean, var = sch.q_mean_var(x_0.expand(1, 3), torch.tensor([t]))
            se = (var[0] / n).sqrt()
            assert torch.all((x.mean(0) - mean[0]).abs() < 5 * se), t
            assert torch.allclose(x.var(0), var[0], rtol=5 * math.sqrt(2 / n)), t
    assert sch.alphas_cumprod[-1] < 1e-4  # x_T is close to N(0, I)


# probability-flow ODE ------------------------------------------------------------------
def gaussian_vp(sch: DiffusionSchedule, m: Tensor, s2: Tensor):
    """Marginal mean/var at time s and the exact score of N(m, diag(s2)) under the VP-SDE."""

    def mean_var(s) -> tuple[Tensor, Tensor]:
        ab = torch.exp(sch.vp_log_alpha_bar(torch.as_tensor(s, dtype=F64)))
        return ab.sqrt() * m, ab * s2 + 1 - ab

    def score(s: Tensor, x: Tensor) -> Tensor:
        mean, var = mean_var(s)
        return -(x - mean.to(x)) / var.to(x)

    return mean_var, score


@pytest.mark.parametrize(("schedule", "T", "s_min"), [("linear", 1000, 1e-3),
                                                     ("linear", 1000, 1e-5),
                                                     ("cosine", 100, 1e-2)])
def test_pf_ode_of_exact_score_gives_gaussian_density(schedule: str, T: int,
                                                      s_min: float) -> None:
    sch = DiffusionSchedule.from_name(schedule, T)
    m, s2 = torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.09, 2.25], dtype=F64)
    mean_var, score = gaussian_vp(sch, m, s2)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * 1.5
    m1, v1 = mean_var(1.0)  # base: the exact marginal at s = 1 (harness t = 0)
    cfg = SolverConfig(rtol=1e-9, atol=1e-9)
    ll = log_likelihood(VPProbabilityFlow(sch, score), x, lambda z: gaussian_log_prob(z, m1, v1),
                        cfg, t=1.0 - s_min)
    mean, var = mean_var(s_min)
    # dopri5 on the piecewise-linear beta(s): ~1e-4 absolute, 1e-5 relative in the far tails
    assert torch.allclose(ll.values, gaussian_log_prob(x, mean, var), atol=1e-4, rtol=1e-5)


class OracleEps(nn.Module):
    """eps(x, index) = -sigma(s) * exact score, s = (index + 1) / T: the ideal DDPM network."""

    def __init__(self, sch: DiffusionSchedule, score) -> None:
        super().__init__()
        self.sch, self.score = sch, score
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, index: Tensor) -> Tensor:
        s = (index.reshape(-1)[0].double() + 1) / self.sch.T
        return -self.sch.vp_sigma(s).to(x) * self.score(s, x)


def test_method_log_prob_with_ideal_network(ddpm_cls) -> None:
    """The method's glue (index sT - 1, score = -eps / sigma, t = 1 - s, s_min = 1/T, N(0, I)
    base) in float32 matches the float64 flow of the exact score from the same base; both
    are close to the Gaussian marginal at s_min (not equal: the base N(0, I) is not exactly
    the marginal at s = 1, ab(1) ~ 4e-5)."""
    m, s2 = torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.09, 2.25], dtype=F64)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(2)) * 1.5
    cfg = SolverConfig(rtol=1e-6, atol=1e-6)
    method = make(ddpm_cls, splits_of(x), make_context(solver=cfg), T=1000)
    mean_var, score = gaussian_vp(method.schedule, m, s2)
    method.net = OracleEps(method.schedule, score)
    ll = method.log_prob(x)
    assert ll.kind == "exact" and "pf-ode" in ll.estimator

    def std_normal(z: Tensor) -> Tensor:
        return gaussian_log_prob(z, torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64))

    ref = log_likelihood(VPProbabilityFlow(method.schedule, score), x.double(), std_normal,
                         SolverConfig(rtol=1e-9, atol=1e-9), t=1.0 - 1.0 / 1000)
    assert torch.allclose(ll.values.double(), ref.values, atol=1e-3, rtol=1e-4)
    mean, var = mean_var(1.0 / 1000)
    assert torch.allclose(ref.values, gaussian_log_prob(x.double(), mean, var), atol=0.1)


# bound terms ---------------------------------------------------------------------------
def test_discretized_decoder_sums_to_one_over_256_bins() -> None:
    grid = torch.arange(256, dtype=F64) * 2 / 255 - 1
    for mean, log_scale in [(0.0, -3.0), (0.37, -6.0), (-0.99, -1.0), (1.4, 0.5), (0.0, -9.0)]:
        lp = discretized_gaussian_log_likelihood(
            grid, torch.tensor(mean, dtype=F64), torch.tensor(log_scale, dtype=F64))
        assert abs(float(lp.exp().sum()) - 1.0) < 1e-9, (mean, log_scale)
        assert torch.all(lp <= 0)


def test_normal_kl_known_values() -> None:
    z = torch.zeros(())
    assert float(normal_kl(torch.tensor(0.3), torch.tensor(-1.2), torch.tensor(0.3),
                           torch.tensor(-1.2))) == 0.0
    # KL(N(0, 1) || N(1, 4)) = log 2 + (1 + 1) / 8 - 1/2
    kl = normal_kl(z, z, torch.tensor(1.0), torch.tensor(math.log(4.0)))
    assert math.isclose(float(kl), math.log(2) + 0.25 - 0.5, rel_tol=1e-6)


def test_vb_terms_vanish_for_the_true_noise() -> None:
    """With eps = the true noise the model mean is the posterior mean; with the fixedsmall
    variance every KL term L_(t-1), t >= 1, is then exactly 0."""
    sch = DiffusionSchedule.from_name("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x_0, noise = torch.randn(8, 3, generator=g, dtype=F64), torch.randn(8, 3, generator=g,
                                                                        dtype=F64)
    t = torch.tensor([1, 2, 10, 100, 500, 900, 998, 999])
    x_t = sch.q_sample(x_0, t, noise)
    vb = sch.vb_term(x_0, x_t, t, noise, "fixedsmall", "gaussian", clip=False)
    assert torch.allclose(vb, torch.zeros(8, dtype=F64), atol=1e-8)
    assert torch.all(sch.vb_term(x_0, x_t, t, noise, "fixedlarge", "gaussian", False) >= 0)


class DiscreteOracle(nn.Module):
    """E[eps | x_t] for data N(m, diag(s2)) at integer index t (the ideal DDPM network):
    sqrt(1 - ab_t) (x_t - sqrt(ab_t) m) / (ab_t s2 + 1 - ab_t)."""

    def __init__(self, sch: DiffusionSchedule, m: Tensor, s2: Tensor) -> None:
        super().__init__()
        self.sch, self.m, self.s2 = sch, m, s2
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, index: Tensor) -> Tensor:
        ab = self.sch.alphas_cumprod[index.round().long().cpu()].to(x).reshape(-1, 1)
        m, s2 = self.m.to(x), self.s2.to(x)
        return (1 - ab).sqrt() * (x - ab.sqrt() * m) / (ab * s2 + 1 - ab)


@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_bound_of_the_ideal_network_has_the_analytic_gap(ddpm_cls, variance: str) -> None:
    """For data N(0, I) the ideal reverse step is N(sqrt(alpha_t) x_t, beta_t), so the whole
    chain is exact except the fixed variances: E[negELBO] - H = sum_t (d/2)(r - 1 - log r),
    r = true / model variance (fixedlarge: only the decoder, r = beta_0 / beta~_1;
    fixedsmall: r_t = beta_t / beta~_t at every t). Checks prior, KLs and decoder together."""
    n, T = 20000, 100
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(7))
    method = make(ddpm_cls, splits_of(x), make_context(seed=3), T=T, variance=variance,
                  eval_chunk=n)
    sch = method.schedule
    method.net = DiscreteOracle(sch, torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64))
    d = -method.extra_likelihoods(x)["elbo"].values.double() - (
        0.5 * (x.double() ** 2).sum(1) + math.log(2 * math.pi))
    pv = sch.posterior_variance
    if variance == "fixedlarge":
        r = sch.betas[:1] / pv[1]
    else:
        r = sch.betas / torch.cat([pv[1:2], pv[1:]])
    expected = float((r - 1 - r.log()).sum())  # 2 dims x 1/2
    assert abs(float(d.mean()) - expected) < 4 * float(d.std()) / math.sqrt(n)


# a known-density dataset ---------------------------------------------------------------
CENTERS = torch.tensor([[1.5, 1.5], [-1.5, 1.5], [1.5, -1.5], [-1.5, -1.5]], dtype=F64)
STD = 0.4


def mixture_sample(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 4, (n,), generator=g)
    return CENTERS[k] + STD * torch.randn(n, 2, generator=g, dtype=F64)


def mixture_log_prob(x: Tensor) -> Tensor:
    lp = gaussian_log_prob(x[:, None, :].double(), CENTERS[None], torch.full((1, 4, 2), STD**2,
                                                                             dtype=F64))
    return torch.logsumexp(lp, 1) - math.log(4)


def test_bound_is_above_the_true_nll_after_training(ddpm_cls) -> None:
    """What is guaranteed, and asserted (paired differences, 3 standard errors):
    - negELBO(x) >= -log p_theta(x) for the discrete DDPM model (the estimator is unbiased),
      and E_data[-log p_theta] >= E_data[-log p_data] (Gibbs), so mean negELBO >= true NLL;
    - the PF-ODE model is another normalized density (a flow from N(0, I)), so its mean NLL
      is >= the true NLL as well (up to solver error).
    Not asserted: negELBO >= PF-ODE NLL. The two are different models sharing one network,
    so the bound need not hold between them (it usually does after short training)."""
    torch.manual_seed(0)
    x = mixture_sample(3000, seed=0).float()
    method = make(ddpm_cls, splits_of(x), T=1000, hidden=(128, 128), time_embed_dim=32,
                  batch_size=256)
    trainer = trainer_of(method, lr=2e-3)
    train = x[:2400]
    for step in range(1200):
        out = trainer.step(train[torch.randint(0, train.shape[0], (256,))], step)
    assert math.isfinite(out["loss"])
    test = mixture_sample(600, seed=1).float()
    true_nll = -mixture_log_prob(test)
    elbo = method.extra_likelihoods(test)["elbo"]
    assert elbo.kind == "bound" and "all 999 KL terms" in elbo.estimator
    d = -elbo.values.double() - true_nll
    assert d.mean() >= -3 * d.std() / math.sqrt(d.numel())
    ode = method.log_prob(test)
    d_ode = -ode.values.double() - true_nll
    assert d_ode.mean() >= -3 * d_ode.std() / math.sqrt(d_ode.numel()) - 1e-2
    # sanity that training did something (not a theorem): the bound is within 1.5 nats
    assert float(d.mean()) < 1.5, float(d.mean())


# contract ------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["simple", "vlb", "hybrid"])
def test_train_step_finite_and_gradients_reach_every_parameter(ddpm_cls, loss: str) -> None:
    torch.manual_seed(0)
    x = mixture_sample(200, seed=3).float()
    method = make(ddpm_cls, splits_of(x), loss=loss)
    out = trainer_of(method).step(x[:64], 0)
    assert math.isfinite(out["loss"]) and "grad_norm" in out and out["lr"] == 1e-3
    assert ("vlb" in out) == (loss != "simple")
    for name, p in method.net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("ema", [0.0, 0.9999])
def test_state_round_trip_gives_identical_likelihoods(ddpm_cls, ema: float) -> None:
    """Through the harness's snapshot/restore, with and without Ho et al.'s warmed-up EMA
    (evaluated with the averaged weights)."""
    torch.manual_seed(0)
    x = mixture_sample(200, seed=4).float()
    a = make(ddpm_cls, splits_of(x), elbo_t_draws=4)
    ta = trainer_of(a, ema=ema)
    for step in range(3):
        ta.step(x[:64], step)
    b = make(ddpm_cls, splits_of(x), elbo_t_draws=4)
    tb = trainer_of(b, ema=ema)
    restore(b, tb, snapshot(a, ta))
    test = x[:20]
    with ta.averaged():
        la, ea = a.log_prob(test), a.extra_likelihoods(test)["elbo"]
    with tb.averaged():
        lb, eb = b.log_prob(test), b.extra_likelihoods(test)["elbo"]
    assert torch.equal(la.values, lb.values)
    assert torch.equal(ea.values, eb.values) and "4 uniform draws" in ea.estimator
    if ema:  # the average (decay 2/11, 3/12, 4/13 warm-up) is not the live network
        assert not torch.equal(la.values, a.log_prob(test).values)


@pytest.mark.parametrize(("sampler", "steps", "nfe"), [("ancestral", 0, 100),
                                                       ("ancestral", 10, 10), ("ddim", 10, 10)])
def test_samples_shape_and_nfe(ddpm_cls, sampler: str, steps: int, nfe: int) -> None:
    """The harness counts the sampler's network calls (one writer of ``sample_nfe``): one
    per step of the chain; the method itself records nothing."""
    from bench.harness.scoring.image_samples import generate

    logged: dict[str, float] = {}
    ctx = make_context(log_metrics=lambda m, step=None: logged.update(m))
    x = mixture_sample(200, seed=5).float()
    method = make(ddpm_cls, splits_of(x), ctx, sampler=sampler, sample_steps=steps)
    s, counted = generate(method, 7)
    assert s.shape == (7, 2) and s.dtype == torch.float32 and torch.isfinite(s).all()
    assert counted == nfe and "sample_nfe" not in logged


def test_ddim_with_ideal_network_reaches_the_data_distribution(ddpm_cls) -> None:
    """Deterministic DDIM with the exact Gaussian score lands on N(m, s^2) (moments) when it
    takes every step; with 100 steps the narrow component's variance is ~8% low (Euler
    discretisation error of DDIM; measured 0.082 vs 0.09), with 1000 steps ~1%."""
    m, s2 = torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.09, 2.25], dtype=F64)
    method = make(ddpm_cls, splits_of(torch.zeros(10, 2)), T=1000, sampler="ddim",
                  sample_steps=1000)
    method.net = DiscreteOracle(method.schedule, m, s2)
    torch.manual_seed(0)
    s = method.sample(10000).double()
    assert torch.allclose(s.mean(0), m, atol=0.03)
    assert torch.allclose(s.var(0), s2, rtol=0.06)


# images --------------------------------------------------------------------------------
def square_images(shape: tuple[int, ...] = (1, 8, 8), n: int = 200) -> Splits:
    """Images in [-1, 1]: a bright square on a noisy dark background."""
    g = torch.Generator().manual_seed(0)
    x = 0.2 * torch.randn(n, *shape, generator=g) - 0.5
    x[..., 2:6, 2:6] += 1.0
    x = x.clamp(-1, 1)
    return Splits(x[:150], x[150:175], x[175:], shape, "squares (test)",
                  dequantization="uniform-8bit")


def test_image_training_decreases_the_loss(ddpm_cls) -> None:
    """The shared U-Net on (1, 8, 8) images through the harness's trainer with DDPM's image
    defaults (lr raised for a short run): finite losses that fall on average."""
    torch.manual_seed(0)
    splits = square_images()
    method = make(ddpm_cls, splits)
    assert method.net.__class__.__name__ == "UNet"
    optim = OptimConfig(**{**ddpm_cls.default_optim("image"), "lr": 3e-3})
    t = Trainer(method, optim, total_steps=30)
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(30):
        idx = torch.randint(0, 150, (32,), generator=g)
        losses.append(t.step(splits.train[idx], step)["loss"])
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10, losses


@pytest.mark.parametrize(("shape", "kind"), [((1, 4, 4), "exact"), ((3, 8, 8), "estimate")])
def test_pf_ode_likelihood_kind_follows_the_auto_divergence(ddpm_cls, shape, kind) -> None:
    """divergence=auto: exact trace up to 128 dimensions, Hutchinson's (kind "estimate")
    above; the label says which was used."""
    splits = square_images(shape)
    method = make(ddpm_cls, splits, make_context(solver=SolverConfig(rtol=1e-2, atol=1e-2)))
    ll = method.log_prob(splits.test[:2])
    assert ll.kind == kind and ll.values.shape == (2,) and torch.isfinite(ll.values).all()
    assert ("div=exact" if kind == "exact" else "div=hutchinson") in ll.estimator
