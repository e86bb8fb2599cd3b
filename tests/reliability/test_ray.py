"""The Ray launcher for real: a Ray head and a worker node on loopback, a 3-job grid through
``bench run --launcher ray --address ...``, and the Ray worker process running the worker
node's job (it runs the job in-process, from its `JobSpec`) SIGKILLed while that job is
training (after its first checkpoint).

Checked: the driver retries that job, exits 0 and prints JSON only on stdout; the store
holds exactly one FINISHED run per (method, dataset, seed), each with every validation step
exactly once and a test NLL. Whether the retried job resumed its checkpoint into the same
run (with resuming) or started afresh, both pass: the promise checked is "finished exactly
once, with complete metrics".
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'ctgen-bench[ray]'")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="/proc is Linux's")

ROOT = Path(__file__).resolve().parents[2]
STEPS, EVAL_EVERY, SEEDS = 1200, 150, (0, 1, 2)
METHOD, DATASET = "interflow[hidden=(16,16)]", "8gaussians[n_train=2000,n_val=300,n_test=300]"


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _descendants(root: int) -> list[int]:
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    parent = {p: _ppid(p) for p in pids}
    out, frontier = [], {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier}
        out += sorted(frontier)
    return out


def _job_process(raylet: int) -> tuple[int, int] | None:
    """(pid, seed) of the Ray worker under this node's raylet running a job: Ray titles a
    worker ``ray::<task name>`` while it runs a task, and a task is named by its job's
    label ("... seed N")."""
    for pid in _descendants(raylet):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        title = title.replace("\0", " ").strip()
        if title.startswith("ray::") and " seed " in title and _alive(pid):
            return pid, int(title.rsplit(" seed ", 1)[1].split()[0])
    return None


def _checkpointed(results: Path, seed: int) -> dict:
    """The run folder's run.json of this seed's job once it has checkpointed a step."""
    for info_path in (results / "runs").glob("*/run.json"):
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        if info.get("label", "").endswith(f"seed {seed}") and int(info.get("step") or 0) > 0:
            return info
    return {}


def test_grid_survives_a_killed_worker_node(tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    from bench.record.mlflow_sink import load_records

    for k, v in {"OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                 "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                 # every Ray process (GCS, raylets, the driver) on 127.0.0.1: loopback only
                 "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}.items():
        monkeypatch.setenv(k, v)  # the nodes, their workers, the driver and jobs inherit these
    import ray._private.ray_constants as ray_constants  # read at import: this process too

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    results, temp = tmp_path / "results", tempfile.mkdtemp(prefix="bray-")  # short socket paths
    # Ray writes the cluster's address to <RAY_TMPDIR>/ray/ray_current_cluster (outside the
    # node's temp_dir) and fails when that folder was never made: keep it in ours too, so
    # nothing left on the machine by earlier Ray runs decides whether this test passes.
    monkeypatch.setenv("RAY_TMPDIR", temp)
    os.makedirs(os.path.join(temp, "ray"), exist_ok=True)
    uri = f"sqlite:///{results / 'mlflow.db'}"
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": False, "temp_dir": temp})
    driver = None
    try:
        worker = cluster.add_node(num_cpus=1)
        raylet = worker.all_processes["raylet"][0].process
        err = open(tmp_path / "driver.err", "w+")  # noqa: SIM115 - read after the run
        driver = subprocess.Popen(
            [sys.executable, "-m", "bench", "run", "-m", METHOD, "-d", DATASET,
             "--seeds", ",".join(map(str, SEEDS)), "--steps", str(STEPS),
             "--eval-every", str(EVAL_EVERY), "--patience", "100", "--n-samples", "0",
             "--val-rows", "100", "--test-rows", "100", "--rtol", "1e-3", "--atol", "1e-3",
             "--results-dir", str(results), "--tracking-uri", uri,
             "--launcher", "ray", "--address", cluster.address, "--json"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        # the worker node's job, once it has validated and checkpointed (mid-training)
        deadline, victim, info = time.monotonic() + 300, None, {}
        while time.monotonic() < deadline and not info:
            assert driver.poll() is None, (tmp_path / "driver.err").read_text()
            victim = victim or _job_process(raylet.pid)
            info = _checkpointed(results, victim[1]) if victim else {}
            time.sleep(0.2)
        assert info, "no job reached a checkpoint on the worker node"
        assert int(info["step"]) < STEPS and info.get("status") == "RUNNING", info
        pid, killed_seed = victim
        os.kill(pid, signal.SIGKILL)  # the Ray worker running the job
        t0 = time.monotonic()
        while _alive(pid) and time.monotonic() - t0 < 30:
            time.sleep(0.2)
        assert not _alive(pid), "the killed Ray worker is still alive"
        out, _ = driver.communicate(timeout=300)
        err.seek(0)
        stderr = err.read()
        assert driver.returncode == 0, stderr
        assert "127.0.0.1:" in cluster.address
        assert f"RETRY {METHOD} on {DATASET} seed {killed_seed}" in stderr, stderr
        printed = json.loads(out)  # JSON only on stdout
        assert sorted(r["seed"] for r in printed) == list(SEEDS)
        assert {r["status"] for r in printed} == {"FINISHED"}

        runs = load_records(uri, "bench", history=("val_nll",))
        finished = [r for r in runs if r.status == "FINISHED"]
        assert sorted(r.seed for r in finished) == list(SEEDS), [(r.seed, r.status)
                                                                  for r in runs]
        assert {r.run_id for r in finished} == {r["run_id"] for r in printed}
        expected = list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
        for r in finished:
            assert (r.method, r.dataset) == ("interflow", "8gaussians")
            assert sorted(s for s, _ in r.history["val_nll"]) == expected, (r.seed,
                                                                            r.history)
            assert r.metrics["steps_done"] == STEPS and math.isfinite(r.metrics["test_nll"])
        # the killed job's first run: resumed to FINISHED, or left behind unfinished
        first = next(r for r in runs if r.run_id == info["run_id"])
        assert first.seed == killed_seed
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        for sig, handler in handlers.items():  # Ray's node installs its own in this process
            signal.signal(sig, handler)
