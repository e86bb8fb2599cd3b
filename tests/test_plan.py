"""The plan phase: a grid is expanded into typed jobs and validated before any data is read
or any tracking run is opened."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from bench.api import ConfigError, Dataset
from bench.cli.main import main
from bench.harness.planning.plan import plan_jobs

TOY = "8gaussians[n_train=500,n_val=100,n_test=200]"


@pytest.fixture()
def no_data(monkeypatch):
    """Reading any dataset fails the test: the plan must not touch data."""
    def boom(self, *a, **k):
        raise AssertionError(f"the plan read the data of {self.name}")

    monkeypatch.setattr(Dataset, "splits", boom)
    monkeypatch.setattr(Dataset, "prepare", boom)


def _runs(uri):
    from bench.record.mlflow_sink import load_records

    return load_records(uri)


def test_unsupported_data_is_a_plan_error(no_data, tracking_uri, monkeypatch):
    """A method's supports() reason stops the plan (exit 2) before any data or run."""
    from bench.api import Method

    def vectors_only(cls, kind, shape):
        return None if kind != "image" else f"{cls.name} models flat vectors (d,) here"

    monkeypatch.setattr(Method, "supports", classmethod(vectors_only))
    res = _invoke("--tracking-uri", tracking_uri, "-m", "cnf", "-d", "cifar10")
    assert res.exit_code == 2, res.output
    assert "cannot model dataset 'cifar10'" in res.output
    assert "models flat vectors" in res.output
    assert not _runs(tracking_uri)


def _invoke(*args, plugins=None):
    pre = ["--plugins", str(plugins)] if plugins else []
    return CliRunner().invoke(main, [*pre, "run", *args])


@pytest.mark.parametrize("args, words", [
    (["-m", "interflow[interpolant=zigzag]", "-d", "miniboone"], ["zigzag", "interpolant"]),
    (["-m", "interflw", "-d", "checkerboard"], ["unknown method 'interflw'",
                                                "did you mean 'interflow'"]),
    (["-m", "interflow[lr=abc]", "-d", "checkerboard"], ["bad value 'abc'"]),
    (["-m", "interflow", "-d", "checkerboard", "--set", "nope=1"], ["no selected method"]),
    (["-m", "interflow", "-d", "checkerbord"], ["did you mean 'checkerboard'"]),
    (["-m", "interflow", "-d", "checkerboard", "--solver", "rk9"],
     ["unknown evaluation solver 'rk9'"]),
    (["-m", "interflow", "-d", "checkerboard", "--steps", "0"], ["--steps must be >= 1"]),
    (["-m", "interflow", "-d", "checkerboard", "--max-seconds", "0"],
     ["--max-seconds must be > 0"]),
    (["-m", "interflow[schedule=sometimes]", "-d", "checkerboard"], ["schedule"]),
    (["-m", "interflow[base=nosuch]", "-d", "checkerboard"], ["unknown dataset 'nosuch'"]),
    (["-m", "interflow", "-m", "gaussian_mle", "-d", "checkerboard", "-d", "miniboone",
      "--seeds", "0,x"], ["--seeds"]),
])
def test_bad_selection_exits_2_with_no_data_read_and_no_run(args, words, no_data,
                                                             tracking_uri):
    res = _invoke("--tracking-uri", tracking_uri, *args)
    assert res.exit_code == 2, res.output + repr(res.exception)
    line = res.output.strip()
    assert "\n" not in line and line.startswith("error:"), line
    for w in words:
        assert w in line, line
    assert _runs(tracking_uri) == []


def test_dry_run_prints_the_plan_and_runs_nothing(no_data, tracking_uri):
    res = _invoke("--tracking-uri", tracking_uri, "-m", "interflow[interpolant=linear]",
                  "-m", "gaussian_mle", "-d", TOY, "--seeds", "0,1", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("interflow", 0), ("interflow", 1), ("gaussian_mle", 0), ("gaussian_mle", 1)]
    assert rows[0]["params"] == "interpolant=linear" and "n_train=500" in rows[0][
        "dataset params"]
    assert _runs(tracking_uri) == []
    res = _invoke("--tracking-uri", tracking_uri, "-m", "interflow", "-d", TOY, "--dry-run")
    assert res.exit_code == 0 and "interflow" in res.stdout and "8gaussians" in res.stdout


def test_optimisation_settings_are_shared_and_typed(registry, no_data):
    (job,) = plan_jobs(registry, ["interflow[lr=3e-4]"], [TOY], [0], [("grad_clip", "0.5")])
    assert job.optim.lr == 3e-4 and job.optim.grad_clip == 0.5
    assert job.optim.schedule == "cosine"  # interflow's own default, not the global one
    (cnf,) = plan_jobs(registry, ["cnf"], [TOY], [0])
    assert cnf.optim.weight_decay == 1e-6 and cnf.optim.schedule == "constant"
    assert job.budget.steps == 15000 and job.budget.eval_every == 1000  # toy2d defaults
    (tab,) = plan_jobs(registry, ["interflow"], ["miniboone"], [0], max_seconds=5.0)
    assert tab.budget.steps is None and tab.budget.max_seconds == 5.0
    with pytest.raises(ConfigError, match="unknown parameter 'lrr'.*did you mean 'lr'"):
        plan_jobs(registry, ["interflow[lrr=1]"], [TOY], [0])


