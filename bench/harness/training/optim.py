"""Harness-owned optimisation: one `Trainer` builds, from the shared `bench.api.OptimConfig`,
the optimiser, learning-rate schedule, gradient clipping and EMA of every method's weights.

A method only defines ``modules()`` and ``loss(batch, step)``; the same code then trains
InterFlow, the CNF and DDPM, so "the same training for every method" is enforced, not a
convention.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from bench.api import ContractError, Execution, Method, OptimConfig

if TYPE_CHECKING:
    from bench.harness.training.gradsync import GradientSync

__all__ = ["Trainer", "lr_factor", "SCHEDULES"]

log = logging.getLogger(__name__)

SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(step: int, schedule: str, total_steps: int | None, warmup: int = 0) -> float:
    """Multiplier of the base learning rate at (0-based) optimiser step ``step``.

    Linear warm-up ``(step + 1) / warmup`` for the first ``warmup`` steps, then constant,
    cosine ``(1 + cos(pi f)) / 2`` or linear ``1 - f`` decay, with
    ``f = (step - warmup) / (total_steps - warmup)`` clipped to [0, 1]; constant when the
    budget has no step count.
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or not total_steps:
        return 1.0
    frac = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * frac))
    return 1.0 - frac


def _warmup_ema_avg_fn(decay: float):
    """EMA with DDPM's warm-up: decay min(decay, (1 + n) / (10 + n)) after n updates."""

    @torch.no_grad()
    def avg(ema: Tensor, current: Tensor, num_averaged: Tensor | int) -> Tensor:
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        return d * ema + (1 - d) * current

    return avg


def _split_loss(res: Tensor | tuple[Tensor, dict[str, float]]) -> tuple[Tensor, dict]:
    if isinstance(res, tuple):
        objective, metrics = res
        return objective, {k: float(v) for k, v in metrics.items()}
    return res, {}


