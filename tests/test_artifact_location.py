"""`--results-dir` decides where a run's artifacts go, also once the MLflow experiment exists
(its artifact location was fixed by the first run that created it): two runs of one
experiment with two results folders keep their artifacts each under its own folder, and
the records, `find_checkpoint` and `lab.load` find them there."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bench.cli.main import main

TOY = "8gaussians[n_train=400,n_val=100,n_test=100]"


def _run(uri: str, results: Path, seed: int) -> dict:
    res = CliRunner().invoke(main, ["run", "-m", "gaussian_mle", "-d", TOY, "--seeds",
                                    str(seed), "--tracking-uri", uri, "--results-dir",
                                    str(results), "--n-samples", "200", "-q", "--json"])
    assert res.exit_code == 0, res.output
    (rec,) = json.loads(res.stdout)
    assert rec["status"] == "FINISHED"
    return rec


def test_each_run_keeps_its_artifacts_under_its_own_results_dir(tracking_uri, tmp_path):
    from bench.record.mlflow_sink import find_checkpoint, load_records

    first, second = tmp_path / "first", tmp_path / "second"
    ids = {first: _run(tracking_uri, first, 0)["run_id"],
           second: _run(tracking_uri, second, 1)["run_id"]}
    records = {r.run_id: r for r in load_records(tracking_uri)}
    assert set(records) == set(ids.values())  # one experiment holds both runs
    for results, run_id in ids.items():
        folder = results / "artifacts" / run_id / "artifacts"
        assert (folder / "checkpoint.pt").is_file() and (folder / "samples.png").is_file()
        assert find_checkpoint(tracking_uri, run_id) == (folder / "checkpoint.pt").resolve()
        artifacts = records[run_id].artifacts
        assert artifacts["checkpoint.pt"] == (folder / "checkpoint.pt").resolve().as_uri()
        assert {"checkpoint.pt", "samples.png"} <= set(artifacts)
    # nothing of the second run landed in the first folder (the experiment's location)
    assert not (first / "artifacts" / ids[second]).exists()
    # the first run needed no tag (the experiment's location is its folder); the second has
    assert "bench.artifact_uri" not in records[ids[first]].tags
    assert records[ids[second]].tags["bench.artifact_uri"].startswith(second.resolve().as_uri())


def test_a_reloaded_run_from_another_results_dir_reproduces_its_nll(tracking_uri, tmp_path):
    """`lab.load` by run id finds the checkpoint of a run kept under the second folder."""
    from bench import lab

    _run(tracking_uri, tmp_path / "a", 0)
    rec = _run(tracking_uri, tmp_path / "b", 0)
    model = lab.load(rec["run_id"], tracking_uri=tracking_uri)
    assert model.path.is_relative_to((tmp_path / "b").resolve())
