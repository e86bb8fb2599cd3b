"""Shared by the reliability tests: `bench run` as a real subprocess on a small problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["-m", "interflow[hidden=(32,32)]", "-d", "8gaussians", "--eval-every", "50",
         "--n-samples", "0", "--val-rows", "200", "--test-rows", "200", "-q"]


def env() -> dict[str, str]:
    out = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONUNBUFFERED": "1"}
    shared = ROOT.parent / "shared" / "data"
    if "BENCH_DATA_DIR" not in out and shared.is_dir():
        out["BENCH_DATA_DIR"] = str(shared)
    return out


def start(results: Path, uri: str, *args: str, experiment: str = "bench",
          steps: int = 400) -> subprocess.Popen:
    """``bench run`` on `SMALL` in the background (stdout and stderr captured)."""
    cmd = [sys.executable, "-m", "bench", "run", *SMALL, "--steps", str(steps),
           "--results-dir", str(results), "--tracking-uri", uri, "--experiment", experiment,
           *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run(results: Path, uri: str, *args: str, **kw) -> subprocess.CompletedProcess:
    p = start(results, uri, *args, **kw)
    out, err = p.communicate(timeout=120)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def folder(results: Path) -> Path:
    (one,) = list((results / "runs").iterdir())
    return one


def info(results: Path) -> dict:
    try:
        return json.loads((folder(results) / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_for_step(p: subprocess.Popen, results: Path, step: int, timeout: float = 90) -> int:
    """Wait until the job's checkpoint is at ``step`` or later; returns that step."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert p.poll() is None, p.communicate()
        if (results / "runs").is_dir() and list((results / "runs").iterdir()):
            at = int(info(results).get("step", -1))
            if at >= step and (folder(results) / "last.pt").is_file():
                return at
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint at step {step} within {timeout} s")


def history(uri: str, experiment: str, keys=("loss", "val_nll")):
    from bench.record.mlflow_sink import load_records

    return load_records(uri, experiment, history=keys)


def last_step(uri: str, key: str, run_id: str) -> int:
    """The highest step of metric ``key`` of a run in a SQLite store (-1 if none)."""
    import sqlite3

    con = sqlite3.connect(uri[len("sqlite:///"):], timeout=30)
    try:
        (at,) = con.execute("SELECT max(step) FROM metrics WHERE key = ? AND run_uuid = ?",
                            (key, run_id)).fetchone()
    finally:
        con.close()
    return -1 if at is None else int(at)
