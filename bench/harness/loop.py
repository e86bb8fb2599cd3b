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
from bench.harness.signals import RunInterrupted, deferred
from bench.science.metrics import summarize

__all__ = ["LoopResult", "train", "validate", "batches", "BatchOrder", "Checkpoints"]

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


class BatchOrder:
    """Epochs of shuffled index batches, resumable: iterating yields (epoch, index tensor,
    end_of_epoch) forever; `state_dict` is the generator's state at the start of the
    current epoch with the epoch and the number of its batches already taken, so that
    `load_state_dict` continues with exactly the batches an uninterrupted run would take.

    Data parallel (``world`` > 1 ranks): every rank draws the same permutation from the same
    generator, pads it to a multiple of ``world`` with its first indices (as torch's
    DistributedSampler) and takes the ``rank``-th of ``world`` equal, disjoint, contiguous
    shares of each global batch of ``batch * world`` indices; an epoch is one pass over the
    global data. With ``world`` = 1 the batches are ``perm[s:s + batch]``.
    """

    def __init__(self, n: int, batch: int, gen: torch.Generator, rank: int = 0,
                 world: int = 1) -> None:
        self.n, self.batch, self.gen, self.rank, self.world = n, batch, gen, rank, world
        self.epoch, self.pos = 0, 0
        self.epoch_state = gen.get_state()

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.epoch_state.clone(), "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.epoch_state = state["gen"].clone()
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])

    def __iter__(self) -> Iterator[tuple[int, Any, bool]]:
        size, world, n = self.batch * self.world, self.world, self.n
        while True:
            self.epoch_state = self.gen.get_state()
            perm = torch.randperm(n, generator=self.gen)
            if n % world:
                perm = torch.cat([perm, perm[torch.arange(world - n % world) % n]])
            starts = list(range(0, perm.numel(), size))
            while self.pos < len(starts):
                i = self.pos
                share = perm[starts[i]:starts[i] + size]
                per_rank = share.numel() // world
                self.pos += 1
                yield (self.epoch, share[self.rank * per_rank:(self.rank + 1) * per_rank],
                       i == len(starts) - 1)
            self.epoch, self.pos = self.epoch + 1, 0


def batches(n: int, batch: int, gen: torch.Generator, rank: int = 0,
            world: int = 1) -> Iterator[tuple[int, Any, bool]]:
    """`BatchOrder`'s batches from a fresh start: yields (epoch, indices, end_of_epoch)."""
    return iter(BatchOrder(n, batch, gen, rank, world))


