"""Suites: suites/<name>.toml parsed and validated, planned with data and compute, run
resumably (a SIGKILL of the runner loses no finished job), failed jobs retried only when
asked, exported, and every committed page equal to what its records regenerate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.api import ConfigError

ROOT = Path(__file__).resolve().parents[1]

TINY = """
seeds = [0, 1, 2]
dataset = ["8gaussians[n_train=500,n_val=100,n_test=100]"]
set = {{hidden = [8, 8], batch_size = 64}}

[[method]]
name = "interflow"
label = "InterFlow"

[suite]
name = "{name}"
description = "three tiny jobs"
device_class = "cpu-2core"

[suite.budget]
{budget}

[suite.protocol]
test_rows = 50
val_rows = 50
sample_metrics = false
"""

STEPS = 'policy = "steps"\nsteps = 30\neval_every = 10'


def _suite(root: Path, name: str = "tiny", text: str | None = None, budget: str = STEPS
           ) -> Path:
    path = root / "suites" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else TINY.format(name=name, budget=budget))
    return path


def _cli(*args: str):
    from bench.cli.main import main

    return CliRunner().invoke(main, list(args))


def _bench(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True,
                          text=True, env=env, timeout=300, **kw)


def _store(root: Path, name: str = "tiny") -> list:
    from bench.record.jsonl import JsonlSource

    return JsonlSource(root / "results" / "suites" / name / "store").records(name)


# -- parsing and validation -----------------------------------------------------------------
@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('seeds = [0, 1, 2]', 'seeds = [0, 1, 2]\nsteps = 5'),
     "unknown key 'steps'"),
    (lambda t: t.replace('device_class = "cpu-2core"', 'device_class = "cpu-2core"\nfoo = 1'),
     "[suite]: unknown key 'foo'"),
    (lambda t: t.replace('policy = "steps"', 'policy = "fast"'),
     "policy = 'fast' is not a one of 'wall', 'steps', 'both'"),
    (lambda t: t.replace("steps = 30", 'steps = "30"'), "steps = '30' is not a int"),
    (lambda t: t.replace("steps = 30", "steps = 30\nseconds_per_job = 5"),
     "budget policy 'steps' takes no seconds_per_job"),
    (lambda t: t.replace('name = "tiny"', 'name = "other"'), "name must be 'tiny'"),
    (lambda t: t.replace("sample_metrics = false", "test_row = 5"),
     "unknown key 'test_row' (did you mean 'test_rows'?)"),
    (lambda t: t.replace('label = "InterFlow"', 'label = "InterFlow"\nwidth = 3'),
     "unknown parameter 'width' for method 'interflow'"),
    (lambda t: t.replace('seeds = [0, 1, 2]', 'seeds = [0, 0]'), "repeats 0"),
    (lambda t: t + "[suite.study]\nreference = \"CNF\"\n", "reference 'CNF' is no method label"),
    (lambda t: t.replace("[suite.budget]", "[suite.budget"), "not TOML"),
])
def test_a_bad_suite_is_one_line_and_exit_2(tmp_path, edit, message):
    _suite(tmp_path, text=edit(TINY.format(name="tiny", budget=STEPS)))
    res = _cli("suite", "plan", "tiny", "--root", str(tmp_path))
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: suite ")
    assert message in lines[0]


def test_an_unknown_suite_names_the_known_ones(tmp_path):
    _suite(tmp_path)
    res = _cli("suite", "plan", "tinny", "--root", str(tmp_path))
    assert res.exit_code == 2
    assert "no suite 'tinny'" in res.output and "did you mean 'tiny'" in res.output


def test_every_shipped_suite_plans(registry):
    """Each committed suite validates and plans as bench run would, its labels on its jobs;
    its job count is methods x datasets x seeds x precisions (less skipped entries)."""
    from bench.harness.planning.suites import load_suite, plan_suite, skipped, suite_names

    names = suite_names(ROOT)
    assert {"cpu-smoke", "cpu-tabular", "cpu-speedup", "paper-tabular", "paper-images",
            "gpu-smoke"} <= set(names)
    for name in names:
        s = load_suite(name, ROOT)
        jobs = plan_suite(registry, s)
        n_skipped = len(skipped(registry, s))
        per_method = len(s.datasets) * len(s.seeds) * len(s.protocol.precisions)
        assert len(jobs) == s.n_jobs - n_skipped * per_method
        assert {j.label.split(": ", 1)[0] for j in jobs} <= set(s.labels)


def test_the_budget_policy_reaches_every_job(registry):
    """cpu-tabular: equal wall-clock per job, no step cap, the geometric validation grid
    from first_eval to the budget; 84 jobs x (30 s + 34 s of scoring) <= 90 min."""
    from bench.harness.planning.suites import load_suite, plan_suite

    s = load_suite("cpu-tabular", ROOT)
    jobs = plan_suite(registry, s)
    assert len(jobs) == 84 and 84 * 64 <= 90 * 60
    for j in jobs:
        assert j.budget.steps is None and j.budget.max_seconds == 30.0
        grid = j.budget.eval_at_seconds
        assert grid[0] == 0.0 and grid[1] == 1.0 and grid[-1] == 30.0
        ratios = [b / a for a, b in zip(grid[1:-1], grid[2:], strict=True)]
        # geometric: equal ratios up to a few ulps of the power that makes them
        assert max(ratios) - min(ratios) < 1e-12


def test_a_study_shares_its_settings_and_skips_unavailable_optional_entries(registry):
    from bench.harness.planning.suites import load_suite, plan_suite, skipped

    s = load_suite("cpu-speedup", ROOT)
    jobs = plan_suite(registry, s)
    for j in jobs:
        p = j.method_params
        assert (p.net, p.hidden, p.activation, p.batch_size) == (
            "concatsquash", (860, 860), "softplus", 1000)
    ffjord = registry.plugins["method"]["ffjord"]
    assert ("FFJORD (reference code)" in skipped(registry, s)) == (not ffjord.available)


def test_a_missing_optional_plugin_is_only_skipped_when_optional(tmp_path, registry):
    from bench.harness.planning.suites import load_suite, plan_suite

    if registry.plugins["method"]["ffjord"].available:
        pytest.skip("ffjord's checkout is present")
    entry = '[[method]]\nname = "ffjord"\nlabel = "FFJORD"\n{}\n[suite]\n'
    base = TINY.format(name="tiny", budget=STEPS)
    _suite(tmp_path, text=base.replace("[suite]\n", entry.format(""), 1))
    with pytest.raises(ConfigError, match="method 'ffjord' is unavailable"):
        plan_suite(registry, load_suite("tiny", tmp_path))
    _suite(tmp_path, text=base.replace("[suite]\n", entry.format("optional = true"), 1))
    assert len(plan_suite(registry, load_suite("tiny", tmp_path))) == 3


# -- plan: data and compute -----------------------------------------------------------------
def test_plan_says_unknown_without_measurements_and_where_missing_data_goes(tmp_path):
    text = TINY.format(name="tiny", budget=STEPS).replace(
        'dataset = ["8gaussians[n_train=500,n_val=100,n_test=100]"]',
        'dataset = ["8gaussians[n_train=500,n_val=100,n_test=100]", "power"]').replace(
        'name = "interflow"', 'name = "gaussian_mle"').replace(
        "set = {hidden = [8, 8], batch_size = 64}", "")
    _suite(tmp_path, text=text)
    res = _cli("suite", "plan", "tiny", "--root", str(tmp_path), "--json",
               "--data-dir", str(tmp_path / "nodata"))
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert plan["total_seconds"] is None and len(plan["jobs"]) == 6
    assert all(j["estimate"] == "unknown" and j["seconds"] is None for j in plan["jobs"])
    assert plan["data"]["8gaussians[n_train=500,n_val=100,n_test=100]"].startswith("synth")
    missing = plan["data"]["power"]
    assert missing.startswith("missing: POWER data not found")
    assert "place data.npy from the MAF archive" in missing
    assert str(tmp_path / "nodata" / "power") in missing


def test_plan_estimates_from_the_suites_records(tmp_path, monkeypatch):
    """After a run the estimate is steps x the measured seconds per step (median over the
    runs of the configuration) plus their measured scoring; the total is the sum."""
    import statistics

    from bench.record.suite_records import export_path, read_records

    _suite(tmp_path)
    assert _cli("suite", "run", "tiny", "--root", str(tmp_path), "-q").exit_code == 0
    records = read_records(export_path(tmp_path, "tiny"))
    assert len(records) == 3
    assert {r.tags["suite.method"] for r in records} == {"InterFlow"}
    assert {r.tags["suite.device_class"] for r in records} == {"cpu-2core"}
    res = _cli("suite", "plan", "tiny", "--root", str(tmp_path), "--json")
    plan = json.loads(res.output)
    s_step = statistics.median(r.metrics["train_seconds"] / r.metrics["steps_done"]
                               for r in records)
    for j in plan["jobs"]:
        assert j["basis"] == "3 run(s) measured on cpu-2core"
        # the same float operations as the estimator: equal up to a few ulps
        assert j["s_per_step"] == pytest.approx(s_step, rel=1e-12)
        assert j["seconds"] > 30 * s_step  # training plus the measured scoring
    assert plan["total_seconds"] == pytest.approx(sum(j["seconds"] for j in plan["jobs"]),
                                                  rel=1e-12)
    # bench run --dry-run shows the same estimate for the same job (its exports are found
    # under the working folder)
    monkeypatch.chdir(tmp_path)
    res = _cli("run", "-m", "interflow[hidden=(8,8),batch_size=64]", "-d",
               "8gaussians[n_train=500,n_val=100,n_test=100]", "--steps", "30",
               "--eval-every", "10", "--test-rows", "50", "--val-rows", "50", "--n-samples",
               "0", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["estimate"] == plan["jobs"][0]["estimate"]


def test_a_probe_measures_each_configuration_here_as_a_lower_bound(tmp_path):
    """--probe runs each distinct configuration once (the three seeds share one) for a few
    steps; the estimate is marked a lower bound and nothing is recorded in the store."""
    _suite(tmp_path)
    res = _cli("suite", "plan", "tiny", "--root", str(tmp_path), "--probe", "--json")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    per_step = {j["s_per_step"] for j in plan["jobs"]}
    assert len(per_step) == 1 and per_step.pop() > 0  # one probe for the three seeds
    assert all(j["basis"] == "1 run(s) probed on this machine"
               and j["estimate"].startswith(">= ") for j in plan["jobs"])
    assert not (tmp_path / "results" / "suites" / "tiny" / "store").exists()


# -- run: resumable, retries, status --------------------------------------------------------
def test_a_killed_suite_run_resumes_without_redoing_finished_jobs(tmp_path):
    """SIGKILL of the runner once its first job is FINISHED; the rerun skips that job
    (same run id, one run), resumes or restarts the killed one, and every job ends with
    exactly one FINISHED run."""
    _suite(tmp_path, budget='policy = "wall"\nseconds_per_job = 2.0\neval_every = 20')
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "suite", "run", "tiny", "--root",
                             str(tmp_path), "-q"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r.status == "FINISHED" for r in _store(tmp_path)):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the suite ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = [r for r in _store(tmp_path) if r.status == "FINISHED"]
    assert len(first) == 1  # the kill came during the second job
    status = _cli("suite", "status", "tiny", "--root", str(tmp_path), "--json")
    states = [j["state"] for j in json.loads(status.output)]
    assert states[0] == "done" and "left" in states and "done" not in states[1:]
    res = _cli("suite", "run", "tiny", "--root", str(tmp_path), "-q")
    assert res.exit_code == 0, res.output
    runs = _store(tmp_path)
    finished = [r for r in runs if r.status == "FINISHED"]
    keys = [r.tags["job_key"] for r in finished]
    assert len(finished) == 3 and len(set(keys)) == 3
    first_key = first[0].tags["job_key"]
    assert [r.run_id for r in runs if r.tags["job_key"] == first_key] == [first[0].run_id]
    assert "suite tiny: 3 job(s), 1 done" in res.output


FLAKY = '''
from dataclasses import dataclass
import torch
from bench.api import Dataset, DataError, Splits


@dataclass
class P:
    n: int = 64


class Flaky(Dataset):
    """Fails to load while its data folder holds a file named broken."""
    name = "flaky"
    kind = "tabular"
    Params = P

    def load(self):
        if (self.data_dir / "broken").exists():
            raise DataError("flaky: the data is broken")
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3 * self.params.n, 2, generator=g)
        n = self.params.n
        return Splits(x[:n], x[n:2 * n], x[2 * n:], (2,), "flaky normal rows")
'''


def test_failed_jobs_rerun_only_with_retry_failed(tmp_path):
    """A job that failed is reported with its reason and left alone by a plain rerun; with
    --retry-failed (here with two worker processes) it runs again and finishes."""
    plugins, data = tmp_path / "plugins" / "datasets", tmp_path / "data"
    plugins.mkdir(parents=True)
    data.mkdir()
    (plugins / "flaky.py").write_text(FLAKY)
    (data / "broken").write_text("")
    text = TINY.format(name="tiny", budget=STEPS).replace(
        'dataset = ["8gaussians[n_train=500,n_val=100,n_test=100]"]',
        'dataset = ["8gaussians[n_train=500,n_val=100,n_test=100]", "flaky"]').replace(
        "seeds = [0, 1, 2]", "seeds = [0]")
    _suite(tmp_path, text=text)
    args = ("--plugins", str(tmp_path / "plugins"), "suite", "run", "tiny", "--root",
            str(tmp_path), "--data-dir", str(data), "-q")
    res = _cli(*args)
    assert res.exit_code == 1 and "flaky: the data is broken" in res.output
    status = _cli("--plugins", str(tmp_path / "plugins"), "suite", "status", "tiny",
                  "--root", str(tmp_path), "--data-dir", str(data))
    assert "1 done, 0 running, 1 failed, 0 killed, 0 left" in status.output
    assert "failed: InterFlow: interflow on flaky seed 0: flaky: the data is broken" \
        in status.output
    (data / "broken").unlink()
    res = _cli(*args)
    assert res.exit_code == 1 and "1 failed (not rerun without --retry-failed)" in res.output
    assert sum(r.status == "FAILED" for r in _store(tmp_path)) == 1
    res = _bench(*args, "--retry-failed", "--jobs", "2")  # worker processes
    assert res.returncode == 0, res.stderr
    runs = _store(tmp_path)
    assert [r.status for r in runs].count("FINISHED") == 2
    assert all(r.tags.get("suite") == "tiny" for r in runs)


# -- export and pages -----------------------------------------------------------------------
def test_the_export_round_trips_and_is_deterministic(tmp_path):
    from bench.api import RunRecord
    from bench.record.suite_records import read_records, write_records

    rec = RunRecord("r1", "m-d-s0", params={"method": "m", "seed": 0, "lr": 1e-3},
                    tags={"suite": "x"}, metrics={"test_nll": 1.5, "bad": float("nan")},
                    history={"val_nll": [(1, 2.0), (2, 1.75)], "loss": [(1, 3.0)]},
                    status="FINISHED")
    a = write_records(tmp_path / "a.jsonl", [rec])
    b = write_records(tmp_path / "b.jsonl", read_records(a))
    assert a.read_bytes() == b.read_bytes()
    back = read_records(b)[0]
    assert back.history == {"val_nll": [(1, 2.0), (2, 1.75)]}  # no per-step loss
    assert back.metrics["test_nll"] == 1.5 and back.metrics["bad"] != back.metrics["bad"]
    (tmp_path / "c.jsonl").write_text('{"run_id": 1}\n')
    with pytest.raises(Exception, match="c.jsonl:1: not an exported record"):
        read_records(tmp_path / "c.jsonl")


def test_every_committed_page_is_what_its_records_regenerate(tmp_path):
    """CI's check that no results page is stale or hand-edited: for every suite with
    committed records, `bench suite report` from them gives the committed page and plots
    byte for byte."""
    from bench.harness.planning.suites import load_suite, suite_names
    from bench.record.suite_page import write_suite_page
    from bench.record.suite_records import export_path, read_records

    checked = 0
    for name in suite_names(ROOT):
        records = export_path(ROOT, name)
        if not records.is_file():
            continue
        written = write_suite_page(load_suite(name, ROOT), read_records(records), tmp_path)
        for path in written:
            rel = path.relative_to(tmp_path)
            assert (ROOT / rel).is_file(), f"{rel} is not committed"
            assert (ROOT / rel).read_bytes() == path.read_bytes(), f"{rel} is stale"
        checked += 1
    assert checked >= 1  # cpu-smoke's records and page are committed


def test_load_suite_accepts_a_path(tmp_path):
    from bench.harness.planning.suites import load_suite

    path = _suite(tmp_path)
    assert load_suite(str(path)).name == "tiny"
    with pytest.raises(ConfigError, match="no suite"):
        load_suite("nope", tmp_path)
