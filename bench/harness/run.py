"""One run: seed, device, budget, the training loop with per-step and per-epoch costs,
periodic validation with early stopping, the best checkpoint, and the final evaluation.

The harness owns the loop so that every method is timed and scored by the same code.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.api import Dataset, RunContext
from bench.harness.cost import peak_memory_bytes, reset_peak_memory, synchronize
from bench.science.ode import SolverConfig
from bench.api.errors import TrainingDiverged, ConfigError
from bench.science.metrics import NLLSummary, plot_samples_2d, summarize, true_nll
from bench.harness.registry import PROJECT_ROOT, Registry

__all__ = ["RunConfig", "RunResult", "run_one", "git_commit", "load_checkpoint"]

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """Harness settings of a run (the same for every method it compares)."""

    steps: int | None = 5000
    max_seconds: float | None = None
    eval_every: int = 250
    eval_at_seconds: tuple[float, ...] = ()
    patience: int = 8
    evaluate_test: bool = True
    val_rows: int | None = None
    n_samples: int = 20_000
    device: str = "cpu"
    solver: SolverConfig = field(default_factory=SolverConfig)
    data_dir: Path | None = None
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.steps is None and self.max_seconds is None:
            raise ConfigError("give a budget: --steps and/or --max-seconds")
        if self.steps is not None and self.steps < 1:
            raise ConfigError("--steps must be >= 1")
        if self.eval_every < 1:
            raise ConfigError("--eval-every must be >= 1")


@dataclass
class RunResult:
    run_id: str | None
    method: str
    dataset: str
    seed: int
    metrics: dict[str, float]
    status: str = "FINISHED"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, text=True,
                             capture_output=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=PROJECT_ROOT, text=True,
                               capture_output=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _flat(prefix: str, params: Any) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in dataclasses.asdict(params).items()}


def _batches(n: int, batch: int, gen: torch.Generator):
    """Epochs of shuffled index batches: yields (epoch, index tensor, end_of_epoch)."""
    epoch = 0
    while True:
        perm = torch.randperm(n, generator=gen)
        starts = list(range(0, n, batch))
        for i, s in enumerate(starts):
            yield epoch, perm[s:s + batch], i == len(starts) - 1
        epoch += 1


class _Loop:
    """Training state of one run (kept small: the loop itself is `train`)."""

    def __init__(self, method, splits, cfg: RunConfig, tracker, progress) -> None:
        self.method, self.splits, self.cfg = method, splits, cfg
        self.tracker, self.progress = tracker, progress
        self.best_val, self.best_state, self.best_step = math.inf, None, -1
        self.bad_evals, self.train_seconds, self.eval_seconds = 0, 0.0, 0.0
        self.last_val = math.nan
        self.eval_times = list(cfg.eval_at_seconds)
        self.val_tagged = False
        self.last_eval_step = -1

    def evaluate_val(self, step: int) -> bool:
        """Validation NLL; keeps the best state. Returns True to stop early."""
        m = self.method
        self.last_eval_step = step
        if m.likelihood == "none":
            self.best_state, self.best_step = copy.deepcopy(m.state_dict()), step
            return False
        val = self.splits.val if self.cfg.val_rows is None else self.splits.val[:self.cfg.val_rows]
        t0 = time.perf_counter()
        with torch.no_grad():
            s = summarize(m.validation_likelihood(val.to(self.cfg.device)))
        synchronize(self.cfg.device)
        dt = time.perf_counter() - t0
        self.eval_seconds += dt
        self.last_val = s.mean
        self.tracker.log_metrics({"val_nll": s.mean, "val_nfe": s.nfe, "val_seconds": dt,
                                  "train_seconds_at_eval": self.train_seconds}, step)
        if not math.isfinite(s.mean):
            log.warning("non-finite validation NLL at step %d", step)
        if not self.val_tagged:
            self.tracker.set_tags({"val_nll.kind": s.kind, "val_nll.estimator": s.estimator})
            self.val_tagged = True
        if s.mean < self.best_val:
            self.best_val, self.best_step, self.bad_evals = s.mean, step, 0
            self.best_state = copy.deepcopy(m.state_dict())
        else:
            self.bad_evals += 1
        return self.bad_evals >= self.cfg.patience

    def _due(self, step: int) -> bool:
        """Evaluate every `eval_every` steps, or once each of `eval_at_seconds` of training
        time is passed."""
        if not self.cfg.eval_at_seconds:
            return step % self.cfg.eval_every == 0
        due = False
        while self.eval_times and self.train_seconds >= self.eval_times[0]:
            self.eval_times.pop(0)
            due = True
        return due

    def train(self, gen: torch.Generator) -> int:
        cfg, m, train = self.cfg, self.method, self.splits.train
        bs = min(m.batch_size(), train.shape[0])
        step, epoch_t, epoch_steps, epoch_nfe = 0, 0.0, 0, 0.0
        for epoch, idx, end_epoch in _batches(train.shape[0], bs, gen):
            if cfg.steps is not None and step >= cfg.steps:
                break
            if cfg.max_seconds is not None and self.train_seconds >= cfg.max_seconds:
                break
            batch = train[idx].to(cfg.device)
            reset_peak_memory(cfg.device)
            synchronize(cfg.device)
            t0 = time.perf_counter()
            out = m.train_step(batch, step)
            synchronize(cfg.device)
            dt = time.perf_counter() - t0
            self.train_seconds += dt
            step += 1
            loss = float(out["loss"])
            if not math.isfinite(loss):
                raise TrainingDiverged(f"training diverged at step {step}: loss = {loss}")
            nfe = float(out.get("nfe_forward", 0)) + float(out.get("nfe_backward", 0))
            epoch_t, epoch_steps, epoch_nfe = epoch_t + dt, epoch_steps + 1, epoch_nfe + nfe
            metrics = {k: float(v) for k, v in out.items()}
            metrics["step_seconds"] = dt
            metrics["peak_mem_mb"] = peak_memory_bytes(cfg.device) / 2**20
            self.tracker.log_metrics(metrics, step)
            if end_epoch:
                self.tracker.log_metrics({"epoch_seconds": epoch_t,
                                          "epoch_mean_nfe": epoch_nfe / max(1, epoch_steps),
                                          "epoch": float(epoch)}, step)
                epoch_t, epoch_steps, epoch_nfe = 0.0, 0, 0.0
            stop = self._due(step) and self.evaluate_val(step)
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{loss:.3f}", val_nll=f"{self.last_val:.3f}",
                                      it_s=f"{step / max(self.train_seconds, 1e-9):.1f}")
            if stop:
                log.info("early stop at step %d (best step %d)", step, self.best_step)
                break
        if self.last_eval_step != step:
            self.evaluate_val(step)
        if self.best_state is None:  # no finite validation NLL: keep the last state
            self.best_state, self.best_step = copy.deepcopy(m.state_dict()), step
        return step


def _context(cfg: RunConfig, seed: int, registry: Registry, work: Path, tracker) -> RunContext:
    return RunContext(
        device=cfg.device, seed=seed, work_dir=work, solver=cfg.solver, max_steps=cfg.steps,
        log_metrics=tracker.log_metrics,
        load_dataset=lambda sel: registry.dataset(sel, data_dir=cfg.data_dir),
    )


def _final_eval(method, dataset: Dataset, splits, cfg: RunConfig, tracker) -> dict[str, float]:
    out: dict[str, float] = {}
    tags: dict[str, str] = {}
    test = splits.test.to(cfg.device)
    t0 = time.perf_counter()
    results: dict[str, NLLSummary] = {}
    if method.likelihood != "none":
        results["test_nll"] = summarize(method.log_prob(test))
        for key, ll in method.extra_likelihoods(test).items():
            results[f"test_nll_{key}"] = summarize(ll)
    synchronize(cfg.device)
    out["eval_seconds"] = time.perf_counter() - t0
    for name, s in results.items():
        out.update(s.metrics(name))
        tags[f"{name}.kind"] = s.kind
        tags[f"{name}.estimator"] = s.estimator
    if dataset.has_log_prob:
        t = true_nll(dataset, splits.test)
        out.update({"true_test_nll": t.mean, "true_test_nll_se": t.se})
        if "test_nll" in out:
            out["test_nll_gap"] = out["test_nll"] - t.mean
    tags["test_split"] = splits.split_names.get("test", "test")
    tracker.set_tags(tags)
    tracker.log_metrics(out, None)
    return out


def run_one(method_sel: str, dataset_sel: str, seed: int, cfg: RunConfig, registry: Registry,
            tracker, set_method: dict[str, str] | None = None,
            set_dataset: dict[str, str] | None = None) -> RunResult:
    """Train and evaluate one (method, dataset, seed); everything goes to `tracker`."""
    from tqdm.auto import tqdm

    m_cls, m_params = registry.resolve("method", method_sel, set_method)
    d_cls, d_params = registry.resolve("dataset", dataset_sel, set_dataset)
    dataset = d_cls(d_params, data_dir=cfg.data_dir)
    splits = dataset.splits()
    torch.manual_seed(seed)
    params = {"method": m_cls.name, "dataset": d_cls.name, "seed": seed,
              **_flat("p_method_", m_params), **_flat("p_dataset_", d_params),
              "steps": cfg.steps, "max_seconds": cfg.max_seconds, "eval_every": cfg.eval_every,
              "patience": cfg.patience, "device": cfg.device,
              **_flat("solver_", cfg.solver)}
    tags = {"git_commit": git_commit(), "device": cfg.device, "torch": torch.__version__,
            "host": f"{platform.node()} {platform.processor() or platform.machine()}",
            "threads": str(torch.get_num_threads()), "dataset_provenance": splits.provenance,
            "dequantization": splits.dequantization, "likelihood": m_cls.likelihood,
            **{f"split.{k}": v for k, v in splits.split_names.items()}}
    run_id = tracker.start(f"{m_cls.name}-{d_cls.name}-s{seed}", params, tags)
    status = "FAILED"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            method = m_cls(m_params, splits, _context(cfg, seed, registry, work, tracker))
            n_par = sum(p.numel() for mod in method.modules().values() for p in mod.parameters())
            tracker.set_tags({"likelihood": method.likelihood})
            tracker.log_metrics({"n_parameters": float(n_par)}, None)
            gen = torch.Generator().manual_seed(seed)
            with tqdm(total=cfg.steps, disable=cfg.quiet, desc=f"{m_cls.name}/{d_cls.name}",
                      leave=False) as bar:
                loop = _Loop(method, splits, cfg, tracker, bar)
                steps = loop.train(gen)
            method.load_state_dict(loop.best_state)
            metrics = {"train_seconds": loop.train_seconds, "steps_done": float(steps),
                       "best_step": float(loop.best_step),
                       "val_eval_seconds": loop.eval_seconds}
            if math.isfinite(loop.best_val):
                metrics["best_val_nll"] = loop.best_val
            tracker.log_metrics(metrics, None)
            if cfg.evaluate_test:
                metrics.update(_final_eval(method, dataset, splits, cfg, tracker))
            ckpt = work / "checkpoint.pt"
            torch.save({"method": m_cls.name, "params": dataclasses.asdict(m_params),
                        "dataset": d_cls.name, "step": loop.best_step,
                        "state": loop.best_state}, ckpt)
            tracker.log_artifact(ckpt)
            if splits.event_shape == (2,) and cfg.n_samples > 0:
                with torch.no_grad():
                    samples = method.sample(cfg.n_samples)
                png = plot_samples_2d(samples, splits.test, work / "samples.png",
                                      f"{m_cls.name} on {d_cls.name} (seed {seed})")
                tracker.log_artifact(png)
        status = "FINISHED"
        return RunResult(run_id, m_cls.name, d_cls.name, seed, metrics)
    finally:
        tracker.end(status)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `run_one` (tensors and plain values only)."""
    return torch.load(path, map_location="cpu", weights_only=True)
