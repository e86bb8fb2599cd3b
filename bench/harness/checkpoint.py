"""One checkpoint layout for every method (tensors and plain values only, loaded with
``weights_only=True``; never a pickled plug-in object).

Layout (``format = "bench-checkpoint/1"``)::

    {"format", "method", "method_params" (asdict), "dataset", "dataset_params",
     "optim" (asdict of OptimConfig), "step",
     "modules": {name: state_dict}   # the live weights of method.modules()
     "ema": {name: state_dict} | None,  # the averaged weights (what was evaluated)
     "ema_updates": {name: int} | None,
     "optimizer", "scheduler",       # torch state dicts, None for closed-form methods
     "extra": method.extra_state(),  # e.g. random generators
     "rng": torch CPU RNG state}
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.api import Method
from bench.harness.optim import Trainer

__all__ = ["FORMAT", "snapshot", "restore", "make_checkpoint", "save_checkpoint",
           "load_checkpoint"]

FORMAT = "bench-checkpoint/1"


def _cpu_copy(obj: Any) -> Any:
    """A deep copy with every tensor detached and moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def snapshot(method: Method, trainer: Trainer) -> dict[str, Any]:
    """The training state of a run (weights, EMA, optimiser, schedule, method extras) as a
    CPU deep copy: what early stopping keeps and what a checkpoint stores."""
    state = trainer.state_dict()
    return _cpu_copy({
        "modules": {name: m.state_dict() for name, m in method.modules().items()},
        "ema": state["ema"],
        "ema_updates": state["ema_updates"],
        "optimizer": state["optimizer"],
        "scheduler": state["scheduler"],
        "extra": method.extra_state(),
    })


def restore(method: Method, trainer: Trainer | None, ckpt: dict[str, Any]) -> None:
    """Load a `snapshot` or a checkpoint into a method (and its trainer, if given)."""
    modules = method.modules()
    missing = set(modules) - set(ckpt["modules"])
    if missing:
        raise KeyError(f"checkpoint has no weights for module(s) {sorted(missing)}")
    for name, module in modules.items():
        module.load_state_dict(ckpt["modules"][name])
    method.load_extra_state(ckpt.get("extra") or {})
    if trainer is not None:
        trainer.load_state_dict(ckpt)


def make_checkpoint(method: Method, trainer: Trainer, *, dataset: str, dataset_params: Any,
                    step: int, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dictionary of a run at ``step``.

    Args:
        state: a `snapshot` to store (e.g. the best one kept by early stopping); default:
            the current state.
    """
    state = state if state is not None else snapshot(method, trainer)
    return {
        "format": FORMAT,
        "method": method.name,
        "method_params": _asdict(method.params),
        "dataset": dataset,
        "dataset_params": _asdict(dataset_params),
        "optim": dataclasses.asdict(trainer.optim),
        "step": int(step),
        **state,
        "rng": torch.get_rng_state(),
    }


def _asdict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> Path:
    """Write ``ckpt`` atomically (a temporary file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU (``weights_only=True``: tensors and plain values)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)
