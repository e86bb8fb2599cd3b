"""Resuming a killed run: the run folder, its lock, the batch order, and SIGKILL + relaunch
continuing the same tracking run with the metric history of an uninterrupted run."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import torch

from bench.harness.training.loop import BatchOrder
from bench.harness.training.runfolder import RunFolder, RunLocked, job_key
from tests.reliability import _runs

SMALL_METHOD = "interflow[hidden=(16,16)]"
SMALL_DATA = "8gaussians[n_train=2000,n_val=200,n_test=200]"


def _job(registry, tmp_path, data_dir, **kw):
    from bench.harness.planning.plan import plan_jobs

    (job,) = plan_jobs(registry, [SMALL_METHOD], [SMALL_DATA], [0], (), steps=120,
                       eval_every=25, n_samples=0, data_dir=data_dir)
    return dataclasses.replace(job, work_dir=tmp_path / "run", **kw)


def test_batch_order_resumes_inside_an_epoch():
    """The batches after a restore (mid-epoch and at an epoch's end) are those an
    uninterrupted order yields."""
    def take(order, k):
        it = iter(order)
        return [next(it) for _ in range(k)]

    full = take(BatchOrder(50, 16, torch.Generator().manual_seed(3)), 12)  # 4 per epoch
    for cut in (2, 4, 5):
        first = BatchOrder(50, 16, torch.Generator().manual_seed(3))
        take(first, cut)
        state = first.state_dict()
        again = BatchOrder(50, 16, torch.Generator().manual_seed(99))
        again.load_state_dict(state)
        rest = take(again, 12 - cut)
        for (e1, i1, end1), (e2, i2, end2) in zip(full[cut:], rest, strict=True):
            assert e1 == e2 and end1 == end2 and torch.equal(i1, i2)


def test_job_key_is_stable_and_sees_what_defines_the_run(registry, tmp_path, data_dir):
    job = _job(registry, tmp_path, data_dir)
    assert job_key(job) == job_key(dataclasses.replace(job)) and len(job_key(job)) == 16
    assert job_key(job) == job_key(dataclasses.replace(job, device="cuda", data_dir=None,
                                                       checkpoint_minutes=1.0))
    assert job_key(job) != job_key(dataclasses.replace(job, seed=1))
    assert job_key(job) != job_key(dataclasses.replace(
        job, budget=dataclasses.replace(job.budget, steps=121)))


def test_a_locked_folder_refuses_a_second_runner(registry, tmp_path, data_dir):
    from bench.harness.running.run import run_job
    from bench.record.memory import MemorySink

    job = _job(registry, tmp_path, data_dir)
    holder = RunFolder(job.work_dir)
    holder.lock("first")
    sink = MemorySink()
    with pytest.raises(RunLocked, match="already running in another process"):
        run_job(job, sink)
    assert sink.record is None  # no run was opened
    holder.unlock()
    again = RunFolder(job.work_dir)
    again.lock()  # free once the holder lets go
    again.unlock()


class _StopAt:
    """A MemorySink whose process receives SIGTERM when step ``at`` is logged."""

    def __init__(self, at: int) -> None:
        from bench.record.memory import MemorySink

        self.inner, self.at = MemorySink(), at

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def log_metrics(self, metrics, step=None):
        self.inner.log_metrics(metrics, step)
        if step == self.at and "loss" in metrics:
            self.at = None
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("stop_at", [50, 63])  # at a validation step, and between two
def test_sigterm_then_resume_in_process_matches_an_uninterrupted_run(
        registry, tmp_path, data_dir, stop_at):
    from bench.harness.running.run import run_job
    from bench.harness.training.checkpoint import load_checkpoint
    from bench.harness.training.signals import RunInterrupted, catch_stops
    from bench.record.memory import MemorySink

    ref_sink = MemorySink()
    ref = run_job(dataclasses.replace(_job(registry, tmp_path, data_dir), work_dir=None),
                  ref_sink)
    assert ref.status == "FINISHED"

    job = _job(registry, tmp_path, data_dir)
    sink = _StopAt(stop_at)
    with catch_stops(), pytest.raises(RunInterrupted):
        run_job(job, sink)
    folder = RunFolder(job.work_dir)
    assert sink.record.status == "KILLED"
    assert sink.record.tags["failure.reason"] == "interrupted by SIGTERM"
    assert folder.info()["status"] == "KILLED" and folder.resumable()
    ckpt = load_checkpoint(folder.checkpoint)  # weights_only=True
    assert ckpt["loop"]["step"] == stop_at and ckpt["run_id"] == sink.record.run_id
    assert ckpt["loop"]["eval_pending"] == (stop_at % 25 == 0)

    rec = run_job(job, sink)  # the same job again: resumes into the same run
    assert rec.status == "FINISHED" and rec.run_id == sink.record.run_id
    got, want = sink.inner.record, ref_sink.record
    assert got.status == "FINISHED" and got.tags["resumed_at_step"] == str(stop_at)
    for key in ("loss", "val_nll", "lr", "epoch"):
        assert [s for s, _ in got.history[key]] == [s for s, _ in want.history[key]], key
        assert torch.allclose(torch.tensor([v for _, v in got.history[key]]),
                              torch.tensor([v for _, v in want.history[key]]),
                              rtol=1e-6, atol=1e-7), key
    assert got.metrics["test_nll"] == pytest.approx(want.metrics["test_nll"], rel=1e-6)
    assert got.metrics["best_step"] == want.metrics["best_step"]
    assert folder.info()["status"] == "FINISHED" and not folder.checkpoint.exists()
    assert not folder.resumable()


def test_resume_without_a_checkpoint_is_a_one_line_error(tmp_path, tracking_uri):

    res = _runs.run(tmp_path / "results", tracking_uri, "--resume")
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "nothing to resume" in lines[0], res.stderr
    assert _runs.history(tracking_uri, "bench") == []  # no run was opened


@pytest.mark.slow
def test_sigkill_then_relaunch_continues_the_same_run(tmp_path, tracking_uri):
    """Killed outright between two checkpoints, after metrics beyond the last one reached
    the store: the relaunch continues the same run, replays from the checkpoint without
    recording those steps twice, and ends with the history of an uninterrupted run."""

    opts = ("--checkpoint-every", "300", "--checkpoint-minutes", "0")
    ref = _runs.run(tmp_path / "a", tracking_uri, *opts, experiment="a", steps=900)
    assert ref.returncode == 0, ref.stderr
    p = _runs.start(tmp_path / "b", tracking_uri, *opts, experiment="b", steps=900)
    _runs.wait_for_step(p, tmp_path / "b", 300)
    while True:  # kill once the store holds steps after the checkpoint
        assert p.poll() is None, p.communicate()
        info = _runs.info(tmp_path / "b")
        at = int(info["step"])
        if _runs.last_step(tracking_uri, "loss", info["run_id"]) > at + 5:
            os.kill(p.pid, signal.SIGKILL)
            break
    p.wait()
    assert p.returncode == -signal.SIGKILL
    info = _runs.info(tmp_path / "b")
    assert info["status"] == "RUNNING" and int(info["step"]) == at
    (killed,) = _runs.history(tracking_uri, "b")
    assert killed.status == "RUNNING" and killed.history["loss"][-1][0] > at

    again = _runs.run(tmp_path / "b", tracking_uri, *opts, experiment="b", steps=900)
    assert again.returncode == 0, again.stderr
    (want,) = _runs.history(tracking_uri, "a")
    (got,) = _runs.history(tracking_uri, "b")  # one run: the same one, continued
    assert got.run_id == killed.run_id and got.status == "FINISHED"
    assert got.tags["resumed_at_step"] == str(at)
    for key in ("loss", "val_nll"):
        assert [s for s, _ in got.history[key]] == [s for s, _ in want.history[key]], key
        assert torch.allclose(torch.tensor([v for _, v in got.history[key]]),
                              torch.tensor([v for _, v in want.history[key]]),
                              rtol=1e-6, atol=1e-7), key
    assert got.metrics["test_nll"] == pytest.approx(want.metrics["test_nll"], rel=1e-6)
