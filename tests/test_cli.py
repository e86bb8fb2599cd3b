"""The CLI end to end with tiny budgets, and MLflow records read back through `bench table`."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from bench.cli.main import main

DIVERGING = '''
from dataclasses import dataclass
import torch
from bench.api import Method

@dataclass
class Params:
    batch_size: int = 8

class Diverging(Method):
    """Returns a finite loss twice, then NaN."""
    name = "diverging"
    Params = Params
    def __init__(self, params, splits, ctx):
        super().__init__(params, splits, ctx)
        self.w = torch.nn.Linear(2, 2)
    def train_step(self, batch, step):
        return {"loss": 1.0 if step < 2 else float("nan")}
    def modules(self):
        return {"w": self.w}
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
    records = json.loads(res.output)
    assert [r["seed"] for r in records] == [0, 1]
    for r in records:
        assert r["test_nll"] > r["true_test_nll"] - 0.5  # a model can't beat the truth much
        assert r["test_nll_se"] > 0 and r["test_nll_nfe"] > 0 and r["train_seconds"] > 0
    png = list((tmp_path / "results" / "artifacts").rglob("samples.png"))
    ckpt = list((tmp_path / "results" / "artifacts").rglob("checkpoint.pt"))
    assert len(png) == 2 and len(ckpt) == 2
    from bench.harness.run import load_checkpoint

    state = load_checkpoint(ckpt[0])
    assert state["method"] == "interflow" and state["params"]["hidden"] == (16, 16)

    out = tmp_path / "table.csv"
    res = cli("table", "--tracking-uri", cli.uri, "--format", "markdown", "--out", str(out))
    assert "interflow (exact)" in res.output and "truth (closed form)" in res.output
    assert "(2)" in res.output  # two seeds counted
    import pandas as pd

    tab = pd.read_csv(out, index_col=0)
    mean = sum(r["test_nll"] for r in records) / 2
    assert tab.loc["interflow (exact)", "8gaussians"].startswith(f"{mean:.3f}")


def test_recorded_params_metrics_and_tags(cli):
    cli("run", "-m", "interflow[hidden=(8,8)]", "-d", TOY, "--set", "lr=5e-3", *TINY)
    from bench.record.mlflow_sink import search_runs

    runs = search_runs(cli.uri)
    row = runs.iloc[0]
    assert row["params.p_method_lr"] == "0.005" and row["params.p_method_hidden"] == "(8, 8)"
    assert row["params.solver_rtol"] == "0.0001"
    assert row["tags.test_nll.kind"] == "exact" and "dopri5" in row["tags.test_nll.estimator"]
    assert "synthetic 8gaussians" in row["tags.dataset_provenance"]
    for m in ("train_seconds", "eval_seconds", "val_nll", "step_seconds", "loss",
              "epoch_seconds", "true_test_nll", "test_nll_se", "peak_mem_mb"):
        assert f"metrics.{m}" in runs.columns and runs[f"metrics.{m}"].notna().all(), m


@pytest.mark.parametrize("args, words", [
    (["-m", "interflw", "-d", "checkerboard"], ["unknown method 'interflw'",
                                                "did you mean 'interflow'"]),
    (["-m", "interflow[lr=abc]", "-d", "checkerboard"], ["bad value 'abc'"]),
    (["-m", "interflow", "-d", "checkerboard", "--set", "nope=1"], ["no selected method"]),
    (["-m", "interflow", "-d", "checkerbord"], ["did you mean 'checkerboard'"]),
    (["-m", "interflow", "-d", "checkerboard", "--solver", "rk9"],
     ["unknown evaluation solver 'rk9'"]),
    (["-m", "interflow[interpolant=zigzag]", "-d", "checkerboard", "--steps", "1"],
     ["unknown interpolant 'zigzag'"]),
])
def test_usage_errors_exit_2_with_one_line(cli, args, words):
    res = cli("run", *args, ok=False)
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line and line.startswith("error:")
    for w in words:
        assert w in line


def test_diverging_training_fails_cleanly_and_keeps_records(cli, tmp_path):
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "diverging.py").write_text(textwrap.dedent(DIVERGING))
    res = CliRunner().invoke(main, ["--plugins", str(tmp_path / "plug"), "run",
                                    "--tracking-uri", cli.uri, "-m", "interflow[hidden=(8,8)]",
                                    "-m", "diverging", "-d", TOY, *TINY])
    assert res.exit_code == 1
    assert "training diverged at step 3" in res.output
    from bench.record.mlflow_sink import search_runs

    runs = search_runs(cli.uri).set_index("params.method")
    assert runs.loc["interflow", "status"] == "FINISHED"
    assert runs.loc["diverging", "status"] == "FAILED"
    assert runs.loc["diverging", "metrics.loss"] == 1.0  # the steps before are kept


def test_missing_data_is_a_one_line_error(cli, tmp_path, monkeypatch):
    import bench.science.maf

    monkeypatch.setattr(bench.maf, "MAF_ARCHIVE_URL", "file:///nonexistent/data.tar.gz")
    res = cli("run", "-m", "interflow", "-d", "power", "--data-dir", str(tmp_path / "empty"),
              *TINY, ok=False)
    assert res.exit_code == 1
    assert res.output.count("\n") == 1 and "power" in res.output.lower()
    assert str(tmp_path / "empty") in res.output


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
    assert flow["params"]["interpolant"] == "trig"


def test_table_without_runs_is_an_error(cli):
    res = cli("table", "--tracking-uri", cli.uri, ok=False)
    assert res.exit_code == 2 and "no finished runs" in res.output


def test_table_labels_kind_and_estimator():
    import pandas as pd

    from bench.record.tables import comparison_table

    runs = pd.DataFrame([
        {"status": "FINISHED", "params.method": "m", "params.dataset": "d", "params.seed": s,
         "metrics.test_nll": v, "metrics.test_nll_elbo": v + 1, "tags.test_nll.kind": "exact",
         "tags.test_nll.estimator": est, "tags.test_nll_elbo.kind": "bound",
         "tags.dataset_provenance": "x"}
        for s, v, est in ((0, 1.0, "ode div=exact"), (1, 3.0, "ode div=exact"),
                          (2, 9.0, "ode div=hutchinson(rademacher,k=1)"))])
    tab = comparison_table(runs)
    assert tab.loc["m (exact)", "d"] == "2.000 ± 1.414 (2)"
    assert tab.loc["m (exact, hutchinson)", "d"] == "9.000 (1)"
    assert tab.loc["m [elbo] (bound)", "d"].endswith("(3)")
