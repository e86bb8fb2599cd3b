"""The suite results page (`bench.record.suite_page`, issue 20) on synthetic RunRecords (no
training): the interval math against scipy and by coverage, byte-for-byte determinism, the
labels of every number, the computed reading of where InterFlow is not better, the
published numbers (beside ours, not comparable, or none, each with its reason) and the
speed-up figures against hand-computed brackets."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats

from bench.api import DataError, RunRecord
from bench.api.suites import Suite, SuiteBudget, SuiteProtocol, SuiteStudy
from bench.record.suite_page import page_path, write_suite_page
from bench.record.suite_plots import seed_band
from bench.record.suite_reading import _f
from bench.record.suite_stats import pair_speedup, t_interval, welch_interval

EXACT = "ode dopri5 rtol=1e-05 atol=1e-05 div=exact"
ELBO = "ddpm elbo, 100 steps"
REDUCED = "MAF MINIBOONE raw files (train 2000, val 200, test 300 rows; reduced offline copy)"
FULL = "MAF MINIBOONE raw files (train 29556, val 3284, test 3648 rows; the MAF split)"
# float64 arithmetic of a mean, a standard deviation and a product (about 10 rounded
# operations, each within 2^-53 relative): 1e-12 relative leaves a factor >100 of margin
FLOAT_RTOL = 1e-12


def _suite(study: bool = False, labels=("interflow", "cnf")) -> Suite:
    return Suite(name="toy-suite", description="A synthetic suite for the page's tests.",
                 device_class="cpu-2core",
                 budget=SuiteBudget(policy="wall", seconds_per_job=40.0),
                 protocol=SuiteProtocol(test_rows=300), methods=tuple(labels),
                 labels=tuple(labels), datasets=("8gaussians", "miniboone"),
                 seeds=(0, 1, 2), study=SuiteStudy(reference="interflow") if study else None)


def _rec(label: str, method: str, dataset: str, seed: int, nll: float, *, se=0.01,
         kind="exact", estimator=EXACT, truth=None, provenance=None, history=None,
         status="FINISHED", extra=None) -> RunRecord:
    metrics = {"test_nll": nll, "test_nll_se": se, "train_seconds": 40.0, "val_seconds": 2.0,
               "eval_seconds": 1.5, "steps_done": 400.0, **(extra or {})}
    if truth is not None:
        metrics.update(true_test_nll=truth, true_test_nll_se=0.01, test_nll_gap=nll - truth,
                       test_nll_gap_se=0.002)
    tags = {"test_nll.kind": kind, "test_nll.estimator": estimator, "val_nll.kind": "exact",
            "test_split": f"{dataset} test, first 300 of 300 rows" if provenance is None
            else "MINIBOONE test", "split.train": f"{dataset} train",
            "dataset_provenance": provenance or f"synthetic {dataset} (closed form)",
            "git_commit": "abc1234def5678", "device": "cpu", "host": "box x86_64",
            "threads": "1", "torch": "2.5.1", "suite": "toy-suite", "suite.method": label,
            "suite.device_class": "cpu-2core", "data_sha256": "f" * 64}
    if status != "FINISHED":
        tags["failure.reason"] = "diverged"
    params = {"method": method, "dataset": dataset, "seed": seed,
              "p_method_hidden": "(8,8)" if label != "interflow-linear" else "(8,9)"}
    return RunRecord(f"{label}-{dataset}-{seed}", f"{label}-{dataset}-s{seed}", params, tags,
                     metrics, history or _history(nll, seed), status)


def _history(nll: float, seed: int) -> dict:
    """Validation NLL at training seconds 1, 4, 16, 40, falling to nll + 0.1."""
    times = [1.0, 4.0, 16.0, 40.0]
    vals = [nll + 2.0 - 0.1 * seed, nll + 1.0, nll + 0.4, nll + 0.1]
    return {"val_nll": list(enumerate(vals, 1)),
            "train_seconds_at_eval": list(enumerate(times, 1))}


def _grid(nlls: dict[str, tuple[str, float]], dataset="8gaussians", truth=1.0, **kw
          ) -> list[RunRecord]:
    """Three seeds per label: nll + 0.01 x seed."""
    return [_rec(label, method, dataset, s, v + 0.01 * s, truth=truth, **kw)
            for label, (method, v) in nlls.items() for s in range(3)]


def test_t_interval_against_scipy():
    """mean ± t(0.975, n-1) s/sqrt(n), as scipy.stats.t.interval computes it; the t
    quantile of 2 dof from the printed tables (4.302653); one seed: no interval."""
    values = [1.0, 1.5, 0.7, 1.2, 0.95]
    ci = t_interval(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                              scale=stats.sem(values))
    assert ci.mean == pytest.approx(np.mean(values), rel=FLOAT_RTOL)
    assert (ci.lo, ci.hi) == pytest.approx((lo, hi), rel=FLOAT_RTOL)
    assert ci.dof == 4
    three = t_interval([2.0, 3.0, 4.0])  # s = 1, n = 3: half width 4.302653 / sqrt(3)
    assert three.hi - three.mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    one = t_interval([2.0])
    assert one.mean == 2.0 and not one.defined


def test_welch_interval_against_scipy():
    a, b = [1.0, 1.4, 0.9, 1.3], [2.0, 2.9, 2.2]
    d = welch_interval(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d.mean == pytest.approx(np.mean(a) - np.mean(b), rel=FLOAT_RTOL)
    assert (d.lo, d.hi) == pytest.approx((ref.low, ref.high), rel=FLOAT_RTOL)
    assert not welch_interval([1.0], b).defined


def test_t_interval_covers_at_its_level():
    """Seeded: 4000 draws of 3 normal values; the t interval covers the true mean in 95%
    of them, within 5 standard errors (sqrt(0.95 x 0.05 / 4000) = 0.0034 each); a normal
    (z) interval, 1.96 s/sqrt(n), covers only ~0.82 at n = 3 and would fail here."""
    rng = np.random.default_rng(20)
    reps, level = 4000, 0.95
    draws = rng.normal(3.0, 2.0, size=(reps, 3))
    covered = sum(t_interval(row).contains(3.0) for row in draws)
    se = math.sqrt(level * (1 - level) / reps)
    assert abs(covered / reps - level) < 5 * se
    z = sum(abs(row.mean() - 3.0) <= 1.96 * row.std(ddof=1) / math.sqrt(3) for row in draws)
    assert abs(z / reps - level) > 5 * se  # the test tells t from z


def test_page_bytes_are_deterministic(tmp_path):
    """Two writes of the same records (into two roots): the same files, the same bytes;
    the SVG carries no date."""
    recs = _grid({"interflow": ("interflow", 1.2), "cnf": ("cnf", 1.3)})
    a = write_suite_page(_suite(), recs, tmp_path / "a")
    b = write_suite_page(_suite(), recs, tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in a] == \
        [p.relative_to(tmp_path / "b") for p in b]
    assert a[0] == page_path(_suite(), tmp_path / "a")
    assert any(p.suffix == ".svg" for p in a)
    for pa, pb in zip(a, b, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    svg = next(p for p in a if p.suffix == ".svg").read_text()
    assert "<dc:date>" not in svg and "Matplotlib v" not in svg
    md = a[0].read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (a[0].parent / link).is_file()


def test_table_labels_interval_and_per_run_se(tmp_path):
    recs = _grid({"interflow": ("interflow", 1.2), "cnf": ("cnf", 1.3)})
    recs += [_rec("ddpm", "ddpm", "8gaussians", s, 1.5 + 0.02 * s, kind="bound",
                  estimator=ELBO, truth=1.0) for s in range(3)]
    md = write_suite_page(_suite(), recs, tmp_path)[0].read_text()
    assert "95% CI (t, n-1 dof)" in md and "Student's t" in md
    ci = t_interval([1.2, 1.21, 1.22])
    row = next(line for line in md.splitlines() if line.startswith("| interflow (exact) |"))
    assert f"| 3 | {_f(ci.mean)} | [{_f(ci.lo)}, {_f(ci.hi)}] |" in row
    # 3 decimals, and 3 significant digits below 0.1 (a standard error of 0.01)
    assert "s0: 1.200 ± 0.0100; s1: 1.210 ± 0.0100; s2: 1.220 ± 0.0100" in row
    assert EXACT in row
    bound = next(line for line in md.splitlines() if line.startswith("| ddpm (bound) |"))
    assert ELBO in bound
    assert "8gaussians test, first 300 of 300 rows" in md
    assert "Truth (the dataset's closed-form density on the same test rows): 1.000" in md


def test_reading_says_where_interflow_is_not_better(tmp_path):
    """cnf below the best InterFlow configuration: a sentence with the difference and
    Welch's interval; a worse cnf: no such sentence."""
    worse = _grid({"interflow": ("interflow", 1.2), "interflow-linear": ("interflow", 1.25),
                   "cnf": ("cnf", 1.1)})
    md = write_suite_page(_suite(labels=("interflow", "interflow-linear", "cnf")), worse,
                          tmp_path / "w")[0].read_text()
    d = welch_interval([1.1, 1.11, 1.12], [1.2, 1.21, 1.22])
    assert (f"On 8gaussians, cnf (exact)'s test_nll is lower than the best InterFlow "
            f"configuration's (interflow (exact)) by {_f(abs(d.mean))} nats") in md
    assert f"[{_f(d.lo)}, {_f(d.hi)}]" in md
    better = _grid({"interflow": ("interflow", 1.2), "cnf": ("cnf", 1.3)})
    md = write_suite_page(_suite(), better, tmp_path / "b")[0].read_text()
    assert "is lower than the best InterFlow" not in md
    assert "no other configuration's mean is better" in md


