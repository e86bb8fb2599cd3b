"""The training loop every method goes through: budgets (steps, seconds), per-step and
per-epoch costs, periodic validation with early stopping that keeps the best state.

The harness owns the loop so that every method is trained, timed and validated by the same
code (`bench.harness.training.optim.Trainer` does the optimisation).

The time budget is checked between steps; a step that does not return (a plug-in that
hangs) is stopped by a watchdog (`bench.harness.training.signals.step_watchdog`): with
``--max-seconds`` a SIGALRM timer in the main thread raises `StepTimeout` inside the step
once it overruns the budget by a grace margin, so the run ends FAILED with that reason and
keeps its last periodic checkpoint. The limit of a step is the budget left plus
``max(STEP_GRACE_S, max_seconds)``. It cannot stop a step blocked inside native code that
never returns to Python (a deadlocked kernel), nor a
plug-in that swallows every exception.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from bench.api import Budget, LossExploded, Method, Splits
from bench.harness.scoring.cost import peak_memory_bytes, reset_peak_memory, synchronize
from bench.harness.training.batches import BatchOrder, batches
from bench.harness.training.checkpoint import snapshot
from bench.harness.training.distributed import (
    CONTINUE,
    EARLY_STOP,
    EXPLODED,
    SAVE,
    STOP,
    World,
    batch_sizes,
    current,
)
from bench.harness.training.loopstate import Checkpoints, LoopState, validate
from bench.harness.training.optim import Trainer
from bench.harness.training.signals import (
    STEP_GRACE_S,
    RunInterrupted,
    StepTimeout,
    deferred,
    step_watchdog,
)

__all__ = ["LoopResult", "train", "validate", "batches", "BatchOrder", "Checkpoints",
           "StepTimeout", "step_watchdog", "STEP_GRACE_S"]

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
        best_state: `bench.harness.training.checkpoint.snapshot` of the kept state (restore it with
            `bench.harness.training.checkpoint.restore`).
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


def train(method: Method, trainer: Trainer, splits: Splits, budget: Budget,
          device: str = "cpu", log_metrics: MetricsFn = lambda m, step=None: None, *,
          set_tags: Callable[[dict[str, str]], None] | None = None,
          progress: Progress | None = None,
          generator: torch.Generator | None = None,
          checkpoints: Checkpoints | None = None,
          resume: dict[str, Any] | None = None) -> LoopResult:
    """Train until the step or time budget is spent or validation stops improving.

    Per step it logs the trainer's metrics (``loss``, ``lr``, ``nfe_forward``,
    ``nfe_backward``, ...) with ``step_seconds`` (device-synchronised) and ``peak_mem_mb``;
    per epoch ``epoch_seconds``, ``epoch_mean_nfe_forward``, ``epoch_mean_nfe_backward``;
    per validation ``val_nll``, ``val_nll_nfe``, ``val_seconds``, ``train_seconds_at_eval``
    (EMA weights, ``method.validation_likelihood``). A non-trainable method gets one
    validation and no step.

    Args:
        checkpoints: when and how to write the resumable checkpoint (None: never): at the
            start, per its policy, at the end of training, and on a stop signal
            (`bench.harness.training.signals.RunInterrupted`, re-raised after the write).
        resume: a "resume" checkpoint whose trainer state is already restored
            (`bench.harness.training.checkpoint.restore_training`): the loop continues from its
            "loop" state (step, early stopping, timers, batch order) and "best" state.

    Raises:
        LossExploded: a step's loss is non-finite or explodes (`Budget.explosion_factor`).
    """
    st = LoopState(method, trainer, splits, budget, device, log_metrics, set_tags, checkpoints)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    if resume is not None:
        st.load_state_dict(resume["loop"], resume.get("best"))
        log.info("resuming at step %d", st.step)
        if progress is not None and st.step:
            progress.update(st.step)
    try:
        if not st.done:
            if trainer.trainable:
                if resume is None:
                    st.save()  # the initial state: a run diverging early keeps a checkpoint
                _steps(st, splits.train, gen, progress)
            if st.last_eval_step != st.step and current().is_main:  # data parallel: rank 0
                st.evaluate(st.step)
            if st.best_state is None:  # no finite validation NLL: keep the last state
                st.best_state, st.best_step = snapshot(method, trainer), st.step
            st.done = True
            if trainer.trainable:
                st.save()
    except RunInterrupted:
        # data parallel: writing is a collective the other ranks may not reach now; the
        # last periodic checkpoint stands
        if trainer.trainable and not st.done and not current().enabled:
            st.save()
        raise
    return LoopResult(st.step, st.best_step, st.best_val, st.best_state, st.train_seconds,
                      st.val_seconds, st.last_val)


def _steps(st: LoopState, train: torch.Tensor, gen: torch.Generator,
           progress: Progress | None) -> None:
    budget, world = st.budget, current()
    bs, _ = batch_sizes(st.method.batch_size(), train.shape[0], world.size)
    st.order = BatchOrder(train.shape[0], bs, gen, world.rank, world.size)
    if st.data_state is not None:
        st.order.load_state_dict(st.data_state)
    if st.eval_pending and not world.enabled:  # stopped inside this step's validation
        if st.evaluate(st.step):
            return
        st.maybe_save(True)
    for epoch, idx, end_epoch in st.order:
        if budget.steps is not None and st.step >= budget.steps:
            break
        if (not world.enabled and budget.max_seconds is not None
                and st.train_seconds >= budget.max_seconds):  # data parallel: see _decide
            break
        with deferred():  # a stop signal waits for the step and its records
            loss = _one_step(st, train, idx, end_epoch, epoch, world)
        step = st.step
        if world.enabled:  # rank 0 decides (and whether to checkpoint: all ranks write)
            stop = _decide(world, st, step, loss) == EARLY_STOP
        else:  # _one_step set eval_pending: a stop before the validation resumes with it
            evaluated = st.eval_pending
            stop = st.eval_pending and st.evaluate(step)
            st.maybe_save(evaluated)
        if progress is not None:
            progress.update(1, loss=loss, val_nll=st.last_val)
        if stop:
            log.info("early stop at step %d (best step %d)", step, st.best_step)
            break
        if world.enabled and st.stop_code == STOP:  # rank 0's time budget is spent
            break


def _one_step(st: LoopState, train: torch.Tensor, idx: torch.Tensor, end_epoch: bool,
              epoch: int, world: World) -> float:
    """One training step with its timing, divergence check and metrics; returns the loss."""
    device = st.device
    batch = train[idx].to(device)
    reset_peak_memory(device)
    synchronize(device)
    t0 = time.perf_counter()
    with step_watchdog(st.step + 1, (st.budget.max_seconds or 0.0) - st.train_seconds,
                       st.budget.max_seconds):
        out = st.trainer.step(batch, st.step)
        synchronize(device)
    dt = time.perf_counter() - t0
    loss = float(out["loss"])
    if not world.enabled:
        reason = st.explosion(st.step + 1, loss)
        if reason:
            raise LossExploded(reason)
    st.train_seconds += dt
    st.step += 1
    step = st.step
    st.epoch_t, st.epoch_steps = st.epoch_t + dt, st.epoch_steps + 1
    for key in st.epoch_nfe:
        st.epoch_nfe[key] += float(out.get(key, 0.0))
    metrics = {k: float(v) for k, v in out.items()}
    metrics["step_seconds"] = dt
    metrics["peak_mem_mb"] = peak_memory_bytes(device) / 2**20
    st.log_metrics(metrics, step)
    if not world.enabled:
        st.eval_pending = st.due(step)
    if end_epoch:
        st.log_metrics({"epoch_seconds": st.epoch_t, "epoch": float(epoch),
                        **{f"epoch_mean_{k}": v / st.epoch_steps
                           for k, v in st.epoch_nfe.items()}}, step)
        st.epoch_t, st.epoch_steps = 0.0, 0
        st.epoch_nfe = dict.fromkeys(st.epoch_nfe, 0.0)
    return loss


def _decide(world: World, st: LoopState, step: int, loss: float) -> int:
    """Data parallel: rank 0 decides for every rank after each step (divergence, validation
    and early stop, time budget, checkpoint); the others wait in the broadcast while rank 0
    validates. A checkpoint due (`SAVE`) is written by every rank together after it."""
    reason: list[str | None] = [None]

    def decision() -> int:
        reason[0] = st.explosion(step, loss)
        if reason[0]:
            return EXPLODED
        evaluated = st.due(step)
        if evaluated and st.evaluate(step):
            return EARLY_STOP  # the end of training writes the checkpoint
        max_s = st.budget.max_seconds
        if max_s is not None and st.train_seconds >= max_s:
            return STOP
        return SAVE if st.save_due(evaluated) else CONTINUE

    code = world.decide(decision)
    st.stop_code = code & ~SAVE
    if code & SAVE:
        st.save()
    if st.stop_code == EXPLODED:
        raise LossExploded(reason[0] or f"training diverged at step {step}: loss = {loss}"
                               f" (rank {world.rank}; decided on rank 0)")
    return st.stop_code
