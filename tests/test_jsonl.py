"""The JSON-lines store (`bench.record.jsonl`): a run written through its sink reads back as
the same `RunRecord`, a crash at any byte loses at most the line being written, a killed
run reads RUNNING and resumes into the same file, and `bench run` / `bench table` /
`bench report` work on ``--tracking-uri jsonl://FOLDER``."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.api import ConfigError, DataError, RunRecord
from bench.record.jsonl import JsonlSink, JsonlSource, _read_events, _record
from bench.record.memory import MemorySink

PARAMS = {"method": "interflow", "dataset": "8gaussians", "seed": 3,
          "p_method_hidden": (8, 8), "optim_lr": 1e-3, "p_method_sigma": None,
          "exec_compile": False, "solver_method": "dopri5", "nested": ((1, 2.5), ["a", None]),
          "mapping": {"k": (1,)}}


def _write(sink, tmp_path: Path, status: str = "FINISHED") -> str | None:
    """One run's worth of events, in the order `run_job` sends them."""
    run_id = sink.start("interflow-8gaussians-s3", PARAMS, {"device": "cpu"})
    for s in range(1, 6):
        sink.log_metrics({"loss": 1.0 / s, "lr": 1e-3 * s}, s)
        if s % 2 == 0:
            sink.log_metrics({"val_nll": 3.0 - 0.1 * s}, s)
    sink.set_tags({"test_nll.kind": "exact", "device": "cpu (again)"})
    sink.log_metrics({"test_nll": 2.5, "test_nll_se": 0.01, "loss": 0.125})
    art = tmp_path / "checkpoint.pt"
    art.write_bytes(b"weights")
    sink.log_artifact(art)
    sink.end(status)
    return run_id


def test_a_run_reads_back_as_the_record_it_wrote(tmp_path):
    memory = MemorySink(artifact_dir=tmp_path / "mem")
    _write(memory, tmp_path)
    run_id = _write(JsonlSink(tmp_path / "store", "e"), tmp_path)
    (got,) = JsonlSource(tmp_path / "store").records("e", history=None)
    want = memory.record
    # a Source's metrics are each metric's latest value (as MLflow gives them): the final
    # ones, and for a series only logged per step, its last value
    latest = {k: series[-1][1] for k, series in want.history.items()}
    assert got == dataclasses.replace(want, run_id=run_id, metrics={**latest, **want.metrics},
                                      artifacts=got.artifacts)
    assert got.params["p_method_hidden"] == (8, 8)  # tuples stay tuples (not JSON lists)
    assert got.params["nested"] == ((1, 2.5), ["a", None]) and got.metrics["loss"] == 0.125
    assert Path(got.artifacts["checkpoint.pt"]).read_bytes() == b"weights"
    assert JsonlSource(tmp_path / "store").checkpoint(run_id) == Path(got.artifacts[
        "checkpoint.pt"])
    # history is read for the metrics asked for, as from MLflow
    (some,) = JsonlSource(tmp_path / "store").records("e", history=("val_nll",))
    assert some.history == {"val_nll": want.history["val_nll"]}
    assert JsonlSource(tmp_path / "store").records("other") == []


def test_a_store_moves_whole_and_unplain_params_keep_their_text(tmp_path):
    sink = JsonlSink(tmp_path / "a", "e")
    run_id = _write(sink, tmp_path)
    os.rename(tmp_path / "a", tmp_path / "b")  # artifacts are named relative to the store
    assert JsonlSource(tmp_path / "b").checkpoint(run_id).read_bytes() == b"weights"
    sink = JsonlSink(tmp_path / "c", "e")
    sink.start("r", {"data_dir": Path("/data/x")}, {})
    sink.end("FINISHED")
    (rec,) = JsonlSource(tmp_path / "c").records("e")
    assert rec.params == {"data_dir": "/data/x"}  # as MLflow keeps it: its text