def test_published_numbers_beside_ours_or_why_not(tmp_path):
    toys = _grid({"interflow": ("interflow", 1.2)})
    reduced = _grid({"interflow": ("interflow", 13.0)}, dataset="miniboone", truth=None,
                    provenance=REDUCED)
    md = write_suite_page(_suite(), toys + reduced, tmp_path / "r")[0].read_text()
    assert ("Published numbers: no published number for 8gaussians (results/reference/ "
            "gives no test_nll for 8gaussians; the dataset's closed-form density") in md
    assert "Published numbers: not comparable (reduced: not comparable with the full-data" in md
    full = _grid({"interflow": ("interflow", 13.0)}, dataset="miniboone", truth=None,
                 provenance=FULL)
    md = write_suite_page(_suite(), full, tmp_path / "f")[0].read_text()
    assert "Published numbers beside ours" in md
    assert "| FFJORD [published] | test_nll |" in md
    assert "| interflow (exact) (ours) | test_nll |" in md


def test_speedup_figures_with_brackets():
    """InterFlow 0.01 s/step reaching NLL 2 by t=4; cnf 0.1 s/step reaching 3 at t=40:
    target 3 (cnf's best); InterFlow crosses it at t=2 (interpolated in [1, 2]), cnf at
    t=40 (in [20, 40]): ratio 20x, range [20/2, 40/1] = [10, 40]; cost ratio 10x."""
    def hist(times, vals, step_s):
        return {"val_nll": list(enumerate(vals, 1)),
                "train_seconds_at_eval": list(enumerate(times, 1)),
                "step_seconds": [(i, step_s) for i in range(1, 51)]}
    ours = _rec("interflow", "interflow", "miniboone", 0, 2.0,
                history=hist([1.0, 2.0, 4.0], [5.0, 3.0, 2.0], 0.01))
    other = _rec("cnf", "cnf", "miniboone", 0, 3.0,
                 history=hist([10.0, 20.0, 40.0], [5.0, 4.0, 3.0], 0.1))
    p = pair_speedup(ours, other)
    assert p.target == 3.0 and p.cost_how == "median"
    assert p.cost_ratio == pytest.approx(10.0, rel=FLOAT_RTOL)
    assert (p.time.seconds, p.time.before, p.time.after) == (2.0, 1.0, 2.0)
    assert p.other_time.seconds == pytest.approx(40.0, rel=FLOAT_RTOL)
    value, status, lo, hi = p.ratio
    assert status == "exact"
    assert (value, lo, hi) == pytest.approx((20.0, 10.0, 40.0), rel=FLOAT_RTOL)


