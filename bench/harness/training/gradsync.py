"""The gradient all-reduce of data-parallel training (see `bench.harness.training.distributed`
for the protocol): after ``backward()`` and before clipping, one all-reduce of a flat buffer
holding every rank's gradients, its loss, a failed-step flag and one error flag per rank.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from bench.harness.training.distributed import PeerFailure

if TYPE_CHECKING:
    from bench.harness.training.distributed import World

__all__ = ["GradientSync", "gradient_sync"]


class GradientSync:
    """Averages the gradients of a step over the ranks in one all-reduce (see the module
    docstring). The trainer wraps each step in `joined` and calls `reduce` after backward."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._params: list[Tensor] = []
        self._joined = True
        self._buf: Tensor | None = None

    @contextlib.contextmanager
    def joined(self, params: list[Tensor]) -> Iterator[None]:
        """Every rank joins the step's all-reduce once, also when its own step fails: an
        exception (re-raised here, `PeerFailure` on the others) or an early return after a
        non-finite loss or a failed backward (the others then skip the update too)."""
        self._params, self._joined = params, False
        try:
            yield
        except Exception:
            if not self._joined:
                self.reduce(math.nan, error=True)
            raise
        if not self._joined:
            self.reduce(math.nan, failed=True)

    def reduce(self, value: float, *, failed: bool = False, error: bool = False) -> float:
        """All-reduce this rank's gradients and loss ``value``; on return every parameter's
        ``grad`` is the mean over ranks (None where no rank had one). Returns the mean loss,
        NaN when a rank failed its step (then gradients are untouched: skip the update)."""
        self._joined = True
        w, params = self.world, self._params
        sizes = [p.numel() for p in params]
        total = sum(sizes)
        dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
        n = total + len(params) + 2 + w.size
        if self._buf is None or self._buf.numel() != n or self._buf.dtype != dtype:
            self._buf = torch.empty(n, dtype=dtype, device=params[0].device)
        buf = self._buf
        buf.zero_()
        grads, present = buf[:total], buf[total:total + len(params)]
        ok = not (failed or error)
        if ok:
            for i, (p, view) in enumerate(zip(params, grads.split(sizes), strict=True)):
                if p.grad is not None:
                    view.copy_(p.grad.reshape(-1))
                    present[i] = 1.0
        buf[-2 - w.size] = value if ok else 0.0
        buf[-1 - w.size] = 0.0 if ok else 1.0
        buf[n - w.size + w.rank] = 1.0 if error else 0.0
        dist.all_reduce(buf)
        errors = [r for r in range(w.size) if float(buf[n - w.size + r]) > 0]
        if errors and not error:
            raise PeerFailure(f"rank {errors[0]} failed in a training step")
        if float(buf[-1 - w.size]) > 0 or not ok:
            return math.nan
        grads.div_(w.size)
        for i, (p, view) in enumerate(zip(params, grads.split(sizes), strict=True)):
            if float(present[i]) == 0.0:
                p.grad = None
            elif p.grad is None:
                p.grad = view.view_as(p).to(p.dtype).clone()
            else:
                p.grad.copy_(view.view_as(p))
        return float(buf[-2 - w.size]) / w.size


def gradient_sync(world: World) -> GradientSync | None:
    """The trainer's gradient averaging for ``world`` (None in a single process)."""
    return GradientSync(world) if world.enabled else None
