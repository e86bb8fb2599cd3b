"""`bench report`: on a small real store (interflow, ddpm and gaussian_mle on checkerboard,
run through run_job into MLflow), the markdown's every image link is a PNG beside it, the
table holds every method, and the plotted series are the recorded ones."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.api import DataError, RunRecord, SolverConfig
from bench.record import report

DATA = "checkerboard[n_train=2000,n_val=200,n_test=300]"
METHODS = ("interflow[hidden=(32,32),batch_size=128]",
           "ddpm[hidden=(32,32),T=100,batch_size=128,val_t_draws=10]", "gaussian_mle")
STEPS, EVERY = 40, 10
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory, _mlflow_template, one_thread):
    """A store of three finished runs and one speed-up study over two of them."""
    from bench.harness.planning.plan import plan_jobs
    from bench.harness.planning.registry import Registry
    from bench.harness.running.run import run_job
    from bench.record.mlflow_sink import MlflowSink

    root = tmp_path_factory.mktemp("report_store")
    shutil.copy(_mlflow_template, root / "runs.db")
    uri = f"sqlite:///{root / 'runs.db'}"
    jobs = plan_jobs(Registry(), list(METHODS), [DATA], [0], steps=STEPS, eval_every=EVERY,
                     patience=100, n_samples=500, solver=SolverConfig(rtol=1e-3, atol=1e-3))
    study = plan_jobs(Registry(), list(METHODS[:2]), [DATA], [0], steps=10, eval_every=5,
                      evaluate_test=False, n_samples=0)
    ids = []
    for job in jobs + study:
        rec = run_job(job, MlflowSink(uri, artifact_root=root / "artifacts"))
        assert rec.status == "FINISHED", rec.failure
        ids.append(rec.run_id)
    parent = MlflowSink(uri)  # as `bench speedup` records its study
    parent.start("speedup-checkerboard", {"study": "speedup", "dataset": "checkerboard",
                                          "budget": 20.0, "shared_hidden": "(32,32)"},
                 {"child_runs": ",".join(ids[3:]), "target_note": "t"})
    parent.end("FINISHED")
    return uri, report.load(uri)


def _links(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


def test_report_links_tables_and_header(store, tmp_path):
    uri, records = store
    path = report.write_report(records, tmp_path / "out", source=uri)
    md = path.read_text()
    links = _links(md)
    assert links and all(not Path(link).is_absolute() for link in links)
    for link in links:
        png = path.parent / link
        assert png.is_file() and png.read_bytes()[:8] == PNG and png.stat().st_size > 5000
    names = {Path(link).name for link in links}
    assert {"val_nll-checkerboard.png", "cost-checkerboard.png"} <= names
    for method in ("interflow", "ddpm", "gaussian_mle"):  # one samples figure per run
        assert any(n.startswith(f"checkerboard-{method}-s0") for n in names)
    assert any(n.startswith("speedup-checkerboard") for n in names)
    table = md.split("### test_nll")[1].split("\n\n")[1]
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert {"interflow (exact)", "ddpm (exact)", "ddpm [elbo] (bound)",
            "gaussian_mle (exact)", "truth (closed form)"} <= set(rows)
    assert "- runs: 5 (5 FINISHED), and 1 speed-up study" in md
    assert "synthetic test (300 rows)" in md  # the split each number was scored on
    # the sample-quality figures after the headline ones: C2ST with its floor row
    c2st = md.split("### c2st")[1].split("\n\n")[1]
    assert "interflow" in c2st and "floor (train vs test rows)" in c2st
    assert "## Speed-up study" in md and "## Cost per iteration" in md
    assert len(re.findall(r"\(speed-up study\) *\| FINISHED", md)) == 2
    # a second report into the same folder leaves no stale image behind
    report.write_report([r for r in records if r.method != "ddpm"], tmp_path / "out")
    assert not list((tmp_path / "out" / "samples").glob("*ddpm*"))


def test_curves_are_the_recorded_series(store):
    _, records = store
    study = set(records[-1].tags["child_runs"].split(","))
    by_method = {r.method: r for r in records if r.method and r.run_id not in study}
    curves = report.val_curves(records)["checkerboard"]  # the study's runs are drawn apart
    val = {c.method: c for c in curves}
    assert len(curves) == 3 and set(val) == {"interflow", "ddpm", "gaussian_mle"}
    rec = by_method["interflow"]
    secs = dict(rec.history["train_seconds_at_eval"])
    assert val["interflow"].label == "interflow seed 0 (exact)"  # no hash: configuration, seed
    assert val["ddpm"].label == f"ddpm seed 0 ({by_method['ddpm'].tags['val_nll.kind']})"
    np.testing.assert_allclose(val["interflow"].y, [v for _, v in rec.history["val_nll"]])
    np.testing.assert_allclose(val["interflow"].x, [secs[s] for s, _ in
                                                    rec.history["val_nll"]])
    assert len(val["interflow"].x) == STEPS // EVERY and np.all(np.diff(val["interflow"].x) > 0)
    assert val["gaussian_mle"].x.tolist() == [0.0]  # fitted before any training time
    cost = {c.method: c for c in report.cost_curves(records)["checkerboard"]}
    assert set(cost) == {"interflow", "ddpm"}  # the closed-form fit takes no steps
    c = cost["ddpm"]
    assert c.x.tolist() == list(range(1, STEPS + 1))
    np.testing.assert_allclose(c.y, [v for _, v in by_method["ddpm"].history["step_seconds"]])
    assert np.all((c.smooth >= c.y.min()) & (c.smooth <= c.y.max()))


def test_rolling_median_follows_the_trend_not_the_spikes():
    y = np.where(np.arange(1000) < 500, 1.0, 4.0)
    y[[100, 700]] = 1e3  # single slow steps
    at, med = report.rolling_median(y)
    assert np.all(np.diff(at) > 0) and at[0] == 0 and at[-1] == 999
    assert np.all(med[at < 400] == 1.0) and np.all(med[at > 620] == 4.0)
    i = int(np.searchsorted(at, 300))  # brute force at one point: window max(5, 0.3 i)
    half = int(0.3 * (at[i] + 1)) // 2
    assert med[i] == np.median(y[at[i] - half:at[i] + half + 1])


def _pixels(path: Path, rgb: tuple[int, int, int]) -> int:
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(img - np.array(rgb)).sum(-1) < 30).sum())


def test_plots_draw_each_method_in_its_colour(tmp_path):
    blue, orange = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # matplotlib's C0, C1
    colors = {"a": "C0", "b": "C1"}
    x = np.geomspace(1, 30, 8)
    curves = [report.Curve("a (exact)", "a", x, 4 - np.log(x) / 10),
              report.Curve("b (exact)", "b", np.array([0.0]), np.array([4.5]))]
    one = report.plot_val(curves[:1], "t", tmp_path / "one.png", colors)
    both = report.plot_val(curves, "t", tmp_path / "both.png", colors, truth=3.5)
    assert _pixels(one, blue) > 200 and _pixels(one, orange) == 0
    assert _pixels(both, orange) > 100  # the closed-form fit's dashed line
    steps = np.arange(1.0, 201.0)
    at, med = report.rolling_median(np.full(200, 0.01))
    cost = report.plot_cost([report.Curve("a", "a", steps, np.full(200, 0.01), steps[at],
                                          med)], "t", tmp_path / "cost.png", colors)
    assert _pixels(cost, blue) > 200 and _pixels(cost, orange) == 0


def test_empty_store_and_unfinished_runs_are_one_line_errors(tracking_uri, tmp_path):
    with pytest.raises(DataError, match=r"no runs in experiment 'bench' of sqlite") as e:
        report.load(tracking_uri)
    assert "\n" not in str(e.value)
    failed = RunRecord("r1", "x", params={"method": "interflow", "dataset": "moons"},
                       status="FAILED")
    with pytest.raises(DataError, match=r"no finished runs to report on \(1 FAILED\)"):
        report.write_report([failed], tmp_path)


def test_local_artifacts_resolve_and_remote_ones_do_not(tmp_path):
    f = tmp_path / "a b" / "samples.png"
    f.parent.mkdir()
    f.write_bytes(PNG)
    assert report.local_artifact(f.as_uri()) == f  # file: URI, %20 decoded
    assert report.local_artifact(str(f)) == f
    assert report.local_artifact("s3://bucket/run/samples.png") is None
    assert report.local_artifact(str(tmp_path / "missing.png")) is None


def _rec(run_id: str, dataset: str, seed: int, hidden: str = "(8,8)",
         val: tuple[float, float] = (2.0, 1.5)) -> RunRecord:
    return RunRecord(run_id, run_id, params={"method": "cnf", "dataset": dataset, "seed": seed,
                                             "p_method_hidden": hidden},
                     tags={"val_nll.kind": "exact"}, status="FINISHED",
                     history={"val_nll": [(10, val[0]), (20, val[1])],
                              "train_seconds_at_eval": [(10, 1.0), (20, 2.0)]})


def test_curves_are_named_by_configuration_and_seed_within_a_dataset():
    curves = report.val_curves([_rec("aaaaaaa1", "moons", 0), _rec("bbbbbbb2", "rings", 0),
                                _rec("ccccccc3", "rings", 1), _rec("ddddddd4", "rings", 1),
                                _rec("eeeeeee5", "rings", 1, hidden="(16,16)")])
    assert [c.label for c in curves["moons"]] == ["cnf seed 0 (exact)"]
    assert [c.label for c in curves["rings"]] == [
        "cnf[hidden=(8,8)] seed 0 (exact)", "cnf[hidden=(8,8)] seed 1 (exact)",
        "cnf[hidden=(8,8)] seed 1 rerun 2 (exact)", "cnf[hidden=(16,16)] seed 1 (exact)"]
    assert not any(r in c.label for c in curves["rings"] for r in ("ccc", "ddd", "eee"))


def test_robust_ylim_clips_a_diverged_run_not_the_others():
    """Three converging runs (18.x + 8 exp(-t/2) over 15 evaluations) and one that diverged
    (its last 4 evaluations 1e3-1e6): the axis holds every value of the converged part of
    each run and none of the diverged ones, which are counted; a reference line (37.8)
    stays inside; only the first evaluations far above the bulk are clipped otherwise."""
    t = np.arange(15.0)
    good = [18.0 + 8.0 * np.exp(-t / 2) + 0.3 * k for k in range(3)]
    bad = np.concatenate([good[0][:11], [1e3, 1e4, 1e5, 1e6]])
    yr = report.robust_ylim(good + [bad], keep=[37.8])
    allgood = np.concatenate(good + [bad[:11]])
    assert yr.lo <= allgood.min() and yr.hi >= max(allgood.max(), 37.8)  # 37.8: all inside
    assert yr.hi < 1e3 and yr.clipped == 4 and yr.extreme == 1e6
    assert "4 values" in yr.note() and "1e+06" in yr.note()
    assert report.robust_ylim(good, keep=[37.8]).clipped == 0
    clean = report.robust_ylim(good)
    late = np.concatenate([g[5:] for g in good])
    assert clean.lo < late.min() and clean.hi > late.max()
    early = np.concatenate(good)[np.concatenate(good) > clean.hi]
    assert clean.clipped == len(early) and early.min() > 24.0  # first evaluations only
    assert clean.hi - clean.lo < 26.6 - 18.0  # the bulk fills the axis
    flat = report.robust_ylim([np.full(10, 5.0), np.array([5.01, np.inf, np.nan])])
    assert flat.clipped == 0 and flat.lo < 5.0 < 5.01 < flat.hi  # non-finite ignored
    assert report.robust_ylim([np.array([np.nan])]) is None


def test_val_plot_with_a_diverged_run_keeps_the_other_curves_visible(tmp_path):
    """The diverged run's huge values no longer flatten the others: the other curve's
    colour covers about as many pixels as it does alone."""
    blue, orange = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)
    x = np.geomspace(1, 30, 12)
    ok = report.Curve("a seed 0 (exact)", "a", x, 4 - np.log(x) / 3)
    bad = report.Curve("b seed 0 (exact)", "b", x, np.concatenate([4.3 - np.log(x[:9]) / 3,
                                                                  [1e2, 1e4, 1e6]]))
    colors = {"a": "C0", "b": "C1"}
    alone = _pixels(report.plot_val([ok], "t", tmp_path / "alone.png", colors), blue)
    both = report.plot_val([ok, bad], "t", tmp_path / "both.png", colors)
    assert _pixels(both, blue) > 0.5 * alone and _pixels(both, orange) > 100
