"""One checkpoint layout for every method (tensors and plain values only, loaded with
``weights_only=True``; never a pickled plug-in object).

Layout (``format = "bench-checkpoint/2"``)::

    {"format", "method", "method_params" (asdict), "dataset", "dataset_params",
     "optim" (asdict of OptimConfig), "seed", "step",
     "modules": {name: state_dict}      # the live weights of method.modules()
     "ema": {name: state_dict} | None,  # the averaged weights (what was evaluated)
     "ema_updates": {name: int} | None,
     "optimizer", "scheduler",          # torch state dicts, None for closed-form methods
     "extra": method.extra_state(),     # e.g. random generators
     "rng": torch CPU RNG state, "rng_cuda": [per-device states] | None,
     "kind": "final" (the evaluated model) | "resume" (a run's training state),
     # "resume" checkpoints only (the run folder's last.pt):
     "loop": the training loop's state (`bench.harness.training.loop`: step, done, early stopping,
             timers, divergence reference, "data": the batch order's generator state at the
             start of the epoch, epoch and position in it),
     "best": the best `snapshot` so far | None,
     "run_id": the tracking run continued on resume, "job_key",
     "data_sha256": the fingerprint of the splits trained on ("" if unknown),
     "ranks": [per-rank `rank_state`] | absent  # torchrun: each rank's own random streams}

Version 2 added "rng_cuda", "kind" and the resume entries; version 1 files still load.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import torch

from bench.api import Job, Method
from bench.harness.training.optim import Trainer

__all__ = ["FORMAT", "snapshot", "restore", "load_into", "make_checkpoint",
           "save_checkpoint", "write_checkpoint", "load_checkpoint", "restore_training",
           "rank_state", "pack", "unpack"]

FORMAT = "bench-checkpoint/2"


def _cpu_copy(obj: Any) -> Any:
    """A deep copy with every tensor detached and moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def snapshot(method: Method, trainer: Trainer | None) -> dict[str, Any]:
    """The training state (live weights, EMA, optimiser, schedule, method extras) as a CPU
    deep copy: what early stopping keeps and what a checkpoint stores. Correct inside
    ``trainer.averaged()`` too (the live weights, not the swapped-in average)."""
    if trainer is not None:
        return _cpu_copy(trainer.state_dict())
    return _cpu_copy({"modules": {n: m.state_dict() for n, m in method.modules().items()},
                      "extra": method.extra_state(), "optimizer": None, "scheduler": None,
                      "ema": None, "ema_updates": None})


def restore(method: Method, trainer: Trainer | None, ckpt: dict[str, Any]) -> None:
    """Load a `snapshot` or a checkpoint into a method (and its trainer, if given): the
    live weights, extras, and with a trainer the optimiser, schedule and EMA."""
    _check_modules(method, ckpt["modules"])
    if trainer is not None:
        trainer.load_state_dict(ckpt)
        return
    for name, module in method.modules().items():
        module.load_state_dict(ckpt["modules"][name])
    method.load_extra_state(ckpt.get("extra") or {})


def load_into(method: Method, ckpt: dict[str, Any], averaged: bool = True) -> None:
    """Load a checkpoint's evaluation weights into a method without a trainer: the EMA
    average when the run kept one and ``averaged``, else the live weights."""
    weights = ckpt["ema"] if averaged and ckpt.get("ema") else ckpt["modules"]
    _check_modules(method, weights)
    for name, module in method.modules().items():
        module.load_state_dict(weights[name])
    method.load_extra_state(ckpt.get("extra") or {})


def _check_modules(method: Method, weights: dict[str, Any]) -> None:
    missing = set(method.modules()) - set(weights)
    if missing:
        raise KeyError(f"checkpoint has no weights for module(s) {sorted(missing)}")


def _asdict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}


def make_checkpoint(job: Job, trainer: Trainer, step: int,
                    state: dict[str, Any] | None = None, *,
                    loop: dict[str, Any] | None = None, best: dict[str, Any] | None = None,
                    run_id: str | None = None, job_key: str = "",
                    ranks: list[dict[str, Any]] | None = None,
                    data_sha256: str = "") -> dict[str, Any]:
    """The checkpoint dictionary of ``job`` at ``step``.

    Args:
        state: a `snapshot` to store (e.g. the best one kept by early stopping); default:
            the trainer's current state.
        loop, best, run_id, job_key: given ``loop`` (the loop's state), a "resume"
            checkpoint with these entries (see the module docstring); else a "final" one.
        ranks: data parallel: every rank's `rank_state`, in rank order (the weights,
            optimiser and loop state are the same on every rank; the random streams not).
        data_sha256: a "resume" checkpoint's `bench.harness.training.runfolder.data_fingerprint` of
            the splits it was trained on (a resume on other data is refused).
    """
    state = state if state is not None else snapshot(trainer.method, trainer)
    resume = ({"loop": loop, "best": best, "run_id": run_id, "job_key": job_key,
               "data_sha256": data_sha256} if loop is not None else {})
    if ranks is not None:
        resume["ranks"] = ranks
    return {
        "format": FORMAT,
        "method": job.method,
        "method_params": _asdict(job.method_params),
        "dataset": job.dataset,
        "dataset_params": _asdict(job.dataset_params),
        "optim": dataclasses.asdict(trainer.optim),
        "seed": int(job.seed),
        "step": int(step),
        **{k: state.get(k) for k in ("modules", "ema", "ema_updates", "optimizer",
                                     "scheduler", "extra")},
        "rng": torch.get_rng_state(),
        "rng_cuda": _cuda_rng(),
        "kind": "resume" if loop is not None else "final",
        **resume,
    }


def write_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> Path:
    """Write ``ckpt`` atomically (a temporary file in the same folder, flushed and fsync'ed,
    then os.replace): a reader sees the old file or the new one, never a partial one."""
    path = Path(path)
    from bench.harness.training.runfolder import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: torch.save(ckpt, f))
    return path


def save_checkpoint(path: str | Path, job: Job, trainer: Trainer, step: int,
                    state: dict[str, Any] | None = None) -> Path:
    """`make_checkpoint` written atomically to ``path``; returns the path."""
    return write_checkpoint(path, make_checkpoint(job, trainer, step, state))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU (``weights_only=True``: tensors and plain values)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def _cuda_rng() -> list[torch.Tensor] | None:
    return (torch.cuda.get_rng_state_all()
            if torch.cuda.is_available() and torch.cuda.is_initialized() else None)


def rank_state(method: Method) -> dict[str, Any]:
    """This process's random streams: the method's extra state (its generators) and
    torch's RNG states (what differs between data-parallel ranks)."""
    return _cpu_copy({"extra": method.extra_state(), "rng": torch.get_rng_state(),
                      "rng_cuda": _cuda_rng()})


def pack(state: dict[str, Any]) -> bytes:
    """``state`` (tensors and plain values) as bytes, for a collective."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def unpack(data: bytes) -> dict[str, Any]:
    """`pack`'s inverse, with ``weights_only=True``."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def restore_training(trainer: Trainer, ckpt: dict[str, Any], rank: int = 0) -> None:
    """Put a "resume" checkpoint's training state back: weights, EMA, optimiser, schedule,
    the method's extra state (its generators) and torch's RNG states; with per-rank states
    (``"ranks"``, data parallel) those of ``rank``."""
    restore(trainer.method, trainer, ckpt)
    own = ckpt
    if ckpt.get("ranks"):
        own = ckpt["ranks"][rank]
        trainer.method.load_extra_state(own.get("extra") or {})
    torch.set_rng_state(own["rng"])
    cuda = own.get("rng_cuda")
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