def test_a_cut_at_any_byte_loses_at_most_the_line_being_written(tmp_path):
    """Every prefix of a run file (a crash at that byte) reads as the run of its complete
    lines: a truncated last line is ignored, never fatal."""
    run_id = _write(JsonlSink(tmp_path / "full", "e"), tmp_path, status="FINISHED")
    data = (tmp_path / "full" / "e" / f"{run_id}.jsonl").read_bytes()
    lines = data.split(b"\n")
    ends = [sum(len(x) + 1 for x in lines[:i + 1]) - 1 for i in range(len(lines) - 1)]
    folder = tmp_path / "cut" / "e"
    folder.mkdir(parents=True)
    events = [json.loads(x) for x in lines if x]
    for cut in range(len(data) + 1):
        (folder / f"{run_id}.jsonl").write_bytes(data[:cut])
        complete = sum(1 for end in ends if end <= cut)  # lines whose JSON is all there
        got = JsonlSource(tmp_path / "cut").records("e", history=None)
        if complete == 0:
            assert got == [], cut  # the start line itself was cut: no run
            continue
        want = _record(events[:complete], run_id, folder, None)
        assert got == [want], cut
        assert got[0].status == ("FINISHED" if complete == len(events) else "RUNNING")


def test_a_damaged_line_before_the_last_is_one_line_error(tmp_path):
    run_id = _write(JsonlSink(tmp_path, "e"), tmp_path)
    path = tmp_path / "e" / f"{run_id}.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:10]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"is damaged: line 3 is not a JSON object") as e:
        JsonlSource(tmp_path).records("e")
    assert "\n" not in str(e.value)


KILLED_WRITER = """
import sys
from bench.record.jsonl import JsonlSink
sink = JsonlSink(sys.argv[1], "e")
sink.start("victim", {"method": "m"}, {})
step = 0
while True:
    step += 1
    sink.log_metrics({"loss": 1.0 / step, "step_seconds": 0.5}, step)
    if step == 50:
        print("ready", flush=True)
"""


def test_a_killed_writer_leaves_a_running_run_with_every_step_it_wrote(tmp_path):
    """SIGKILL a process mid-stream: its run reads RUNNING, with steps 1..n and no gap
    (each event is on disk before the call returns); `close_stale` then marks it KILLED."""
    p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)],
                         stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert p.stdout.readline().strip() == "ready"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    (rec,) = JsonlSource(tmp_path).records("e", history=("loss",))
    steps = [s for s, _ in rec.history["loss"]]
    assert rec.status == "RUNNING" and steps == list(range(1, len(steps) + 1))
    assert len(steps) >= 50
    sink = JsonlSink(tmp_path, "e")
    assert sink.close_stale(rec.run_id, "process died (SIGKILL?)") == (
        "KILLED", "process died (SIGKILL?)")
    (rec,) = JsonlSource(tmp_path).records("e")
    assert rec.status == "KILLED" and rec.tags["failure.type"] == "ProcessDied"
    assert sink.close_stale(rec.run_id, "again")[0] == "KILLED"  # an ended run keeps its
    assert JsonlSource(tmp_path).records("e")[0].tags["failure.reason"] == \
        "process died (SIGKILL?)"  # status and reason
    with pytest.raises(ConfigError, match="no run 'nope'"):
        sink.close_stale("nope", "x")


def test_fsync_policy(tmp_path, monkeypatch):
    """Every event is flushed; all but per-step metrics are fsync'ed at once, per-step
    metrics once ``fsync_seconds`` have passed or at ``flush`` (before a checkpoint)."""
    import bench.record.jsonl as jl

    synced, clock = [], [0.0]
    monkeypatch.setattr(jl.os, "fsync", lambda fd: synced.append(fd))
    monkeypatch.setattr(jl.time, "monotonic", lambda: clock[0])
    sink = JsonlSink(tmp_path, "e")
    run_id = sink.start("r", {}, {})
    assert len(synced) == 1
    for s in range(1, 4):
        sink.log_metrics({"loss": 1.0}, s)
    assert len(synced) == 1  # within fsync_seconds of the last fsync
    (rec,) = JsonlSource(tmp_path).records("e", history=("loss",))
    assert len(rec.history["loss"]) == 3  # yet written: a killed process loses none
    clock[0] = 1.0
    sink.log_metrics({"loss": 1.0}, 4)
    assert len(synced) == 2  # 1 s since the last fsync
    sink.log_metrics({"loss": 1.0}, 5)
    sink.flush()
    sink.flush()  # nothing new: no fsync
    assert len(synced) == 3
    sink.log_metrics({"test_nll": 1.0})  # a final metric
    sink.set_tags({"a": "b"})
    sink.end("FINISHED")
    assert len(synced) == 6
    strict = JsonlSink(tmp_path, "e", fsync_seconds=0)
    strict.reopen(run_id)
    strict.log_metrics({"loss": 1.0}, 6)
    assert len(synced) == 8
    lax = JsonlSink(tmp_path, "e", fsync=False)
    lax.start("r", {}, {})
    lax.flush()
    lax.end("FINISHED")
    assert len(synced) == 8


