"""The embedded SQLite store under concurrency and kills: concurrent first use, lock
retries, metrics flushed as they happen (a SIGKILL loses at most the flush window), and
`reopen` for resuming a run."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from bench.api import ConfigError
from bench.record.memory import MemorySink
from bench.record.store import is_locked, retry_locked

from ._server import ROOT, TINY, bench, env


def _metric_counts(db) -> dict[str, tuple[str, int, int]]:
    with sqlite3.connect(db) as c:
        status = dict(c.execute("select run_uuid, status from runs").fetchall())
        rows = c.execute("select run_uuid, count(*), max(step) from metrics where key='loss' "
                         "group by run_uuid").fetchall()
    return {r: (status[r], n, top) for r, n, top in rows} | {
        r: (s, 0, -1) for r, s in status.items() if r not in {x[0] for x in rows}}


@pytest.mark.slow
# before the fix every round failed (0, 1 and 1 of 4 runs recorded): three rounds see a
# regression with certainty in practice at 60% of five rounds' CI time (~27 s a round)
@pytest.mark.parametrize("round_", range(3))
def test_four_concurrent_runs_on_a_fresh_store(tmp_path, round_):
    """Four `bench run` processes started together on a store that does not exist yet all
    record completely (on main: 0, 1 and 1 of 4 runs, and a store broken for good)."""
    procs = [subprocess.Popen(bench("run", *TINY, "--steps", "30", "--seeds", str(i),
                                    "--results-dir", str(tmp_path), "--json"),
                              cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert json.loads(out)[0]["status"] == "FINISHED"
    runs = _metric_counts(tmp_path / "mlflow.db")
    assert sorted(runs.values()) == [("FINISHED", 30, 30)] * 4, runs
    table = subprocess.run(bench("table", "--results-dir", str(tmp_path), "--format", "json"),
                           cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr[-2000:]
    assert json.loads(table.stdout)["interflow (exact)"]["8gaussians"].endswith("(4)")


_KILLED_WRITER = """
import sys, time
from bench.record.mlflow_sink import MlflowSink
sink = MlflowSink(sys.argv[1], "k", flush_seconds=0.3)
sink.start("victim", {}, {})
for step in range(1, 41):
    sink.log_metrics({"loss": float(step)}, step)
print(sink.run_id, flush=True)
time.sleep(600)  # no more logging: only the background flusher writes
"""


def test_sigkill_loses_at_most_the_flush_window(tmp_path):
    uri = f"sqlite:///{tmp_path / 'k.db'}"
    p = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, uri], cwd=ROOT, env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = p.stdout.readline().strip()
        assert run_id, p.stderr.read()
        time.sleep(2.0)  # several flush windows
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    runs = _metric_counts(tmp_path / "k.db")
    assert runs[run_id] == ("RUNNING", 40, 40)  # every step although never `end`ed


def test_reopen_returns_recorded_steps_and_marks_running(tracking_uri):
    from bench.record.mlflow_read import load_records
    from bench.record.mlflow_sink import MlflowSink

    first = MlflowSink(tracking_uri, "r", flush_seconds=0)
    run_id = first.start("job", {"lr": 0.1}, {"a": "1"})
    for step in range(1, 8):
        first.log_metrics({"loss": 1.0 / step}, step)
    first.log_metrics({"val_nll": 2.0}, 5)
    first.flush()  # then the process "dies": no end
    again = MlflowSink(tracking_uri, "r", flush_seconds=0)
    assert again.reopen(run_id) == {"loss": 7, "val_nll": 5}
    for step in range(8, 11):
        again.log_metrics({"loss": 1.0 / step}, step)
    again.log_metrics({"test_nll": 1.5})  # a final metric lands at the last step
    again.end("FINISHED")
    (rec,) = load_records(tracking_uri, "r", history=("loss",))
    assert rec.run_id == run_id and rec.status == "FINISHED"
    assert [s for s, _ in rec.history["loss"]] == list(range(1, 11))
    assert rec.metrics["test_nll"] == 1.5 and rec.params["lr"] == 0.1
    with pytest.raises(ConfigError, match="no run"):
        MlflowSink(tracking_uri, "r").reopen("0" * 32)


def test_memory_sink_reopen():
    sink = MemorySink()
    run_id = sink.start("job", {}, {})
    for step in (1, 2, 3):
        sink.log_metrics({"loss": 0.5}, step)
    sink.log_metrics({"test_nll": 1.0})
    sink.end("KILLED")
    assert sink.reopen(run_id) == {"loss": 3} and sink.record.status == "RUNNING"
    with pytest.raises(ConfigError):
        sink.reopen("another")
    assert MemorySink().reopen("fresh") == {}


def test_retry_locked_is_bounded():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("wrapped") from sqlite3.OperationalError("database is locked")
        return "ok"

    assert retry_locked(flaky) == "ok" and len(calls) == 3
    assert is_locked(RuntimeError("x")) is False

    def always():
        raise sqlite3.OperationalError("database is locked")

    t0 = time.monotonic()
    with pytest.raises(sqlite3.OperationalError):
        retry_locked(always, budget_s=0.5)
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(ValueError):  # other errors are not retried
        retry_locked(lambda: (_ for _ in ()).throw(ValueError("no")))


def test_end_marks_the_run_even_when_metrics_cannot_be_written(tracking_uri):
    from bench.record.mlflow_read import load_records
    from bench.record.mlflow_sink import MlflowSink

    sink = MlflowSink(tracking_uri, "e", flush_seconds=0)
    sink.start("job", {}, {})
    sink.log_metrics({"loss": float("nan")}, 1)
    sink._buffer.append(object())  # a metric the store cannot take
    sink.end("FAILED")  # logs an error, does not raise
    (rec,) = load_records(tracking_uri, "e")
    assert rec.status == "FAILED"