class Trainer:
    """Optimises ``method.modules()`` with the shared optimisation settings.

    Args:
        method: a `bench.api.Method`; with ``trainable = False`` no optimiser is built and
            `step` only evaluates the loss.
        optim: optimiser ("adam" | "adamw"), lr, weight decay, schedule with warm-up,
            gradient clipping and EMA decay (`bench.api.OptimConfig`).
        total_steps: the step budget the schedule decays over (None: constant after
            warm-up).
        execution: bf16 autocast of the loss's forward passes (the backward follows it; the
            optimiser state and EMA stay fp32), channels-last, ``torch.compile``.
        grad_sync: data parallel: averages the gradients over the ranks of a torchrun launch
            (`bench.harness.training.gradsync.GradientSync`; None: a single process).

    The EMA is `torch.optim.swa_utils.AveragedModel` (buffers averaged too), started at
    the initial weights, so after k updates with weights w_1..w_k it holds
    ``d^k w_0 + sum_j (1 - d) d^(k - j) w_j``.
    """

    def __init__(self, method: Method, optim: OptimConfig,
                 total_steps: int | None = None, execution: Execution | None = None, *,
                 grad_sync: GradientSync | None = None) -> None:
        self.grad_sync = grad_sync
        self.method, self.optim, self.total_steps = method, optim, total_steps
        self.execution = execution if execution is not None else Execution()
        self.modules: dict[str, nn.Module] = dict(method.modules())
        self.trainable = bool(getattr(method, "trainable", True))
        self.params = [p for m in self.modules.values() for p in m.parameters()
                       if p.requires_grad]
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.ema: dict[str, AveragedModel] | None = None
        self._live: dict[str, dict[str, Tensor]] | None = None  # set while averaged()
        if not self.trainable:
            return
        if not self.params:
            raise ContractError(
                f"method {getattr(method, 'name', type(method).__name__)!r} has no trainable "
                "parameters in modules() (a closed-form fit sets trainable = False)")
        opt_cls = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.params, lr=optim.lr, weight_decay=optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda k: lr_factor(k, optim.schedule, total_steps, optim.warmup))
        if optim.ema > 0:
            kw: dict[str, Any] = (
                {"avg_fn": _warmup_ema_avg_fn(optim.ema)} if optim.ema_warmup
                else {"multi_avg_fn": get_ema_multi_avg_fn(optim.ema)})
            self.ema = {}
            for name, module in self.modules.items():
                avg = AveragedModel(module, use_buffers=True, **kw)
                avg.requires_grad_(False)
                avg.update_parameters(module)  # the average starts at the initial weights
                self.ema[name] = avg
        self._apply_execution()

    def _apply_execution(self) -> None:
        """channels-last weights and ``torch.compile`` (in place: state-dict keys and the
        EMA copies are unchanged, evaluation runs the same modules)."""
        ex = self.execution
        for module in self.modules.values():
            if ex.channels_last:
                module.to(memory_format=torch.channels_last)
            if ex.compile:
                module.compile()

    def _autocast(self, batch: Tensor) -> contextlib.AbstractContextManager:
        if self.execution.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=batch.device.type, dtype=torch.bfloat16)

    # -- one step -------------------------------------------------------------------------
    def step(self, batch: Tensor, step: int) -> dict[str, float]:
        """One optimiser step on a batch.

        Returns the method's metrics plus ``loss`` (the method's reported ``loss`` if it
        gave one, else the objective), ``lr`` and, with clipping, ``grad_norm`` (before
        clipping). A non-finite objective (or a backward pass that fails, e.g. an adjoint
        solve that underflows) returns ``loss`` = the non-finite value without updating.

        Data parallel (``grad_sync``): the gradients are averaged over the ranks after the
        backward pass and before clipping, ``loss`` is the mean over ranks (unless the method
        reports its own), and a rank's failed step makes every rank skip the update.
        """
        if self.grad_sync is not None and self.trainable:
            with self.grad_sync.joined(self.params):
                return self._step(batch, step)
        return self._step(batch, step)

    def _check_objective(self, objective: Any, step: int, n: int) -> None:
        """The contract's loss property (`bench.harness.planning.properties.loss_problem`, the
        words of
        ``bench check``): a scalar tensor at every step (a metadata check); at step 0 also
        finite, with a graph when trained (single process: a rank alone must not stop)."""
        first = step == 0 and self.grad_sync is None
        if first or not isinstance(objective, Tensor) or objective.dim() != 0:
            from bench.harness.planning.properties import loss_problem  # only then: a hot path

            problem = loss_problem(self.method, objective, n, graph=self.trainable and first)
            if problem:
                raise ContractError(problem)

    def _step(self, batch: Tensor, step: int) -> dict[str, float]:
        if not self.trainable:
            with torch.no_grad():
                objective, metrics = _split_loss(self.method.loss(batch, step))
            self._check_objective(objective, step, batch.shape[0])
            return {**metrics, "loss": metrics.get("loss", float(objective))}
        for module in self.modules.values():
            module.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.execution.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with self._autocast(batch):
            objective, metrics = _split_loss(self.method.loss(batch, step))
        self._check_objective(objective, step, batch.shape[0])
        objective = objective.float()
        value = float(objective.detach())
        if not math.isfinite(value):
            return {**metrics, "loss": value}
        try:
            objective.backward()
        except AssertionError as exc:  # torchdiffeq's way of reporting a failed solve
            log.warning("step %d: backward pass failed (%s)", step, exc)
            self.optimizer.zero_grad(set_to_none=True)
            return {**metrics, "loss": math.nan}
        metrics.update({k: float(v) for k, v in self.method.after_backward().items()})
        if self.grad_sync is not None:
            value = self.grad_sync.reduce(value)  # mean over ranks, NaN if a rank failed
            if not math.isfinite(value):
                self.optimizer.zero_grad(set_to_none=True)
                return {**metrics, "loss": value}
        out = {**metrics, "loss": metrics.get("loss", value),
               "lr": float(self.optimizer.param_groups[0]["lr"])}
        if self.optim.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.params, self.optim.grad_clip)
            out["grad_norm"] = float(norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            for name, avg in self.ema.items():
                avg.update_parameters(self.modules[name])
        return out

    # -- EMA ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """Inside the block the EMA weights are in ``method.modules()`` (no-op without EMA);
        the live weights are restored exactly on exit."""
        if self.ema is None or self._live is not None:  # no EMA, or already swapped in
            yield
            return
        backup = {name: {k: v.detach().clone() for k, v in m.state_dict().items()}
                  for name, m in self.modules.items()}
        self._live = backup
        try:
            for name, avg in self.ema.items():
                self.modules[name].load_state_dict(avg.module.state_dict())
            yield
        finally:
            for name, m in self.modules.items():
                m.load_state_dict(backup[name])
            self._live = None

    def ema_state(self) -> dict[str, dict[str, Tensor]] | None:
        """The averaged weights as state dicts of the method's modules (None without EMA)."""
        if self.ema is None:
            return None
        return {name: avg.module.state_dict() for name, avg in self.ema.items()}

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole training state, by reference (copy it to keep it, see
        `bench.harness.training.checkpoint.snapshot`); tensors and plain values only.

        Keys: ``modules`` (the live weights, also inside `averaged`), ``extra``
        (``method.extra_state()``), ``optimizer``, ``scheduler`` (None when not trainable),
        ``ema`` ({name: state dict of the averaged module} or None), ``ema_updates``.
        """
        modules = self._live if self._live is not None else {
            name: m.state_dict() for name, m in self.modules.items()}
        return {
            "modules": modules,
            "extra": self.method.extra_state(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "ema": self.ema_state(),
            "ema_updates": ({n: int(a.n_averaged) for n, a in self.ema.items()}
                            if self.ema is not None else None),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (or a checkpoint); absent keys are skipped."""
        if self._live is not None:
            raise RuntimeError("load_state_dict inside Trainer.averaged()")
        for name, weights in (state.get("modules") or {}).items():
            self.modules[name].load_state_dict(weights)
        if state.get("extra") is not None:
            self.method.load_extra_state(state["extra"])
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            updates = state.get("ema_updates") or {}
            for name, avg in self.ema.items():
                avg.module.load_state_dict(state["ema"][name])
                avg.n_averaged.fill_(int(updates.get(name, 1)))
