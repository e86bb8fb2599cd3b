"""bench regress: the comparison rules on fabricated measurements, the baseline file, the
history and its plot; then the real thing: an injected wait and an injected extra forward
pass, each in InterFlow's loss and in the training loop, fail the timing check (CLI end to
end, naming the figure); five clean runs beside a CPU-bound busy loop raise no alarm; a
broken InterFlow loss fails the quality check."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest

from bench.api import ConfigError, DataError
from bench.harness.running import regress as rg

COMMITTED = Path(__file__).resolve().parents[1] / "results" / "benchmarks" / "baseline.json"

BASE = {
    "interflow_step": {"kind": "timing", "ratio": 2.0},
    "cnf_step": {"kind": "timing", "ratio": 8.0},
    "nll_x": {"kind": "quality", "value": 3.0, "band": 0.1},
}


def _timing(**ratios):
    return {k: {"ratio": v} for k, v in ratios.items()}


def _status(checks):
    return {c.figure: c.status for c in checks}


def test_compare_passes_regresses_and_flags_faster():
    checks = rg.compare(BASE, _timing(interflow_step=2.9, cnf_step=5.0),
                        {"nll_x": {"value": 3.09}}, threshold=1.5)
    assert _status(checks) == {"interflow_step": "ok", "cnf_step": "faster", "nll_x": "ok"}
    assert not any(c.failed for c in checks)
    checks = rg.compare(BASE, _timing(interflow_step=3.01, cnf_step=8.0),
                        {"nll_x": {"value": 2.89}}, threshold=1.5)
    assert _status(checks) == {"interflow_step": "regressed", "cnf_step": "ok",
                               "nll_x": "outside band"}
    (line,) = [c.line() for c in checks if c.figure == "interflow_step"]
    assert line == ("interflow_step: ratio 3.010 vs baseline 2.000 (1.50x; threshold 1.50x "
                    "= 3.000)")
    (line,) = [c.line() for c in checks if c.figure == "nll_x"]
    assert line == "nll_x: test NLL 2.8900 outside baseline 3.0000 +- 0.1000"
    with pytest.raises(ConfigError, match="threshold"):
        rg.compare(BASE, {}, {}, threshold=1.0)


def test_each_timing_figure_has_its_own_factor():
    base = {"a": {"kind": "timing", "ratio": 2.0, "factor": 1.1},
            "b": {"kind": "timing", "ratio": 2.0, "factor": 2.0},
            "c": {"kind": "timing", "ratio": 2.0}}  # an older baseline: the mode's threshold
    checks = rg.compare(base, _timing(a=2.21, b=3.9, c=3.1), {}, default_threshold=1.5)
    assert _status(checks) == {"a": "regressed", "b": "ok", "c": "regressed"}
    assert {c.figure: c.limit for c in checks} == pytest.approx({"a": 2.2, "b": 4.0, "c": 3.0})
    checks = rg.compare(base, _timing(a=1.79, b=1.1, c=1.5), {}, default_threshold=1.5)
    assert _status(checks) == {"a": "faster", "b": "ok", "c": "ok"}
    # --threshold overrides every factor
    assert _status(rg.compare(base, _timing(a=2.21, b=3.9, c=3.1), {}, threshold=1.6)) == {
        "a": "ok", "b": "regressed", "c": "ok"}
    assert rg.timing_factor(1.0) == rg.FACTOR_FLOOR == 1.10
    assert rg.timing_factor(1.2) == pytest.approx(1.2 ** 3)


def test_compare_missing_and_new_figures():
    checks = rg.compare(BASE, _timing(interflow_step=2.0, unet_step=1.2), {}, 1.5)
    status = _status(checks)
    assert status == {"interflow_step": "ok", "cnf_step": "missing", "nll_x": "missing",
                      "unet_step": "new"}
    assert [c.figure for c in checks if c.failed] == ["cnf_step", "nll_x"]
    # only some figures were run: the others are not missing
    checks = rg.compare(BASE, _timing(interflow_step=2.0), {}, 1.5, selected=("interflow_step",))
    assert _status(checks) == {"interflow_step": "ok"}


def test_info_figures_are_shown_never_failing_never_missing():
    base = {**BASE, "run_seconds_total": {"kind": "info", "value": 200.0}}
    checks = rg.compare(base, _timing(interflow_step=2.0, cnf_step=8.0),
                        {"nll_x": {"value": 3.0}}, 1.5, info={"run_seconds_total": 900.0})
    (info,) = [c for c in checks if c.figure == "run_seconds_total"]
    assert (info.status, info.kind, info.now, info.failed) == ("info", "info", 900.0, False)
    checks = rg.compare(base, _timing(interflow_step=2.0, cnf_step=8.0),
                        {"nll_x": {"value": 3.0}}, 1.5)  # not measured: not "missing"
    assert "run_seconds_total" not in _status(checks)
    assert not any(c.failed for c in checks)
    new = rg.make_baseline([], {}, {}, "abc", info={"s": 1.5})
    assert new["figures"]["s"] == {"kind": "info", "value": 1.5}


def test_default_command_is_run_whole_and_split_into_seconds(monkeypatch):
    monkeypatch.setattr(rg, "DEFAULT_RUNS", {"tiny": (
        ("--method", "interflow[hidden=(8,8),batch_size=32]",
         "--dataset", "8gaussians[n_train=256,n_val=64,n_test=64]", "--steps", "20",
         "--n-samples", "0"), None)})
    assert rg.run_default("fast") == ({}, {})  # the default commands belong to full mode
    quality, info = rg.run_default("full")
    q = quality["nll_tiny"]
    assert q["values"] == [q["value"]] and q["se"] > 0 and 0 < q["value"] < 10
    parts = [info[f"tiny_seconds_{k}"] for k in ("train", "val", "test")]
    assert all(p > 0 for p in parts) and info["tiny_seconds_total"] > sum(parts)


def test_baseline_rules_and_file_round_trip(tmp_path):
    runs = [_timing(a=1.0), _timing(a=1.3), _timing(a=1.1)]
    quality = {"nll_q": {"value": 3.0, "se": 0.01, "values": [3.0, 3.2, 2.9]},
               "nll_d": {"value": 5.0, "se": 0.4, "values": [5.0, 5.0]}}
    new = rg.make_baseline(runs, quality, {"node": "m"}, "abc", 1.5)
    fig = new["figures"]
    assert fig["a"]["ratio"] == 1.1 and fig["a"]["spread"] == pytest.approx(1.3)
    assert fig["a"]["factor"] == pytest.approx(1.3 ** 3)
    assert fig["nll_q"]["band"] == pytest.approx(3 * statistics.stdev([3.0, 3.2, 2.9]))
    assert fig["nll_d"]["band"] == pytest.approx(3 * 0.4)  # no seed spread: the SE rules
    path = tmp_path / "b" / "baseline.json"
    assert rg.load_baseline(path) == {"schema": 1, "modes": {}}
    rg.save_baseline(path, rg.load_baseline(path), "full", {"figures": {}})
    rg.save_baseline(path, rg.load_baseline(path), "fast", new)
    data = rg.load_baseline(path)
    assert set(data["modes"]) == {"fast", "full"} and data["modes"]["fast"] == new
    path.write_text("{}")
    with pytest.raises(DataError, match="not a baseline"):
        rg.load_baseline(path)


def test_committed_baseline_has_every_figure():
    base = rg.load_baseline(COMMITTED)["modes"]["fast"]
    cases = ("interflow_step", "ddpm_step", "cnf_step", "loglik_exact", "loglik_hutchinson",
             "sampling", "unet_step", "cli_help")
    assert {*cases, *(c + rg.WALL for c in cases), "nll_interflow_8gaussians",
            "nll_ddpm_8gaussians"} <= set(base["figures"])
    assert base["machine"]["cpus"] >= 1 and "busy loop" in base["factor_rule"]
    for case in cases:  # every timing figure carries the factor its spread gives
        for name in (case, case + rg.WALL):
            fig = base["figures"][name]
            assert len(fig["runs"]) >= 5
            assert fig["factor"] == pytest.approx(rg.timing_factor(fig["spread"]))


def test_history_round_trip_and_plot(tmp_path):
    from bench.record.history import load_history, plot_history, record_regress
    from bench.record.memory import MemorySink

    records = []
    for i, (mode, passed) in enumerate([("fast", True), ("full", True), ("fast", False)]):
        sink = MemorySink()
        record_regress(sink, {"interflow_step": 2.0 + i, "nll_x": 3.0}, f"c{i}", mode, passed,
                       {"cpus": 2})
        records.append(sink.record)
    assert records[0].tags["git_commit"] == "c0" and records[0].tags["machine.cpus"] == "2"
    points = load_history(records, "fast")
    assert [(p.commit, p.passed, p.figures["interflow_step"]) for p in points] == [
        ("c0", True, 2.0), ("c2", False, 4.0)]
    out = plot_history(points, BASE, 1.5, tmp_path / "h.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DataError, match="no regress runs"):
        plot_history([], BASE, 1.5, tmp_path / "none.png")


INJECT = '''
"""Test-only pytest plug-in, loaded into the timing suite's subprocess (-p): InterFlow
made slower in one way, KIND: loss_wait / loop_wait (a sleep as long as the loss / the
training step itself took: the hot path's own duration), loss_forward (the loss runs the
network once more, with gradients) or loop_forward (the training step runs it once more
without gradients, as a per-step monitoring call would)."""
import time

import torch

from bench.harness.training.optim import Trainer
from bench.harness.planning.registry import Registry

KIND = {kind!r}
_get, _step = Registry.get, Trainer.step


def _loss(self, batch, step=0):
    t0 = time.perf_counter()
    if KIND == "loss_forward":
        self.v(torch.rand(batch.shape[0]), batch)
    out = super(type(self), self).loss(batch, step)
    if KIND == "loss_wait":
        time.sleep(time.perf_counter() - t0)
    return out


def _get_slow(self, kind, name):  # each Registry loads the plug-in anew: patch what it gives
    cls = _get(self, kind, name)
    if kind == "method" and name == "interflow" and KIND.startswith("loss_"):
        return type(cls.__name__, (cls,), {{"loss": _loss}})
    return cls


def _slow_step(self, batch, step):
    t0 = time.perf_counter()
    slow = self.method.name == "interflow" and KIND.startswith("loop_")
    if slow and KIND == "loop_forward":
        with torch.no_grad():
            self.method.v(torch.rand(batch.shape[0]), batch)
    out = _step(self, batch, step)
    if slow and KIND == "loop_wait":
        time.sleep(time.perf_counter() - t0)
    return out


Registry.get, Trainer.step = _get_slow, _slow_step
'''
STEP = ("interflow_step", "interflow_step" + rg.WALL)


def _regress_step(monkeypatch, plugin_dir: Path | None):
    """`bench regress` of the InterFlow step's two figures against the committed baseline,
    with the plug-in of ``plugin_dir`` (if any) loaded into the suite; (exit code, checks by
    figure, stderr)."""
    from click.testing import CliRunner

    from bench.cli.regress import regress

    if plugin_dir is not None:
        monkeypatch.setenv("PYTHONPATH", str(plugin_dir))
        monkeypatch.setenv("PYTEST_ADDOPTS", "-p regress_inject")
    res = CliRunner().invoke(regress, ["--only", STEP[0], "--skip", "quality", "--baseline",
                                       str(COMMITTED), "--json", "--no-record"])
    assert res.exit_code in (0, 1), res.output
    checks = {c["figure"]: c for c in json.loads(res.stdout)["checks"]}
    assert set(checks) == set(STEP)
    return res.exit_code, checks, res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["loss_wait", "loop_wait", "loss_forward", "loop_forward"])
def test_injected_wait_or_computation_fails_the_timing_check(tmp_path, monkeypatch, kind):
    (tmp_path / "regress_inject.py").write_text(INJECT.format(kind=kind))
    code, checks, err = _regress_step(monkeypatch, tmp_path)
    cpu, wall = checks[STEP[0]], checks[STEP[1]]
    assert code == 1
    if kind.endswith("_wait"):  # invisible to the CPU clock: the wall figure catches it
        assert wall["status"] == "regressed" and wall["now"] > wall["limit"], wall
        assert f"REGRESSION {STEP[1]}: ratio" in err
    else:  # computing: the CPU figure catches it, and the wall figure sees it too (~1.3x;
        # its own factor, from the noisier wall clock, may or may not reach it)
        assert cpu["status"] == "regressed" and cpu["now"] > cpu["limit"], cpu
        assert f"REGRESSION {STEP[0]}: ratio" in err
        assert wall["now"] > wall["baseline"] * rg.FACTOR_FLOOR, wall


@pytest.mark.slow
def test_clean_runs_beside_a_busy_loop_raise_no_alarm(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with rg.busy_loop(1):
        runs = [_regress_step(monkeypatch, None) for _ in range(5)]
    for code, checks, err in runs:
        assert code == 0 and not err, (checks, err)
        assert all(c["status"] in ("ok", "faster") for c in checks.values()), checks


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
def test_busy_loop_burns_cpu_and_stops(monkeypatch):
    import subprocess

    started = []
    popen = subprocess.Popen

    def recording(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", recording)

    def cpu_seconds(pid: int) -> float:  # utime + stime of /proc/<pid>/stat, in ticks
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    with rg.busy_loop(2):
        assert len(started) == 2
        time.sleep(0.3)
        before = [cpu_seconds(p.pid) for p in started]
        time.sleep(1.0)
        # each keeps computing: over 1 s on a shared 2-core machine it gets at least some
        # ticks (a sleeping process would get none)
        assert all(cpu_seconds(p.pid) > b for p, b in zip(started, before, strict=True))
        assert all(p.poll() is None for p in started)
    assert all(p.returncode is not None for p in started)  # killed and reaped
def test_broken_loss_fails_the_quality_check(monkeypatch):
    from bench.harness.planning.registry import Registry

    base = rg.load_baseline(COMMITTED)["modes"]["fast"]["figures"]
    fig = ("nll_interflow_8gaussians",)
    registry = Registry()
    clean = rg.run_quality(registry, "fast", figures=fig)
    assert _status(rg.compare(base, {}, clean, selected=fig)) == {fig[0]: "ok"}

    cls = registry.get("method", "interflow")

    def broken(self, batch, step=0):  # the cross term's factor 2 dropped
        x_1 = batch.to(self.ctx.device)
        n = x_1.shape[0]
        path = self.interpolant.sample(self.base_sample(n), x_1, self.sample_time(n))
        v = self.v(path.t, path.x_t)
        return ((v * v).sum(1) - (path.dx_t * v).sum(1)).mean()

    monkeypatch.setattr(cls, "loss", broken)
    bad = rg.run_quality(registry, "fast", figures=fig)
    (check,) = rg.compare(base, {}, bad, selected=fig)
    assert check.status == "outside band", check
    assert abs(check.now - check.baseline) > check.limit
