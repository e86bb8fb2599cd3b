"""Performance and quality regression checks (`bench regress`): measure, compare with the
committed baseline, rebaseline.

Timing figures come from the pytest-benchmark suite ``benchmarks/test_regress_bench.py``
(run in a subprocess; each figure is a ratio to a bare reference timed in the same run,
interleaved round by round, so machines of different speed give comparable numbers). Each
case gives two figures: ``<case>`` (CPU time, median over rounds: computation only) and
``<case>_wall`` (wall clock less the time spent waiting for a core, lower quartile over
rounds: computation AND waiting, i.e. a sleep, I/O, a lock, a GPU synchronisation, a
synchronous tracking call). Quality figures are the test NLLs of short fixed-seed trainings
run here through `run_job`.

The rules of pass and fail, the baseline file and the comparison: `bench.harness.running.baseline`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.api import ConfigError, DataError
from bench.harness.running.baseline import (
    FACTOR_FLOOR,
    TIMING_THRESHOLD,
    WALL,
    Check,
    compare,
    load_baseline,
    make_baseline,
    save_baseline,
    timing_factor,
)

# the baseline's names are re-exported: `bench regress` reads one module
__all__ = ["Check", "DEFAULT_RUNS", "FACTOR_FLOOR", "QUALITY", "TIMING_THRESHOLD", "busy_loop",
           "compare", "load_baseline", "machine_info", "run_default", "make_baseline",
           "run_quality", "run_suite", "save_baseline", "SUITE", "timing_factor", "WALL"]

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[3]
SUITE = PROJECT_ROOT / "benchmarks" / "test_regress_bench.py"
MODES = ("fast", "full")
TOY = "8gaussians[n_train=4096,n_val=256,n_test=1024]"
#: quality figures: (method selection, dataset selection, steps per mode, needs real data)
QUALITY: dict[str, tuple[str, str, dict[str, int], str | None]] = {
    "nll_interflow_8gaussians": (
        "interflow[hidden=(64,64),batch_size=256]", TOY, {"fast": 300, "full": 3000}, None),
    "nll_ddpm_8gaussians": (
        "ddpm[T=100,hidden=(64,64),time_embed_dim=16,batch_size=256]", TOY,
        {"fast": 300, "full": 3000}, None),
    "nll_gaussian_mle_miniboone": ("gaussian_mle", "miniboone", {"fast": 1, "full": 1},
                                   "miniboone"),
}

#: the default user commands (full mode), run whole as a user would run them: figure stem ->
#: (`bench run` arguments, real data needed). Quality figure ``nll_<stem>`` (test NLL, band
#: from its standard error); info figures ``<stem>_seconds_{total,train,val,test}``.
DEFAULT_RUNS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "default_interflow_miniboone": (("--method", "interflow", "--dataset", "miniboone"),
                                    "miniboone"),
}
DEFAULT_MODES = ("full",)


# -- measuring ----------------------------------------------------------------------------
def machine_info(device: str = "cpu") -> dict[str, Any]:
    """Where a measurement was taken (recorded beside a baseline; ratios do not depend on
    it much, but a reader should know)."""
    import torch

    info = {"node": platform.node(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
            "python": platform.python_version(), "torch": torch.__version__, "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_suite(mode: str = "fast", figures: tuple[str, ...] = (), device: str = "cpu",
              env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the timing suite once in a subprocess; figure -> {ratio, target_median,
    reference_median, rounds}.

    Args:
        mode: "fast" | "full" (the suite's ``BENCH_REGRESS_MODE``).
        figures: only these figures (pytest ``-k``); empty: all.
        env: extra environment of the subprocess (e.g. ``PYTEST_ADDOPTS``).
    Raises:
        ConfigError: bad mode, or no suite (an installed wheel has no ``benchmarks/``).
        DataError: the suite failed (its output's tail in the message).
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    if not SUITE.is_file():
        raise ConfigError(f"the timing suite {SUITE} is missing: bench regress runs in a "
                          "source checkout")
    with tempfile.TemporaryDirectory(prefix="bench-regress-") as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "pytest", str(SUITE), "-p", "no:xdist",
               "-p", "no:cacheprovider", "--benchmark-only", f"--benchmark-json={out}", "-q",
               "--rootdir", str(PROJECT_ROOT)]
        if figures:  # a wall figure is measured with its CPU figure, in one test
            cmd += ["-k", " or ".join(sorted({f.removesuffix(WALL) for f in figures}))]
        full_env = {**os.environ, "BENCH_REGRESS_MODE": mode, "BENCH_DEVICE": device,
                    **(env or {})}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=full_env, capture_output=True,
                              text=True)
        log.info("timing suite (%s): %.1f s", mode, time.perf_counter() - t0)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise DataError("the timing suite failed:\n" + "\n".join(tail))
        data = json.loads(out.read_text())
    result = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        result[info["figure"]] = {
            "ratio": float(info["ratio"]), "target_median": bench["stats"]["median"],
            "reference_median": info["reference_median"], "rounds": bench["stats"]["rounds"]}
        result[info["figure"] + WALL] = {
            "ratio": float(info["wall_ratio"]), "target_low": _low(info["target_wall"]),
            "reference_low": _low(info["reference_wall"]), "rounds": bench["stats"]["rounds"]}
    return result


def _low(times: list[float]) -> float:
    """The lower quartile of a wall figure's rounds (as the suite computes it)."""
    return sorted(times)[len(times) // 4]


def run_quality(registry, mode: str = "fast", seeds: tuple[int, ...] = (0,),
                figures: tuple[str, ...] = (), data_dir: Path | None = None,
                device: str = "cpu") -> dict[str, dict[str, Any]]:
    """Train and test the quality cases; figure -> {value (test NLL of the first seed), se,
    values (one per seed)}. A case whose real data is absent is skipped with a log line."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same summation order on any CPU
    try:
        return _run_quality(registry, mode, seeds, figures, data_dir, device)
    finally:
        torch.set_num_threads(threads)


def _run_quality(registry, mode: str, seeds: tuple[int, ...], figures: tuple[str, ...],
                 data_dir: Path | None, device: str) -> dict[str, dict[str, Any]]:
    from bench.harness.planning.plan import plan_jobs
    from bench.harness.running.run import run_job
    from bench.harness.training.distributed import NullSink

    data_root = data_dir or (Path(os.environ["BENCH_DATA_DIR"])
                             if os.environ.get("BENCH_DATA_DIR") else None)
    out = {}
    for name, (method, dataset, steps, needs) in QUALITY.items():
        if figures and name not in figures:
            continue
        if needs and not (data_root and (data_root / needs).is_dir()):
            log.warning("quality %s skipped: no %s/ under the data root", name, needs)
            continue
        jobs = plan_jobs(registry, [method], [dataset], list(seeds), steps=steps[mode],
                         eval_every=steps[mode], device=device, data_dir=data_root,
                         n_samples=0)
        values, se = [], float("nan")
        for job in jobs:
            record = run_job(job, NullSink())
            if record.status != "FINISHED" or "test_nll" not in record.metrics:
                raise DataError(f"quality run {name} seed {job.seed} ended {record.status}")
            values.append(float(record.metrics["test_nll"]))
            if job.seed == seeds[0]:
                se = float(record.metrics.get("test_nll_se", float("nan")))
        out[name] = {"value": values[0], "se": se, "values": values}
    return out


def run_default(mode: str = "full", figures: tuple[str, ...] = (),
                data_dir: Path | None = None, device: str = "cpu"
                ) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Run each of `DEFAULT_RUNS` as a user would (``python -m bench run ... --json`` in a
    subprocess, a throwaway store, the machine's threads) in the modes of `DEFAULT_MODES`.

    Returns:
        (quality, info): ``nll_<stem>`` -> {value, se, values} like `run_quality`, and the
        info figures ``<stem>_seconds_total`` (wall-clock of the whole command),
        ``_train``, ``_val``, ``_test`` (the run's own metrics).
    """
    quality: dict[str, dict[str, Any]] = {}
    info: dict[str, float] = {}
    if mode not in DEFAULT_MODES:
        return quality, info
    data_root = data_dir or (Path(os.environ["BENCH_DATA_DIR"])
                             if os.environ.get("BENCH_DATA_DIR") else None)
    for stem, (args, needs) in DEFAULT_RUNS.items():
        if figures and f"nll_{stem}" not in figures:
            continue
        if needs and not (data_root and (data_root / needs).is_dir()):
            log.warning("default run %s skipped: no %s/ under the data root", stem, needs)
            continue
        with tempfile.TemporaryDirectory(prefix="bench-regress-default-") as tmp:
            cmd = [sys.executable, "-m", "bench", "run", *args, "--device", device,
                   "--results-dir", tmp, "--json"]
            env = {**os.environ, **({"BENCH_DATA_DIR": str(data_root)} if data_root else {})}
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
            total = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-5:]
            raise DataError(f"default run {stem} failed:\n" + "\n".join(tail))
        (m,) = json.loads(proc.stdout)
        quality[f"nll_{stem}"] = {"value": m["test_nll"], "se": m["test_nll_se"],
                                  "values": [m["test_nll"]]}
        info.update({f"{stem}_seconds_total": total,
                     f"{stem}_seconds_train": m["train_seconds"],
                     f"{stem}_seconds_val": m["val_seconds"],
                     f"{stem}_seconds_test": m["eval_seconds"]})
        log.info("default run %s: %.1f s, test NLL %.3f", stem, total, m["test_nll"])
    return quality, info


@contextlib.contextmanager
def busy_loop(n: int = 1) -> Iterator[None]:
    """``n`` CPU-bound background processes (a pure-Python busy loop, OMP_NUM_THREADS=1)
    for the duration of the block: the background load a rebaseline's spread includes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], env=env)
             for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
