"""Data parallel training (`bench.harness.training.distributed`): the sharding of batches,
the records of a single process, two gloo ranks that give exactly the update of one process on the
global batch and stop together when one fails, and ``torchrun -m bench run`` end to end."""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.api import Budget, ConfigError, LogLikelihood, Method, OptimConfig, RunRecord, Splits
from bench.harness import make_context
from bench.harness.training import distributed
from bench.harness.training.gradsync import gradient_sync
from bench.harness.training.loop import batches, train
from bench.harness.training.optim import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 6
OPTIM = OptimConfig(optimizer="adam", lr=0.05, weight_decay=0.1, schedule="cosine",
                    grad_clip=0.5, ema=0.9)
BUDGET = Budget(steps=STEPS, eval_every=3, patience=100)
TORCHRUN = Path(sys.executable).with_name("torchrun")


# -- sharding and records, one process -------------------------------------------------------
@pytest.mark.parametrize("n, batch, world", [(60, 8, 2), (61, 8, 2), (50, 7, 3), (2, 4, 4)])
def test_ranks_take_disjoint_equal_shares_of_each_global_batch(n, batch, world):
    gen = [batches(n, batch, torch.Generator().manual_seed(5), r, world) for r in range(world)]
    one = batches(n, batch * world, torch.Generator().manual_seed(5))
    padded = math.ceil(n / world) * world
    for _ in range(2 * math.ceil(padded / (batch * world))):  # two epochs
        shares = [next(g) for g in gen]
        epoch, glob, end = next(one)
        assert {s[0] for s in shares} == {epoch} and {s[2] for s in shares} == {end}
        assert len({len(s[1]) for s in shares}) == 1  # equal per-rank batches
        union = torch.cat([s[1] for s in shares])
        if n % world == 0:  # no padding: exactly the single process's global batch
            assert torch.equal(union, glob)
        else:
            assert torch.equal(union[:len(glob)], glob)  # then the epoch's first indices
        if not end:
            assert len(union) == batch * world and len(set(union.tolist())) == len(union)


def test_a_single_process_draws_the_batches_it_always_did():
    g, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    it = batches(50, 16, g)
    for _ in range(2):
        perm = torch.randperm(50, generator=ref)
        for s in range(0, 50, 16):
            _, idx, end = next(it)
            assert torch.equal(idx, perm[s:s + 16]) and end == (s + 16 >= 50)


def test_batch_sizes_and_launch_environment(monkeypatch):
    assert distributed.batch_sizes(512, 100_000, 8) == (512, 4096)
    assert distributed.batch_sizes(512, 100, 2) == (50, 100)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.setup("cpu") == (distributed.World(), "cpu")
    assert distributed.World().tags() == {"world_size": "1", "nodes": "1",
                                          "dist_backend": "none"}
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "9")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = distributed.launch_env()
    assert (env.size, env.nodes, env.is_main, env.enabled) == (16, 2, False, True)
    assert isinstance(distributed.main_rank_sinks(lambda: None)(), distributed.NullSink)
    assert distributed.rank_seed(7, 0) == 7 and distributed.rank_seed(7, 1) != 7
    monkeypatch.setenv("RANK", "16")
    with pytest.raises(ConfigError, match="inconsistent launch"):
        distributed.launch_env()


def test_single_process_run_records_the_world(registry):
    from bench.harness.planning.plan import plan_jobs
    from bench.harness.running.run import run_job
    from bench.record.memory import MemorySink

    (job,) = plan_jobs(registry, ["gaussian_mle"], ["gaussian[dim=2,n_train=300,n_val=50,"
                                                    "n_test=50]"], [0], steps=1)
    sink = MemorySink()
    record = run_job(job, sink)
    assert record.status == "FINISHED" and sink.record.status == "FINISHED"
    want = {"world_size": "1", "nodes": "1", "dist_backend": "none",
            "batch_size_per_rank": "300", "effective_batch_size": "300"}
    assert {k: sink.record.tags[k] for k in want} == want


# -- two gloo ranks, torch.multiprocessing --------------------------------------------------
@dataclass
class P:
    batch_size: int = 8


class Regression(Method):
    """Least squares through a random buffer, in float64: a deterministic loss."""

    name = "regression"
    Params = P

    def __init__(self, params, splits, ctx, fail_at=None, nan_at=None, bad_val=False):
        super().__init__(params, splits, ctx)
        self.net = nn.Linear(3, 2).double()
        self.net.register_buffer("mix", torch.randn(3, 3, dtype=torch.float64))
        self.target = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], dtype=torch.float64)
        self.calls, self.fail_at, self.nan_at, self.bad_val = 0, fail_at, nan_at, bad_val

    def modules(self):
        return {"net": self.net}

    def loss(self, batch, step):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("out of memory (simulated)")
        err = self.net(batch @ self.net.mix) - batch @ self.target.T
        value = (err**2).mean()
        return value * math.nan if self.calls == self.nan_at else value

    def sample(self, n):
        return torch.zeros(n, 3, dtype=torch.float64)

    def log_prob(self, x):
        if self.bad_val:
            raise ValueError("validation failed (simulated)")
        return LogLikelihood(-(self.net(x) ** 2).sum(1), "exact", "test")


