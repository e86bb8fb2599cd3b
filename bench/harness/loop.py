"""The training loop every method goes through: budgets (steps, seconds), per-step and
per-epoch costs, periodic validation with early stopping that keeps the best state.

The harness owns the loop so that every method is trained, timed and validated by the same
code (`bench.harness.optim.Trainer` does the optimisation).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from bench.api import Budget, Method, Splits, TrainingDiverged
from bench.harness.checkpoint import snapshot
from bench.harness.cost import peak_memory_bytes, reset_peak_memory, synchronize
from bench.harness.distributed import (
    CONTINUE,
    DIVERGED,
    EARLY_STOP,
    STOP,
    World,
    batch_sizes,
    current,
)
from bench.harness.evaluate import data_log_likelihood
from bench.harness.optim import Trainer
from bench.science.metrics import summarize

__all__ = ["LoopResult", "train", "validate", "batches"]

log = logging.getLogger(__name__)

MetricsFn = Callable[[dict[str, float], "int | None"], None]


class Progress(Protocol):
    def update(self, n: int = 1, **postfix: Any) -> None: ...


@dataclass
class LoopResult:
    """What the loop did.

    Attributes:
        steps: training steps done. best_step: the step of the kept state.
        best_val: its validation NLL (inf when none was finite or there is no likelihood).
        best_state: `bench.harness.checkpoint.snapshot` of the kept state (restore it with
            `bench.harness.checkpoint.restore`).
        train_seconds: training time (device-synchronised, validation excluded).
        val_seconds: time spent in validation. last_val: the last validation NLL.
    """

    steps: int
    best_step: int
    best_val: float
    best_state: dict[str, Any]
    train_seconds: float
    val_seconds: float
    last_val: float


def batches(n: int, batch: int, gen: torch.Generator, rank: int = 0,
            world: int = 1) -> Iterator[tuple[int, Any, bool]]:
    """Epochs of shuffled index batches: yields (epoch, index tensor, end_of_epoch).

    Data parallel (``world`` > 1 ranks): every rank draws the same permutation from the same
    generator, pads it to a multiple of ``world`` with its first indices (as torch's
    DistributedSampler) and takes the ``rank``-th of ``world`` equal, disjoint, contiguous
    shares of each global batch of ``batch * world`` indices; an epoch is one pass over the
    global data. With ``world`` = 1 the batches are ``perm[s:s + batch]``.
    """
    epoch, size = 0, batch * world
    while True:
        perm = torch.randperm(n, generator=gen)
        if n % world:
            perm = torch.cat([perm, perm[torch.arange(world - n % world) % n]])
        starts = list(range(0, perm.numel(), size))
        for i, s in enumerate(starts):
            share = perm[s:s + size]
            per_rank = share.numel() // world
            yield epoch, share[rank * per_rank:(rank + 1) * per_rank], i == len(starts) - 1
        epoch += 1


def validate(method: Method, trainer: Trainer, x: torch.Tensor, device: str,
             dequantization: str = "none"):
    """`summarize` of the validation likelihood with the EMA weights, in eval mode:
    ``method.validation_likelihood(x)`` when the method overrides it (it then receives x as
    is: the grid for 8-bit data, like ``extra_likelihoods``), else the test NLL's
    `bench.harness.evaluate.data_log_likelihood` (dequantized on 8-bit data).

    Returns (summary, seconds).
    """
    for module in method.modules().values():
        module.eval()
    own = type(method).validation_likelihood is not Method.validation_likelihood
    synchronize(device)
    t0 = time.perf_counter()
    engine = getattr(getattr(method, "ctx", None), "engine", None)
    looser = engine.validating() if hasattr(engine, "validating") else contextlib.nullcontext()
    with trainer.averaged(), torch.no_grad(), looser:
        x = x.to(device)
        ll = (method.validation_likelihood(x) if own
              else data_log_likelihood(method, x, dequantization))
        s = summarize(ll)
    synchronize(device)
    return s, time.perf_counter() - t0


class _State:
    """Bookkeeping of validations and early stopping."""

    def __init__(self, method, trainer, splits, budget, device, log_metrics, set_tags):
        self.method, self.trainer, self.budget, self.device = method, trainer, budget, device
        self.log_metrics, self.set_tags = log_metrics, set_tags
        val, self.dequantization = splits.val, splits.dequantization
        self.val = val if budget.val_rows is None else val[:budget.val_rows]
        self.best_val, self.best_state, self.best_step = math.inf, None, -1
        self.bad_evals, self.train_seconds, self.val_seconds = 0, 0.0, 0.0
        self.last_val = math.nan
        self.eval_times = sorted(budget.eval_at_seconds)
        self.tagged = False
        self.last_eval_step = -1
        self.stop_code = 0  # data parallel: rank 0's last decision (`_decide`)

    def due(self, step: int) -> bool:
        """Every ``eval_every`` steps, or once each of ``eval_at_seconds`` is passed."""
        if not self.budget.eval_at_seconds:
            return step % self.budget.eval_every == 0
        due = False
        while self.eval_times and self.train_seconds >= self.eval_times[0]:
            self.eval_times.pop(0)
            due = True
        return due

    def evaluate(self, step: int) -> bool:
        """Validation NLL at ``step``; keeps the best state. Returns True to stop early."""
        self.last_eval_step = step
        if self.method.likelihood == "none":
            self.best_state, self.best_step = snapshot(self.method, self.trainer), step
            return False
        s, dt = validate(self.method, self.trainer, self.val, self.device,
                         self.dequantization)
        self.val_seconds += dt
        self.last_val = s.mean
        self.log_metrics({"val_nll": s.mean, "val_nll_nfe": float(s.nfe), "val_seconds": dt,
                          "train_seconds_at_eval": self.train_seconds}, step)
        if not self.tagged and self.set_tags is not None:
            self.set_tags({"val_nll.kind": s.kind, "val_nll.estimator": s.estimator})
            self.tagged = True
        if not math.isfinite(s.mean):
            log.warning("non-finite validation NLL at step %d", step)
        if s.mean < self.best_val:
            self.best_val, self.best_step, self.bad_evals = s.mean, step, 0
            self.best_state = snapshot(self.method, self.trainer)
        else:
            self.bad_evals += 1
        return self.bad_evals >= self.budget.patience


def train(method: Method, trainer: Trainer, splits: Splits, budget: Budget,
          device: str = "cpu", log_metrics: MetricsFn = lambda m, step=None: None, *,
          set_tags: Callable[[dict[str, str]], None] | None = None,
          progress: Progress | None = None,
          generator: torch.Generator | None = None) -> LoopResult:
    """Train until the step or time budget is spent or validation stops improving.

    Per step it logs the trainer's metrics (``loss``, ``lr``, ``nfe_forward``,
    ``nfe_backward``, ...) with ``step_seconds`` (device-synchronised) and ``peak_mem_mb``;
    per epoch ``epoch_seconds``, ``epoch_mean_nfe_forward``, ``epoch_mean_nfe_backward``;
    per validation ``val_nll``, ``val_nll_nfe``, ``val_seconds``, ``train_seconds_at_eval``
    (EMA weights, ``method.validation_likelihood``). A non-trainable method gets one
    validation and no step.

    Raises:
        TrainingDiverged: the reported loss of a step is non-finite.
    """
    st = _State(method, trainer, splits, budget, device, log_metrics, set_tags)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    step = 0
    if trainer.trainable:
        step = _steps(st, splits.train, gen, progress)
    if st.last_eval_step != step and current().is_main:  # data parallel: rank 0 validates
        st.evaluate(step)
    if st.best_state is None:  # no finite validation NLL: keep the last state
        st.best_state, st.best_step = snapshot(method, trainer), step
    return LoopResult(step, st.best_step, st.best_val, st.best_state, st.train_seconds,
                      st.val_seconds, st.last_val)


def _steps(st: _State, train: torch.Tensor, gen: torch.Generator,
           progress: Progress | None) -> int:
    budget, device, trainer, world = st.budget, st.device, st.trainer, current()
    bs, _ = batch_sizes(st.method.batch_size(), train.shape[0], world.size)
    step, epoch_t, epoch_steps = 0, 0.0, 0
    epoch_nfe = {"nfe_forward": 0.0, "nfe_backward": 0.0}
    for epoch, idx, end_epoch in batches(train.shape[0], bs, gen, world.rank, world.size):
        if budget.steps is not None and step >= budget.steps:
            break
        if (not world.enabled and budget.max_seconds is not None
                and st.train_seconds >= budget.max_seconds):  # data parallel: see _decide
            break
        batch = train[idx].to(device)
        reset_peak_memory(device)
        synchronize(device)
        t0 = time.perf_counter()
        out = trainer.step(batch, step)
        synchronize(device)
        dt = time.perf_counter() - t0
        st.train_seconds += dt
        step += 1
        loss = float(out["loss"])
        if not math.isfinite(loss) and not world.enabled:
            raise TrainingDiverged(f"training diverged at step {step}: loss = {loss}")
        epoch_t, epoch_steps = epoch_t + dt, epoch_steps + 1
        for key in epoch_nfe:
            epoch_nfe[key] += float(out.get(key, 0.0))
        metrics = {k: float(v) for k, v in out.items()}
        metrics["step_seconds"] = dt
        metrics["peak_mem_mb"] = peak_memory_bytes(device) / 2**20
        st.log_metrics(metrics, step)
        if end_epoch:
            st.log_metrics({"epoch_seconds": epoch_t, "epoch": float(epoch),
                            **{f"epoch_mean_{k}": v / epoch_steps
                               for k, v in epoch_nfe.items()}}, step)
            epoch_t, epoch_steps = 0.0, 0
            epoch_nfe = dict.fromkeys(epoch_nfe, 0.0)
        stop = (_decide(world, st, step, loss) == EARLY_STOP if world.enabled
                else st.due(step) and st.evaluate(step))
        if progress is not None:
            progress.update(1, loss=loss, val_nll=st.last_val)
        if stop:
            log.info("early stop at step %d (best step %d)", step, st.best_step)
            break
        if world.enabled and st.stop_code == STOP:  # rank 0's time budget is spent
            break
    return step


def _decide(world: World, st: _State, step: int, loss: float) -> int:
    """Data parallel: rank 0 decides for every rank after each step (divergence, validation
    and early stop, time budget); the others wait in the broadcast while rank 0 validates."""

    def decision() -> int:
        if not math.isfinite(loss):
            return DIVERGED
        if st.due(step) and st.evaluate(step):
            return EARLY_STOP
        max_s = st.budget.max_seconds
        return STOP if max_s is not None and st.train_seconds >= max_s else CONTINUE

    st.stop_code = world.decide(decision)
    if st.stop_code == DIVERGED:
        raise TrainingDiverged(f"training diverged at step {step}: loss = {loss} (rank "
                               f"{world.rank}; decided on rank 0)")
    return st.stop_code
