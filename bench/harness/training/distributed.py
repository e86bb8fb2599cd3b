"""Data-parallel training launched by ``torchrun``: one process (rank) per device, each with
a replica of the method's networks and its own share of every global batch; the gradients
are averaged across ranks, so every replica takes the same optimiser step.

Launch. ``torchrun`` sets WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT; WORLD_SIZE > 1 turns data parallelism on. `setup` initialises the default
process group once per process (NCCL when the job's device is CUDA, gloo on the CPU) and
gives each rank its device: a job device ``cuda`` (or ``cuda:k``) becomes
``cuda:LOCAL_RANK``. Without torchrun nothing changes: no process group, no collective,
the single-process code path as before (`World` with ``size`` 1 is a no-op).

What the ranks do (`bench.harness.running.run`, `bench.harness.training.loop`,
`bench.harness.training.optim`):

- `World.replicate`: after the method is built (before the EMA copies) every rank's
  parameters and buffers are overwritten by rank 0's, so replicas start equal.
- `GradientSync` (`bench.harness.training.gradsync`): after ``backward()`` and before
  clipping, one all-reduce of a flat buffer holding every gradient (plus the loss, failure
  flags and which parameters got a gradient) averages the gradients over ranks: the update
  of one process on the global batch, so replicas stay equal.
- `bench.harness.training.loop.batches`: every rank draws the same permutation (same generator) and
  takes its disjoint, equal share of each global batch (DistributedSampler's padding);
  per-rank batch = the method's batch size, effective batch = per-rank batch x world size,
  an epoch is one pass over the global data.
- Rank 0 alone records (the others get a `NullSink`), validates, evaluates, holds the run
  folder's lock and writes the checkpoint. What must agree (divergence, early stop, time
  budget, a periodic checkpoint now: `SAVE`) is decided on rank 0 and broadcast each step
  (`World.decide`), so all ranks stop, and checkpoint, at the same step. A checkpoint
  gathers every rank's random streams (`World.gather_bytes`) so a resumed launch
  (rank 0 chooses, `bench.harness.training.resume`) continues each rank's streams where they
  were. A failure
  stops every rank at the same point: a training step that raises on any rank (flags in
  the all-reduce), rank 0 failing in validation (`decide`) or while building the method
  (the vote in `replicate`), and in the end every rank returns rank 0's record
  (`World.share`), FAILED on all when rank 0's run failed.
- Random streams: rank r seeds the method's generators (``RunContext.seed``) and torch's
  global generator with `rank_seed` (= the job's seed on rank 0), so the training noise
  (times, Gaussian noise, Hutchinson probes) is independent across ranks.

Why not `torch.nn.parallel.DistributedDataParallel`: DDP reduces only through its wrapper
(it hooks the wrapper's ``forward``), but our methods call their own modules, many times per
loss (ODE solves), and the CNF's adjoint method calls them again inside the backward pass.
DDP supports several forward calls before one backward, and reentrant backward passes, only
with ``static_graph=True``, which assumes every step uses the network the same way (an
adaptive solver's number of evaluations changes from step to step); wrapping would also
change the state-dict keys of the EMA and the checkpoints. One all-reduce of the flattened
gradients after backward is the same update (DDP also all-reduces the gradients and divides
by the world size), works for any method, and costs one bucket per step, without DDP's
overlap of communication with the backward pass.

A rank failing outside these points while its peers wait in a collective (e.g. out of
memory moving a batch on one rank only) is not coordinated: the mismatched collectives fail
or time out (``BENCH_DIST_TIMEOUT``) and the launch stops with an error.

Environment: ``BENCH_DIST_TIMEOUT`` (seconds a collective may wait, default 6 h: the other
ranks wait in one while rank 0 validates or evaluates); ``BENCH_DIST_DEBUG_DIR``: every rank
writes ``<job name>.rank<r>.sha256`` there at the end of training, the SHA-256 of its live
weights, EMA weights and optimiser state (equal files = equal replicas).
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bench.api import BenchError, ConfigError, RunRecord, Sink

__all__ = ["World", "NullSink", "PeerFailure", "setup", "current",
           "launch_env", "rank_seed", "batch_sizes", "main_rank_sinks", "CONTINUE", "STOP",
           "EARLY_STOP", "EXPLODED", "SAVE"]

log = logging.getLogger(__name__)

CONTINUE, STOP, EARLY_STOP, EXPLODED, _FAILED = 0, 1, 2, 3, 4
SAVE = 8  # or-ed into a decision: every rank takes part in writing the checkpoint now
DEFAULT_TIMEOUT_S = 6 * 3600

_world: World | None = None
_voted = False  # whether this job's ranks have voted in `replicate` (see `World.share`)


class PeerFailure(BenchError):
    """Another rank failed; this one stops at the same point."""


class NullSink:
    """A `bench.api.Sink` that records nothing (the ranks other than 0)."""

    run_id: str | None = None

    def start(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        return None

    def reopen(self, run_id: str) -> dict[str, int]:
        return {}

    def flush(self) -> None:
        return None

    def close_stale(self, run_id: str, reason: str) -> tuple[str, str]:
        return "KILLED", reason

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        return None

    def set_tags(self, tags: dict[str, str]) -> None:
        return None

    def log_artifact(self, path: Path) -> str:
        return str(path)

    def end(self, status: str) -> None:
        return None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random streams: ``seed`` on rank 0, else a hash of both."""
    return seed if rank == 0 else zlib.crc32(f"bench-seed-{seed}-rank-{rank}".encode())