def test_dataset_reference_parameters_are_resolved_in_the_plan(registry, no_data):
    (plain,) = plan_jobs(registry, ["interflow"], ["checkerboard"], [0])
    assert plain.method_params.base is None and plain.refs == {}  # N(0, I): nothing to load
    (job,) = plan_jobs(registry, ["interflow[base=8gaussians]"], ["checkerboard"], [0])
    cls, params = job.refs["base"]
    assert cls.name == "8gaussians" and params.n_train > 0


BAD_DEFAULT = '''
from dataclasses import dataclass
import torch
from bench.api import LogLikelihood, Method

@dataclass
class Params:
    width: int = "wide"

class BadDefault(Method):
    """A Params default of the wrong type."""
    name = "bad_default"
    Params = Params
    def __init__(self, params, splits, ctx):
        super().__init__(params, splits, ctx)
        self.w = torch.nn.Linear(2, 2)
    def modules(self):
        return {"w": self.w}
    def loss(self, batch, step):
        return (self.w(batch) ** 2).mean()
    def sample(self, n):
        return torch.zeros(n, 2)
    def log_prob(self, x):
        return LogLikelihood(torch.zeros(x.shape[0]), "exact", "zero")
'''


def test_a_params_default_of_the_wrong_type_stops_the_plan(tmp_path, no_data, tracking_uri):
    """A plug-in defect, not a usage error: exit 1, one line, before any data or run."""
    (tmp_path / "bad_default.py").write_text(textwrap.dedent(BAD_DEFAULT))
    res = _invoke("--tracking-uri", tracking_uri, "-m", "bad_default", "-d", TOY,
                  plugins=tmp_path)
    assert res.exit_code == 1, res.output
    assert res.output.count("\n") == 1 and "'width' is declared int" in res.output
    assert _runs(tracking_uri) == []


PLAN_WITHOUT_TORCH = """
import contextlib, io, json, sys
from bench.cli.main import main
from bench.harness.planning.plan import plan_jobs, plan_table
from bench.harness.planning.registry import Registry

out = {}
with contextlib.redirect_stderr(io.StringIO()) as err:
    try:
        main(["run", "-m", "interflow[interpolant=zigzag]", "-d", "miniboone",
              "--tracking-uri", sys.argv[1]], standalone_mode=False)
        out["exit"] = 0
    except SystemExit as e:
        out["exit"] = e.code
out["error"] = err.getvalue()
with contextlib.redirect_stdout(io.StringIO()) as listing:
    main(["list", "--json"], standalone_mode=False)
out["listed"] = [(r["kind"], r["name"], r["available"]) for r in json.loads(listing.getvalue())]
reg = Registry()
methods = [m for m in reg.names("method") if reg.plugins["method"][m].available]
data = {d: reg.get("dataset", d) for d in reg.names("dataset")}
jobs = []
for m in methods:
    cls = reg.get("method", m)
    ok = [d for d, c in data.items() if cls.supports(c.kind, c.shape(c.Params())) is None]
    jobs += plan_jobs(reg, [m], ok)
plan_table(jobs)
out["planned"] = sorted({(j.method, j.dataset) for j in jobs})
out["loaded"] = [m for m in ("torch", "mlflow") if m in sys.modules]
print(json.dumps(out))
"""


def test_planning_imports_neither_torch_nor_mlflow(tmp_path):
    """A bad selection exits 2, and listing and planning a grid of every built-in method
    and dataset never import torch or mlflow (so they answer in well under a second)."""
    db = tmp_path / "x.db"
    res = subprocess.run([sys.executable, "-c", PLAN_WITHOUT_TORCH, f"sqlite:///{db}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["exit"] == 2 and "zigzag" in out["error"], out
    assert out["loaded"] == [], f"planning imported {out['loaded']}"
    assert not db.exists()
    listed = {(kind, name) for kind, name, _ in out["listed"]}
    builtin = {("method", m) for m in ("interflow", "cnf", "ddpm", "gaussian_mle", "ffjord")}
    assert builtin <= listed and len(listed) == len(out["listed"])
    planned_methods = {m for m, _ in out["planned"]}
    planned_data = {d for _, d in out["planned"]}
    available = {(k, n) for k, n, ok in out["listed"] if ok}
    assert planned_methods == {n for k, n in available if k == "method"}
    assert planned_data == {n for k, n in available if k == "dataset"} == \
        {n for k, n in listed if k == "dataset"}
