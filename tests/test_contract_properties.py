"""One contract, two doors (issue 18, items 3 and 4): every broken plug-in fails its property
in ``bench check`` AND its run in ``bench run`` (recorded FAILED, never FINISHED), and both
print the same sentence; parameter domains declared on the ``Params`` field are refused at
plan time (exit 2, one line, nothing recorded); the evaluation path refuses a per-row
log-likelihood of the wrong shape; the row-independence tolerance is float rounding."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bench.cli.main import main

TOY = "8gaussians[n_train=500,n_val=100,n_test=200]"
RUN = ["--steps", "3", "--eval-every", "3", "-q", "--n-samples", "0", "--rtol", "1e-4",
       "--atol", "1e-4"]

RECTFLOW = '''
"""Rectified flow: the straight-line interpolant's velocity from N(0, I)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bench.api import FlowMethod, at_least


@dataclass
class Params:
    batch_size: int = field(default=64, metadata=at_least(1))
    hidden: int = field(default=16, metadata=at_least(1))


class Velocity(torch.nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d + 1, h), torch.nn.Tanh(),
                                       torch.nn.Linear(h, d))

    def forward(self, t, x):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        return self.net(torch.cat([x, t], 1))


class RectFlow(FlowMethod):
    """Rectified flow."""

    name = "rectflow"
    Params = Params
    test_params = {"batch_size": 32}

    def __init__(self, params, splits, ctx):
        super().__init__(params, splits, ctx)
        self.v = Velocity(splits.dim, params.hidden)

    def modules(self):
        return {"v": self.v}

    def velocity_field(self):
        return self.v

    def base_sample(self, n):
        return torch.randn(n, *self.event_shape)

    def base_log_prob(self, x_0):
        x = x_0.reshape(x_0.shape[0], -1)
        terms = -0.5 * x * x - 0.5 * math.log(2 * math.pi)
        return terms.sum(1)

    def loss(self, batch, step):
        x_0 = torch.randn_like(batch)
        t = torch.rand(batch.shape[0], 1)
        x_t = (1 - t) * x_0 + t * batch
        return ((self.v(t, x_t) - (batch - x_0)) ** 2).sum(1).mean()