def _splits() -> Splits:
    x = torch.randn(60, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return Splits(x, x[:10], x[:10], (3,), "test")


def _fit(batch: int, init_seed: int, world=None, **kw) -> tuple[Regression, Trainer]:
    torch.manual_seed(init_seed)
    method = Regression(P(batch), _splits(), make_context(), **kw)
    if world is not None:
        world.replicate(method.modules(), seed=0)
    trainer = Trainer(method, OPTIM, total_steps=STEPS,
                      grad_sync=gradient_sync(world) if world is not None else None)
    train(method, trainer, _splits(), BUDGET, generator=torch.Generator().manual_seed(0))
    return method, trainer


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = trainer.state_dict()
    out = {f"w.{k}": v.clone() for k, v in state["modules"]["net"].items()}
    out.update({f"ema.{k}": v.clone() for k, v in state["ema"]["net"].items()})
    out.update({f"grad.{i}": p.grad.clone() for i, p in enumerate(trainer.params)})
    return out


def _outcome(fn) -> str:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test compares what each rank raised
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), BENCH_DIST_TIMEOUT="60")
    torch.set_num_threads(1)
    res: dict[str, object] = {}
    world, _ = distributed.setup("cpu")
    _, trainer = _fit(8, init_seed=100 + rank, world=world)  # replicas start different
    res.update(_state(trainer))
    world, _ = distributed.setup("cpu")  # as run_job does per job
    res["step_error"] = _outcome(lambda: _fit(8, 0, world, fail_at=3 if rank else None))
    world, _ = distributed.setup("cpu")
    res["diverged"] = _outcome(lambda: _fit(8, 0, world, nan_at=2 if rank else None))
    world, _ = distributed.setup("cpu")
    res["val_error"] = _outcome(lambda: _fit(8, 0, world, bad_val=rank == 0))
    world, _ = distributed.setup("cpu")  # rank 1 fails before building its method
    failed = RunRecord("id", "job", status="FAILED", tags={"failure.reason": "no data"})
    if rank == 0:
        res["peer_setup"] = _outcome(lambda: world.replicate({}, 0))
        failed.tags["failure.reason"] = "rank 0's reason"
    res["shared"] = world.share(failed).tags["failure.reason"]
    torch.save(res, Path(out) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_take_the_step_of_one_process_on_the_global_batch(tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # spawned children import us
    worker = importlib.import_module("test_distributed")._worker
    ctx = mp.start_processes(worker, args=(2, _free_port(), str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the ranks did not finish in 120 s (deadlock?)")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    tensors = [k for k in r0 if k.startswith(("w.", "ema.", "grad."))]
    for k in tensors:  # replicas equal to the bit
        assert torch.equal(r0[k], r1[k]), k
    _, single = _fit(16, init_seed=100)  # rank 0's initial weights, batch 2 x 8
    ref = _state(single)
    for k in tensors:
        torch.testing.assert_close(r0[k], ref[k], rtol=1e-10, atol=1e-12, msg=k)
    assert not torch.allclose(ref["w.weight"], _state(_fit(8, init_seed=100)[1])["w.weight"])
    # failures stop every rank at the same point, and the group stays usable
    assert r1["step_error"] == "RuntimeError: out of memory (simulated)"
    assert r0["step_error"] == "PeerFailure: rank 1 failed in a training step"
    assert r0["diverged"].startswith("LossExploded") and r1["diverged"].startswith(
        "LossExploded")
    assert r0["val_error"] == "ValueError: validation failed (simulated)"
    assert r1["val_error"].startswith("PeerFailure: rank 0 failed during validation")
    assert r0["peer_setup"].startswith("PeerFailure: rank 1 failed") and "no data" in r0[
        "peer_setup"]
    assert r0["shared"] == r1["shared"] == "rank 0's reason"


# -- torchrun end to end ------------------------------------------------------------------
def _process_tree(pid: int) -> list[int]:
    out = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in (children.read_text().split() if children.exists() else []):
        out += _process_tree(int(child))
    return out


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside python")
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc")
def test_torchrun_killed_mid_run_resumes_as_if_uninterrupted(tmp_path, _mlflow_template):
    """``torchrun -m bench run`` with two ranks end to end; then the same launch with every
    process SIGKILLed after the checkpoint of step 60 (a pre-empted
    node), then the same command again: the run continues from that checkpoint, into the
    same tracking run, and its metrics are those of an uninterrupted launch, step for step
    and value for value (each rank's own random streams come back)."""
    import json
    import signal

    from bench.record.mlflow_sink import load_records

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "BENCH_DIST_TIMEOUT": "120"}

    for tag in ("full", "cut"):
        shutil.copy(_mlflow_template, tmp_path / f"{tag}.db")

    def cmd(tag: str) -> list[str]:
        return [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "bench", "run",
                "-m", "interflow[hidden=(16,16),batch_size=32]",
                "-d", "8gaussians[n_train=2000,n_val=200,n_test=200]", "--steps", "120",
                "--eval-every", "30", "--checkpoint-every", "20", "--n-samples", "0",
                "--tracking-uri", f"sqlite:///{tmp_path / tag}.db",
                "--results-dir", str(tmp_path / tag), "-q"]

    t0 = time.monotonic()
    full = subprocess.run(cmd("full"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=240, env={**env, "BENCH_DIST_DEBUG_DIR": str(tmp_path / "dg")})
    seconds = time.monotonic() - t0
    assert full.returncode == 0, full.stderr[-3000:]
    # the uninterrupted launch, end to end: rank 0's record of the data-parallel run
    (a,) = load_records(f"sqlite:///{tmp_path / 'full'}.db", history=("val_nll", "loss"))
    assert a.status == "FINISHED", a.failure
    want = {"world_size": "2", "nodes": "1", "dist_backend": "gloo",
            "batch_size_per_rank": "32", "effective_batch_size": "64"}
    assert {k: a.tags[k] for k in want} == want
    assert math.isfinite(a.metrics["test_nll"]) and a.metrics["steps_done"] == 120
    assert [s for s, _ in a.history["val_nll"]] == [30, 60, 90, 120]
    assert [s for s, _ in a.history["loss"]] == list(range(1, 121))
    digests = sorted((tmp_path / "dg").glob("*.sha256"))
    assert [p.name for p in digests] == [f"interflow-8gaussians-s0.rank{r}.sha256"
                                         for r in (0, 1)]
    assert digests[0].read_text() == digests[1].read_text()  # the final replicas are equal
    print(f"torchrun end to end: {seconds:.1f} s")
    proc = subprocess.Popen(cmd("cut"), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    info = {}
    while info.get("step", 0) < 60:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint at step 60 within 180 s"
        time.sleep(0.1)
        found = list((tmp_path / "cut" / "runs").glob("*/run.json"))
        info = json.loads(found[0].read_text() or "{}") if found else {}
    for pid in _process_tree(proc.pid):  # torchrun's workers are not in its process group
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert info["status"] == "RUNNING"
    again = subprocess.run(cmd("cut"), cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    (b,) = load_records(f"sqlite:///{tmp_path / 'cut'}.db", history=("val_nll", "loss"))
    assert a.status == b.status == "FINISHED" and b.run_id == info["run_id"]
    assert 60 <= int(b.tags["resumed_at_step"]) < 120
    assert [s for s, _ in b.history["loss"]] == list(range(1, 121))
    assert b.history["loss"] == a.history["loss"]
    assert b.history["val_nll"] == a.history["val_nll"]
    assert b.metrics["test_nll"] == a.metrics["test_nll"]
    shutil.rmtree(tmp_path / "full", ignore_errors=True)
    shutil.rmtree(tmp_path / "cut", ignore_errors=True)


def test_a_checkpoint_of_another_launch_size_is_not_resumed(tmp_path):
    """A data-parallel launch does not continue a single process's checkpoint (nor the
    reverse): their batch orders and random streams differ."""
    from bench.harness.training.checkpoint import write_checkpoint
    from bench.harness.training.resume import resume_point
    from bench.harness.training.runfolder import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.write_info(status="KILLED", run_id="r1")
    state = {"rng": torch.get_rng_state(), "extra": {}, "rng_cuda": None}
    write_checkpoint(folder.checkpoint, {"kind": "resume", "run_id": "r1", "loop": {},
                                         "ranks": [state, state]})

    class Reopens:
        def reopen(self, run_id):
            return {}

    @dataclass
    class J:
        resume: str = "auto"
        label: str = "j"
        name: str = "j"

    assert resume_point(J(), folder, Reopens(), ranks=2)["run_id"] == "r1"
    assert resume_point(J(), folder, Reopens(), ranks=1) is None
    with pytest.raises(ConfigError, match="written by a launch of 2 process"):
        resume_point(J(resume="require"), folder, Reopens(), ranks=1)
    write_checkpoint(folder.checkpoint, {"kind": "resume", "run_id": "r1", "loop": {}})
    assert resume_point(J(), folder, Reopens(), ranks=1)["run_id"] == "r1"
    assert resume_point(J(), folder, Reopens(), ranks=4) is None
