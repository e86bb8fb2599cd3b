"""Faults that used to lose or falsify data (issue 18, item 8): a store creation killed
mid-migration, a resume on other data or an edited plug-in, a full disk, a read-only store,
stores that are not stores, a step that hangs, a run left RUNNING by a SIGKILL, partial
temporary files. Each ends in one line on stderr and loses nothing recorded before."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability._cli import TINY, TOY, assert_refused, bench
from tests.reliability._runs import ROOT, env

PLUGINS = '''
import time
from dataclasses import dataclass
import numpy as np
import torch
from bench.api import Dataset, LogLikelihood, Method, Splits


@dataclass
class P:
    batch_size: int = 16
    hang_at: int = 2


class Hanging(Method):
    """A plug-in whose loss never returns from step ``hang_at`` (0-based) on."""
    name = "hanging"
    Params = P

    def __init__(self, params, splits, ctx):
        super().__init__(params, splits, ctx)
        self.w = torch.nn.Linear(2, 2)

    def modules(self):
        return {"w": self.w}

    def loss(self, batch, step):
        if step >= self.params.hang_at:
            time.sleep(3600)
        return (self.w(batch) ** 2).mean()

    def sample(self, n):
        return torch.zeros(n, 2)

    def log_prob(self, x):
        return LogLikelihood(-(self.w(x) ** 2).sum(1), "exact", "toy")


class FromDir(Dataset):
    """Rows read from <data_dir>/fromdir.npy (300 x 2)."""
    name = "fromdir"
    kind = "toy2d"

    def load(self):
        x = torch.from_numpy(np.load(self.data_dir / "fromdir.npy")).float()
        return Splits(x[:200], x[200:250], x[250:], (2,), f"rows of {self.data_dir}")
'''


@pytest.fixture()
def plugins(tmp_path) -> Path:
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "faulty.py").write_text(PLUGINS)
    return plug


def _runs_table(db: Path) -> dict[str, tuple[str, str | None]]:
    """run id -> (status, failure.reason) read straight from a SQLite store."""
    with contextlib.closing(sqlite3.connect(db)) as c:
        rows = c.execute("SELECT r.run_uuid, r.status, t.value FROM runs r LEFT JOIN tags t "
                         "ON t.run_uuid = r.run_uuid AND t.key = 'failure.reason'").fetchall()
    return {r: (s, why) for r, s, why in rows}


# (a) a new store is created atomically --------------------------------------------------

_CREATE = "import sys; from bench.record.store import make_client; make_client(sys.argv[1])"


@pytest.mark.slow
@pytest.mark.parametrize("sig, after", [(signal.SIGTERM, 0.05), (signal.SIGKILL, 0.3)])
def test_store_creation_killed_midway_leaves_no_half_built_store(tmp_path, sig, after):
    """Killed while MLflow's migrations run (on main: a half-built schema, and every later
    command a 136-155-line traceback): no store file, or a complete one; the next use
    creates it and removes the leftovers."""
    db = tmp_path / "mlflow.db"
    p = subprocess.Popen([sys.executable, "-c", _CREATE, f"sqlite:///{db}"], cwd=ROOT,
                         env=env(), stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not list(tmp_path.glob(".mlflow.db.new-*")):  # the migrations have begun
        assert p.poll() is None and time.monotonic() - t0 < 120, p.communicate()
        time.sleep(0.005)
    time.sleep(after)
    p.send_signal(sig)
    p.wait(timeout=60)
    assert p.returncode == -sig  # killed during the migrations, not after
    assert not db.exists()
    res = bench("table", "--results-dir", str(tmp_path))
    assert_refused(res, 2, "no finished runs")  # the store opens: it is simply empty
    assert db.is_file() and not list(tmp_path.glob(".mlflow.db.new-*"))


def test_half_built_store_is_rebuilt_when_empty_and_refused_with_runs(tmp_path,
                                                                      _mlflow_template):
    """A store an older version left at an intermediate schema revision: without runs it
    is moved aside (kept) and created anew; with a run it is refused in one line."""
    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template, db)
    with contextlib.closing(sqlite3.connect(db)) as c, c:
        c.execute("UPDATE alembic_version SET version_num = 'df50e92ffc5e'")  # mid-way
    res = bench("table", "--results-dir", str(tmp_path))
    assert_refused(res, 2, "no finished runs")
    assert len(list(tmp_path.glob("mlflow.db.incomplete-*"))) == 1
    other = tmp_path / "other.db"  # another URI: MLflow caches the store it opened
    shutil.copy(_mlflow_template, other)
    with contextlib.closing(sqlite3.connect(other)) as c, c:
        c.execute("UPDATE alembic_version SET version_num = 'df50e92ffc5e'")
        c.execute("INSERT INTO runs (run_uuid, experiment_id, status, start_time, "
                  "lifecycle_stage) VALUES ('r1', 0, 'FINISHED', 0, 'active')")
    res = bench("table", "--tracking-uri", f"sqlite:///{other}")
    assert_refused(res, 2, "incomplete or out-of-date schema", "holds 1 run",
                   "mlflow db upgrade")
    assert _runs_table(other) == {"r1": ("FINISHED", None)}  # untouched


# (e) stores that are not stores: one line, exit 2 ------------------------------------------

@pytest.mark.parametrize("case", ["random bytes", "unknown scheme", "results dir /dev/null"])
@pytest.mark.parametrize("command", ["run", "table"])
def test_unusable_store_is_one_line_exit_2(tmp_path, case, command):
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(100_000))
    where, words = {
        "random bytes": (["--tracking-uri", f"sqlite:///{junk}"], ["not a usable SQLite"]),
        "unknown scheme": (["--tracking-uri", "nosuch://x"], ["unknown scheme 'nosuch://'"]),
        "results dir /dev/null": (["--results-dir", "/dev/null"], ["/dev/null", "folder"]),
    }[case]
    if "--results-dir" not in where:
        where = [*where, "--results-dir", str(tmp_path / "results")]
    args = ["run", "-m", "gaussian_mle", "-d", TOY, *TINY] if command == "run" else ["table"]
    assert_refused(bench(*args, *where), 2, *words)
    assert junk.stat().st_size == 100_000  # not "repaired" over


# (d) a read-only store can be read ---------------------------------------------------------

@contextlib.contextmanager
def _read_only(folder: Path):
    """``folder`` made read-only: chmod for a user, a read-only bind mount for root (skip
    where neither is possible)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield folder
        finally:
            for p, m in modes.items():
                p.chmod(m)
        return
    view = folder.with_name(folder.name + "-ro")
    view.mkdir()
    ok = subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True)
    if ok.returncode != 0:
        pytest.skip(f"root without mount: {ok.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True)
        yield view
    finally:
        subprocess.run(["umount", "--lazy", str(view)], check=False)  # MLflow keeps it open


def test_read_only_store_is_read_and_refuses_writes_in_one_line(tmp_path, _mlflow_template):
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(_mlflow_template, results / "mlflow.db")
    res = bench("run", "--results-dir", str(results), "-m", "gaussian_mle", "-d", TOY, *TINY)
    assert res.exit_code == 0, res.output
    with _read_only(results) as ro:
        with pytest.raises(OSError):
            (ro / "probe").write_text("x")  # really read-only
        table = bench("table", "--results-dir", str(ro), "--format", "json")
        assert table.exit_code == 0, table.output
        cells = json.loads(table.stdout)
        assert any(k.startswith("gaussian_mle") and v["8gaussians"].endswith("(1)")
                   for k, v in cells.items()), cells
        again = bench("run", "--results-dir", str(ro), "-m", "gaussian_mle", "-d", TOY, *TINY)
        assert_refused(again, 2, "cannot write beside the tracking store")


# (g) + (h) a run left RUNNING by a dead process; partial temporary files --------------------

def test_a_dead_runs_record_is_settled_and_partial_files_removed(tmp_path, tracking_uri,
                                                                 caplog):
    """SIGKILL before the first checkpoint left the run RUNNING in the store and in
    run.json (on main: for ever). The next run of the job marks it KILLED with the reason,
    removes interrupted writes' temporary files, and finishes its own run."""
    from bench.record.mlflow_sink import MlflowSink

    results = tmp_path / "results"
    args = ("run", "--tracking-uri", tracking_uri, "--results-dir", str(results),
            "-m", "gaussian_mle", "-d", TOY, *TINY)
    assert bench(*args).exit_code == 0
    (folder,) = (results / "runs").iterdir()
    dead = MlflowSink(tracking_uri, "bench", flush_seconds=0)
    dead_id = dead.start("killed", {}, {})  # what the killed process had recorded
    dead._stop.set()
    info = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**info, "run_id": dead_id,
                                                 "status": "RUNNING", "reason": ""}))
    (folder / "last.pt").unlink(missing_ok=True)
    partial = [folder / ".last.pt.k2j3h4", folder / ".run.json.x9y8z7"]
    for f in partial:
        f.write_bytes(b"\0" * 100)
    (folder / "notes.txt").write_text("kept")

    res = bench(*args)
    assert res.exit_code == 0, res.output
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1 and "left RUNNING by a process that died" in said[0], said
    why = "process died (SIGKILL?) before its first checkpoint"
    runs = _runs_table(Path(tracking_uri[len("sqlite:///"):]))
    assert runs[dead_id] == ("KILLED", why)
    assert sorted(s for s, _ in runs.values()) == ["FINISHED", "FINISHED", "KILLED"]
    assert json.loads((folder / "run.json").read_text())["status"] == "FINISHED"
    assert not any(f.exists() for f in partial) and (folder / "notes.txt").exists()


