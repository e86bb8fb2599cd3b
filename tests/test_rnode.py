"""RNODE (Finlay et al. 2020, "How to train your neural ODE") in the MLE CNF: the kinetic
penalty int_0^1 |v(t, x_t)|^2 dt and the Jacobian Frobenius penalty int_0^1 |eps^T dv/dx|^2 dt
(Hutchinson's estimate of int |dv/dx|_F^2 dt) carried as extra states of the one ODE engine
(`bench.science.divergence.AugmentedDynamics`), their gradients, and the metrics the CNF
reports.

Closed forms on the linear field v(t, x) = A x. The training solve runs from the data x at
t=1 back to t=0 along x(s) = expm((s - 1) A) x, so with B = -A

    kinetic  = int_0^1 |A expm(-w A) x|^2 dw = x^T [int_0^1 expm(w B^T) A^T A expm(w B) dw] x,

the Gramian in brackets given exactly by Van Loan's block exponential (Van Loan 1978,
"Computing integrals involving the matrix exponential"): expm([[-B^T, Q], [0, B]]) =
[[., F12], [0, F22]] with int_0^1 expm(w B^T) Q expm(w B) dw = F22^T F12. The Jacobian is A at
every time, so the Jacobian state is |A^T eps|^2 per unit time, with mean |A|_F^2 over
probes E[eps eps^T] = I.

Tolerances of solves: dopri5 accepts a step when its local error estimate is at most
atol + rtol |y| (mixed norm over the states), so after at most nfe/6 steps (six new
evaluations per step) the global error is at most exp(L) * steps * (atol + rtol * scale), L
the field's Lipschitz constant |A|_2 over unit time (Gronwall) and scale the largest state
magnitude; we allow 10 times that for the estimate being an estimate.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch import Tensor, nn

from bench.api import Splits
from bench.harness import make_context
from bench.harness.planning.registry import Registry
from bench.harness.planning.selection import build_params
from bench.science.divergence import AugmentedDynamics
from bench.science.nets import build_net
from bench.science.ode import TrainConfig, draw_probes, training_log_likelihood

F64 = torch.float64
EPS64 = 2.0**-52
TOL = 1e-10  # rtol = atol of the tight solves


class Linear(nn.Module):
    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return x @ self.a.T


def std_normal_log_prob(z: Tensor) -> Tensor:
    return -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


def kinetic_closed_form(a: Tensor, x: Tensor) -> Tensor:
    """int_0^1 |A x(s)|^2 ds along x(s) = expm((s - 1) A) x, (n,), by Van Loan's block
    exponential (differentiable in A)."""
    d = a.shape[0]
    b = -a
    top = torch.cat([-b.T, a.T @ a], 1)
    bottom = torch.cat([torch.zeros_like(a), b], 1)
    e = torch.linalg.matrix_exp(torch.cat([top, bottom], 0))
    gram = e[d:, d:].T @ e[:d, d:]
    return ((x @ gram) * x).sum(1)


def solve_bound(nfe: int, a: Tensor, scale: float, factor: float = 10.0) -> float:
    """The module docstring's bound on a dopri5 solve's global error at rtol = atol = TOL."""
    lipschitz = float(torch.linalg.matrix_norm(a.detach(), ord=2))
    return factor * math.exp(lipschitz) * math.ceil(nfe / 6) * (TOL + TOL * scale)


@pytest.fixture
def problem() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    a = 0.5 * torch.randn(4, 4, generator=g, dtype=F64)  # not symmetric: A^T eps != A eps
    x = torch.randn(6, 4, generator=g, dtype=F64)
    probes = torch.randn(3, 6, 4, generator=g, dtype=F64)
    return a, x, probes


def test_van_loan_kinetic_matches_the_elementary_diagonal_form():
    """For A = diag(l): |A x(s)|^2 = sum_i l_i^2 x_i^2 exp(2 l_i (s - 1)), whose integral over
    [0, 1] is sum_i l_i x_i^2 (1 - exp(-2 l_i)) / 2; both are float64 expressions of O(1)
    terms, equal to rounding (a few hundred ulps allowed for the 8x8 matrix exponential)."""
    lam = torch.tensor([-0.7, 0.3, 1.2, 0.5], dtype=F64)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    elementary = (lam * x**2 * (1 - torch.exp(-2 * lam)) / 2).sum(1)
    torch.testing.assert_close(kinetic_closed_form(torch.diag(lam), x), elementary,
                               rtol=512 * EPS64, atol=0)


@pytest.mark.parametrize("adjoint", [True, False])
def test_penalties_and_their_gradients_match_the_closed_forms(problem, adjoint):
    """The kinetic state equals the Van Loan closed form, the Jacobian state |A^T eps|^2
    (mean over the probes; |A eps|^2 differs for this non-symmetric A), and the gradient of
    their sum with respect to A (through the adjoint solve, or backprop through the solver)
    equals autograd of the closed forms."""
    a, x, probes = problem
    field = Linear(a)
    cfg = TrainConfig(rtol=TOL, atol=TOL, kinetic=True, jacobian=True, adjoint=adjoint)
    res = training_log_likelihood(field, x, std_normal_log_prob, cfg, probes=probes)
    kin = kinetic_closed_form(a, x)
    scale = float(torch.cat([kin, x.abs().flatten()]).max())
    bound = solve_bound(res.nfe_forward, a, scale)
    assert (res.kinetic.detach() - kin).abs().max() <= bound
    jac = ((probes @ a) ** 2).sum(-1).mean(0)  # rows eps^T A
    wrong = ((probes @ a.T) ** 2).sum(-1).mean(0)  # A eps: the other product
    assert (jac - wrong).abs().min() > 1e3 * bound
    # a constant integrand: every Runge-Kutta step integrates it exactly, up to rounding
    torch.testing.assert_close(res.jacobian.detach(), jac, rtol=1e3 * EPS64, atol=0)

    (res.kinetic.mean() + res.jacobian.mean()).backward()
    a_req = a.clone().requires_grad_(True)
    closed = kinetic_closed_form(a_req, x).mean() + ((probes @ a_req) ** 2).sum(-1).mean()
    (expected,) = torch.autograd.grad(closed, a_req)
    nfe = res.nfe_forward + res.nfe_backward
    g_bound = solve_bound(nfe, a, float(expected.abs().max()) + scale)
    assert (field.a.grad - expected).abs().max() <= g_bound


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_jacobian_penalty_is_unbiased_for_the_frobenius_norm(kind):
    """One probe per row: the Jacobian state |A^T eps|^2 = eps^T S eps with S = A A^T has
    mean tr(S) = |A|_F^2 and variance 2 tr(S^2) (Gaussian) or 2 (tr(S^2) - sum_i S_ii^2)
    (Rademacher); the mean of n rows is within 5 of its standard errors."""
    g = torch.Generator().manual_seed(2)
    a = 0.5 * torch.randn(4, 4, generator=g, dtype=F64)
    n = 4000
    x = torch.randn(n, 4, generator=g, dtype=F64)
    probes = draw_probes((n, 4), 1, kind, g, F64, "cpu")
    cfg = TrainConfig(rtol=1e-6, atol=1e-6, probe=kind, jacobian=True)
    with torch.no_grad():
        res = training_log_likelihood(Linear(a), x, std_normal_log_prob, cfg, probes=probes)
    torch.testing.assert_close(res.jacobian, ((probes[0] @ a) ** 2).sum(1),
                               rtol=1e3 * EPS64, atol=0)
    s = a @ a.T
    var = 2 * (torch.trace(s @ s) - (0 if kind == "gaussian" else (s.diagonal() ** 2).sum()))
    se = math.sqrt(float(var) / n)
    assert abs(float(res.jacobian.mean()) - float((a**2).sum())) <= 5 * se


def _net() -> nn.Module:
    torch.manual_seed(0)
    return build_net(3, (16, 16), "tanh", "concatsquash").double()


def test_penalty_integrands_match_finite_differences_on_a_network():
    """On a tanh network: the kinetic integrand is |v|^2, the Jacobian integrand
    mean_k |eps_k^T J|^2 and the divergence estimate mean_k eps_k^T J eps_k, with J = dv/dx by
    central differences (h = 1e-5 in float64: truncation h^2/6 |v'''| ~ 1e-10 for weights of
    O(1), rounding 1e-16 |v| / h ~ 1e-11 per entry; relative 1e-7 leaves a factor ~100)."""
    net = _net()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, generator=g, dtype=F64)
    probes = torch.randn(2, 5, 3, generator=g, dtype=F64)
    dyn = AugmentedDynamics(net, "hutchinson", probes, kinetic=True, jacobian=True)
    t = torch.tensor(0.3, dtype=F64)
    with torch.no_grad():
        v, div, kin, jac = dyn(t, (x, torch.zeros(5, dtype=F64)))
        h = 1e-5
        cols = [(net(t, x + h * e) - net(t, x - h * e)) / (2 * h) for e in torch.eye(3, dtype=F64)]
        jacobian = torch.stack(cols, -1)  # (n, out, in)
    torch.testing.assert_close(kin, (v * v).sum(1), rtol=4 * EPS64, atol=0)
    vjp = torch.einsum("kno,noi->kni", probes, jacobian)  # eps^T J
    torch.testing.assert_close(jac, (vjp**2).sum(-1).mean(0), rtol=1e-7, atol=0)
    torch.testing.assert_close(div, (vjp * probes).sum(-1).mean(0), rtol=1e-7, atol=1e-9)


def test_penalty_gradients_match_finite_differences_on_a_network():
    """d/dtheta of mean(kinetic) + mean(jacobian) through rk4 (h = 0.25, backprop through the
    solver: the exact gradient of the discrete solve) against central differences of the same
    solve in 6 weights (h = 1e-5: truncation ~ h^2 |f'''| ~ 1e-10, rounding 1e-16 |f| / h;
    relative 1e-6 of the larger of |f| and 1)."""
    net = _net()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 3, generator=g, dtype=F64)
    probes = torch.randn(1, 8, 3, generator=g, dtype=F64)
    cfg = TrainConfig(method="rk4", step_size=0.25, adjoint=False, kinetic=True, jacobian=True)

    def penalty() -> Tensor:
        res = training_log_likelihood(net, x, std_normal_log_prob, cfg, probes=probes)
        return res.kinetic.mean() + res.jacobian.mean()

    value = penalty()
    value.backward()
    weight = next(p for p in net.parameters() if p.dim() == 2)
    grad = weight.grad.reshape(-1).clone()
    tol = 1e-6 * max(1.0, float(value.detach()))
    for k in range(0, weight.numel(), max(1, weight.numel() // 6))[:6]:
        flat = weight.data.reshape(-1)
        old = float(flat[k])
        with torch.no_grad():
            flat[k] = old + 1e-5
            up = float(penalty())
            flat[k] = old - 1e-5
            down = float(penalty())
            flat[k] = old
        assert abs((up - down) / 2e-5 - float(grad[k])) <= tol, k


# -- the CNF method: the objective and its metrics ------------------------------------------
def _cnf(**over):
    cls = Registry().get("method", "cnf")
    params = build_params(cls.Params, {**cls.test_params, **over}, "cnf")
    g = torch.Generator().manual_seed(1)
    data = torch.randn(192, 2, generator=g) * 0.5 + torch.tensor([1.0, -1.0])
    splits = Splits(data[:64], data[64:128], data[128:], (2,), "gauss (test)")
    return cls(params, splits, make_context()), splits


def test_cnf_objective_adds_the_weighted_penalties_and_reports_them():
    """objective = NLL + kinetic_weight * kinetic + jacobian_weight * jacobian_frobenius, in
    float32: three roundings of 2^-24 relative each of the summed magnitudes (4 allowed)."""
    method, splits = _cnf(kinetic_weight=0.3, jacobian_weight=0.2)
    objective, out = method.loss(splits.train, 0)
    assert {"loss", "kinetic", "jacobian_frobenius", "objective"} <= set(out)
    assert float(objective.detach()) == out["objective"]
    assert out["kinetic"] > 0 and out["jacobian_frobenius"] > 0
    terms = (out["loss"], 0.3 * out["kinetic"], 0.2 * out["jacobian_frobenius"])
    assert abs(out["objective"] - sum(terms)) <= 4 * 2.0**-24 * sum(abs(v) for v in terms)
    # without weights, no penalty state is integrated and none is reported
    method, _ = _cnf()
    objective, out = method.loss(splits.train, 0)
    assert not {"kinetic", "jacobian_frobenius", "objective"} & set(out)
    assert float(objective.detach()) == out["loss"]


def test_bench_run_records_the_rnode_penalties(tmp_path, monkeypatch, one_thread):
    """A suite page reads them from the record: per-step histories and the parameters."""
    from bench.cli.main import main
    from bench.record.jsonl import JsonlSource

    monkeypatch.chdir(tmp_path)
    uri = f"jsonl://{tmp_path / 'store'}"
    method = ("cnf[hidden=(8,8),batch_size=64,kinetic_weight=0.01,jacobian_weight=0.01,"
              "train_atol=1e-4,train_rtol=1e-4]")
    res = CliRunner().invoke(main, [
        "run", "-m", method, "-d", "8gaussians[n_train=200,n_val=50,n_test=50]",
        "--steps", "3", "--eval-every", "3", "-q", "--n-samples", "50", "--rtol", "1e-3",
        "--atol", "1e-3", "--json", "--tracking-uri", uri,
        "--results-dir", str(tmp_path / "results")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    (run,) = json.loads(res.stdout)
    assert run["status"] == "FINISHED"
    (rec,) = JsonlSource(tmp_path / "store").records("bench", history=None)
    assert rec.params["p_method_kinetic_weight"] == 0.01
    assert rec.params["p_method_jacobian_weight"] == 0.01
    for name in ("kinetic", "jacobian_frobenius", "objective"):
        series = rec.history[name]
        assert len(series) == 3 and all(math.isfinite(v) and v > 0 for _, v in series), name
