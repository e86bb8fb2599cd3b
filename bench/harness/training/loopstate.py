"""The training loop's bookkeeping (`LoopState`): validation with the EMA weights
(`validate`), early stopping that keeps the best state, the divergence bound, and the
checkpoint policy (`Checkpoints`), with the state a resumed run continues from."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.api import Method
from bench.harness.scoring.cost import synchronize
from bench.harness.scoring.likelihood import data_log_likelihood
from bench.harness.training.batches import BatchOrder
from bench.harness.training.checkpoint import snapshot
from bench.harness.training.optim import Trainer
from bench.harness.training.signals import deferred
from bench.science.metrics import summarize

__all__ = ["Checkpoints", "LoopState", "validate"]

log = logging.getLogger(__name__)


@dataclass
class Checkpoints:
    """When the loop writes the resumable checkpoint, and how.

    Attributes:
        save: ``save(step, loop_state, best_state)`` writes it (`bench.harness.running.run`).
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
    `bench.harness.scoring.likelihood.data_log_likelihood` (dequantized on 8-bit data).

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


class LoopState:
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
        self.div_ref = 1.0  # max(1, |loss| of the first budget.explosion_steps steps)
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

    def save_due(self, evaluated: bool) -> bool:
        """Whether the checkpoint policy asks for a write after this step."""
        c = self.checkpoints
        return c is not None and (
            (c.every_steps is None and evaluated)
            or (c.every_steps is not None and self.step % c.every_steps == 0)
            or (c.minutes > 0 and time.monotonic() - self.saved_at >= 60 * c.minutes))

    def maybe_save(self, evaluated: bool) -> None:
        if self.save_due(evaluated):
            self.save()

    # -- divergence -----------------------------------------------------------------------
    def explosion(self, step: int, loss: float) -> str | None:
        """Why the loss of ``step`` (1-based) means the run exploded, or None: a non-finite
        loss, or after the first ``explosion_steps`` steps a |loss| above
        ``explosion_factor`` x max(1, the largest |loss| of those steps)."""
        if not math.isfinite(loss):
            return f"training diverged at step {step}: loss = {loss}"
        b = self.budget
        if step <= b.explosion_steps:
            self.div_ref = max(self.div_ref, abs(loss))
        elif b.explosion_factor > 0 and abs(loss) > b.explosion_factor * self.div_ref:
            return (f"training diverged at step {step}: |loss| = {abs(loss):.3g} > "
                    f"{b.explosion_factor:g} x {self.div_ref:.3g} (max(1, largest |loss| "
                    f"of the first {b.explosion_steps} step(s)); --explosion-factor)")
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
