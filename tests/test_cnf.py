"""Tests of the maximum-likelihood CNF (methods/cnf.py), the ODE engine that trains and
scores it (bench/science/ode.py, bench/science/divergence.py) and the FFJORD adapter
(methods/ffjord.py).

Closed form used throughout: the linear field v(t, x) = A x carries x_0 ~ N(0, I) at t=0
to x_1 = expm(A) x_0, so log p_1(x) = log N(expm(-A) x; 0, I) - tr(A).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from bench.api import OptimConfig, RunContext, SolverConfig, Splits
from bench.api.errors import ConfigError, PluginUnavailable
from bench.harness import make_context
from bench.harness.planning.registry import Registry
from bench.harness.planning.selection import build_params
from bench.harness.training.checkpoint import restore, snapshot
from bench.harness.training.optim import Trainer
from bench.science.nets import build_net
from bench.science.ode import (
    CountingField,
    TrainConfig,
    draw_probes,
    log_likelihood,
    training_log_likelihood,
)

FFJORD_MESSAGE = "submodule not checked out: run git submodule update --init submodules/ffjord"
F64 = torch.float64


def std_normal_log_prob(z: Tensor) -> Tensor:
    return -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


def closed_form(a: Tensor, x: Tensor) -> Tensor:
    """log p_1(x) of the linear flow dx/dt = A x from N(0, I); x (n, d) -> (n,)."""
    return std_normal_log_prob(x @ torch.linalg.matrix_exp(-a).T) - torch.trace(a)


class Linear(nn.Module):
    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return x @ self.a.T


def hadamard_probes(n: int) -> Tensor:
    """(4, n, 4) Rademacher probes with (1/4) sum_k eps_k eps_k^T = I exactly."""
    h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=F64)
    return h[:, None, :].expand(4, n, 4).clone()


@pytest.fixture
def linear_problem() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    a = 0.5 * torch.randn(4, 4, generator=g, dtype=F64)
    x = torch.randn(6, 4, generator=g, dtype=F64)
    return a, x


def make_cnf(dim: int = 2, n: int = 256, ctx: RunContext | None = None, **overrides):
    cls = Registry().get("method", "cnf")
    params = build_params(cls.Params, {**cls.test_params, **overrides}, "cnf")
    g = torch.Generator().manual_seed(1)
    # a 2-D toy: two Gaussian blobs
    centers = torch.tensor([[-1.5] + [0.0] * (dim - 1), [1.5] + [0.0] * (dim - 1)])
    data = centers[torch.randint(0, 2, (3 * n,), generator=g)]
    data = data + 0.3 * torch.randn(3 * n, dim, generator=g)
    splits = Splits(train=data[:n], val=data[n:2 * n], test=data[2 * n:],
                    event_shape=(dim,), provenance="two blobs (test)")
    return cls(params, splits, ctx or make_context()), splits


def trainer(method, **optim) -> Trainer:
    """The harness's optimiser for ``method`` with its tabular defaults (and ``optim``)."""
    return Trainer(method, OptimConfig(**{**method.default_optim("tabular"), **optim}))


# -- likelihood against the closed form ------------------------------------------------------
@pytest.mark.parametrize("adjoint", [True, False])
def test_training_engine_linear_field_closed_form(linear_problem, adjoint):
    a, x = linear_problem
    field = Linear(a)
    cfg = TrainConfig(rtol=1e-10, atol=1e-10, probe="rademacher", adjoint=adjoint)
    res = training_log_likelihood(field, x, std_normal_log_prob, cfg,
                                  probes=hadamard_probes(x.shape[0]))
    exact = closed_form(a, x)
    torch.testing.assert_close(res.log_prob, exact, rtol=0, atol=1e-6)
    torch.testing.assert_close(res.z, x @ torch.linalg.matrix_exp(-a).T, rtol=0, atol=1e-7)
    # gradient (adjoint or backprop through the solver) against autograd of the closed form
    res.log_prob.mean().backward()
    a_req = a.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(closed_form(a_req, x).mean(), a_req)
    torch.testing.assert_close(field.a.grad, expected, rtol=0, atol=1e-6)