def test_concurrent_runs_write_files_of_their_own(tmp_path):
    def one(i: int) -> None:
        sink = JsonlSink(tmp_path, "e", fsync=False)
        sink.start(f"r{i}", {"seed": i}, {})
        for s in range(200):
            sink.log_metrics({"loss": float(i)}, s)
        sink.end("FINISHED")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recs = JsonlSource(tmp_path).records("e", history=("loss",))
    assert sorted(r.params["seed"] for r in recs) == [0, 1, 2, 3]
    for r in recs:
        assert r.status == "FINISHED"
        assert r.history["loss"] == [(s, float(r.params["seed"])) for s in range(200)]


def test_store_uris_and_bad_ones(tmp_path):
    from bench.record.jsonl import jsonl_root
    from bench.record.stores import open_source, sink_factory

    assert jsonl_root("jsonl:///abs/x") == Path("/abs/x")
    assert jsonl_root("jsonl://rel/x") == Path("rel/x")
    with pytest.raises(ConfigError, match="jsonl:///absolute/folder"):
        jsonl_root("jsonl://")
    with pytest.raises(ConfigError, match="no JSON-lines store at"):
        open_source(f"jsonl://{tmp_path / 'missing'}")
    with pytest.raises(ConfigError, match="cannot name a folder"):
        sink_factory(f"jsonl://{tmp_path}", "../up", tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot be used as a folder"):
        sink_factory(f"jsonl://{tmp_path / 'file'}", "bench", tmp_path)
    with pytest.raises(ConfigError, match="no run 'x'"):
        JsonlSink(tmp_path / "s").reopen("x")


class _Crash(BaseException):
    """Stands for SIGKILL: no handler of `run_job` catches it, so no checkpoint is written
    at the crash and the store holds steps after the last checkpoint."""


class _CrashAt(JsonlSink):
    """A JSON-lines sink whose run crashes when step ``at`` is logged."""

    at: int | None = 50

    def log_metrics(self, metrics, step=None):
        super().log_metrics(metrics, step)
        if step == self.at and "loss" in metrics:
            self.at = None
            raise _Crash


def test_a_crashed_run_resumes_into_its_file_with_the_history_of_an_uncrashed_one(
        registry, tmp_path, data_dir, one_thread):
    """`run_job` through the protocol alone: crashed at step 50, 10 steps after its last
    checkpoint (40), then continued by a fresh sink (``reopen``): one run, whose steps
    41..50 are replayed from the checkpoint but recorded once, as an uninterrupted run
    records them."""
    import torch

    from bench.harness.planning.plan import plan_jobs
    from bench.harness.running.run import run_job

    (job,) = plan_jobs(registry, ["interflow[hidden=(16,16)]"],
                       ["8gaussians[n_train=500,n_val=100,n_test=100]"], [0], (), steps=80,
                       eval_every=25, n_samples=0, data_dir=data_dir)
    ref = run_job(job, MemorySink())
    assert ref.status == "FINISHED"
    job = dataclasses.replace(job, work_dir=tmp_path / "run", checkpoint_every=40,
                              checkpoint_minutes=0)
    with pytest.raises(_Crash):
        run_job(job, _CrashAt(tmp_path / "store", "e"))
    (killed,) = JsonlSource(tmp_path / "store").records("e", history=("loss",))
    assert killed.status == "KILLED" and killed.history["loss"][-1][0] == 50
    rec = run_job(job, JsonlSink(tmp_path / "store", "e"))
    assert rec.status == "FINISHED" and rec.run_id == killed.run_id
    (got,) = JsonlSource(tmp_path / "store").records("e", history=None)
    assert got.status == "FINISHED" and got.tags["resumed_at_step"] == "40"
    for key in ("loss", "val_nll"):
        assert [s for s, _ in got.history[key]] == [s for s, _ in ref.history[key]], key
        # the same arithmetic in the same order: equal up to float32 rounding of values
        # recomputed after the restore (rtol 1e-6 = ~8 ulp of float32)
        assert torch.allclose(torch.tensor([v for _, v in got.history[key]]),
                              torch.tensor([v for _, v in ref.history[key]]), rtol=1e-6,
                              atol=0.0), key
    assert got.metrics["test_nll"] == pytest.approx(ref.metrics["test_nll"], rel=1e-6)
    assert len(list((tmp_path / "store" / "e").glob("*.jsonl"))) == 1


def test_bench_run_then_table_and_report_on_a_jsonl_store(tmp_path, monkeypatch, one_thread):
    from bench.cli.main import main

    monkeypatch.chdir(tmp_path)
    uri = f"jsonl://{tmp_path / 'store'}"
    runner = CliRunner()
    res = runner.invoke(main, ["run", "-m", "interflow[hidden=(8,8),batch_size=64]", "-d",
                               "8gaussians[n_train=300,n_val=100,n_test=100]", "--seeds",
                               "0,1", "--steps", "20", "--eval-every", "10", "-q",
                               "--n-samples", "200", "--rtol", "1e-3", "--atol", "1e-3",
                               "--json", "--tracking-uri", uri, "--results-dir",
                               str(tmp_path / "results")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    runs = json.loads(res.stdout)
    assert [r["status"] for r in runs] == ["FINISHED", "FINISHED"]
    assert not (tmp_path / "results" / "mlflow.db").exists()  # nothing went to MLflow
    recs = JsonlSource(tmp_path / "store").records("bench")
    assert sorted(r.metrics["test_nll"] for r in recs) == sorted(r["test_nll"] for r in runs)
    assert all(Path(r.artifacts["checkpoint.pt"]).is_file() for r in recs)

    res = runner.invoke(main, ["table", "--tracking-uri", uri, "--format", "json"])
    assert res.exit_code == 0, res.output
    cells = json.loads(res.stdout)
    (row,) = [k for k in cells if k.startswith("interflow")]
    mean = sum(r["test_nll"] for r in runs) / 2
    (cell,) = cells[row].values()
    assert cell.startswith(f"{mean:.3f}") and cell.endswith("(2)")

    res = runner.invoke(main, ["report", "--tracking-uri", uri, "--out",
                               str(tmp_path / "report")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "interflow" in md and uri in md

    res = runner.invoke(main, ["table", "--tracking-uri", f"jsonl://{tmp_path / 'none'}"])
    assert res.exit_code == 2 and res.output.startswith("error: no JSON-lines store at")
    assert len(res.output.strip().splitlines()) == 1


def test_every_sink_implements_the_whole_protocol(tmp_path, tracking_uri):
    """Every method of `bench.api.Sink` (and ``run_id``) on every sink bench has."""
    import inspect

    from bench.api import Sink
    from bench.harness.training.distributed import NullSink
    from bench.record.mlflow_sink import MlflowSink

    wanted = {n for n, _ in inspect.getmembers(Sink, inspect.isfunction)
              if not n.startswith("_")}
    assert wanted == {"start", "reopen", "log_metrics", "set_tags", "log_artifact", "flush",
                      "close_stale", "end"}
    for sink in (MemorySink(), NullSink(), JsonlSink(tmp_path), MlflowSink(tracking_uri)):
        assert all(callable(getattr(sink, n)) for n in wanted), type(sink).__name__
        assert sink.run_id is None
    mem = MemorySink()
    run_id = mem.start("r", {}, {})
    assert mem.run_id == run_id and mem.close_stale(run_id, "died") == ("KILLED", "died")
    assert mem.record.status == "KILLED" and mem.record.tags["failure.type"] == "ProcessDied"


def test_blank_lines_are_skipped_and_a_run_without_metrics_reads_back(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"event": "start", "name": "n", "params": {}, "tags": {}}\n\n'
                    '{"event": "end", "status": "FAILED"}\n')
    assert _record(_read_events(path), "r", tmp_path) == RunRecord("r", "n", status="FAILED")
