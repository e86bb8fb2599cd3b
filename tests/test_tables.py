"""`bench table` compares like with like: records built by hand (no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bench.api import ConfigError, DataError, RunRecord
from bench.record.tables import comparison_table, export, long_results, render

EXACT = "ode dopri5 rtol=1e-05 atol=1e-05 div=exact"
HUTCH = "ode dopri5 rtol=1e-05 atol=1e-05 div=hutchinson(rademacher,k=1)"


def _rec(method="interflow", dataset="8gaussians", seed=0, status="FINISHED", mp=None,
         dp=None, optim=None, metrics=None, tags=None, run_id=None) -> RunRecord:
    params = {"method": method, "dataset": dataset, "seed": seed,
              **{f"p_method_{k}": v for k, v in {"hidden": (8, 8), **(mp or {})}.items()},
              **{f"p_dataset_{k}": v for k, v in {"n_train": 500, **(dp or {})}.items()},
              **{f"optim_{k}": v for k, v in {"lr": 1e-3, "ema": 0.0, **(optim or {})}.items()},
              "steps": 100, "solver_rtol": 1e-5}
    tags = {"test_nll.kind": "exact", "test_nll.estimator": EXACT, "test_split": "test",
            "dataset_provenance": f"synthetic {dataset}", **(tags or {})}
    return RunRecord(run_id or f"{method}-{dataset}-{seed}-{len(params)}-{id(params)}",
                     f"{method}-{dataset}-s{seed}", params, tags, dict(metrics or {}),
                     status=status)


def _nll(v, truth=None, **extra):
    m = {"test_nll": v, "test_nll_se": 0.01, "train_seconds": 10.0 * v, **extra}
    if truth is not None:
        m.update(true_test_nll=truth, test_nll_gap=v - truth)
    return m


@pytest.fixture(params=["records", "mlflow", "jsonl"])
def stored(request, tmp_path):
    """The table tests on records as built, and as read back from each store (MLflow and a
    JSON-lines folder): ``stored(recs)`` writes each record through the store's sink (its
    params, tags, final metrics and status), reads the experiment back through the store's
    `Source`, and returns the records in the order given (the store's run ids)."""
    import time

    from bench.record.stores import open_source, sink_factory

    if request.param == "records":
        return lambda recs: list(recs)
    uri = (request.getfixturevalue("tracking_uri") if request.param == "mlflow"
           else f"jsonl://{tmp_path / 'jsonl'}")
    calls = []

    def through(recs: list[RunRecord]) -> list[RunRecord]:
        calls.append(f"tables{len(calls)}")  # each call its own experiment
        new_sink = sink_factory(uri, calls[-1], tmp_path)
        for rec in recs:
            time.sleep(0.002)  # MLflow orders runs by start time in ms: distinct starts
            sink = new_sink()
            sink.start(rec.name, rec.params, rec.tags)
            sink.log_metrics(rec.metrics)
            sink.end(rec.status)
        got = open_source(uri).records(calls[-1])
        assert len(got) == len(recs) and [r.status for r in got] == [r.status for r in recs]
        for old, new in zip(recs, got, strict=True):
            assert (new.params, new.tags, new.metrics) == (
                old.params, old.tags, pytest.approx(old.metrics, nan_ok=True))
        return got

    return through


def test_two_configurations_of_one_method_are_two_rows(stored):
    recs = [_rec(mp={"interpolant": "linear"}, seed=0, metrics=_nll(3.0)),
            _rec(mp={"interpolant": "linear"}, seed=1, metrics=_nll(5.0)),
            _rec(mp={"interpolant": "trig"}, seed=0, metrics=_nll(7.0)),
            _rec("cnf", mp={"interpolant": "trig"}, metrics=_nll(9.0))]
    recs = stored(recs)
    tab, notes = comparison_table(recs)
    assert tab.loc["interflow[interpolant=linear] (exact)", "8gaussians"] == \
        "4.000 ± 1.414 (2)"
    assert tab.loc["interflow[interpolant=trig] (exact)", "8gaussians"] == "7.000 (1)"
    assert tab.loc["cnf (exact)", "8gaussians"] == "9.000 (1)"  # one configuration: no []
    assert len(tab) == 3 and notes == []
    # a shared optimisation setting is part of the configuration too
    recs = [_rec(metrics=_nll(1.0)), _rec(optim={"lr": 5e-3}, metrics=_nll(2.0))]
    recs = stored(recs)
    tab, _ = comparison_table(recs)
    assert set(tab.index) == {"interflow[lr=0.001] (exact)", "interflow[lr=0.005] (exact)"}
    # the seed and the budget are not: two seeds pool into one cell
    tab, _ = comparison_table(stored([_rec(seed=s, metrics=_nll(float(s)))
                                             for s in range(3)]))
    assert tab.loc["interflow (exact)", "8gaussians"] == "1.000 ± 1.000 (3)"


def test_dataset_parameters_and_splits_are_columns(stored):
    recs = [_rec(dp={"n_train": 500}, metrics=_nll(1.0)),
            _rec(dp={"n_train": 1000}, metrics=_nll(2.0)),
            _rec("x", dataset="miniboone", metrics=_nll(3.0),
                 tags={"dataset_provenance": "MAF MINIBOONE, reduced pre-split folder"}),
            _rec("x", dataset="miniboone", metrics=_nll(4.0),
                 tags={"dataset_provenance": "MAF MINIBOONE"}),
            _rec("x", dataset="power", metrics=_nll(5.0), tags={"test_split": "A"}),
            _rec("x", dataset="power", metrics=_nll(6.0), tags={"test_split": "B"})]
    recs = stored(recs)
    tab, _ = comparison_table(recs)
    assert set(tab.columns) == {"8gaussians[n_train=500]", "8gaussians[n_train=1000]",
                                "miniboone (reduced)", "miniboone", "power[split=A]",
                                "power[split=B]"}
    assert tab.loc["interflow (exact)", "8gaussians[n_train=1000]"] == "2.000 (1)"
    assert tab.loc["x (exact)", "miniboone (reduced)"] == "3.000 (1)"
    assert tab.loc["x (exact)", "power[split=B]"] == "6.000 (1)"


def test_left_out_runs_are_counted_not_averaged(stored):
    recs = [_rec(metrics=_nll(1.0)), _rec(seed=1, metrics=_nll(3.0)),
            _rec(seed=2, status="FAILED", metrics=_nll(100.0),
                 tags={"failure.reason": "boom"}),
            _rec(seed=3, status="RUNNING", metrics=_nll(100.0)),
            _rec("cnf", seed=0, metrics={"train_seconds": 1.0})]  # finished, no test NLL
    recs = stored(recs)
    tab, notes = comparison_table(recs)
    assert tab.loc["interflow (exact)", "8gaussians"] == "2.000 ± 1.414 (2)"
    assert "2 runs left out: 1 FAILED, 1 RUNNING" in notes
    assert "1 finished run without test_nll: cnf on 8gaussians" in notes
    with pytest.raises(ConfigError, match=r"no finished runs.*1 run left out: 1 KILLED"):
        comparison_table(stored([_rec(status="KILLED", metrics=_nll(1.0))]))


def test_truth_row_comes_from_the_compared_runs(stored):
    recs = [_rec(metrics=_nll(2.5, truth=2.0)), _rec(seed=1, metrics=_nll(2.7, truth=2.0)),
            _rec(seed=2, status="FAILED", metrics=_nll(9.0, truth=7.0)),  # not compared
            _rec(dataset="moons", metrics=_nll(1.5, truth=1.1)),
            _rec(dataset="moons", seed=1, metrics=_nll(1.6, truth=1.3)),
            _rec(dataset="power", metrics=_nll(3.0))]  # no closed form: no truth
    recs = stored(recs)
    tab, notes = comparison_table(recs)
    assert tab.index[-1] == "truth (closed form)"
    assert tab.loc["truth (closed form)", "8gaussians"] == "2.000"
    assert tab.loc["truth (closed form)", "power"] == ""
    assert tab.loc["truth (closed form)", "moons"] == "1.200 ± 0.141 (2)"
    assert any("true test_nll of moons differs" in n for n in notes)
    assert not any("8gaussians" in n for n in notes)


def test_gap_seconds_and_any_scalar_metric_work(stored):
    recs = [_rec(metrics=_nll(2.5, truth=2.0, test_nll_elbo=3.0, test_nll_elbo_gap=1.0,
                              best_val_nll=2.4),
                 tags={"test_nll_elbo.kind": "bound", "val_nll.kind": "exact"}),
            _rec(seed=1, metrics=_nll(2.9, truth=2.0, best_val_nll=2.6),
                 tags={"val_nll.kind": "exact"})]
    recs = stored(recs)
    tab, _ = comparison_table(recs, "test_nll_gap")
    assert tab.loc["interflow (exact)", "8gaussians"] == "0.700 ± 0.283 (2)"
    assert tab.loc["interflow [elbo] (bound)", "8gaussians"] == "1.000 (1)"
    assert "truth (closed form)" not in tab.index and tab.index.name.startswith("test_nll_gap")
    tab, _ = comparison_table(recs, "train_seconds")
    assert list(tab.index) == ["interflow"] and tab.index.name == "train_seconds (seconds)"
    assert tab.loc["interflow", "8gaussians"] == "27.000 ± 2.828 (2)"
    tab, _ = comparison_table(recs, "best_val_nll")
    assert tab.loc["interflow (exact)", "8gaussians"] == "2.500 ± 0.141 (2)"
    tab, _ = comparison_table(recs, "test_nll")  # the family: every likelihood its own row
    assert set(tab.index) == {"interflow (exact)", "interflow [elbo] (bound)",
                              "truth (closed form)"}
    with pytest.raises(ConfigError, match="recorded metrics: .*test_nll_gap"):
        comparison_table(recs, "tset_nll")


def test_kind_hutchinson_and_bpd_labels(stored):
    tags = {"test_nll_elbo.kind": "bound"}
    recs = [_rec("m", seed=s, tags={**tags, "test_nll.estimator": est},
                 metrics={"test_nll": v, "test_nll_elbo": v + 1, "test_bpd": v / 10,
                          "test_bpd_elbo": v / 5})
            for s, v, est in ((0, 1.0, EXACT), (1, 3.0, EXACT), (2, 9.0, HUTCH))]
    recs = stored(recs)
    tab, _ = comparison_table(recs)
    assert tab.loc["m (exact)", "8gaussians"] == "2.000 ± 1.414 (2)"
    assert tab.loc["m (exact, hutchinson)", "8gaussians"] == "9.000 (1)"
    assert tab.loc["m [elbo] (bound)", "8gaussians"].endswith("(3)")
    tab, _ = comparison_table(recs, "test_bpd")  # bits/dim take the labels of their NLL
    assert tab.index.name == "test_bpd (bits/dim, test split, lower is better)"
    assert tab.loc["m (exact, hutchinson)", "8gaussians"] == "0.900 (1)"
    assert tab.loc["m [elbo] (bound)", "8gaussians"].startswith("0.867 ±")


def test_long_results_and_rendering(tmp_path: Path, stored):
    recs = [_rec(metrics=_nll(2.5, truth=2.0), run_id="a"),
            _rec(seed=1, metrics=_nll(math.nan), run_id="b")]  # NaN: not a value
    recs = stored(recs)
    long, notes = long_results(recs)
    a = recs[0].run_id  # "a", or the store's id of that run
    assert list(long["run_id"]) == [a, a] and list(long["method"]) == ["interflow", "truth"]
    assert notes == ["1 finished run without test_nll: interflow on 8gaussians"]
    tab, _ = comparison_table(recs)
    assert json.loads(render(tab, "json"))["interflow (exact)"]["8gaussians"] == "2.500 (1)"
    out = export(tab, tmp_path / "t.csv")
    back = pd.read_csv(out, index_col=0)
    assert back.loc["truth (closed form)", "8gaussians"] == "2.000"
    assert "\\begin{tabular}" in render(tab, "latex")
    with pytest.raises(ConfigError):
        export(tab, tmp_path / "t.xlsx")


def _log(sink, rec: RunRecord, steps: int = 3) -> str | None:
    run_id = sink.start(rec.name, rec.params, rec.tags)
    for s in range(1, steps + 1):
        sink.log_metrics({"loss": 1.0 / s, "step_seconds": 0.01 * s}, s)
    sink.log_metrics({"val_nll": 2.0 + steps}, steps)
    sink.log_metrics(rec.metrics)
    sink.end(rec.status)
    return run_id


def test_mlflow_and_memory_records_give_the_same_table(tracking_uri, capfd):
    from bench.record.memory import MemorySink
    from bench.record.mlflow_sink import MlflowSink, find_checkpoint, load_records

    recs = [_rec(mp={"interpolant": "linear"}, metrics=_nll(2.5, truth=2.0)),
            _rec(mp={"interpolant": "trig"}, metrics=_nll(2.9, truth=2.0)),
            _rec(mp={"interpolant": "trig"}, seed=1, status="FAILED", metrics=_nll(9.0))]
    memory = []
    for rec in recs:
        sink = MemorySink()
        _log(sink, rec)
        memory.append(sink.record)
        _log(MlflowSink(tracking_uri, "t"), rec)
    assert memory[0].history["loss"] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert memory[0].metrics == recs[0].metrics  # final metrics only
    loaded = load_records(tracking_uri, "t", history=("loss", "val_nll"))
    loaded.sort(key=lambda r: (r.params["p_method_interpolant"], r.seed))
    assert [r.status for r in loaded] == ["FINISHED", "FINISHED", "FAILED"]
    assert loaded[0].params == recs[0].params  # typed again: (8, 8), 0.001, ...
    assert loaded[0].history["loss"] == memory[0].history["loss"]
    assert loaded[0].history["val_nll"] == [(3, 5.0)]
    # MLflow keeps each metric's latest value: the final ones and the last of each series
    assert loaded[0].metrics == {**recs[0].metrics, "loss": 1 / 3, "step_seconds": 0.03,
                                 "val_nll": 5.0}
    a, notes_a = comparison_table(memory)
    b, notes_b = comparison_table(loaded)
    pd.testing.assert_frame_equal(a, b)
    assert notes_a == notes_b == ["1 run left out: 1 FAILED"]
    assert load_records(tracking_uri, "no-such-experiment") == []
    with pytest.raises(DataError, match="no checkpoint.pt"):
        find_checkpoint(tracking_uri, loaded[2].run_id)
    assert capfd.readouterr().out == ""  # MLflow never writes to stdout


def test_mlflow_sink_flushes_by_size_by_time_and_on_end(tracking_uri, monkeypatch, tmp_path):
    import bench.record.mlflow_sink as ms

    clock = [0.0]
    monkeypatch.setattr(ms.time, "monotonic", lambda: clock[0])

    def written() -> list:
        (rec,) = ms.load_records(tracking_uri, "f", history=("loss",))
        return rec.history.get("loss", [])

    sink = ms.MlflowSink(tracking_uri, "f", flush_every=3, flush_seconds=5.0)
    sink.start("r", {"method": "m"}, {})
    sink.log_metrics({"loss": 1.0}, 1)
    sink.log_metrics({"loss": 2.0}, 2)
    assert written() == []  # buffered
    sink.log_metrics({"loss": 3.0}, 3)
    assert written() == [(1, 1.0), (2, 2.0), (3, 3.0)]  # the buffer was full
    sink.log_metrics({"loss": 4.0}, 4)
    clock[0] = 5.0
    sink.log_metrics({"loss": 5.0}, 5)
    assert len(written()) == 5  # 5 s since the last write
    sink.log_metrics({"loss": 6.0}, 6)
    (tmp_path / "checkpoint.pt").write_bytes(b"weights")
    uri = sink.log_artifact(tmp_path / "checkpoint.pt")
    sink.end("FINISHED")
    (rec,) = ms.load_records(tracking_uri, "f", history=("loss",))
    assert rec.history["loss"][-1] == (6, 6.0) and rec.status == "FINISHED"
    assert rec.artifacts == {"checkpoint.pt": uri}
    assert ms.find_checkpoint(tracking_uri, rec.run_id).read_bytes() == b"weights"


def test_each_metric_is_labelled_with_its_own_unit(stored):
    """An NFE figure is a count of evaluations, not nats; the one table of units decides."""
    from bench.record.units import unit_of

    expected = {"test_nll": "nats", "test_nll_se": "nats", "test_nll_gap": "nats",
                "best_val_nll": "nats", "true_test_nll": "nats", "test_bpd": "bits/dim",
                "test_bpd_elbo_se": "bits/dim", "test_nll_nfe": "evaluations",
                "val_nll_nfe": "evaluations", "nfe_forward": "evaluations",
                "train_seconds": "seconds", "step_seconds": "seconds",
                "steps_done": "steps", "best_step": "steps", "n_parameters": "count",
                "peak_mem_mb": "MiB", "fid": "none", "kid": "none", "mmd2": "none",
                "loss": "none"}
    assert {k: unit_of(k) for k in expected} == expected
    recs = [_rec(metrics=_nll(2.5, test_nll_nfe=56.0))]
    recs = stored(recs)
    tab, _ = comparison_table(recs, "test_nll_nfe")
    assert tab.index.name == "test_nll_nfe (evaluations, test split, lower is better)"
    assert "nats" not in tab.index.name
    assert comparison_table(recs)[0].index.name == "test_nll (nats, test split, lower is better)"


def test_reruns_of_one_configuration_and_seed_count_once_the_newest(stored):
    """Two runs of seed 0 (the same configuration) and one of seed 1: two seeds, the newer
    seed-0 run's value (records come oldest first), and a note."""
    recs = [_rec(seed=0, metrics=_nll(4.0), run_id="old"),
            _rec(seed=0, metrics=_nll(6.0), run_id="new"),
            _rec(seed=1, metrics=_nll(8.0), run_id="other")]
    recs = stored(recs)
    tab, notes = comparison_table(recs)
    assert tab.loc["interflow (exact)", "8gaussians"] == "7.000 ± 1.414 (2)"
    assert "1 rerun of the same configuration and seed superseded by the newest" in notes
    long, _ = long_results(recs)
    assert sorted(long["run_id"]) == sorted([recs[1].run_id, recs[2].run_id])  # new, other
    # the same seed in another configuration or on other data is not a rerun
    recs = [_rec(seed=0, metrics=_nll(4.0)), _rec(seed=0, optim={"lr": 5e-3}, metrics=_nll(6.0)),
            _rec(seed=0, dp={"n_train": 99}, metrics=_nll(5.0))]
    recs = stored(recs)
    tab, notes = comparison_table(recs)
    assert not any("rerun" in n for n in notes)
    assert (tab.map(lambda c: c.endswith("(1)") if c else True)).all().all()
    # a failed rerun does not supersede the finished run
    recs = [_rec(seed=0, metrics=_nll(4.0)),
            _rec(seed=0, status="FAILED", metrics=_nll(9.0), tags={"failure.reason": "x"})]
    recs = stored(recs)
    tab, notes = comparison_table(recs)
    assert tab.loc["interflow (exact)", "8gaussians"] == "4.000 (1)"
    assert not any("rerun" in n for n in notes)


def test_gap_cells_show_the_paired_standard_error_of_one_seed(stored):
    recs = [_rec(metrics=_nll(2.5, truth=2.0, test_nll_gap_se=0.0014))]
    recs = stored(recs)
    tab, _ = comparison_table(recs, "test_nll_gap")
    assert tab.loc["interflow (exact)", "8gaussians"] == "0.500 ± 0.001 (1)"
    assert "paired se" in tab.index.name and tab.index.name.startswith("test_nll_gap (nats")
    recs = stored([*recs, _rec(seed=1, metrics=_nll(2.7, truth=2.0, test_nll_gap_se=0.0014))])
    tab, _ = comparison_table(recs, "test_nll_gap")  # two seeds: std over seeds
    assert tab.loc["interflow (exact)", "8gaussians"] == "0.600 ± 0.141 (2)"
