"""The speed-up study: its arithmetic on known histories (costs at named points, the
bracketed crossing of the target, bound wording and bound status of ratios), and the
command end to end."""

from __future__ import annotations

import math

import pytest

from bench.api import RunRecord
from bench.api.errors import ConfigError
from bench.record.speedup import (
    EXACT,
    HISTORY,
    LOWER,
    UNDETERMINED,
    UPPER,
    Crossing,
    SpeedupResult,
    crossing,
    eval_grid,
    from_record,
    ratio_bound,
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
    # fast: 3.0 at 0.5 s, 2.0 at 1.0 s -> 2.5 crossed half way, at 0.75 s, bracket [0.5, 1]
    assert tab.loc["fast", "time_to_target_s"] == pytest.approx(0.75)
    assert (tab.loc["fast", "time_to_target_lo_s"], tab.loc["fast", "time_to_target_hi_s"]) \
        == (0.5, 1.0)
    assert tab.loc["slow", "time_to_target_s"] == pytest.approx(200.0)  # lands on the target
    assert tab.loc["slow", "time_to_target_ratio_vs_fast"] == pytest.approx(200.0 / 0.75)
    assert tab.loc["slow", "time_to_target_ratio_bound"] == EXACT
    # the range from the brackets: [50 / 1.0, 200 / 0.5]
    assert tab.loc["slow", "time_to_target_ratio_lo"] == pytest.approx(50.0)
    assert tab.loc["slow", "time_to_target_ratio_hi"] == pytest.approx(400.0)
    assert tab.loc["slow", "time_to_target_ratio"] == "267x"
    assert tab.loc["fast", "time_to_target"] == "0.75 s [0.5, 1]"


def test_unreached_target_is_reported_not_dropped():
    a = _res("a", [0.1] * 10, [(10, 1.0, 1.0)])
    b = _res("b", [0.2] * 10, [(5, 30.0, 6.0), (10, 60.0, 5.0)])
    tab, _, _ = speedup_table([a, b], budget=60, target=2.0)
    assert list(tab.index) == ["a", "b"]
    assert tab.loc["b", "time_to_target"] == "> budget (60 s)"
    assert tab.loc["b", "time_to_target_bound"] == LOWER
    assert math.isnan(tab.loc["b", "time_to_target_s"])
    assert (tab.loc["b", "time_to_target_lo_s"], tab.loc["b", "time_to_target_hi_s"]) \
        == (60.0, math.inf)
    # a met the target at its first evaluation: its time is an upper bound
    assert time_to_target(a, 2.0) == 1.0
    assert tab.loc["a", "time_to_target_bound"] == UPPER
    assert tab.loc["a", "time_to_target"].startswith("<= 1 s (upper bound")
    # b > 60 s (lower bound) over a <= 1 s (upper bound): the ratio is at least 60
    assert tab.loc["b", "time_to_target_ratio_bound"] == LOWER
    assert tab.loc["b", "time_to_target_ratio"] == ">= 60x (lower bound)"
    assert tab.loc["b", "time_to_target_ratio_lo"] == 60.0
    assert tab.loc["b", "time_to_target_ratio_hi"] == math.inf
    # never met before the budget ran out (a step cap): a lower bound at the last evaluation
    c = crossing(_res("c", [0.2] * 5, [(5, 20.0, 5.0)]), 2.0)
    assert c.status == LOWER and c.seconds == 20.0
    assert c.text(60) == "> 20 s (lower bound: not met by the last evaluation)"


def test_crossing_is_interpolated_inside_its_bracket():
    # unsorted (step order differs from time order is impossible, but the input order is
    # not relied on); non-monotone: the later rise above the target does not move it
    val = [(40, 8.0, 5.0), (1, 1.0, 10.0), (10, 2.0, 6.0), (20, 4.0, 3.0), (80, 16.0, 1.0)]
    c = crossing(_res("m", [0.1] * 80, val), 4.0)
    assert c.status == EXACT and (c.before, c.after) == (2.0, 4.0)
    assert c.seconds == pytest.approx(2.0 + (6.0 - 4.0) / (6.0 - 3.0) * 2.0)
    # the straight line between the bracketing evaluations passes the target at the estimate
    assert 6.0 + (3.0 - 6.0) * (c.seconds - 2.0) / 2.0 == pytest.approx(4.0)
    assert c.text(60) == "3.33 s [2, 4]"
    # exactly on the target at an evaluation: crossing there
    assert crossing(_res("m", [0.1] * 80, val), 3.0).seconds == pytest.approx(4.0)
    # a non-finite NLL before the crossing: no interpolation, the later evaluation
    inf = crossing(_res("m", [0.1] * 9, [(1, 1.0, math.inf), (9, 3.0, 1.0)]), 2.0)
    assert (inf.status, inf.seconds, inf.before, inf.after) == (EXACT, 3.0, 1.0, 3.0)
    # at the first evaluation: (0, t_first]; no finite evaluation: undetermined
    first = crossing(_res("m", [0.1] * 9, [(1, 0.5, 1.0), (9, 3.0, 0.5)]), 2.0)
    assert (first.status, first.seconds, first.before, first.after) == (UPPER, 0.5, 0.0, 0.5)
    assert crossing(_res("m", [0.1], []), 2.0).status == UNDETERMINED


@pytest.mark.parametrize(("num", "den", "status"), [
    (EXACT, EXACT, EXACT), (EXACT, UPPER, LOWER), (EXACT, LOWER, UPPER),
    (LOWER, EXACT, LOWER), (LOWER, UPPER, LOWER), (LOWER, LOWER, UNDETERMINED),
    (UPPER, EXACT, UPPER), (UPPER, LOWER, UPPER), (UPPER, UPPER, UNDETERMINED)])
def test_ratio_carries_the_combined_bound(num, den, status):
    def make(st, t):
        return Crossing(t, {EXACT: t / 2, UPPER: 0.0, LOWER: t}[st], {EXACT: 2 * t,
                        UPPER: t, LOWER: math.inf}[st], st)

    value, got, lo, hi = ratio_bound(make(num, 40.0), make(den, 5.0))
    assert got == status
    if status == UNDETERMINED:
        assert math.isnan(value)
    else:
        assert value == pytest.approx(8.0)
    assert lo <= 8.0 <= hi  # the brackets' range always holds the point ratio


def test_bound_wording_of_the_ratio():
    fast = _res("interflow", [0.05] * 20, [(10, 0.47, 20.0), (20, 1.0, 18.0)])
    slow = _res("cnf", [1.0] * 60, [(2, 2.0, 40.0), (4, 4.0, 30.0), (60, 60.0, 25.0)])
    tab, target, _ = speedup_table([fast, slow], budget=60, target=28.0)
    assert tab.loc["interflow", "time_to_target_bound"] == UPPER
    # cnf crosses 28 between 4 s (30) and 60 s (25): 4 + 2/5 * 56 = 26.4 s
    assert tab.loc["cnf", "time_to_target_s"] == pytest.approx(26.4)
    assert tab.loc["cnf", "time_to_target_ratio"] == ">= 56.2x (lower bound)"
    assert tab.loc["interflow", "time_to_target_ratio"] == "1x"


def test_cost_ratios_at_named_points_of_training():
    secs = [1.5] * 100
    secs[:10] = [1.0] * 10  # the first tenth
    secs[45:55] = [2.0] * 10  # the middle tenth
    secs[90:] = [4.0] * 10  # the last tenth
    secs[5] = 100.0  # one outlier in a window: medians ignore it
    cnf = _res("cnf", secs, [(100, 10.0, 1.0)])
    base = _res("interflow", [0.5] * 30 + [0.25] * 40 + [0.5] * 30, [(100, 1.0, 1.0)])
    s = summarize_costs(cnf)
    assert (s["s_per_it_start"], s["s_per_it_half"], s["s_per_it_end"]) == (1.0, 2.0, 4.0)
    tab, _, _ = speedup_table([base, cnf], budget=60)
    assert tab.loc["interflow", "s_per_it_half"] == 0.25
    assert tab.loc["cnf", "cost_ratio_start_vs_interflow"] == pytest.approx(2.0)
    assert tab.loc["cnf", "cost_ratio_half_vs_interflow"] == pytest.approx(8.0)
    assert tab.loc["cnf", "cost_ratio_end_vs_interflow"] == pytest.approx(8.0)
    assert tab.loc["interflow", "cost_ratio_half_vs_interflow"] == 1.0


def test_eval_grid_is_geometric_from_the_first_eval():
    grid = eval_grid(60.0, 1.0, 7)
    assert grid[0] == 0.0 and grid[1] == 1.0 and grid[-1] == 60.0 and len(grid) == 8
    ratios = [b / a for a, b in zip(grid[1:], grid[2:], strict=False)]
    assert ratios == pytest.approx([60.0 ** (1 / 6)] * 6)
    assert eval_grid(60.0, 1.0, 1, first_step=False) == (60.0,)
    with pytest.raises(ConfigError, match="first-eval"):
        eval_grid(0.5, 1.0, 4)


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
    # 3.0 at 0.5 s, 2.5 at 1.2 s: 2.6 is crossed 4/5 of the way
    assert time_to_target(res, 2.6) == pytest.approx(0.5 + 0.8 * 0.7)
    s = summarize_costs(res)
    assert s["nfe_forward_first10pct"] == 26.0 and s["nfe_backward_last10pct"] == 44.0
    assert s["best_val_nll"] == 2.5


@pytest.mark.parametrize("store", ["mlflow", "jsonl"])
def test_speedup_command_end_to_end(tmp_path, monkeypatch, registry, request, store):
    from click.testing import CliRunner

    from bench.cli.main import main
    from bench.record.stores import open_source

    tracking_uri = (request.getfixturevalue("tracking_uri") if store == "mlflow"
                    else f"jsonl://{tmp_path / 'runs'}")

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
    # the validation after the first step brackets every crossing of a trained model's NLL
    for m in ("interflow", "cnf"):
        assert tab.loc[m, "time_to_target_bound"] == "exact", tab.loc[m].to_dict()
        lo, t, hi = tab.loc[m, ["time_to_target_lo_s", "time_to_target_s",
                                "time_to_target_hi_s"]]
        assert 0 < lo <= t <= hi <= 3.0 * 1.5  # within the 3 s per method (and a last step)
    for point in ("start", "half", "end"):
        assert tab.loc["interflow", f"cost_ratio_{point}_vs_interflow"] == 1.0
        assert tab.loc["cnf", f"cost_ratio_{point}_vs_interflow"] > 0
    records = open_source(tracking_uri).records()
    parent = [r for r in records if r.params.get("study") == "speedup"]
    assert len(parent) == 1
    assert parent[0].tags["time_to_target_bound_cnf"] == "exact"
    assert parent[0].metrics["cost_ratio_half_cnf"] == pytest.approx(
        tab.loc["cnf", "cost_ratio_half_vs_interflow"])