'''

DIAG = '''
"""A diagonal Gaussian fitted by maximum likelihood (the README's example)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.api import LogLikelihood, Method


@dataclass
class Params:
    batch_size: int = 256


class DiagGaussian(Method):
    """Diagonal Gaussian, maximum likelihood."""

    name = "diag_gaussian"
    Params = Params
    test_params = {"batch_size": 32}
    optim = {"lr": 1e-2}

    def __init__(self, params, splits, ctx):
        super().__init__(params, splits, ctx)
        d = splits.dim
        self.net = torch.nn.ParameterDict({
            "mu": torch.nn.Parameter(torch.zeros(d)),
            "log_sigma": torch.nn.Parameter(torch.zeros(d)),
        })

    def modules(self):
        return {"net": self.net}

    def _log_prob(self, x):
        z = (x.flatten(1) - self.net["mu"]) / self.net["log_sigma"].exp()
        return (-0.5 * z**2 - self.net["log_sigma"] - 0.5 * math.log(2 * math.pi)).sum(1)

    def loss(self, batch, step):
        return -self._log_prob(batch).mean()

    def sample(self, n):
        z = torch.randn(n, self.net["mu"].numel())
        x = self.net["mu"] + self.net["log_sigma"].exp() * z
        return x.reshape(n, *self.event_shape)

    def log_prob(self, x):
        return LogLikelihood(self._log_prob(x), kind="exact", estimator="closed form")
'''

NOT_ROWWISE = ("rectflow.base_log_prob(x_0) depends on the other rows of its batch: a row "
               "evaluated alone gets another value than in the batch (beyond float rounding)")

# (id, file, replace, by, property, the sentence both commands print)
BROKEN = [
    ("scalar_base_log_prob", RECTFLOW, "return terms.sum(1)", "return terms.sum()",
     "base_log_prob.shape", "rectflow.base_log_prob(x_0) returned shape () for a batch of n "
     "rows; expected (n,)"),
    ("batch_mean_base_log_prob", RECTFLOW, "return terms.sum(1)",
     "return terms.sum(1).mean().expand(x.shape[0])", "base_log_prob.rows", NOT_ROWWISE),
    ("base_log_prob_not_summed", RECTFLOW, "return terms.sum(1)", "return terms",
     "base_log_prob.shape", "rectflow.base_log_prob(x_0) returned shape (n, 2) for a batch "
     "of n rows; expected (n,)"),
    ("non_scalar_loss", RECTFLOW, ".sum(1).mean()", ".sum(1)", "loss.scalar",
     "rectflow.loss(batch, step) has shape (n,) for a batch of n rows; expected a scalar "
     "(shape ())"),
    ("row_dependent_log_prob", DIAG, "LogLikelihood(self._log_prob(x),",
     'LogLikelihood(self._log_prob(x - x.mean(0) + self.net["mu"]),', "log_prob.rows",
     "diag_gaussian.log_prob(x) depends on the other rows of its batch: a row evaluated "
     "alone gets another value than in the batch (beyond float rounding)"),
    ("log_prob_not_summed", DIAG, "LogLikelihood(self._log_prob(x),",
     "LogLikelihood(self._log_prob(x)[:, None].expand(-1, 2),", "log_prob.shape",
     "diag_gaussian.log_prob(x) returned values of shape (n, 2) for a batch of n rows; "
     "expected (n,)"),
    ("wrong_sample_shape", DIAG, "return x.reshape(n, *self.event_shape)",
     "return x.reshape(n, *self.event_shape)[:, :1]", "sample.shape",
     "diag_gaussian.sample(n) returned shape (n, 1); expected (n, 2)"),
    ("raising_log_prob", DIAG, "    def log_prob(self, x):\n",
     "    def log_prob(self, x):\n        raise RuntimeError('boom')\n", "log_prob.shape",
     "diag_gaussian.log_prob(x) raised RuntimeError: boom"),
]


def _plugin(tmp_path: Path, stem: str, text: str) -> Path:
    folder = tmp_path / "plug" / "methods"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.py"
    path.write_text(text)
    return path


def _records(uri: str) -> list:
    from bench.record.mlflow_sink import load_records

    return load_records(uri)


@pytest.mark.parametrize("stem, text, old, new, prop, line", BROKEN,
                         ids=[b[0] for b in BROKEN])
def test_check_and_run_fail_with_the_same_sentence(tmp_path, tracking_uri, one_thread, stem,
                                                   text, old, new, prop, line):
    assert old in text
    path = _plugin(tmp_path, stem, text.replace(old, new))
    checked = CliRunner().invoke(main, ["check", str(path)])
    assert checked.exit_code == 1, checked.output
    assert f"FAIL {prop}: {line}" in checked.output.splitlines(), checked.output
    name = "rectflow" if text is RECTFLOW else "diag_gaussian"
    ran = CliRunner().invoke(main, ["--plugins", str(tmp_path / "plug"), "run",
                                    "--tracking-uri", tracking_uri, "--results-dir",
                                    str(tmp_path / "results"), "-m", name, "-d", TOY, *RUN])
    assert ran.exit_code == 1, ran.output
    assert f"FAILED: {line}" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.output
    (run,) = _records(tracking_uri)
    assert run.status == "FAILED" and run.tags["failure.reason"] == line, run.tags
    assert run.tags["failure.type"] in ("ContractError", "PluginRaised")


def test_the_unbroken_plugins_pass_both(tmp_path, tracking_uri, one_thread):
    """The templates themselves: every property holds and the run finishes (so each broken
    case above fails for its one change)."""
    for stem, text, name in (("rf", RECTFLOW, "rectflow"), ("dg", DIAG, "diag_gaussian")):
        path = _plugin(tmp_path, stem, text)
        checked = CliRunner().invoke(main, ["check", str(path)])
        assert checked.exit_code == 0, checked.output
        if name == "rectflow":
            assert {"PASS base_log_prob.shape", "PASS base_log_prob.rows",
                    "PASS log_prob.rows"} <= set(checked.output.splitlines())
    ran = CliRunner().invoke(main, ["--plugins", str(tmp_path / "plug"), "run",
                                    "--tracking-uri", tracking_uri, "--results-dir",
                                    str(tmp_path / "results"), "-m", "rectflow",
                                    "-m", "diag_gaussian", "-d", TOY, *RUN])
    assert ran.exit_code == 0, ran.output
    assert sorted(r.status for r in _records(tracking_uri)) == ["FINISHED", "FINISHED"]


# -- parameter domains ----------------------------------------------------------------------
@pytest.mark.parametrize("selection, line", [
    ("rectflow[batch_size=0]",
     "error: method 'rectflow': batch_size=0 is out of its domain (an integer >= 1)"),
    ("rectflow[batch_size=-5]",
     "error: method 'rectflow': batch_size=-5 is out of its domain (an integer >= 1)"),
    ("rectflow[batch_size=inf]",
     "error: bad value 'inf' for method 'rectflow' parameter 'batch_size' (int): must be a "
     "finite integer"),
    ("rectflow[batch_size=nan]",
     "error: bad value 'nan' for method 'rectflow' parameter 'batch_size' (int): must be a "
     "finite integer"),
    ("interflow[batch_size=0]",
     "error: method 'interflow': batch_size=0 is out of its domain (an integer >= 1)"),
    ("interflow[hidden=(8,0)]",
     "error: method 'interflow': hidden=(8, 0) is out of its domain (each an integer >= 1)"),
    ("interflow[t_min=0.5]",
     "error: method 'interflow': t_min=0.5 is out of its domain (a number in [0, 0.5))"),
    ("ddpm[ode_s_min=nan]",
     "error: method 'ddpm': ode_s_min=nan is out of its domain (a number in (0, 1))"),
])
def test_out_of_domain_is_refused_at_plan_time(tmp_path, tracking_uri, selection, line):
    _plugin(tmp_path, "rf", RECTFLOW)
    res = CliRunner().invoke(main, ["--plugins", str(tmp_path / "plug"), "run",
                                    "--tracking-uri", tracking_uri, "--results-dir",
                                    str(tmp_path / "results"), "-m", selection, "-d", TOY,
                                    *RUN])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [line]
    assert _records(tracking_uri) == []
    assert not (tmp_path / "results" / "runs").exists()


def test_dataset_domain_and_set_are_refused(tmp_path, tracking_uri):
    for args, line in (
            (["-m", "gaussian_mle", "-d", "8gaussians[n_test=0]"],
             "error: dataset '8gaussians': n_test=0 is out of its domain (an integer >= 1)"),
            (["-m", "interflow", "-d", TOY, "--set", "batch_size=-1"],
             "error: method 'interflow': batch_size=-1 is out of its domain (an integer "
             ">= 1)")):
        res = CliRunner().invoke(main, ["run", "--tracking-uri", tracking_uri,
                                        "--results-dir", str(tmp_path / "r"), *args, *RUN])
        assert res.exit_code == 2 and res.output.strip().splitlines() == [line], res.output
    assert _records(tracking_uri) == []


def test_list_shows_the_domains():
    res = CliRunner().invoke(main, ["list", "interflow"])
    assert "batch_size=512 (>= 1)" in res.output and "t_min=0.001 (in [0, 0.5))" in res.output
    res = CliRunner().invoke(main, ["list", "--json"])
    import json

    flow = next(r for r in json.loads(res.output) if r["name"] == "interflow")
    assert flow["domains"]["batch_size"] == "an integer >= 1"
    assert flow["domains"]["hidden"] == "each an integer >= 1"


def test_undeclared_batch_size_is_never_clamped(tmp_path, tracking_uri, one_thread):
    """A plug-in that declares no domain: batch_size=0 reaches the run, which fails before
    training with the ``batch_size`` property's sentence (it used to train with 1)."""
    _plugin(tmp_path, "dg", DIAG)
    res = CliRunner().invoke(main, ["--plugins", str(tmp_path / "plug"), "run",
                                    "--tracking-uri", tracking_uri, "--results-dir",
                                    str(tmp_path / "results"), "-m", "diag_gaussian["
                                    "batch_size=0]", "-d", TOY, *RUN])
    assert res.exit_code == 1, res.output
    (run,) = _records(tracking_uri)
    assert run.status == "FAILED"
    assert run.tags["failure.reason"] == (
        "diag_gaussian.batch_size() returned 0; expected an integer >= 1 (declare the "
        "parameter's domain: field(metadata=at_least(1)))")


