"""Launchers receive `JobSpec`s and return one `RunRecord` per spec, in order: a job that
cannot start (a spec naming an unknown plug-in, a rebuilt job whose key differs from the
planner's) is a FAILED record with its reason and the grid goes on. The Ray launcher is
tested the same way on a local Ray cluster (skipped without Ray)."""

from __future__ import annotations

import dataclasses

import pytest

from bench.api import ConfigError, Launcher, RunRecord
from bench.harness.planning.plan import plan_jobs
from bench.launch.local import LocalLauncher
from bench.launch.specs import job_of, specs_of

METHOD = "interflow[hidden=(8,8),batch_size=16]"
TOY = "8gaussians[n_train=200,n_val=50,n_test=50]"
RUN = dict(steps=20, eval_every=10, n_samples=0)


def _specs(registry, tmp_path):
    """Three specs: a good one, one whose key differs, one naming no plug-in."""
    good, other = specs_of(plan_jobs(registry, [METHOD], [TOY], [0, 1], data_dir=tmp_path,
                                     **RUN))
    stale = dataclasses.replace(other, key="0" * 16)
    unknown = dataclasses.replace(good, method="nosuch", key="")
    return [good, stale, unknown]


def _check(records: list[RunRecord]) -> None:
    assert [r.status for r in records] == ["FINISHED", "FAILED", "FAILED"]
    assert records[0].seed == 0 and records[0].metrics["steps_done"] == 20
    assert "job key" in records[1].failure and records[1].seed == 1
    assert "nosuch" in records[2].failure and records[2].run_id is None


def test_local_launcher_records_every_spec_in_order(registry, tmp_path, one_thread):
    from bench.record.memory import MemorySink

    seen = []
    # registry=None: the launcher loads the plug-ins itself, as a worker elsewhere does
    launcher = LocalLauncher(lambda: MemorySink(tmp_path / "artifacts"),
                             on_record=lambda spec, rec: seen.append((spec.seed, rec.status)))
    assert isinstance(launcher, Launcher)
    specs = _specs(registry, tmp_path)
    records = launcher.submit(specs)
    _check(records)
    assert seen == [(s.seed, r.status) for s, r in zip(specs, records, strict=True)]


def test_the_key_is_checked_where_the_plugins_are_loaded_again(registry, tmp_path):
    good, stale, _ = _specs(registry, tmp_path)
    assert job_of(good).seed == 0  # a registry of its own: same files, same key
    with pytest.raises(ConfigError, match="job key"):
        job_of(stale)
    # the planner's registry: its classes are the code that was planned, not re-read
    assert job_of(stale, registry).seed == 1


@pytest.mark.slow
def test_ray_launcher_records_every_spec_in_order(registry, tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="Ray is an optional extra")
    from bench.launch.ray import RayLauncher
    from bench.record.stores import open_source

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    uri = f"jsonl://{tmp_path / 'store'}"
    lines: list[str] = []
    launcher = RayLauncher({"uri": uri, "experiment": "bench", "results": str(tmp_path)},
                           num_cpus=2, echo=lines.append)
    assert isinstance(launcher, Launcher)
    records = launcher.submit(_specs(registry, tmp_path))
    _check(records)
    assert len(lines) == 3 and all("not finished]" in ln for ln in lines)
    stored = list(open_source(uri).records("bench"))
    assert [(r.run_id, r.status) for r in stored] == [(records[0].run_id, "FINISHED")]
