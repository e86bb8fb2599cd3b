"""A real ``mlflow server`` on loopback for the tracking tests, and `bench` as a subprocess."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ["-m", "interflow[hidden=(16,16)]", "-d", "8gaussians", "--eval-every", "15",
        "--n-samples", "0", "--val-rows", "100", "--test-rows", "100", "-q"]


def env() -> dict[str, str]:
    out = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    out.pop("MLFLOW_TRACKING_URI", None)
    shared = ROOT.parent / "shared" / "data"
    if "BENCH_DATA_DIR" not in out and shared.is_dir():
        out["BENCH_DATA_DIR"] = str(shared)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench", *args]


@contextlib.contextmanager
def mlflow_server(tmp: Path, template: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``mlflow server`` on 127.0.0.1 (a free port), its SQLite backend a copy of the
    migrated ``template`` and its artifacts under ``tmp``; yields (URI, process), killed
    (the whole process group) at the end."""
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, tmp / "server.db")
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
           "--artifacts-destination", str(tmp / "artifacts")]
    log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a loaded 2-core machine starts it slowly
        while True:
            assert proc.poll() is None, (tmp / "server.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield uri, proc
    finally:
        kill(proc)
        log.close()


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the server and its workers (its process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
