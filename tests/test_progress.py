"""Progress off a terminal: a bounded number of plain lines, with step, loss, rate and ETA."""

from __future__ import annotations

import io

import pytest

from bench.harness.training import progress
from bench.harness.training.progress import Progress, format_duration, make_progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture()
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(progress, "_now", c)
    return c


def test_plain_lines_are_bounded_and_informative(monkeypatch, clock):
    monkeypatch.setenv("BENCH_PROGRESS_SECONDS", "10")
    out = io.StringIO()
    with make_progress(5000, "interflow-miniboone-s0", stream=out) as bar:
        assert isinstance(bar, Progress)
        for step in range(1, 5001):
            clock.t += 0.125  # 8 steps/s: 625 s in all, a line every 10 s at most
            bar.update(loss=1.0 + 1.0 / step, **({"val_nll": 18.9} if step >= 1200 else {}))
    lines = out.getvalue().splitlines()
    assert len(lines) == 63  # 625 s / 10 s, plus the final line
    first, last = lines[0], lines[-1]
    assert first == "interflow-miniboone-s0 step 80/5000 loss 1.012 8 steps/s ETA 10m15s"
    assert "val_nll" not in first
    assert last == ("interflow-miniboone-s0 step 5000/5000 loss 1 val_nll 18.9 8 steps/s "
                    "done in 10m25s")


def test_unknown_total_quiet_and_default_interval(monkeypatch, clock):
    monkeypatch.delenv("BENCH_PROGRESS_SECONDS", raising=False)
    out = io.StringIO()
    bar = make_progress(None, "run", stream=out)
    for _ in range(3000):
        clock.t += 0.001
        bar.update(2)
    bar.close()
    bar.close()  # once
    assert out.getvalue().splitlines() == ["run step 6000 2e+03 steps/s done in 3s"]
    quiet = io.StringIO()
    with make_progress(10, "run", quiet=True, stream=quiet) as q:
        q.update(loss=1.0)
    assert quiet.getvalue() == ""


def test_terminal_gets_a_bar():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    with make_progress(10, "run", stream=stream) as bar:
        assert not isinstance(bar, Progress)
        bar.update(5, loss=0.5)
    assert "run" in stream.getvalue() and "loss=0.5" in stream.getvalue()


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (42.4, "42s"), (308, "5m08s"),
                                           (3725, "1h02m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
