"""The speed-up study: its arithmetic on known histories, and the command end to end."""

from __future__ import annotations

import math

import pytest

from bench.api import RunRecord
from bench.record.speedup import (
    HISTORY,
    SpeedupResult,
    from_record,
    speedup_table,
    summarize_costs,
    time_to_target,
)


def _res(name, secs, val, nfe=None, nfe_b=None):
    return SpeedupResult(name, None, list(enumerate(secs, 1)), val,
                         list(enumerate(nfe, 1)) if nfe else [],
                         list(enumerate(nfe_b, 1)) if nfe_b else [])


def test_cost_summary_and_ratio():
    fast = _res("fast", [0.01] * 100, [(50, 0.5, 3.0), (100, 1.0, 2.0)])
    slow = _res("slow", [1.0] * 50 + [3.0] * 50, [(50, 50.0, 4.0), (100, 200.0, 2.5)],
                nfe=[20] * 50 + [60] * 50, nfe_b=[30] * 90 + [90] * 10)
    s = summarize_costs(slow)
    assert s["steps"] == 100 and s["s_per_it_min"] == 1.0 and s["s_per_it_max"] == 3.0
    assert s["cost_growth"] == pytest.approx(3.0)
    # NFE per solve, forward and backward apart (never summed)
    assert s["nfe_forward_first10pct"] == 20 and s["nfe_forward_last10pct"] == 60
    assert s["nfe_backward_first10pct"] == 30 and s["nfe_backward_last10pct"] == 90
    assert not any(k.startswith("nfe") for k in summarize_costs(fast))
    assert s["s_per_it_at_10"] == 1.0 and s["s_per_it_at_100"] == 3.0
    tab, target, _ = speedup_table([fast, slow], budget=300)
    assert target == 2.5  # the worst best-validation NLL among the methods
    assert tab.loc["slow", "cost_ratio_vs_fast"] == pytest.approx(2.0 / 0.01)
    assert tab.loc["fast", "time_to_target_s"] == 1.0
    assert tab.loc["slow", "time_to_target_s"] == 200.0
    assert tab.loc["slow", "time_to_target_ratio_vs_fast"] == pytest.approx(200.0)


def test_unreached_target_is_reported_not_dropped():
    a = _res("a", [0.1] * 10, [(10, 1.0, 1.0)])
    b = _res("b", [0.2] * 10, [(10, 2.0, 5.0)])
    tab, _, _ = speedup_table([a, b], budget=60, target=2.0)
    assert list(tab.index) == ["a", "b"]
    assert tab.loc["b", "time_to_target"] == "> budget (60 s)"
    assert math.isnan(tab.loc["b", "time_to_target_s"])
    assert time_to_target(a, 2.0) == 1.0


def test_from_record_reads_the_histories_of_a_record():
    rec = RunRecord("r1", "cnf-d-s0", params={"method": "cnf"}, status="FINISHED",
                    metrics={"n_parameters": 1234.0, "val_nll": 2.5},
                    history={"step_seconds": [(1, 0.5), (2, 0.7)],
                             "nfe_forward": [(1, 26.0), (2, 32.0)],
                             "nfe_backward": [(1, 40.0), (2, 44.0)],
                             "val_nll": [(1, 3.0), (2, 2.5)],
                             "train_seconds_at_eval": [(1, 0.5), (2, 1.2)]})
    assert set(rec.history) == set(HISTORY)
    res = from_record(rec)
    assert (res.method, res.run_id, res.n_parameters) == ("cnf", "r1", 1234)
    assert res.val == [(1, 0.5, 3.0), (2, 1.2, 2.5)]
    assert res.nfe_forward == [(1, 26.0), (2, 32.0)]
    assert res.nfe_backward == [(1, 40.0), (2, 44.0)]
    assert time_to_target(res, 2.6) == 1.2
    s = summarize_costs(res)
    assert s["nfe_forward_first10pct"] == 26.0 and s["nfe_backward_last10pct"] == 44.0
    assert s["best_val_nll"] == 2.5


def test_speedup_command_end_to_end(tmp_path, monkeypatch, registry, tracking_uri):
    from click.testing import CliRunner

    from bench.cli.main import main

    cnf = registry.plugins["method"].get("cnf")
    if cnf is None or not cnf.available:
        pytest.skip("cnf method not available")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, [
        "speedup", "-d", "8gaussians[n_train=500,n_val=100,n_test=100]", "--budget", "6",
        "--evals", "2", "--hidden", "(8,8)", "--batch-size", "64", "-q",
        "--set", "train_atol=1e-4", "--set", "train_rtol=1e-4",
        "--tracking-uri", tracking_uri, "--results-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "cost_ratio_vs_interflow" in res.output
    out = list((tmp_path / "speedup").glob("8gaussians-*"))
    assert {p.suffix for p in out} == {".md", ".csv", ".png"}
    import pandas as pd

    tab = pd.read_csv(next(p for p in out if p.suffix == ".csv"), index_col=0)
    assert tab.loc["interflow", "parameters"] == tab.loc["cnf", "parameters"] > 0
    assert tab.loc["cnf", "steps"] >= 1 and tab.loc["interflow", "steps"] >= 1