@dataclass
class Checkpoints:
    """When the loop writes the resumable checkpoint, and how.

    Attributes:
        save: ``save(step, loop_state, best_state)`` writes it (`bench.harness.run`).
        every_steps: every N steps (None: after every validation).
        minutes: and when M minutes of wall-clock passed since the last one (0: off).
    """

    save: Callable[[int, dict[str, Any], dict[str, Any] | None], None]
    every_steps: int | None = None
    minutes: float = 10.0


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
    """Bookkeeping of validations, early stopping, divergence and checkpoints."""

    def __init__(self, method, trainer, splits, budget, device, log_metrics, set_tags,
                 checkpoints: Checkpoints | None = None):
        self.method, self.trainer, self.budget, self.device = method, trainer, budget, device
        self.log_metrics, self.set_tags = log_metrics, set_tags
        self.checkpoints = checkpoints
        val, self.dequantization = splits.val, splits.dequantization
        self.val = val if budget.val_rows is None else val[:budget.val_rows]
        self.best_val, self.best_state, self.best_step = math.inf, None, -1
        self.bad_evals, self.train_seconds, self.val_seconds = 0, 0.0, 0.0
        self.last_val = math.nan
        self.eval_times = sorted(budget.eval_at_seconds)
        self.tagged = False
        self.last_eval_step = -1
        self.eval_pending = False  # a validation is due at the current step
        self.step, self.done = 0, False
        self.epoch_t, self.epoch_steps = 0.0, 0
        self.epoch_nfe = {"nfe_forward": 0.0, "nfe_backward": 0.0}
        self.div_ref = 1.0  # max(1, |loss| of the first budget.divergence_steps steps)
        self.order: BatchOrder | None = None
        self.data_state: dict[str, Any] | None = None  # the batch order to resume
        self.saved_at = time.monotonic()
        self.stop_code = 0  # data parallel: rank 0's last decision (`_decide`)

    # -- resumable state ------------------------------------------------------------------
    _SCALARS = ("step", "done", "best_val", "best_step", "bad_evals", "last_eval_step",
                "eval_pending", "train_seconds", "val_seconds", "last_val", "tagged",
                "epoch_t", "epoch_steps", "div_ref")

    def state_dict(self) -> dict[str, Any]:
        """The loop's state (plain values and the batch order's generator state)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in self._SCALARS}
        out["eval_times"] = list(self.eval_times)
        out["epoch_nfe"] = dict(self.epoch_nfe)
        out["data"] = self.order.state_dict() if self.order is not None else self.data_state
        return out

    def load_state_dict(self, state: dict[str, Any], best: dict[str, Any] | None) -> None:
        for k in self._SCALARS:
            setattr(self, k, type(getattr(self, k))(state[k]))
        self.eval_times = [float(t) for t in state["eval_times"]]
        self.epoch_nfe = {k: float(v) for k, v in state["epoch_nfe"].items()}
        self.data_state = state.get("data")
        self.best_state = best

    def save(self) -> None:
        """Write the resumable checkpoint now (when the loop has a `Checkpoints`)."""
        if self.checkpoints is None:
            return
        with deferred():
            self.checkpoints.save(self.step, self.state_dict(), self.best_state)
        self.saved_at = time.monotonic()

    def maybe_save(self, evaluated: bool) -> None:
        c = self.checkpoints
        if c is None:
            return
        if ((c.every_steps is None and evaluated)
                or (c.every_steps is not None and self.step % c.every_steps == 0)
                or (c.minutes > 0 and time.monotonic() - self.saved_at >= 60 * c.minutes)):
            self.save()

    # -- divergence -----------------------------------------------------------------------
    def divergence(self, step: int, loss: float) -> str | None:
        """Why the loss of ``step`` (1-based) means the run diverged, or None: a non-finite
        loss, or after the first ``divergence_steps`` steps a |loss| above
        ``divergence_factor`` x max(1, the largest |loss| of those steps)."""
        if not math.isfinite(loss):
            return f"training diverged at step {step}: loss = {loss}"
        b = self.budget
        if step <= b.divergence_steps:
            self.div_ref = max(self.div_ref, abs(loss))
        elif b.divergence_factor > 0 and abs(loss) > b.divergence_factor * self.div_ref:
            return (f"training diverged at step {step}: |loss| = {abs(loss):.3g} > "
                    f"{b.divergence_factor:g} x {self.div_ref:.3g} (max(1, largest |loss| "
                    f"of the first {b.divergence_steps} step(s)); --divergence-factor)")
        return None

    # -- validation -----------------------------------------------------------------------
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
        """Validation NLL at ``step``; keeps the best state. Returns True to stop early.

        A stop that interrupts the validation leaves ``eval_pending`` set, so a resumed run
        validates this step again."""
        self.eval_pending = True
        if self.method.likelihood == "none":
            with deferred():
                self.best_state, self.best_step = snapshot(self.method, self.trainer), step
                self.last_eval_step, self.eval_pending = step, False
            return False
        s, dt = validate(self.method, self.trainer, self.val, self.device,
                         self.dequantization)
        with deferred():
            self.val_seconds += dt
            self.last_val = s.mean
            self.log_metrics({"val_nll": s.mean, "val_nll_nfe": float(s.nfe),
                              "val_seconds": dt,
                              "train_seconds_at_eval": self.train_seconds}, step)
            if not self.tagged and self.set_tags is not None:
                self.set_tags({"val_nll.kind": s.kind, "val_nll.estimator": s.estimator})
                self.tagged = True
            if not math.isfinite(s.mean):
                log.warning("non-finite validation NLL at step %d", step)
            if s.mean < self.best_val:
                best = snapshot(self.method, self.trainer)
                self.best_val, self.best_step, self.bad_evals = s.mean, step, 0
                self.best_state = best
            else:
                self.bad_evals += 1
            self.last_eval_step, self.eval_pending = step, False
        return self.bad_evals >= self.budget.patience


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
            (`bench.harness.signals.RunInterrupted`, re-raised after the write).
        resume: a "resume" checkpoint whose trainer state is already restored
            (`bench.harness.checkpoint.restore_training`): the loop continues from its
            "loop" state (step, early stopping, timers, batch order) and "best" state.

    Raises:
        TrainingDiverged: a step's loss is non-finite or explodes (`Budget.divergence_factor`).
    """
    st = _State(method, trainer, splits, budget, device, log_metrics, set_tags, checkpoints)
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
        if trainer.trainable and not st.done:
            st.save()
        raise
    return LoopResult(st.step, st.best_step, st.best_val, st.best_state, st.train_seconds,
                      st.val_seconds, st.last_val)


def _steps(st: _State, train: torch.Tensor, gen: torch.Generator,
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
        if world.enabled:
            stop = _decide(world, st, step, loss) == EARLY_STOP
            evaluated = st.last_eval_step == step
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


def _one_step(st: _State, train: torch.Tensor, idx: torch.Tensor, end_epoch: bool,
              epoch: int, world: World) -> float:
    """One training step with its timing, divergence check and metrics; returns the loss."""
    device = st.device
    batch = train[idx].to(device)
    reset_peak_memory(device)
    synchronize(device)
    t0 = time.perf_counter()
    out = st.trainer.step(batch, st.step)
    synchronize(device)
    dt = time.perf_counter() - t0
    loss = float(out["loss"])
    if not world.enabled:
        reason = st.divergence(st.step + 1, loss)
        if reason:
            raise TrainingDiverged(reason)
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


def _decide(world: World, st: _State, step: int, loss: float) -> int:
    """Data parallel: rank 0 decides for every rank after each step (divergence, validation
    and early stop, time budget); the others wait in the broadcast while rank 0 validates."""
    reason: list[str | None] = [None]

    def decision() -> int:
        reason[0] = st.divergence(step, loss)
        if reason[0]:
            return DIVERGED
        if st.due(step) and st.evaluate(step):
            return EARLY_STOP
        max_s = st.budget.max_seconds
        return STOP if max_s is not None and st.train_seconds >= max_s else CONTINUE

    st.stop_code = world.decide(decision)
    if st.stop_code == DIVERGED:
        raise TrainingDiverged(reason[0] or f"training diverged at step {step}: loss = {loss}"
                               f" (rank {world.rank}; decided on rank 0)")
    return st.stop_code
