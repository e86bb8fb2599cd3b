"""``--json`` writes only JSON to stdout, also against a real tracking server (MLflow's
"View run ... at" lines go to stderr), and `bench table` reads the server's runs back."""

from __future__ import annotations

import json
import subprocess

import pytest

from ._server import ROOT, TINY, bench, env, mlflow_server


@pytest.fixture(scope="module")
def server(tmp_path_factory, _mlflow_template):
    with mlflow_server(tmp_path_factory.mktemp("server"), _mlflow_template) as (uri, _):
        yield uri


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(bench(*args), cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_json_against_server_then_table(server, tmp_path):
    res = _run("run", *TINY, "--steps", "20", "--seeds", "0,1", "--results-dir",
               str(tmp_path), "--tracking-uri", server, "--experiment", "team", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    records = json.loads(res.stdout)  # the whole of stdout is one JSON document
    assert [r["status"] for r in records] == ["FINISHED", "FINISHED"]
    assert {r["seed"] for r in records} == {0, 1}
    assert "View run" in res.stderr  # MLflow did speak, on stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store

    table = _run("table", "--tracking-uri", server, "--experiment", "team",
                 "--format", "json", "--metric", "test_nll")
    assert table.returncode == 0, table.stderr[-3000:]
    rows = json.loads(table.stdout)
    assert rows["interflow (exact)"]["8gaussians"].endswith("(2)"), rows  # two seeds
    ours = {r["run_id"]: r["test_nll"] for r in records}
    from bench.record.mlflow_sink import load_records

    back = {r.run_id: r.metrics["test_nll"] for r in load_records(server, "team")}
    assert back == pytest.approx(ours)


def test_json_on_fresh_sqlite_store(tmp_path):
    """A new store's migrations (alembic) and MLflow's logging stay off stdout."""
    res = _run("run", "-m", "gaussian_mle", "-d", "8gaussians[n_train=300,n_val=50,n_test=50]",
               "--n-samples", "0", "-q", "--results-dir", str(tmp_path), "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    (rec,) = json.loads(res.stdout)
    assert rec["status"] == "FINISHED" and rec["test_nll"] == rec["test_nll"]
    assert (tmp_path / "mlflow.db").is_file()