def test_params_built_by_hand_are_held_to_their_domains(registry, toy_splits):
    """The plan refuses out-of-domain values; a ``Params`` built by hand (lab users, tests)
    meets the same domains when the plug-in is constructed."""
    import dataclasses

    from bench.api import ConfigError
    from bench.harness import make_context

    cls = registry.get("method", "interflow")
    bad = dataclasses.replace(cls.Params(), batch_size=0)
    with pytest.raises(ConfigError, match=r"batch_size=0 is out of its domain \(an integer"):
        cls(bad, toy_splits, make_context())
    ds = registry.get("dataset", "8gaussians")
    fields = {f.name for f in dataclasses.fields(ds.Params)}
    assert "n_train" in fields
    with pytest.raises(ConfigError, match="n_train=-3 is out of its domain"):
        ds(dataclasses.replace(ds.Params(), n_train=-3))


# -- the evaluation path, the first step, no trace ----------------------------------------
def test_evaluation_refuses_a_wrong_per_row_shape():
    """The engine that scores every flow checks base_log_prob's shape per chunk: a scalar
    would broadcast against the divergence integral into a wrong test NLL."""
    from bench.api import ContractError, SolverConfig
    from bench.science.ode import log_likelihood, standard_normal_log_prob

    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    cfg = SolverConfig(rtol=1e-4, atol=1e-4)
    ok = log_likelihood(lambda t, x: -x, x, standard_normal_log_prob, cfg)
    assert ok.values.shape == (16,)
    for bad, shape in ((lambda z: standard_normal_log_prob(z).sum(), "()"),
                       (lambda z: -0.5 * z * z, "(n, 2)")):
        for t in (1.0, 0.0):
            with pytest.raises(ContractError) as e:
                log_likelihood(lambda t, x: -x, x, bad, cfg, t=t)
            assert str(e.value) == (f"<lambda>(x_0) returned shape {shape} for a batch of n "
                                    "rows; expected (n,)")


