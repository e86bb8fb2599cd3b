"""Data parallel training (`bench.harness.distributed`): the sharding of batches, the records
of a single process, two gloo ranks that give exactly the update of one process on the
global batch and stop together when one fails, and ``torchrun -m bench run`` end to end."""

from __future__ import annotations

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
from bench.harness import distributed, make_context
from bench.harness.loop import batches, train
from bench.harness.optim import Trainer

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
    from bench.harness.plan import plan_jobs
    from bench.harness.run import run_job
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
                      grad_sync=world.gradient_sync() if world is not None else None)
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
    assert r0["diverged"].startswith("TrainingDiverged") and r1["diverged"].startswith(
        "TrainingDiverged")
    assert r0["val_error"] == "ValueError: validation failed (simulated)"
    assert r1["val_error"].startswith("PeerFailure: rank 0 failed during validation")
    assert r0["peer_setup"].startswith("PeerFailure: rank 1 failed") and "no data" in r0[
        "peer_setup"]
    assert r0["shared"] == r1["shared"] == "rank 0's reason"


# -- torchrun end to end ------------------------------------------------------------------
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside python")
def test_torchrun_two_processes_end_to_end(tmp_path, tracking_uri):
    from bench.record.mlflow_sink import load_records

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "BENCH_DIST_DEBUG_DIR": str(tmp_path / "digests"), "BENCH_DIST_TIMEOUT": "120"}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "bench", "run",
           "-m", "interflow[hidden=(16,16),batch_size=32]",
           "-d", "8gaussians[n_train=2000,n_val=200,n_test=200]", "--steps", "20",
           "--eval-every", "10", "--n-samples", "200", "--tracking-uri", tracking_uri,
           "--results-dir", str(tmp_path / "results"), "-q"]
    t0 = time.monotonic()
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=180)
    seconds = time.monotonic() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    (rec,) = load_records(tracking_uri, history=("val_nll", "loss"))
    assert rec.status == "FINISHED", rec.failure
    want = {"world_size": "2", "nodes": "1", "dist_backend": "gloo",
            "batch_size_per_rank": "32", "effective_batch_size": "64"}
    assert {k: rec.tags[k] for k in want} == want
    assert math.isfinite(rec.metrics["test_nll"]) and rec.metrics["steps_done"] == 20
    assert [s for s, _ in rec.history["val_nll"]] == [10, 20]
    assert len(rec.history["loss"]) == 20
    digests = sorted((tmp_path / "digests").glob("*.sha256"))
    assert [p.name for p in digests] == [f"interflow-8gaussians-s0.rank{r}.sha256"
                                         for r in (0, 1)]
    assert digests[0].read_text() == digests[1].read_text()  # the final replicas are equal
    print(f"torchrun end to end: {seconds:.1f} s")
    shutil.rmtree(tmp_path / "results", ignore_errors=True)
