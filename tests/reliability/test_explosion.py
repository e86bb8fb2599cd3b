"""Divergence: a non-finite or exploding loss fails the run with its reason and keeps the
last good checkpoint (in the run folder and as the run's checkpoint.pt artifact)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from tests.reliability import _runs

SMALL_METHOD = "interflow[hidden=(16,16)]"
SMALL_DATA = "8gaussians[n_train=2000,n_val=200,n_test=200]"


def _job(registry, tmp_path, data_dir, sets=(), **budget):
    from bench.harness.planning.plan import plan_jobs

    (job,) = plan_jobs(registry, [SMALL_METHOD], [SMALL_DATA], [0], sets, steps=120,
                       eval_every=25, n_samples=0, data_dir=data_dir)
    return dataclasses.replace(job, work_dir=tmp_path / "run",
                               budget=dataclasses.replace(job.budget, **budget))


def _check_kept(record, folder, step):
    from bench.harness.training.checkpoint import load_checkpoint
    from bench.harness.training.runfolder import RunFolder

    f = RunFolder(folder)
    assert f.info()["status"] == "FAILED" and not f.resumable()
    kept = load_checkpoint(Path(record.artifacts["checkpoint.pt"]))  # weights_only=True
    assert kept["loop"]["step"] == step and kept["kind"] == "resume"
    for weights in kept["modules"].values():
        assert all(bool(v.isfinite().all()) for v in weights.values())


def test_exploding_finite_loss_fails_with_its_reason(registry, tmp_path, data_dir):
    from bench.harness.running.run import run_job
    from bench.record.memory import MemorySink

    job = _job(registry, tmp_path, data_dir, sets=(("lr", "1e3"),))
    rec = run_job(job, MemorySink(artifact_dir=tmp_path / "art"))
    assert rec.status == "FAILED", rec.metrics
    reason = rec.failure
    assert reason.startswith("training diverged at step 2: |loss| = ") and "1e+06 x" in reason
    assert [s for s, _ in rec.history["loss"]] == [1]  # the diverged step is not recorded
    assert math.isfinite(rec.history["loss"][0][1])
    _check_kept(rec, job.work_dir, 0)  # the initial state: the last good one


def test_nan_loss_fails_and_keeps_the_last_validation_checkpoint(registry, tmp_path,
                                                                  data_dir, monkeypatch):
    from bench.harness.running.run import run_job
    from bench.harness.training.optim import Trainer
    from bench.record.memory import MemorySink

    step = Trainer.step

    def nan_at_31(self, batch, k):
        out = step(self, batch, k)
        return {**out, "loss": math.nan} if k == 30 else out

    monkeypatch.setattr(Trainer, "step", nan_at_31)
    job = _job(registry, tmp_path, data_dir)
    rec = run_job(job, MemorySink(artifact_dir=tmp_path / "art"))
    assert rec.status == "FAILED" and rec.failure == "training diverged at step 31: loss = nan"
    _check_kept(rec, job.work_dir, 25)


def test_normal_training_never_trips_the_default_bound(registry, tmp_path, data_dir):
    """InterFlow's loss goes negative and grows in size as it trains: the default bound
    relative to the first step's |loss| must not mistake that for divergence."""
    from bench.harness.running.run import run_job
    from bench.record.memory import MemorySink

    rec = run_job(_job(registry, tmp_path, data_dir), MemorySink())
    assert rec.status == "FINISHED", rec.failure
    losses = [v for _, v in rec.history["loss"]]
    assert min(losses) < 0  # the regime the bound has to tolerate


def test_explosion_factor_is_validated_in_the_plan():
    from bench.api import Budget, ConfigError

    for bad in (-1.0, 0.5, 1.0):
        with pytest.raises(ConfigError, match="--explosion-factor"):
            Budget(explosion_factor=bad)
    assert Budget(explosion_factor=0).explosion_factor == 0


@pytest.mark.slow
def test_cli_lr_1e3_now_fails_with_the_reason(tmp_path, tracking_uri):

    res = _runs.run(tmp_path / "results", tracking_uri, "--set", "lr=1e3", steps=300)
    assert res.returncode == 1, res.stderr
    assert "training diverged at step 2" in res.stderr
    (run,) = _runs.history(tracking_uri, "bench")
    assert run.status == "FAILED" and run.tags["failure.reason"].startswith(
        "training diverged at step 2: |loss|")
    assert "checkpoint.pt" in run.artifacts
    assert (_runs.folder(tmp_path / "results") / "last.pt").is_file()


@pytest.mark.parametrize("args", [["--max-seconds", "0"], ["--max-seconds", "-3"],
                                  ["--steps", "0"]])
def test_zero_or_negative_budget_is_rejected_before_anything_runs(tmp_path, tracking_uri,
                                                                  args):
    from click.testing import CliRunner

    from bench.cli.main import main

    res = CliRunner().invoke(main, ["run", "-m", SMALL_METHOD, "-d", "8gaussians",
                                    "--data-dir", str(tmp_path / "no-data"),
                                    "--tracking-uri", tracking_uri,
                                    "--results-dir", str(tmp_path / "r"), *args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "must be" in lines[0], res.stderr
    assert not (tmp_path / "r" / "runs").exists()