# (c) a full disk --------------------------------------------------------------------------

def test_full_disk_fails_the_job_in_one_line_and_the_grid_goes_on(tmp_path, tracking_uri,
                                                                  monkeypatch):
    """ENOSPC in the checkpoint writer (after part of the file is written): each job of the
    grid ends FAILED "no space left on device ...", store and run folder agree, no partial
    file is left (on main: a 139-515-line traceback, the grid stopped at its first job, the
    run folder RUNNING)."""
    import torch

    def full(obj, f, *a, **k):
        f.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    results = tmp_path / "results"
    res = bench("run", "--tracking-uri", tracking_uri, "--results-dir", str(results),
                "-m", "interflow[hidden=(8,8)]", "-d", TOY, "--seeds", "0,1", *TINY)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 3 and all(ln.startswith("error: ") for ln in lines), lines
    assert all("FAILED: no space left on device writing" in ln for ln in lines[:2])
    runs = _runs_table(Path(tracking_uri[len("sqlite:///"):]))
    assert len(runs) == 2 and all(s == "FAILED" and why.startswith("no space left on device")
                                  for s, why in runs.values()), runs
    for folder in (results / "runs").iterdir():
        info = json.loads((folder / "run.json").read_text())
        assert info["status"] == "FAILED" and runs[info["run_id"]][1] == info["reason"]
        assert not list(folder.glob(".last.pt.*"))


