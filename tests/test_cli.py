"""The CLI end to end with tiny budgets, and MLflow records read back through `bench table`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli.main import main

PLUGINS = '''
from dataclasses import dataclass
import torch
from bench.api import Dataset, LogLikelihood, Method, Splits


@dataclass
class Params:
    batch_size: int = 8


class _Base(Method):
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
        return LogLikelihood(-(self.w(x) ** 2).sum(1), "exact", "toy")


class Diverging(_Base):
    """A finite loss twice, then NaN."""
    name = "diverging"

    def loss(self, batch, step):
        return super().loss(batch, step) * (1.0 if step < 2 else float("nan"))


class Raising(_Base):
    """A bug in a plug-in: any exception."""
    name = "raising"

    def loss(self, batch, step):
        raise RuntimeError("plug-in bug\\nsecond line")


class WrongShape(_Base):
    """log_prob returns (n, 1)."""
    name = "wrong_shape"

    def log_prob(self, x):
        return LogLikelihood(torch.zeros(x.shape[0], 1), "exact", "toy")


class WrongShapeAtTest(_Base):
    """A cheap validation signal of the right shape, a test log_prob of shape (n, 1)."""
    name = "wrong_shape_at_test"

    def validation_likelihood(self, x):
        return super().log_prob(x)

    def log_prob(self, x):
        return LogLikelihood(torch.zeros(x.shape[0], 1), "exact", "toy")


class NoModules(_Base):
    """No trainable parameters."""
    name = "no_modules"

    def modules(self):
        return {}


@dataclass
class DataParams:
    bad: str = "float64"


class BadData(Dataset):
    """float64 rows or NaN rows in the validation split."""
    name = "bad_data"
    kind = "toy2d"
    Params = DataParams

    def load(self):
        x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
        if self.params.bad == "float64":
            x = x.double()
        else:
            x[210:213, 0] = float("nan")
        return Splits(x[:200], x[200:250], x[250:], (2,), "synthetic bad data")
'''


@pytest.fixture()
def cli(tmp_path, monkeypatch, tracking_uri):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    uri = tracking_uri

    def invoke(*args, ok=True):
        res = runner.invoke(main, [*args[:1], *args[1:]] if args[0] != "run" else
                            ["run", "--tracking-uri", uri, "--results-dir",
                             str(tmp_path / "results"), *args[1:]])
        if ok:
            assert res.exit_code == 0, res.output + repr(res.exception)
        return res

    invoke.uri = uri
    return invoke


TINY = ["--steps", "30", "--eval-every", "15", "-q", "--n-samples", "500",
        "--rtol", "1e-4", "--atol", "1e-4"]
TOY = "8gaussians[n_train=500,n_val=100,n_test=200]"


def test_run_then_table(cli, tmp_path):
    res = cli("run", "-m", "interflow[hidden=(16,16),batch_size=64]", "-d", TOY,
              "--seeds", "0,1", "--json", *TINY)
    records = json.loads(res.stdout)  # stdout is pure JSON
    assert [r["seed"] for r in records] == [0, 1]
    for r in records:
        assert r["status"] == "FINISHED"
        assert r["test_nll"] > r["true_test_nll"] - 0.5  # a model can't beat the truth much
        assert r["test_nll_se"] > 0 and r["test_nll_nfe"] > 0 and r["train_seconds"] > 0
    png = list((tmp_path / "results" / "artifacts").rglob("samples.png"))
    ckpt = list((tmp_path / "results" / "artifacts").rglob("checkpoint.pt"))
    assert len(png) == 2 and len(ckpt) == 2
    from bench.harness.training.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt[0])
    assert state["method"] == "interflow" and tuple(state["method_params"]["hidden"]) == (16, 16)
    assert state["optim"]["schedule"] == "cosine" and "optimizer" in state

    out = tmp_path / "table.csv"
    res = cli("table", "--tracking-uri", cli.uri, "--format", "markdown", "--out", str(out))
    assert "interflow" in res.stdout and "truth (closed form)" in res.stdout
    assert "(2)" in res.stdout  # two seeds counted in one configuration
    import pandas as pd

    tab = pd.read_csv(out, index_col=0)
    mean = sum(r["test_nll"] for r in records) / 2
    row = next(i for i in tab.index if i.startswith("interflow"))
    assert tab.loc[row].iloc[0].startswith(f"{mean:.3f}")


def test_recorded_params_metrics_and_tags(cli):
    cli("run", "-m", "interflow[hidden=(8,8)]", "-d", TOY, "--set", "lr=5e-3", *TINY)
    from bench.record.mlflow_sink import load_records

    (rec,) = load_records(cli.uri, history=("loss", "val_nll"))
    assert rec.params["optim_lr"] == 0.005 and rec.params["p_method_hidden"] == (8, 8)
    assert rec.params["solver_rtol"] == 1e-4
    assert rec.tags["test_nll.kind"] == "exact" and "dopri5" in rec.tags["test_nll.estimator"]
    assert "synthetic 8gaussians" in rec.tags["dataset_provenance"]
    assert rec.tags["source.interflow"].startswith(str(Path("methods") / "interflow.py")) or \
        "interflow.py" in rec.tags["source.interflow"]
    for m in ("train_seconds", "val_seconds", "eval_seconds", "true_test_nll", "test_nll_se",
              "n_parameters", "best_val_nll"):
        assert m in rec.metrics, m
    assert len(rec.history["loss"]) == 30 and len(rec.history["val_nll"]) == 2


def test_one_failed_job_never_stops_the_grid(cli, tmp_path):
    """A plug-in raising RuntimeError in a three-job grid: the other two finish; the failed
    run keeps its one-line reason, its type and the traceback."""
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "plugins.py").write_text(PLUGINS)
    res = CliRunner().invoke(main, ["--plugins", str(plug), "run", "--tracking-uri", cli.uri,
                                    "--results-dir", str(tmp_path / "results"),
                                    "-m", "interflow[hidden=(8,8)]", "-m", "raising",
                                    "-m", "gaussian_mle", "-d", TOY, *TINY])
    assert res.exit_code == 1, res.output
    assert "raising" in res.stderr and "RuntimeError: plug-in bug" in res.stderr
    assert "1 of 3 run(s) did not finish" in res.stderr
    from bench.record.mlflow_sink import load_records

    runs = {r.method: r for r in load_records(cli.uri)}
    assert runs["interflow"].status == runs["gaussian_mle"].status == "FINISHED"
    bad = runs["raising"]
    assert bad.status == "FAILED" and bad.tags["failure.type"] == "RuntimeError"
    assert bad.tags["failure.reason"] == "RuntimeError: plug-in bug"
    tb = list((tmp_path / "results" / "artifacts").rglob("traceback.txt"))
    assert len(tb) == 1 and "second line" in tb[0].read_text()


@pytest.mark.parametrize("method, dataset, words", [
    ("diverging", TOY, "training diverged at step 3"),
    ("wrong_shape", TOY, "shape"),
    # caught before training (one fixed ODE step, a few validation rows), in check's words
    ("wrong_shape_at_test", TOY, "wrong_shape_at_test.log_prob(x) returned values of shape "
     "(n, 1) for a batch of n rows; expected (n,)"),
    ("no_modules", TOY, "no trainable parameters"),
    ("interflow[hidden=(8,8)]", "bad_data[bad=float64]", "float64"),
    ("interflow[hidden=(8,8)]", "bad_data[bad=nan]", "3 rows of the val split are not finite"),
])
def test_contract_faults_fail_the_run_with_one_sentence(cli, tmp_path, method, dataset,
                                                        words):
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "plugins.py").write_text(PLUGINS)
    res = CliRunner().invoke(main, ["--plugins", str(plug), "run", "--tracking-uri", cli.uri,
                                    "--results-dir", str(tmp_path / "results"), "-m", method,
                                    "-d", dataset, *TINY])
    assert res.exit_code == 1, res.output
    from bench.record.mlflow_sink import load_records

    (run,) = load_records(cli.uri, history=("loss",))
    assert run.status == "FAILED" and words in run.tags["failure.reason"], run.tags
    assert words in res.stderr
    if method == "diverging":
        assert [s for s, _ in run.history["loss"]] == [1, 2]  # the steps before are kept


def test_missing_data_is_a_one_line_error(cli, tmp_path, monkeypatch):
    import bench.data.maf

    monkeypatch.setattr(bench.data.maf, "MAF_ARCHIVE_URL", "file:///nonexistent/data.tar.gz")
    res = cli("run", "-m", "interflow", "-d", "power", "--data-dir", str(tmp_path / "empty"),
              *TINY, ok=False)
    assert res.exit_code == 1
    assert "power" in res.stderr.lower() and str(tmp_path / "empty") in res.stderr
    assert res.stdout == ""


def test_list_shows_plugins_and_unavailable_ones(cli, tmp_path):
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "broken.py").write_text("raise ImportError('needs libfoo')\n")
    res = CliRunner().invoke(main, ["--plugins", str(tmp_path / "plug"), "list"])
    assert res.exit_code == 0
    assert "interflow" in res.output and "miniboone" in res.output
    assert "broken" in res.output and "UNAVAILABLE" in res.output and "needs libfoo" in res.output
    res = CliRunner().invoke(main, ["list", "--json"])
    rows = json.loads(res.output)
    flow = next(r for r in rows if r["name"] == "interflow")
    assert flow["params"]["interpolant"] == "trig" and flow["optim"]["schedule"] == "cosine"
    # every enumerated option with its allowed values (issue 12's options included)
    assert flow["choices"]["sampler"] == ["ode", "sde"]
    assert flow["choices"]["gamma"] == ["none", "sqrt", "t1mt", "sin2"]
    assert "hidden" not in flow["choices"]  # a tuple, not an enumeration
    res = CliRunner().invoke(main, ["list", "-v"])
    assert "sampler=ode (ode|sde)" in res.output
    assert "gamma=none (none|sqrt|t1mt|sin2)" in res.output


def test_list_is_one_line_per_plugin_and_details_on_request():
    """Plain ``bench list``: a heading per kind and exactly one line per plug-in (the JSON
    rows name them all); ``bench list NAME`` shows that one with its parameters; an unknown
    NAME is one error line, exit 2."""
    rows = json.loads(CliRunner().invoke(main, ["list", "--json"]).output)
    out = CliRunner().invoke(main, ["list"]).output.splitlines()
    body = [line for line in out if line.startswith("  ")]
    assert sorted(line.split()[0] for line in body) == sorted(r["name"] for r in rows)
    assert not any("[" in line and "=" in line for line in body)  # no parameter lists
    one = CliRunner().invoke(main, ["list", "interflow"]).output
    assert "interflow" in one and "interpolant=trig" in one and "miniboone" not in one
    res = CliRunner().invoke(main, ["list", "interflw"])
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        "error: no plug-in named 'interflw' (did you mean 'interflow'?)"]


def test_table_without_runs_is_an_error(cli):
    res = cli("table", "--tracking-uri", cli.uri, ok=False)
    assert res.exit_code == 2 and "no finished runs" in res.output