def test_first_step_loss_must_be_finite():
    from bench.api import ContractError, OptimConfig, Splits
    from bench.harness import make_context
    from bench.harness.training.optim import Trainer

    ns: dict = {}
    exec(compile(DIAG, "diag", "exec"), ns)  # noqa: S102 - the plug-in text above
    cls = ns["DiagGaussian"]

    class NanLoss(cls):
        def loss(self, batch, step):
            return super().loss(batch, step) * float("nan")

    x = torch.randn(60, 2, generator=torch.Generator().manual_seed(0))
    splits = Splits(x[:40], x[40:50], x[50:], (2,), "rows")
    method = NanLoss(cls.Params(), splits, make_context())
    trainer = Trainer(method, OptimConfig())
    with pytest.raises(ContractError, match=r"^diag_gaussian\.loss\(batch, step\) is not "
                                            r"finite \(nan\)$"):
        trainer.step(x[:8], 0)
    assert math.isnan(trainer.step(x[:8], 1)["loss"])  # later: the divergence check's


def test_preflight_leaves_no_trace_in_the_random_streams(one_thread):
    """The run-time properties sample and draw base points: the run's generators (torch's
    and the method's own, ``extra_state``) are as before them."""
    from bench.api import Splits
    from bench.harness import make_context
    from bench.harness.planning.preflight import check_method_instance
    from bench.harness.planning.registry import Registry

    cls = Registry().get("method", "interflow")
    from bench.harness.planning.selection import build_params

    x = torch.randn(60, 2, generator=torch.Generator().manual_seed(0))
    splits = Splits(x[:40], x[40:50], x[50:], (2,), "rows")
    method = cls(build_params(cls.Params, {"hidden": (8, 8)}, "m"), splits, make_context())
    torch.manual_seed(3)
    before, own = torch.get_rng_state(), method.extra_state()["gen"].clone()
    check_method_instance(method, splits)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(method.extra_state()["gen"], own)


def test_row_tolerance_is_float_rounding():
    """A row-wise float32 network passes (its batched and single-row kernels differ by
    rounding); a coupling of 1e-3 of the batch mean (about 1e-3 of each value, over ten
    times the tolerance of 2^10 unit roundoffs x (1 + |value|) ~ 6e-5 x (1 + |value|))
    fails."""
    from bench.harness.planning.properties import rows_problem

    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(8, 256, generator=g) / 3, torch.randn(256, 8, generator=g) / 16
    x = torch.randn(4, 8, generator=g)

    def net(x):
        return -(torch.tanh(x @ w1) @ w2).pow(2).sum(1) - (x * x).sum(1)

    def coupled(x):
        v = net(x)
        return v + 1e-3 * v.mean()

    owner = type("M", (), {"name": "m"})()
    assert rows_problem(owner, "f(x)", net, x) is None
    assert rows_problem(owner, "f(x)", coupled, x) == (
        "m.f(x) depends on the other rows of its batch: a row evaluated alone gets another "
        "value than in the batch (beyond float rounding)")
