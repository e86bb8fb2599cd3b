"""Cost measurements shared by the runner and the benchmarks: clocks that wait for the
device, and peak memory (CUDA's max allocated on a GPU, else the process's peak RSS).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

__all__ = ["synchronize", "reset_peak_memory", "peak_memory_bytes", "Stopwatch",
           "forward_calls"]


def _is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def synchronize(device: str | torch.device) -> None:
    """Wait for queued kernels on `device` (no-op on the CPU) before reading a clock."""
    if _is_cuda(device) and torch.cuda.is_available():
        torch.cuda.synchronize(torch.device(device))


def reset_peak_memory(device: str | torch.device) -> None:
    """Start a new peak-memory window (CUDA only: the process RSS peak cannot be reset)."""
    if _is_cuda(device) and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_memory_bytes(device: str | torch.device) -> int:
    """CUDA max allocated bytes since the last reset on a GPU; otherwise the peak resident
    set size of this process (``getrusage``; kilobytes on Linux, bytes on macOS)."""
    if _is_cuda(device) and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated(torch.device(device)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass
class Stopwatch:
    """``with Stopwatch(device) as sw: ...`` then ``sw.seconds``; synchronizes the device
    on entry and exit so that asynchronous GPU work is inside the interval."""

    device: str | torch.device = "cpu"
    seconds: float = 0.0

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start


@contextmanager
def forward_calls(modules: list[torch.nn.Module]) -> Iterator[list[int]]:
    """``with forward_calls(modules) as calls: ...``: ``calls[0]`` counts the forward calls
    of ``modules`` inside the block (forward hooks, removed on exit). The one count of a
    sampler's network evaluations (``sample_nfe``): the same for an ODE, an SDE or an
    ancestral sampler, whatever the method says of itself."""
    calls = [0]

    def hook(*_args: object) -> None:
        calls[0] += 1

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()
