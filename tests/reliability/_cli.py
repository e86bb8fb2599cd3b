"""Helpers of the reliability tests: the CLI in-process, and the one-line refusal check."""

from __future__ import annotations

from click.testing import CliRunner

TINY = ["--steps", "2", "--eval-every", "1", "-q", "--n-samples", "0"]
TOY = "8gaussians[n_train=200,n_val=50,n_test=50]"


def bench(*args: str):
    """``bench ARGS`` in-process; the click Result (stdout and stderr apart)."""
    from bench.cli.main import main

    return CliRunner().invoke(main, list(args))


def assert_refused(res, code: int, *words: str) -> str:
    """Exit ``code``, no traceback, stderr only ``error:`` lines, the first naming the
    problem (``words``), exactly one line. Returns the line."""
    assert res.exit_code == code, (res.exit_code, res.output, repr(res.exception))
    assert "Traceback" not in res.output and "Aborted" not in res.output, res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("error: ") for ln in lines), lines
    assert all(w in lines[0] for w in words), (words, lines[0])
    assert len(lines) == 1, lines
    assert res.stdout == "", res.stdout
    return lines[0]