def test_training_engine_hutchinson_unbiased(linear_problem):
    a, x = linear_problem
    xs = x.repeat(500, 1)  # every row gets its own random probe
    cfg = TrainConfig(rtol=1e-9, atol=1e-9, probe="gaussian")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        res = training_log_likelihood(Linear(a), xs, std_normal_log_prob, cfg, generator=gen)
    err = res.log_prob - closed_form(a, xs)
    assert err.std() > 0.1  # one probe per solve: noisy per row ...
    assert err.mean().abs() < 4 * err.std() / math.sqrt(len(err))  # ... unbiased on average


def test_eval_engine_linear_field_closed_form(linear_problem):
    a, x = linear_problem
    cfg = SolverConfig(rtol=1e-10, atol=1e-10, divergence="exact")
    ll = log_likelihood(Linear(a), x, std_normal_log_prob, cfg)
    torch.testing.assert_close(ll.values, closed_form(a, x), rtol=0, atol=1e-6)


class Cubic(nn.Module):
    """net(t, x) + x^3: the larger the rows, the more steps an adaptive solver takes."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.net(t, x) + x**3


@pytest.mark.parametrize("adjoint", [True, False])
@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_evaluation_and_training_are_one_engine(divergence, adjoint):
    """The training solve under no_grad gives the evaluation's log-likelihoods bit for bit
    on the same field and probes, chunk by chunk, with the same NFE; the evaluation
    reports the NFE of one solve (the largest chunk's), not a sum over chunks."""
    torch.manual_seed(0)
    net = Cubic(build_net(3, (16,), "softplus", "concatsquash").double())
    scale = torch.tensor([0.1] * 4 + [1.0] * 4 + [2.0] * 2, dtype=F64)
    x = torch.randn(10, 3, dtype=F64) * scale[:, None]  # chunks of ever stiffer dynamics
    cfg = SolverConfig(rtol=1e-7, atol=1e-7, divergence=divergence, probe="rademacher",
                       n_probes=2, chunk=4)
    ll = log_likelihood(net, x, std_normal_log_prob, cfg, t=0.8, seed=5)
    train_cfg = TrainConfig(rtol=1e-7, atol=1e-7, divergence=divergence, probe="rademacher",
                            n_probes=2, adjoint=adjoint)
    gen = torch.Generator().manual_seed(5)  # the evaluation's probes, drawn per chunk
    values, nfes = [], []
    for xc in torch.split(x, cfg.chunk):
        probes = (draw_probes(tuple(xc.shape), 2, "rademacher", gen, F64, "cpu")
                  if divergence == "hutchinson" else None)
        with torch.no_grad():
            res = training_log_likelihood(net, xc, std_normal_log_prob, train_cfg,
                                          probes=probes, t=0.8)
        assert not res.log_prob.requires_grad and res.nfe_backward == 0
        values.append(res.log_prob)
        nfes.append(res.nfe_forward)
    assert torch.equal(ll.values, torch.cat(values))
    assert len(set(nfes)) > 1  # the chunks needed different numbers of steps
    assert ll.nfe == max(nfes)
    # and that number is the field evaluations of one solve
    counted = CountingField(net)
    one = log_likelihood(counted, x, std_normal_log_prob,
                         SolverConfig(rtol=1e-7, atol=1e-7, divergence=divergence), t=0.8)
    assert one.nfe == counted.nfe > 0


@pytest.mark.parametrize("bad", [{"method": "leapfrog"}, {"method": "rk4"},
                                 {"divergence": "trace"}, {"probe": "uniform"},
                                 {"n_probes": 0}, {"rtol": 0.0}])
def test_train_config_rejects_bad_settings(bad):
    with pytest.raises(ConfigError):
        TrainConfig(**bad)


def test_cnf_method_linear_net_closed_form(linear_problem):
    """cnf with no hidden layer is linear once its biases are zero: both engines of the
    method (training solve, harness evaluation) give the closed-form density."""
    _, x = linear_problem
    ctx = make_context(solver=SolverConfig(rtol=1e-10, atol=1e-10))
    method, _ = make_cnf(dim=4, ctx=ctx, hidden=(), n_hidden=0, train_atol=1e-10,
                         train_rtol=1e-10, probe="rademacher")
    method.v.double()
    (layer,) = method.v.layers
    with torch.no_grad():
        layer.lin.bias.zero_()
        layer.hyper_bias.weight.zero_()
        layer.hyper_gate.weight.zero_()
    a = (torch.sigmoid(layer.hyper_gate.bias)[:, None] * layer.lin.weight).detach()
    exact = closed_form(a, x)
    torch.testing.assert_close(method.log_prob(x).values, exact, rtol=0, atol=1e-6)
    res = method.train_log_prob(x, probes=hadamard_probes(x.shape[0]))
    torch.testing.assert_close(res.log_prob.detach(), exact, rtol=0, atol=1e-6)


def test_rnode_states_linear_field(linear_problem):
    a, x = linear_problem
    probes = torch.randn(3, *x.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    cfg = TrainConfig(rtol=1e-10, atol=1e-10, kinetic=True, jacobian=True)
    with torch.no_grad():
        res = training_log_likelihood(Linear(a), x, std_normal_log_prob, cfg, probes=probes)
    # Jacobian term: |eps^T A|^2 is constant in time, averaged over the probes
    jac = ((probes @ a) ** 2).sum(-1).mean(0)
    torch.testing.assert_close(res.jacobian, jac, rtol=1e-8, atol=0)
    # kinetic term: int_0^1 |A x_t|^2 dt with x_t = expm(A (t - 1)) x, Gauss-Legendre
    nodes, weights = np.polynomial.legendre.leggauss(30)
    kin = torch.zeros(x.shape[0], dtype=F64)
    for s, w in zip(nodes, weights, strict=True):
        t = 0.5 * (s + 1)
        x_t = x @ torch.linalg.matrix_exp(a * (t - 1)).T
        kin += 0.5 * w * ((x_t @ a.T) ** 2).sum(1)
    torch.testing.assert_close(res.kinetic, kin, rtol=1e-8, atol=0)


# -- Hutchinson gradients ---------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_hutchinson_gradients_unbiased(solver):
    torch.manual_seed(0)
    net = build_net(2, (8,), "softplus", "concatsquash").double()
    x = torch.randn(8, 2, dtype=F64)
    step = {"step_size": 0.25} if solver == "rk4" else {"rtol": 1e-9, "atol": 1e-9}

    def grads(divergence: str, gen: torch.Generator | None = None) -> Tensor:
        net.zero_grad()
        cfg = TrainConfig(method=solver, divergence=divergence, **step)
        res = training_log_likelihood(net, x, std_normal_log_prob, cfg, generator=gen)
        (-res.log_prob.mean()).backward()
        return torch.cat([p.grad.reshape(-1) for p in net.parameters()])

    exact = grads("exact")
    gen = torch.Generator().manual_seed(1)
    draws = torch.stack([grads("hutchinson", gen) for _ in range(60)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert (se > 0).any()
    # rk4: same grid for every draw, the estimator is exactly unbiased; dopri5: tolerances
    slack = 1e-9 if solver == "rk4" else 1e-6
    assert ((mean - exact).abs() <= 4 * se + slack).all(), (mean - exact).abs() / (se + 1e-30)


# -- NFE counts -------------------------------------------------------------------------------
@pytest.mark.parametrize(("solver", "h", "per_step"), [("euler", 0.25, 1), ("rk4", 0.1, 4)])
def test_nfe_counts_fixed_step(linear_problem, solver, h, per_step):
    a, x = linear_problem
    field = Linear(a)
    cfg = TrainConfig(method=solver, step_size=h)
    res = training_log_likelihood(field, x, std_normal_log_prob, cfg,
                                  generator=torch.Generator().manual_seed(0))
    expected = round(per_step / h)
    assert res.nfe_forward == expected
    assert res.nfe_backward == 0  # nothing before backward()
    res.log_prob.sum().backward()
    assert res.nfe_backward == expected  # the adjoint solve uses the same grid


class DetachedTime(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.net(t.detach(), x)


def test_adjoint_does_not_integrate_time_gradients():
    """A time-dependent net costs the adjoint no extra steps for dL/dt, which is never used
    (torchdiffeq would otherwise carry it, see AugmentedDynamics.forward)."""
    torch.manual_seed(0)
    net = build_net(4, (32, 32), "softplus", "concatsquash")
    x = torch.randn(64, 4)
    counts = []
    for field in (net, DetachedTime(net)):
        res = training_log_likelihood(field, x, std_normal_log_prob, TrainConfig(),
                                      generator=torch.Generator().manual_seed(0))
        res.log_prob.mean().backward()
        counts.append((res.nfe_forward, res.nfe_backward))
    assert counts[0] == counts[1]


def test_cnf_step_reports_solver_nfe():
    method, splits = make_cnf(solver="rk4", step_size=0.25)
    out = trainer(method).step(splits.train[:32], 0)
    assert (out["nfe_forward"], out["nfe_backward"]) == (16, 16)
    method, _ = make_cnf(solver="rk4", step_size=0.25, adjoint=False)
    out = trainer(method).step(splits.train[:32], 0)
    assert (out["nfe_forward"], out["nfe_backward"]) == (16, 0)
    method, _ = make_cnf()  # dopri5, adaptive: the adjoint solve also did work
    out = trainer(method).step(splits.train[:32], 0)
    assert out["nfe_forward"] > 0 and out["nfe_backward"] > 0


# -- training steps ---------------------------------------------------------------------------
@pytest.mark.parametrize(("overrides", "optim"), [
    ({}, {}),
    ({"kinetic_weight": 0.1, "jacobian_weight": 0.1, "probe": "rademacher"}, {"grad_clip": 1.0}),
    ({"train_time": True, "net": "concat", "divergence": "exact"}, {}),
])
def test_cnf_train_step_end_to_end(overrides, optim):
    method, splits = make_cnf(**overrides)
    before = {k: p.detach().clone() for k, p in method.v.named_parameters()}
    out = trainer(method, **optim).step(splits.train[:64], 0)
    assert math.isfinite(out["loss"]) and out["loss"] > 0
    assert out["nfe_forward"] > 0 and out["nfe_backward"] > 0
    for name, p in method.v.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"
        assert not torch.equal(p.detach(), before[name]), f"{name} did not change"
    if overrides.get("kinetic_weight"):
        assert out["kinetic"] > 0 and out["jacobian_frobenius"] > 0
    if optim.get("grad_clip"):
        assert out["grad_norm"] > 0


def test_cnf_defaults_follow_ffjord_miniboone():
    cls = Registry().get("method", "cnf")
    p = cls.Params()
    assert (p.net, p.activation, p.batch_size) == ("concatsquash", "softplus", 1000)
    optim = OptimConfig(**cls.default_optim("tabular"))
    assert (optim.optimizer, optim.lr, optim.weight_decay) == ("adam", 1e-3, 1e-6)
    assert (p.train_atol, p.train_rtol, p.adjoint, p.probe) == (1e-8, 1e-6, True, "gaussian")
    assert p.widths(43) == (860, 860)


def test_cnf_state_dict_round_trip():
    method, splits = make_cnf()
    (tr := trainer(method)).step(splits.train[:64], 0)
    clone, _ = make_cnf()
    x = splits.test[:16]
    assert not torch.equal(clone.log_prob(x).values, method.log_prob(x).values)
    torch.save(snapshot(method, tr), buf := io.BytesIO())
    buf.seek(0)
    restore(clone, trainer(clone), torch.load(buf, weights_only=True))
    torch.testing.assert_close(clone.log_prob(x).values, method.log_prob(x).values)


def test_cnf_divergence_returns_non_finite_loss():
    method, splits = make_cnf()
    batch = splits.train[:16].clone()
    batch[0, 0] = float("nan")
    before = [p.detach().clone() for p in method.v.parameters()]
    out = trainer(method).step(batch, 1)  # step 0: the contract's finite-loss failure
    assert not math.isfinite(out["loss"])
    assert all(torch.equal(a, p) for a, p in zip(before, method.v.parameters(), strict=True))


# -- the FFJORD adapter -----------------------------------------------------------------------
def test_ffjord_unavailable_without_checkout(monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_FFJORD_DIR", str(tmp_path))  # an empty folder: no checkout
    reg = Registry()
    plugin = reg.plugins["method"]["ffjord"]
    assert not plugin.available and FFJORD_MESSAGE in plugin.error
    with pytest.raises(PluginUnavailable, match=FFJORD_MESSAGE):
        reg.get("method", "ffjord")


@pytest.mark.filterwarnings("ignore::UserWarning")  # the reference's torch.tensor(t)
def test_ffjord_adapter_matches_its_checkout_state():
    root = os.environ.get("BENCH_FFJORD_DIR")
    folder = Path(root) if root else Path(__file__).resolve().parents[1] / "submodules/ffjord"
    reg = Registry()
    if not (folder / "lib" / "layers" / "cnf.py").is_file():
        assert FFJORD_MESSAGE in reg.plugins["method"]["ffjord"].error
        with pytest.raises(PluginUnavailable, match=FFJORD_MESSAGE):
            reg.get("method", "ffjord")
        return
    # checked out: FFJORD's own training solve and ours on the same model and probe give
    # the same loss, NFEs and gradients; our evaluation agrees with FFJORD's
    cls = reg.get("method", "ffjord")
    _, splits = make_cnf()
    torch.manual_seed(0)
    method = cls(build_params(cls.Params, cls.test_params, "ffjord"), splits,
                 make_context(solver=SolverConfig(rtol=1e-6, atol=1e-6)))
    model, x = method.model, splits.train[:64]
    torch.manual_seed(7)
    eps = torch.randn(x.shape)
    torch.manual_seed(7)  # the reference draws its probe with randn_like at its first call
    z, delta = model(x, torch.zeros(x.shape[0], 1))
    loss = -(std_normal_log_prob(z) - delta.view(-1)).mean()
    nfe_forward = method.count_nfe()
    loss.backward()
    nfe_backward = method.count_nfe() - nfe_forward
    # (the reference's end time gets no gradient: it detaches T, see FFJORDParams)
    reference = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    assert "chain.0.sqrt_end_time" not in reference
    model.zero_grad()
    res = training_log_likelihood(method.velocity_field(), x, std_normal_log_prob,
                                  TrainConfig(rtol=1e-5, atol=1e-5), probes=eps[None])
    ours = -res.log_prob.mean()
    ours.backward()
    torch.testing.assert_close(ours, loss, rtol=1e-5, atol=1e-5)
    assert (res.nfe_forward, res.nfe_backward) == (nfe_forward, nfe_backward)
    grads = dict(model.named_parameters())
    for name, ref in reference.items():
        torch.testing.assert_close(grads[name].grad, ref, rtol=1e-2,
                                   atol=2e-3 * float(ref.abs().max()))
    out = trainer(method).step(x, 0)
    assert math.isfinite(out["loss"]) and out["nfe_forward"] > 0 and out["nfe_backward"] > 0
    xt = splits.test[:32]
    model.eval()
    for m in model.modules():
        if hasattr(m, "test_atol"):
            m.test_atol = m.test_rtol = 1e-6
    with torch.no_grad():
        z, delta = model(xt, torch.zeros(xt.shape[0], 1))
    reference_ll = std_normal_log_prob(z) - delta.view(-1)
    torch.testing.assert_close(method.log_prob(xt).values, reference_ll, rtol=0, atol=1e-4)


# -- images -----------------------------------------------------------------------------------
def _square_images(n: int = 150, seed: int = 0) -> Splits:
    """(1, 8, 8) images in [-1, 1]: a bright square on a noisy dark background."""
    g = torch.Generator().manual_seed(seed)
    x = 0.2 * torch.randn(n, 1, 8, 8, generator=g) - 0.5
    x[..., 2:6, 2:6] += 1.0
    x = x.clamp(-1, 1)
    return Splits(x[:100], x[100:125], x[125:], (1, 8, 8), "squares (test)",
                  dequantization="uniform-8bit")


def test_cnf_trains_on_images_with_hutchinson_and_the_adjoint():
    """The velocity U-Net on (1, 8, 8) images, trained like vectors (Hutchinson, adjoint,
    dopri5): finite losses that fall on average; the NLL of the zero field at step 0 is
    the base density's (the U-Net's output layer starts at zero)."""
    torch.manual_seed(0)
    cls = Registry().get("method", "cnf")
    params = build_params(cls.Params, {**cls.test_params, "train_atol": 1e-3,
                                       "train_rtol": 1e-3}, "cnf")
    splits = _square_images()
    method = cls(params, splits, make_context())
    assert (params.divergence, params.adjoint) == ("hutchinson", True)
    assert method.base_sample(2).shape == (2, 1, 8, 8)
    t = trainer(method, lr=5e-3)
    x = splits.train[:8]
    base_nll = float(-std_normal_log_prob(x.reshape(8, -1)).mean())
    losses = []
    for step in range(4):
        out = t.step(x, step)
        assert out["nfe_forward"] > 0 and out["nfe_backward"] > 0
        losses.append(out["loss"])
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] == pytest.approx(base_nll, rel=1e-5)
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 1.0, losses