def batch_sizes(batch: int, n: int, world_size: int) -> tuple[int, int]:
    """(per-rank batch, effective batch) of a method's batch size (>= 1: the contract's
    ``batch_size`` property, checked before training; never clamped) on n training rows."""
    per_rank = min(batch, math.ceil(n / world_size))
    return per_rank, per_rank * world_size


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place in the launch: ``size`` ranks on ``nodes`` nodes; ``backend``
    "nccl", "gloo" or "none" (single process); ``comm_device`` holds control tensors."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_size: int = 1
    backend: str = "none"
    comm_device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def nodes(self) -> int:
        return max(1, self.size // max(1, self.local_size))

    def tags(self) -> dict[str, str]:
        """``world_size``, ``nodes`` (WORLD_SIZE / LOCAL_WORLD_SIZE), ``dist_backend``."""
        return {"world_size": str(self.size), "nodes": str(self.nodes),
                "dist_backend": self.backend}

    def seed(self, seed: int) -> int:
        return rank_seed(seed, self.rank)

    # -- collectives (no-ops in a single process) ------------------------------------------
    def gather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's ``data``, in rank order, on every rank (one process: ``[data]``)."""
        if not self.enabled:
            return [data]
        t = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else \
            torch.zeros(0, dtype=torch.uint8)
        t = t.to(self.comm_device)
        size = torch.tensor([t.numel()], device=self.comm_device)
        sizes = [torch.zeros_like(size) for _ in range(self.size)]
        dist.all_gather(sizes, size)
        longest = max(1, int(max(int(s) for s in sizes)))
        padded = torch.zeros(longest, dtype=torch.uint8, device=self.comm_device)
        padded[:t.numel()] = t
        out = [torch.zeros_like(padded) for _ in range(self.size)]
        dist.all_gather(out, padded)
        return [o[:int(s)].cpu().numpy().tobytes() for o, s in zip(out, sizes, strict=True)]

    def _gather_text(self, text: str) -> list[str]:
        return [b.decode() for b in self.gather_bytes(text.encode())]

    def broadcast_text(self, text: str) -> str:
        """Rank 0's ``text`` on every rank (the others' argument is ignored)."""
        if not self.enabled:
            return text
        data = text.encode() if self.is_main else b""
        size = torch.tensor([len(data)], device=self.comm_device)
        dist.broadcast(size, src=0)
        if int(size) == 0:
            return text if self.is_main else ""
        buf = torch.zeros(int(size), dtype=torch.uint8, device=self.comm_device)
        if self.is_main and data:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buf, src=0)
        return text if self.is_main else buf.cpu().numpy().tobytes().decode()

    def vote(self, failure: str | None, what: str) -> None:
        """Every rank says whether it failed ``what``; raise `PeerFailure` on the others."""
        global _voted
        if not self.enabled:
            return
        _voted = True
        reasons = self._gather_text(json.dumps(failure))
        failed = {r: json.loads(t) for r, t in enumerate(reasons) if json.loads(t) is not None}
        if failed and failure is None:
            raise PeerFailure(f"rank {min(failed)} failed {what}: {failed[min(failed)]}")

    def replicate(self, modules: dict[str, nn.Module], seed: int) -> None:
        """After the vote, copy rank 0's parameters and buffers into every rank's modules,
        then seed this rank's global generator with `rank_seed`."""
        if not self.enabled:
            return
        self.vote(None, "while loading the data or building the method")
        with torch.no_grad():
            for module in modules.values():
                for t in [*module.parameters(), *module.buffers()]:
                    buf = t.data if t.data.is_contiguous() else t.data.contiguous()
                    dist.broadcast(buf, src=0)
                    if buf is not t.data:
                        t.data.copy_(buf)
        torch.manual_seed(self.seed(seed))

    def decide(self, decision: Callable[[], int]) -> int:
        """``decision()`` on rank 0 (CONTINUE, STOP, EARLY_STOP or EXPLODED), the same code on
        every rank. If it raises on rank 0, rank 0 re-raises and the others raise
        `PeerFailure` at the same step."""
        if not self.enabled:
            return decision()
        code = torch.zeros(1, dtype=torch.int64, device=self.comm_device)
        error: BaseException | None = None
        if self.is_main:
            try:
                code[0] = int(decision())
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the broadcast
                error, code[0] = exc, _FAILED
        dist.broadcast(code, src=0)
        if error is not None:
            raise error
        if int(code) == _FAILED:
            raise PeerFailure("rank 0 failed during validation (see its record)")
        return int(code)

    def share(self, record: RunRecord) -> RunRecord:
        """Rank 0's record, on every rank (after a vote when this rank failed before
        `replicate`, so every rank is at the same collective)."""
        global _voted
        if not self.enabled:
            return record
        if not _voted:  # this rank failed before `replicate`: its peers may wait there
            failure = None if record.status == "FINISHED" else (record.failure or "failed")
            self.vote(failure, "while loading the data or building the method")
        _voted = False
        text = json.dumps(dataclasses.asdict(record), default=str) if self.is_main else ""
        text = self.broadcast_text(text)
        if self.is_main:
            return record
        fields = json.loads(text)
        fields["history"] = {k: [(int(s), float(v)) for s, v in pairs]
                             for k, pairs in fields["history"].items()}
        return RunRecord(**fields)

    def write_digest(self, name: str, trainer: Any) -> Path | None:
        """With ``BENCH_DIST_DEBUG_DIR`` set: write the SHA-256 of the trainer's weights, EMA
        and optimiser state to ``<dir>/<name>.rank<r>.sha256`` (every rank; also single)."""
        folder = os.environ.get("BENCH_DIST_DEBUG_DIR")
        if not folder:
            return None
        state = trainer.state_dict()
        digest = hashlib.sha256()
        _hash(digest, {k: state[k] for k in ("modules", "ema", "optimizer", "scheduler")})
        path = Path(folder) / f"{name}.rank{self.rank}.sha256"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(digest.hexdigest() + "\n")
        return path


