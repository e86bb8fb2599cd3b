"""The harness loop: early stopping keeps the best state, budgets are honoured, costs and
NFEs are recorded per step and per epoch, a non-finite loss raises."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from bench.api import Budget, LogLikelihood, LossExploded, Method, OptimConfig
from bench.harness import make_context
from bench.harness.training.checkpoint import restore
from bench.harness.training.loop import train
from bench.harness.training.optim import Trainer

VAL = [5.0, 4.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]


@dataclass
class P:
    batch_size: int = 10


class Scripted(Method):
    """Validation NLL follows VAL, one value per training step; extra state = the step
    count; reports NFEs like an ODE method (forward 3, backward 5 per step)."""

    name = "scripted"
    Params = P

    def __init__(self, params, splits, ctx, loss_at=None):
        super().__init__(params, splits, ctx)
        self.w = nn.Linear(2, 1)
        self.steps = 0
        self.loss_at = loss_at or {}

    def modules(self):
        return {"w": self.w}

    def loss(self, batch, step):
        self.steps += 1
        value = self.loss_at.get(self.steps, 1.0)
        return (self.w(batch) ** 2).mean() * 0 + value, {"nfe_forward": 3.0}

    def after_backward(self):
        return {"nfe_backward": 5.0}

    def sample(self, n):
        return torch.zeros(n, 2)

    def log_prob(self, x):
        nll = VAL[min(self.steps, len(VAL)) - 1] if self.steps else 9.0
        return LogLikelihood(torch.full((x.shape[0],), -nll), "exact", "scripted")

    def extra_state(self):
        return {"steps": self.steps}

    def load_extra_state(self, state):
        self.steps = int(state["steps"])


class Record:
    def __init__(self):
        self.history = defaultdict(list)
        self.tags = {}

    def log_metrics(self, metrics, step=None):
        for k, v in metrics.items():
            self.history[k].append((step, v))

    def set_tags(self, tags):
        self.tags.update(tags)


class Bar:
    def __init__(self):
        self.n, self.postfix = 0, {}

    def update(self, n=1, **postfix):
        self.n += n
        self.postfix = postfix


def _run(splits, budget, method=None, optim=None):
    method = method or Scripted(P(), splits, make_context())
    trainer = Trainer(method, optim or OptimConfig(lr=0.01), total_steps=budget.steps)
    rec, bar = Record(), Bar()
    res = train(method, trainer, splits, budget, log_metrics=rec.log_metrics,
                set_tags=rec.set_tags, progress=bar, generator=torch.Generator().manual_seed(0))
    return res, method, trainer, rec, bar


def test_early_stopping_keeps_the_best_state(toy_splits):
    res, method, trainer, rec, bar = _run(toy_splits, Budget(steps=8, eval_every=1,
                                                             patience=2))
    assert res.steps == 5  # evaluations at 4 and 5 did not improve on step 3
    assert res.best_step == 3 and res.best_val == 3.0 and res.last_val == 5.0
    assert [v for _, v in rec.history["val_nll"]] == VAL[:5]
    assert rec.tags == {"val_nll.kind": "exact", "val_nll.estimator": "scripted"}
    assert bar.n == 5 and bar.postfix["val_nll"] == 5.0
    restore(method, trainer, res.best_state)
    assert method.steps == 3


def test_step_budget_and_final_evaluation(toy_splits):
    res, _, _, rec, _ = _run(toy_splits, Budget(steps=3, eval_every=2, patience=10))
    assert res.steps == 3
    # evaluated at step 2 and, once, at the last step
    assert [s for s, _ in rec.history["val_nll"]] == [2, 3]
    assert len(rec.history["step_seconds"]) == 3 and len(rec.history["peak_mem_mb"]) == 3
    assert rec.history["val_nll_nfe"] and rec.history["train_seconds_at_eval"]


def test_nfe_forward_and_backward_are_kept_separate(toy_splits):
    # 400 rows, batch 10: one epoch = 40 steps
    _, _, _, rec, _ = _run(toy_splits, Budget(steps=45, eval_every=100, patience=10))
    assert {v for _, v in rec.history["nfe_forward"]} == {3.0}
    assert {v for _, v in rec.history["nfe_backward"]} == {5.0}
    assert rec.history["epoch_mean_nfe_forward"] == [(40, 3.0)]
    assert rec.history["epoch_mean_nfe_backward"] == [(40, 5.0)]
    assert [s for s, _ in rec.history["epoch_seconds"]] == [40]


def test_evaluations_at_training_times(toy_splits):
    _, _, _, rec, _ = _run(toy_splits, Budget(steps=8, eval_at_seconds=(0.0, 1e9),
                                              patience=10))
    assert [s for s, _ in rec.history["val_nll"]] == [1, 8]


def test_non_finite_loss_raises_training_diverged(toy_splits):
    method = Scripted(P(), toy_splits, make_context(), loss_at={3: math.nan})
    with pytest.raises(LossExploded, match="training diverged at step 3: loss = nan"):
        _run(toy_splits, Budget(steps=8, eval_every=100), method=method)


def test_validation_uses_the_ema_weights(toy_splits):
    """The validation NLL is computed inside trainer.averaged(): the method sees the EMA."""
    seen = []

    class Watch(Scripted):
        def log_prob(self, x):
            seen.append(self.w.weight.detach().clone())
            return super().log_prob(x)

    class Move(Watch):
        def loss(self, batch, step):
            self.steps += 1
            return -self.w.weight.sum(), {}

    method = Move(P(), toy_splits, make_context())
    res, _, trainer, _, _ = _run(toy_splits, Budget(steps=4, eval_every=4), method=method,
                                 optim=OptimConfig(lr=0.1, ema=0.5))
    assert res.steps == 4
    assert torch.equal(seen[-1], trainer.ema_state()["w"]["weight"])
    assert not torch.equal(seen[-1], method.w.weight.detach())


def test_non_trainable_method_gets_one_validation_and_no_step(toy_splits):
    class Fixed(Scripted):
        trainable = False

    res, method, _, rec, bar = _run(toy_splits, Budget(steps=8, eval_every=1),
                                    method=Fixed(P(), toy_splits, make_context()))
    assert res.steps == 0 and method.steps == 0 and bar.n == 0
    assert rec.history["val_nll"] == [(0, 9.0)] and "step_seconds" not in rec.history


def test_validation_on_8bit_data_is_dequantized_unless_the_method_has_its_own(toy_splits):
    from bench.api import Splits
    from bench.harness.training.loop import validate

    grid = torch.randint(0, 256, (20, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    x = grid.float() / 127.5 - 1
    splits = Splits(x, x, x, (1, 2, 2), "grid", dequantization="uniform-8bit")
    seen = {}

    class Image(Scripted):
        def log_prob(self, y):
            seen["log_prob"] = y
            return LogLikelihood(torch.zeros(y.shape[0]), "exact", "zero")

    class OwnSignal(Image):
        def validation_likelihood(self, y):
            seen["own"] = y
            return LogLikelihood(torch.zeros(y.shape[0]), "bound", "grid")

    m = Image(P(), splits, make_context())
    s, _ = validate(m, Trainer(m, OptimConfig()), x, "cpu", splits.dequantization)
    assert not torch.equal(seen["log_prob"], x)
    assert float((seen["log_prob"] - x).abs().max()) <= 1 / 255
    assert s.mean == pytest.approx(-4 * math.log(2 / 255))  # -(0 + D log(2/255))
    o = OwnSignal(P(), splits, make_context())
    s, _ = validate(o, Trainer(o, OptimConfig()), x, "cpu", splits.dequantization)
    assert torch.equal(seen["own"], x) and s.kind == "bound"
