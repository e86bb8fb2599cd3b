"""Minibatch optimal-transport coupling (OT-CFM, `bench.science.couplings`) and InterFlow's
``coupling`` parameter: the plan against cases whose optimal pairing is known and against an
independent exact solver, the straighter pairs OT-CFM is known for against the closed form
of Gaussian to Gaussian, the method's loss on the re-paired batch, and a recorded run."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from click.testing import CliRunner

from bench.api import ConfigError, SolverConfig, Splits
from bench.harness import make_context
from bench.harness.planning.selection import build_params
from bench.science.couplings import couple, ot_plan, pairing_cost, sample_plan, squared_costs

F64 = torch.float64
EPS64 = 2.0**-52


def _permutation(plan: torch.Tensor) -> torch.Tensor:
    """The column matched to each row of a plan that is a permutation divided by n."""
    n = plan.shape[0]
    # entries are 1/n or 0 up to the solver's float64 rounding (sums of n weights 1/n)
    assert torch.allclose(plan * n, (plan * n).round(), atol=n * EPS64 * 8)
    ones = (plan * n).round()
    assert ones.sum(1).eq(1).all() and ones.sum(0).eq(1).all(), "not a permutation"
    return ones.argmax(1)


@pytest.mark.parametrize("shift", [0.0, 0.3, 5.0])
def test_plan_undoes_a_permutation_of_shifted_points(shift):
    """x_1 = x_0[perm] + delta. For any permutation sigma, sum_i |x_0[i] - x_1[sigma(i)]|^2
    = sum_i |x_0[i] - x_0[perm[sigma(i)]]|^2 + n |delta|^2 (the cross term
    -2 delta . sum_i (x_0[i] - x_0[perm[sigma(i)]]) vanishes: both sums run over every row),
    which is smallest (= n |delta|^2) exactly when perm[sigma(i)] = i for distinct points:
    the optimal pairing undoes the permutation, whatever the shift."""
    g = torch.Generator().manual_seed(0)
    n = 24
    x_0 = torch.randn(n, 2, generator=g, dtype=F64)
    perm = torch.randperm(n, generator=g)
    x_1 = x_0[perm] + shift * torch.tensor([1.0, -0.5], dtype=F64)
    sigma = _permutation(ot_plan(x_0, x_1))
    assert torch.equal(perm[sigma], torch.arange(n))


def test_plan_on_a_line_is_the_monotone_pairing():
    """In one dimension the squared cost is convex in x_0 - x_1, so the monotone (sorted)
    pairing is optimal (and unique for distinct points)."""
    g = torch.Generator().manual_seed(1)
    x_0, x_1 = torch.randn(40, 1, generator=g), 3 * torch.rand(40, 1, generator=g) - 1
    sigma = _permutation(ot_plan(x_0, x_1))
    ranks_0 = x_0[:, 0].argsort().argsort()
    assert torch.equal(sigma, x_1[:, 0].argsort()[ranks_0])


@pytest.mark.parametrize(("n", "d", "seed"), [(8, 2, 0), (64, 3, 1), (128, 2, 2)])
def test_plan_is_an_optimal_permutation(n, d, seed):
    """On equal batches the exact plan is a permutation / n, its pairs cost no more than the
    identity pairing (the independent coupling's) and exactly what scipy's Hungarian solver
    (an independent exact method) finds, up to the rounding of a sum of n float64 costs."""
    from scipy.optimize import linear_sum_assignment

    g = torch.Generator().manual_seed(seed)
    x_0 = torch.randn(n, d, generator=g, dtype=F64)
    x_1 = 2 * torch.randn(n, d, generator=g, dtype=F64) + 0.5
    plan = ot_plan(x_0, x_1)
    assert plan.shape == (n, n) and plan.dtype == F64 and (plan >= 0).all()
    sigma = _permutation(plan)
    cost = squared_costs(x_0, x_1)
    ours = float(cost[torch.arange(n), sigma].sum())
    rows, cols = linear_sum_assignment(cost.numpy())
    best = float(cost.numpy()[rows, cols].sum())
    assert abs(ours - best) <= 4 * n * EPS64 * best
    identity = float(cost.diagonal().sum())
    assert ours <= identity
    assert float(pairing_cost(x_0, x_1[sigma])) == pytest.approx(ours / n, rel=4 * n * EPS64)


def test_sampled_pairs_come_from_the_plan():
    g = torch.Generator().manual_seed(3)
    x_0, x_1 = torch.randn(32, 1, 4, 4, generator=g), torch.randn(32, 1, 4, 4, generator=g)
    sigma = _permutation(ot_plan(x_0, x_1))  # images: the cost of the flattened rows
    a, b = couple(x_0, x_1, "ot", torch.Generator().manual_seed(0))
    assert a.shape == x_0.shape and b.shape == x_1.shape
    for row_0, row_1 in zip(a, b, strict=True):  # every pair is an optimal pair (i, sigma(i))
        (i,) = [k for k in range(32) if torch.equal(x_0[k], row_0)]
        assert torch.equal(row_1, x_1[sigma[i]])
    # without replacement the k = n draws are the n pairs of the permutation, each once
    i, j = sample_plan(ot_plan(x_0, x_1), 32, torch.Generator().manual_seed(0), replace=False)
    assert sorted(i.tolist()) == list(range(32)) and torch.equal(j, sigma[i])
    assert couple(x_0, x_1, "independent") == (x_0, x_1)
    with pytest.raises(ValueError, match="unknown coupling 'sinkhorn'"):
        couple(x_0, x_1, "sinkhorn")


def test_ot_pairs_are_straighter_than_independent_pairs_gaussian_to_gaussian():
    """x_0 ~ N(0, I_2), x_1 ~ N(m, diag(s^2)). Independent pairs: E|x_1 - x_0|^2 =
    |m|^2 + sum_i (1 + s_i^2). The optimal coupling is x_1 = m + s * x_0, with W2^2 =
    |m|^2 + sum_i (1 - s_i)^2; the gap is 2 sum_i s_i (= 5 here). A batch's OT cost lies
    between the two on average: >= W2^2 (the cost is linear in the plan and the expected
    batch plan is a coupling of the two marginals) and <= the independent cost (the identity
    is one permutation; pairs drawn from the plan cost it on average). Its excess
    over W2^2 is the minibatch error, O(log n / n) per pair in 2-D (matching rate of n random
    points, times the variance scale ~ 4): ~0.1 at n = 256, so we require the reduction to be
    at least half the gap. Statistical checks allow 5 standard errors of the seeded batches."""
    m, s = torch.tensor([1.0, -1.0], dtype=F64), torch.tensor([0.5, 2.0], dtype=F64)
    independent = float(m @ m + (1 + s**2).sum())
    w2 = float(m @ m + ((1 - s) ** 2).sum())
    gap = independent - w2
    assert gap == pytest.approx(2 * float(s.sum()))
    g = torch.Generator().manual_seed(4)
    ind, ot = [], []
    for _ in range(12):
        x_0 = torch.randn(256, 2, generator=g, dtype=F64)
        x_1 = m + s * torch.randn(256, 2, generator=g, dtype=F64)
        ind.append(float(pairing_cost(x_0, x_1)))
        ot.append(float(pairing_cost(*couple(x_0, x_1, "ot", g))))
    ind_t, ot_t = torch.tensor(ind), torch.tensor(ot)
    se_ind, se_ot = ind_t.std() / math.sqrt(12), ot_t.std() / math.sqrt(12)
    assert abs(float(ind_t.mean()) - independent) <= 5 * se_ind  # the closed form holds
    assert float(ot_t.mean()) >= w2 - 5 * se_ot
    assert float(ind_t.mean() - ot_t.mean()) >= gap / 2


# -- InterFlow coupling=ot ----------------------------------------------------------------
def _interflow(registry, **over):
    cls = registry.get("method", "interflow")
    params = build_params(cls.Params, {**cls.test_params, **over}, "interflow")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 2, generator=g) * 0.5 + 1.0
    splits = Splits(x[:200], x[200:300], x[300:], (2,), "gauss (test)")
    ctx = make_context(solver=SolverConfig(rtol=1e-5, atol=1e-5))
    return cls(params, splits, ctx), splits


@pytest.mark.parametrize("over", [{"gamma": "sqrt"}, {"objective": "velocity_score"},
                                  {"interpolant": "learned"}, {"antithetic": True},
                                  {"record_path": True}])
def test_ot_coupling_refuses_what_it_would_not_mean(registry, over):
    cls = registry.get("method", "interflow")
    with pytest.raises(ConfigError, match="coupling=ot re-pairs x_0 and x_1") as err:
        build_params(cls.Params, {"coupling": "ot", **over}, "interflow")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("interpolant", ["linear", "trig"])
def test_loss_with_ot_coupling_is_the_loss_of_the_plans_pairs(registry, interpolant):
    """The loss of coupling=ot is G(v) on the pairs drawn from the batch's OT plan (the same
    draws by hand give the same number, bit for bit), and not the independent loss."""
    method, splits = _interflow(registry, interpolant=interpolant, coupling="ot")
    batch = splits.train[:64]
    state = method.gen.get_state()
    with torch.no_grad():
        got = method.loss(batch, 0)
        method.gen.set_state(state)
        x_0, t = method.base_sample(64), method.sample_time(64)
        indep = method.interpolant.sample(x_0, batch, t)
        x_0, x_1 = couple(x_0, batch, "ot", method.gen)
        path = method.interpolant.sample(x_0, x_1, t)

        def g(p):
            v = method.v(p.t, p.x_t)
            return ((v * v).sum(1) - 2 * (p.dx_t * v).sum(1)).mean()

        assert torch.equal(got, g(path))
        assert not torch.equal(got, g(indep))
    assert dataclasses.asdict(method.params)["coupling"] == "ot"


def test_bench_run_with_ot_coupling_trains_and_records_it(tmp_path, monkeypatch, one_thread):
    from bench.cli.main import main
    from bench.record.jsonl import JsonlSource

    monkeypatch.chdir(tmp_path)
    uri = f"jsonl://{tmp_path / 'store'}"
    res = CliRunner().invoke(main, [
        "run", "-m", "interflow[hidden=(8,8),batch_size=64,coupling=ot]", "-d",
        "8gaussians[n_train=300,n_val=100,n_test=100]", "--steps", "10", "--eval-every", "10",
        "-q", "--n-samples", "100", "--rtol", "1e-3", "--atol", "1e-3", "--json",
        "--tracking-uri", uri, "--results-dir", str(tmp_path / "results")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    (run,) = json.loads(res.stdout)
    assert run["status"] == "FINISHED" and math.isfinite(run["test_nll"])
    (rec,) = JsonlSource(tmp_path / "store").records("bench", history=("loss",))
    assert rec.params["p_method_coupling"] == "ot"
    assert len(rec.history["loss"]) == 10 and all(math.isfinite(v) for _, v in
                                                   rec.history["loss"])