def _hash(digest: Any, obj: Any) -> None:
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            digest.update(repr(k).encode())
            _hash(digest, obj[k])
    elif isinstance(obj, list | tuple):
        for v in obj:
            _hash(digest, v)
    else:
        digest.update(repr(obj).encode())


def launch_env() -> World:
    """The launch torchrun describes in the environment (no process group yet)."""
    size = _env_int("WORLD_SIZE", 1)
    local_size = _env_int("LOCAL_WORLD_SIZE", size)
    world = World(size=size, rank=_env_int("RANK", 0), local_rank=_env_int("LOCAL_RANK", 0),
                  local_size=local_size)
    if size < 1 or not 0 <= world.rank < size or not 0 <= world.local_rank < local_size:
        raise ConfigError(f"inconsistent launch: RANK {world.rank}, LOCAL_RANK "
                          f"{world.local_rank} of WORLD_SIZE {size}, LOCAL_WORLD_SIZE "
                          f"{local_size}")
    return world


def current() -> World:
    """The initialised world of this process, else a single process."""
    return _world if _world is not None else World()


def main_rank_sinks(factory: Callable[[], Sink]) -> Callable[[], Sink]:
    """``factory`` on rank 0 (and without torchrun); `NullSink` on the other ranks, so only
    rank 0 opens the tracking store."""
    return factory if launch_env().is_main else NullSink


def _rank_device(device: str, world: World) -> str:
    if torch.device(device).type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available")
    n = torch.cuda.device_count()
    if n == 1:  # one visible device per process (CUDA_VISIBLE_DEVICES set per rank)
        return "cuda:0"
    if world.local_rank >= n:
        raise ConfigError(f"LOCAL_RANK {world.local_rank} but only {n} CUDA devices are "
                          "visible: launch at most one process per GPU")
    return f"cuda:{world.local_rank}"


def setup(device: str) -> tuple[World, str]:
    """Initialise the process group once (torchrun launch) and return (world, this rank's
    device). In a single process: (a world of size 1, ``device`` unchanged), nothing else."""
    global _world, _voted
    env = launch_env()
    if not env.enabled:
        return env, device
    local = _rank_device(device, env)
    cuda = local.startswith("cuda")
    if _world is None:
        backend = "nccl" if cuda else "gloo"
        timeout = datetime.timedelta(seconds=_env_int("BENCH_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
        if cuda:
            torch.cuda.set_device(torch.device(local))
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=timeout,
                                    device_id=torch.device(local) if cuda else None)
            atexit.register(_shutdown)
        _world = dataclasses.replace(env, backend=dist.get_backend(),
                                     comm_device=local if cuda else "cpu")
        log.info("rank %d of %d (%s) on %s", env.rank, env.size, _world.backend, local)
    if cuda != (_world.backend == "nccl"):
        raise ConfigError(f"--device {device} in a launch whose process group is "
                          f"{_world.backend}: use one device type per torchrun launch")
    _voted = False
    return _world, local


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