# (f) a step that hangs --------------------------------------------------------------------

def test_a_hung_step_is_stopped_by_the_watchdog(tmp_path, tracking_uri, plugins,
                                               monkeypatch):
    """A plug-in's loss sleeps for ever at the third step: with --max-seconds 1 the step is
    stopped (grace max(STEP_GRACE_S, 1 s), shortened to 0.5 s here), the run FAILED with the
    reason, its last checkpoint (step 2) kept as the run's model (on main: a hang)."""
    import bench.harness.training.signals as signals
    from bench.harness.training.checkpoint import load_checkpoint

    monkeypatch.setattr(signals, "STEP_GRACE_S", 0.5)
    before = signal.getsignal(signal.SIGALRM)
    results = tmp_path / "results"
    t0 = time.monotonic()
    res = bench("--plugins", str(plugins), "run", "--tracking-uri", tracking_uri,
                "--results-dir", str(results), "-m", "hanging", "-d", TOY, "--steps", "20",
                "--max-seconds", "1", "--eval-every", "2", "-q", "--n-samples", "0")
    elapsed = time.monotonic() - t0
    assert_refused(res, 1, "FAILED: step 3 did not return within", "--max-seconds 1")
    assert elapsed < 60  # the limit is ~2 s; generous for a loaded machine
    assert signal.getsignal(signal.SIGALRM) is before  # handler restored
    (folder,) = (results / "runs").iterdir()
    info = json.loads((folder / "run.json").read_text())
    assert info["status"] == "FAILED" and info["reason"].startswith("step 3 did not return")
    assert load_checkpoint(folder / "last.pt")["loop"]["step"] == 2
    from bench.record.mlflow_sink import load_records

    (run,) = load_records(tracking_uri)
    assert run.status == "FAILED" and "checkpoint.pt" in run.artifacts