def test_study_section_and_its_reading(tmp_path):
    """A study where cnf is cheaper per iteration: the section's row and the sentence."""
    recs = [_rec("interflow", "interflow", "miniboone", 0, 13.0, provenance=REDUCED,
                 truth=None, extra={"train_seconds": 40.0, "steps_done": 100.0}),
            _rec("cnf", "cnf", "miniboone", 0, 13.5, provenance=REDUCED, truth=None,
                 extra={"train_seconds": 40.0, "steps_done": 400.0})]
    fit = _rec("gauss", "gaussian_mle", "miniboone", 0, 14.0, provenance=REDUCED, truth=None,
               extra={"steps_done": 0.0},
               history={"val_nll": [(0, 14.0)], "train_seconds_at_eval": [(0, 0.0)]})
    md = write_suite_page(_suite(study=True), recs + [fit], tmp_path / "a")[0].read_text()
    assert "## Speed-up" in md
    assert "| miniboone | cnf | 0 | 0.4 (mean) | 0.1 | 0.25x |" in md
    assert "On miniboone (seed 0), cnf costs less per iteration than interflow" in md
    assert "Not in the study: gauss (no training steps" in md
    assert "| miniboone | gauss |" not in md
    recs[1].metrics["steps_done"] = 40.0  # now 1 s per step: 2.5x InterFlow's cost
    md = write_suite_page(_suite(study=True), recs, tmp_path / "b")[0].read_text()
    assert "| miniboone | cnf | 0 | 0.4 (mean) | 1 | 2.5x |" in md
    assert "costs less per iteration" not in md


