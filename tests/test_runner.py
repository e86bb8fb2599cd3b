"""The harness loop: early stopping keeps the best checkpoint, budgets are honoured."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from bench.api import LogLikelihood, Method
from bench.harness.run import RunConfig, _Loop
from bench.record.mlflow_sink import Tracker

VAL = [5.0, 4.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]


@dataclass
class P:
    batch_size: int = 10


class Scripted(Method):
    """Validation NLL follows VAL, one value per training step; state = the step count."""

    name = "scripted"
    Params = P

    def __init__(self, params, splits, ctx):
        super().__init__(params, splits, ctx)
        self.steps = torch.zeros(())

    def train_step(self, batch, step):
        self.steps += 1
        return {"loss": 1.0}

    def log_prob(self, x):
        nll = VAL[int(self.steps) - 1]
        return LogLikelihood(torch.full((x.shape[0],), -nll), "exact", "scripted")

    def state_dict(self):
        return {"steps": self.steps.clone()}

    def load_state_dict(self, state):
        self.steps = state["steps"].clone()


class _Bar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass


@pytest.fixture()
def loop(toy_splits, tracking_uri):
    def make(**cfg):
        tracker = Tracker(tracking_uri)
        tracker.start("t", {}, {})
        method = Scripted(P(), toy_splits, None)
        return _Loop(method, toy_splits, RunConfig(**cfg), tracker, _Bar()), method, tracker
    return make


def test_early_stopping_keeps_the_best_state(loop):
    lp, method, tracker = loop(steps=8, eval_every=1, patience=2)
    steps = lp.train(torch.Generator().manual_seed(0))
    assert steps == 5  # evaluations at 4 and 5 did not improve on step 3
    assert lp.best_step == 3 and lp.best_val == 3.0
    method.load_state_dict(lp.best_state)
    assert int(method.steps) == 3
    assert [v for _, v in tracker.history["val_nll"]] == VAL[:5]


def test_step_budget_and_final_evaluation(loop):
    lp, _, tracker = loop(steps=3, eval_every=2, patience=10)
    assert lp.train(torch.Generator().manual_seed(0)) == 3
    # evaluated at step 2 and, once, at the last step
    assert [s for s, _ in tracker.history["val_nll"]] == [2, 3]
    assert len(tracker.history["step_seconds"]) == 3


def test_evaluations_at_training_times(loop):
    lp, _, tracker = loop(steps=8, max_seconds=None, eval_at_seconds=(0.0, 1e9), patience=10)
    lp.train(torch.Generator().manual_seed(0))
    assert [s for s, _ in tracker.history["val_nll"]] == [1, 8]