# (b) a resume never mixes data or code ----------------------------------------------------

def _fromdir_job(registry, root: Path, data: Path, seed_data: int):
    import numpy as np

    from bench.harness.planning.plan import plan_jobs

    data.mkdir(exist_ok=True)
    rows = np.random.default_rng(seed_data).standard_normal((300, 2)).astype("float32")
    np.save(data / "fromdir.npy", rows)
    (job,) = plan_jobs(registry, ["interflow[hidden=(8,8)]"], ["fromdir"], [0], (),
                       steps=60, eval_every=10, n_samples=0, data_dir=data)
    return dataclasses.replace(job, work_dir=root / "run")


def test_resume_on_other_data_starts_a_new_run(tmp_path, plugins, caplog):
    """Killed, then relaunched with another --data-dir (on main: continued silently, val
    NLL 46.9 -> 233): not resumed; a new run on the new data, the old checkpoint kept."""
    from bench.harness.planning.registry import Registry
    from bench.harness.running.run import run_job
    from bench.harness.training.signals import RunInterrupted, catch_stops
    from tests.reliability.test_resume import _StopAt

    registry = Registry(extra_dirs=[plugins])
    job_a = _fromdir_job(registry, tmp_path, tmp_path / "a", 0)
    sink = _StopAt(25)
    with catch_stops(), pytest.raises(RunInterrupted):
        run_job(job_a, sink)
    old = sink.record
    assert old.status == "KILLED" and old.tags["data_sha256"]
    job_b = _fromdir_job(registry, tmp_path, tmp_path / "b", 1)  # same key, other rows
    new = run_job(job_b, sink)
    assert new.status == "FINISHED" and new.run_id != old.run_id
    assert "resumed_at_step" not in new.tags and new.tags["data_sha256"] != old.tags[
        "data_sha256"]
    assert [s for s, _ in new.history["loss"]][:2] == [1, 2]  # trained from the start
    assert (tmp_path / "run" / f"superseded-{old.run_id}.pt").is_file()
    assert "its data changed since its checkpoint" in caplog.text


def test_an_edited_plug_in_is_another_job(tmp_path, plugins):
    from bench.harness.planning.registry import Registry
    from bench.harness.training.runfolder import job_key

    key = job_key(_fromdir_job(Registry(extra_dirs=[plugins]), tmp_path, tmp_path / "d", 0))
    with open(plugins / "faulty.py", "a") as f:
        f.write("\n# an edit\n")
    again = _fromdir_job(Registry(extra_dirs=[plugins]), tmp_path, tmp_path / "d", 0)
    assert job_key(again) != key
