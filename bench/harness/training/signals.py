"""Clean stops: SIGINT (Ctrl-C) and SIGTERM become a `RunInterrupted` exception raised at a
safe point, so that the run can checkpoint, flush its record and be marked KILLED.

`catch_stops` installs the handlers (main thread only; the command line does it around a
grid). Inside `deferred` blocks (a training step and its bookkeeping, a checkpoint write) a
stop is held until the block ends, so the training state is never left half-updated; a
second stop while one is held raises at once. Elsewhere (validation, evaluation, data
loading) a stop raises immediately.

`step_watchdog` bounds one training step with SIGALRM (``--max-seconds``): it raises
`StepTimeout` inside a step that hangs, also inside a `deferred` block (holding it would
wait forever); SIGINT/SIGTERM keep their handlers meanwhile.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator

from bench.api import BenchError

__all__ = ["RunInterrupted", "catch_stops", "deferred", "StepTimeout", "step_watchdog",
           "STEP_GRACE_S"]

STEP_GRACE_S = 30.0  # the least a step may overrun --max-seconds before the watchdog fires


class StepTimeout(BenchError):
    """A training step did not return within the time budget plus its grace margin."""


@contextlib.contextmanager
def step_watchdog(step: int, left: float, max_seconds: float | None) -> Iterator[None]:
    """Raise `StepTimeout` inside the block if it runs longer than ``left`` (the budget
    left) + ``max(STEP_GRACE_S, max_seconds)`` seconds. A no-op without a time budget, off
    the main thread, or where SIGALRM does not exist; an alarm set by someone else is put
    back afterwards (less the time spent here)."""
    if (max_seconds is None or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return
    limit = max(left, 0.0) + max(STEP_GRACE_S, max_seconds)

    def _alarm(signum, frame) -> None:
        raise StepTimeout(f"step {step} did not return within {limit:.3g} s (--max-seconds "
                          f"{max_seconds:g} + grace); its last checkpoint is kept")

    previous = signal.signal(signal.SIGALRM, _alarm)
    t0 = time.monotonic()
    other, _ = signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if other:
            signal.setitimer(signal.ITIMER_REAL, max(other - (time.monotonic() - t0), 1e-3))


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(KeyboardInterrupt):
    """A stop signal arrived. ``signum``: the signal; ``exit_code``: 128 + signum."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.signame = signal.Signals(self.signum).name
        super().__init__(f"interrupted by {self.signame}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    installed = 0
    depth = 0
    pending: int | None = None


_STATE = _State()


def _handler(signum: int, frame) -> None:
    if _STATE.depth and _STATE.pending is None:
        _STATE.pending = signum  # raised when the deferred block ends
        return
    _STATE.pending = None
    raise RunInterrupted(signum)


@contextlib.contextmanager
def catch_stops() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `RunInterrupted` inside the block (the previous handlers
    come back on exit). Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in STOP_SIGNALS}
    _STATE.installed += 1
    try:
        yield
    finally:
        _STATE.installed -= 1
        _STATE.pending = None
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a stop that arrives inside the block until it ends (then raise it)."""
    _STATE.depth += 1
    try:
        yield
    finally:
        _STATE.depth -= 1
    if not _STATE.depth and _STATE.pending is not None:
        signum, _STATE.pending = _STATE.pending, None
        raise RunInterrupted(signum)
