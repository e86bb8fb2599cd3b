"""Optimisation helpers shared by methods: Adam with a schedule, clipping, EMA of weights."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from bench.api.errors import ConfigError

__all__ = ["make_optimizer", "make_scheduler", "EMA", "SCHEDULES"]

SCHEDULES = ("constant", "cosine", "linear")


def make_optimizer(module: nn.Module, lr: float, weight_decay: float = 0.0):
    return torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)


def make_scheduler(opt, schedule: str, total_steps: int | None, warmup: int = 0):
    """A LambdaLR: linear warm-up, then constant, cosine or linear decay to 0 over the
    run's step budget (constant when the budget is only in seconds)."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or not total_steps:
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * frac))
        return 1.0 - frac

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class EMA:
    """Exponential moving average of a module's parameters (decay 0 disables it)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = module
        self.shadow = copy.deepcopy(module).eval() if decay > 0 else None
        if self.shadow is not None:
            for p in self.shadow.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        if self.shadow is None:
            return
        for s, p in zip(self.shadow.parameters(), self.module.parameters(), strict=True):
            s.lerp_(p, 1.0 - self.decay)

    def model(self) -> nn.Module:
        """The network to evaluate: the average if enabled, else the live one."""
        return self.shadow if self.shadow is not None else self.module
