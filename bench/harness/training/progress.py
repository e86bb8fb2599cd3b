"""Progress that fits where it runs: a tqdm bar on a terminal; under CI, a pipe or a log file
one plain line at most every ``BENCH_PROGRESS_SECONDS`` (default 10) seconds, plus a final
one::

    interflow-miniboone-s0 step 1200/5000 loss 1.234 val_nll 18.9 12.3 steps/s ETA 5m08s
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

__all__ = ["make_progress", "Progress", "format_duration"]


def _now() -> float:
    return time.monotonic()


def format_duration(seconds: float) -> str:
    """``308`` -> ``"5m08s"``, ``3725`` -> ``"1h02m"``, ``42`` -> ``"42s"``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Plain-line progress (non-terminal output). Use `make_progress` to construct.

    Args:
        total: the number of steps expected (None: unknown, no ETA).
        desc: the prefix of every line (e.g. the job's name).
        stream: where lines go; interval: the least seconds between two lines.
    """

    def __init__(self, total: int | None, desc: str, stream: TextIO, interval: float) -> None:
        self.total, self.desc, self.stream, self.interval = total, desc, stream, interval
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.start = self.last = _now()
        self.closed = False

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` steps; keyword values (loss, val_nll, ...) are shown until
        replaced."""
        self.n += n
        self.postfix.update(postfix)
        now = _now()
        if now - self.last >= self.interval:
            self.last = now
            self._write(now)

    def line(self, now: float | None = None, final: bool = False) -> str:
        now = _now() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.n / elapsed
        parts = [self.desc, f"step {self.n}/{self.total}" if self.total else f"step {self.n}"]
        parts += [f"{k} {_fmt(v)}" for k, v in self.postfix.items()]
        parts.append(f"{rate:.3g} steps/s")
        if final:
            parts.append(f"done in {format_duration(elapsed)}")
        elif self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {format_duration((self.total - self.n) / rate)}")
        return " ".join(p for p in parts if p)

    def _write(self, now: float, final: bool = False) -> None:
        self.stream.write(self.line(now, final) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Write the final line (once)."""
        if not self.closed:
            self.closed = True
            self._write(_now(), final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Bar:
    """A tqdm bar with the same interface."""

    def __init__(self, total: int | None, desc: str, stream: TextIO) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, file=stream, dynamic_ncols=True, leave=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        if postfix:
            self.bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Quiet:
    def update(self, n: int = 1, **postfix: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def make_progress(total: int | None, desc: str, quiet: bool = False,
                  stream: TextIO | None = None) -> Progress | _Bar | _Quiet:
    """A progress reporter with ``update(n=1, **postfix)`` and ``close()`` (also a context
    manager): nothing when ``quiet``; a tqdm bar when ``stream`` (default stderr) is a
    terminal; else plain lines at most every ``BENCH_PROGRESS_SECONDS`` seconds (default 10)
    and a final one."""
    if quiet:
        return _Quiet()
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return _Bar(total, desc, stream)
    try:
        interval = float(os.environ.get("BENCH_PROGRESS_SECONDS", "10"))
    except ValueError:
        interval = 10.0
    return Progress(total, desc, stream, interval)