def test_seed_band_latest_value_min_max():
    from bench.record.report_plots import Curve

    a = Curve("a", "m", np.array([1.0, 3.0]), np.array([5.0, 2.0]))
    b = Curve("b", "m", np.array([2.0, 4.0]), np.array([4.0, 1.0]))
    band = seed_band("m", [a, b])
    assert list(band.x) == [1.0, 2.0, 3.0, 4.0]
    assert list(band.median) == [5.0, 4.5, 3.0, 1.5]
    assert list(band.lo) == [5.0, 4.0, 2.0, 1.0] and list(band.hi) == [5.0, 5.0, 4.0, 2.0]


def test_provenance_compute_and_failures(tmp_path):
    recs = _grid({"interflow": ("interflow", 1.2)})
    recs.append(_rec("cnf", "cnf", "8gaussians", 0, math.nan, status="FAILED"))
    md = write_suite_page(_suite(), recs, tmp_path)[0].read_text()
    assert "- runs: 4 (1 FAILED, 3 FINISHED)" in md
    assert "- total compute: 174 s (0.05 h)" in md  # 4 runs x (40 + 2 + 1.5) s
    assert "cnf-8gaussians-s0 (FAILED): diverged" in md
    assert "abc1234def5678 (4)" in md and "torch 2.5.1 (4)" in md
    assert "synthetic 8gaussians (closed form)" in md


def test_no_finished_runs_is_a_data_error(tmp_path):
    recs = [_rec("cnf", "cnf", "8gaussians", 0, 1.0, status="FAILED")]
    with pytest.raises(DataError, match="no finished runs"):
        write_suite_page(_suite(), recs, tmp_path)
    assert not page_path(_suite(), tmp_path).exists()


def test_a_label_over_two_configurations_gives_two_rows(tmp_path):
    """Runs of one suite label but different parameters are not pooled into one row."""
    recs = _grid({"interflow": ("interflow", 1.2)})
    recs[0].params["p_method_hidden"] = "(16,16)"
    md = write_suite_page(_suite(), recs, tmp_path)[0].read_text()
    assert "| interflow interflow[hidden=(16,16)] (exact) | 1 |" in md
    assert "| interflow interflow[hidden=(8,8)] (exact) | 2 |" in md


def test_a_declared_dataset_without_runs_says_so(tmp_path):
    recs = _grid({"interflow": ("interflow", 1.2)})  # the suite declares miniboone too
    md = write_suite_page(_suite(), recs, tmp_path)[0].read_text()
    assert "## miniboone\n\nNo finished run of this dataset in the records." in md
