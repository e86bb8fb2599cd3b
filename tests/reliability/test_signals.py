"""Ctrl-C and SIGTERM: checkpoint, flush, KILLED with the reason, exit 130 / 143; then the
same command resumes the run to FINISHED."""

from __future__ import annotations

import os
import signal

import pytest

from bench.harness.training.signals import RunInterrupted, catch_stops, deferred
from tests.reliability import _runs


def test_a_stop_waits_for_a_deferred_block_and_a_second_one_does_not():
    before = signal.getsignal(signal.SIGTERM)  # another test's library may have set one
    with catch_stops():
        with pytest.raises(RunInterrupted) as caught:
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                reached = True  # the held stop did not interrupt the block
        assert reached and caught.value.signame == "SIGTERM" and caught.value.exit_code == 143
        with pytest.raises(RunInterrupted) as caught, deferred():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # insisting: raised at once
            pytest.fail("the second stop should have raised")
        assert caught.value.exit_code == 130
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_marks_killed_then_the_same_command_resumes(tmp_path, tracking_uri, sig):

    from bench.harness.training.checkpoint import load_checkpoint

    results = tmp_path / "results"
    p = _runs.start(results, tracking_uri, steps=900)
    _runs.wait_for_step(p, results, 100)
    os.kill(p.pid, sig)
    _, err = p.communicate(timeout=120)
    name = signal.Signals(sig).name
    assert p.returncode == 128 + sig, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "KILLED" in lines[0] and name in lines[0], err
    info = _runs.info(results)
    assert info["status"] == "KILLED" and info["reason"] == f"interrupted by {name}"
    ckpt = load_checkpoint(_runs.folder(results) / "last.pt")  # weights_only=True
    assert ckpt["kind"] == "resume" and ckpt["loop"]["step"] >= 100
    (run,) = _runs.history(tracking_uri, "bench")
    assert run.status == "KILLED" and run.tags["failure.reason"] == f"interrupted by {name}"
    assert run.history["loss"][-1][0] >= ckpt["loop"]["step"]  # flushed on the stop

    again = _runs.run(results, tracking_uri, steps=900)
    assert again.returncode == 0, again.stderr
    (run,) = _runs.history(tracking_uri, "bench")
    assert run.status == "FINISHED" and run.tags["resumed_at_step"] == str(
        ckpt["loop"]["step"])
    steps = [s for s, _ in run.history["loss"]]
    assert steps == list(range(1, int(run.metrics["steps_done"]) + 1))  # every step once
