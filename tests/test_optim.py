"""The harness's Trainer: schedule values, clipping, EMA against its closed form, the EMA
swap, and a state round trip that continues identically; the one checkpoint layout."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from bench.api import ContractError, Job, LogLikelihood, Method, OptimConfig, Splits
from bench.harness import make_context
from bench.harness.training.checkpoint import (
    FORMAT,
    load_checkpoint,
    load_into,
    restore,
    save_checkpoint,
    snapshot,
)
from bench.harness.training.optim import Trainer, lr_factor

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class P:
    batch_size: int = 8


class Regression(Method):
    """Least squares y = W x + b on fixed data: deterministic, with a buffer to average."""

    name = "regression"
    Params = P

    def __init__(self, params, splits, ctx, scale: float = 1.0) -> None:
        super().__init__(params, splits, ctx)
        torch.manual_seed(0)
        self.net = nn.Linear(3, 2)
        self.net.register_buffer("seen", torch.zeros(()))
        self.scale = scale
        self.target = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])

    def modules(self):
        return {"net": self.net}

    def loss(self, batch, step):
        self.net.seen += 1
        err = self.net(batch) - batch @ self.target.T
        return self.scale * (err**2).mean(), {"mse": float((err**2).mean().detach())}

    def sample(self, n):
        return torch.zeros(n, 3)

    def log_prob(self, x):
        return LogLikelihood(-(self.net(x) ** 2).sum(1), "exact", "test")


def _splits() -> Splits:
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    return Splits(x, x, x, (3,), "test")


def _method(**kw) -> Regression:
    return Regression(P(), _splits(), make_context(), **kw)


def _batches(k: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randn(8, 3, generator=g) for _ in range(k)]


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().double().reshape(-1) for t in module.state_dict().values()])


# -- schedule --------------------------------------------------------------------------
def test_schedule_values() -> None:
    assert [lr_factor(k, "cosine", 10, warmup=2) for k in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_factor(6, "cosine", 10, warmup=2) == pytest.approx(0.5)  # f = 4/8
    assert lr_factor(4, "linear", 10, warmup=2) == pytest.approx(0.75)  # 1 - 2/8
    assert lr_factor(10, "linear", 10) == 0.0 and lr_factor(7, "constant", 10) == 1.0
    assert lr_factor(5, "cosine", None) == 1.0  # budget in seconds only: constant
    m = _method()
    tr = Trainer(m, OptimConfig(lr=0.1, schedule="cosine", warmup=2), total_steps=10)
    lrs = [tr.step(b, k)["lr"] for k, b in enumerate(_batches(10))]
    assert lrs == pytest.approx([0.1 * lr_factor(k, "cosine", 10, 2) for k in range(10)])


# -- clipping --------------------------------------------------------------------------
def test_clipping_bounds_the_gradient_norm() -> None:
    m = _method(scale=1e4)
    tr = Trainer(m, OptimConfig(lr=1e-3, grad_clip=0.5))
    out = tr.step(_batches(1)[0], 0)
    clipped = torch.sqrt(sum((p.grad**2).sum() for p in m.net.parameters()))
    assert out["grad_norm"] > 100  # reported before clipping
    assert float(clipped) == pytest.approx(0.5, rel=1e-5)
    m2 = _method(scale=1e4)
    out2 = Trainer(m2, OptimConfig(lr=1e-3)).step(_batches(1)[0], 0)
    assert "grad_norm" not in out2  # no clipping, nothing reported


# -- EMA -------------------------------------------------------------------------------
@pytest.mark.parametrize("warmup", [False, True])
def test_ema_equals_the_closed_form_average(warmup: bool) -> None:
    d, k = 0.8, 6
    m = _method()
    tr = Trainer(m, OptimConfig(lr=0.05, ema=d, ema_warmup=warmup))
    weights = [_flat(m.net)]  # w_0: the average starts at the initial weights
    for step, b in enumerate(_batches(k)):
        tr.step(b, step)
        weights.append(_flat(m.net))
    if warmup:  # d_j = min(d, (1 + j) / (10 + j)) at update j
        expected = weights[0]
        for j in range(1, k + 1):
            dj = min(d, (1 + j) / (10 + j))
            expected = dj * expected + (1 - dj) * weights[j]
    else:  # d^k w_0 + sum_j (1 - d) d^(k - j) w_j
        expected = d**k * weights[0] + sum((1 - d) * d ** (k - j) * weights[j]
                                           for j in range(1, k + 1))
    ema = torch.cat([t.double().reshape(-1) for t in tr.ema_state()["net"].values()])
    assert torch.allclose(ema, expected, atol=1e-6)
    assert not torch.allclose(ema, weights[-1], atol=1e-3)  # it is not the live weights


def test_averaged_swaps_and_restores_exactly() -> None:
    m = _method()
    tr = Trainer(m, OptimConfig(lr=0.05, ema=0.9))
    for step, b in enumerate(_batches(4)):
        tr.step(b, step)
    live = {k: v.clone() for k, v in m.net.state_dict().items()}
    weight = m.net.weight  # the optimiser's parameter object must survive the swap
    with tr.averaged():
        inside = m.net.state_dict()
        for key, value in tr.ema_state()["net"].items():
            assert torch.equal(inside[key], value)
        assert not torch.equal(inside["weight"], live["weight"])
    assert m.net.weight is weight
    for key, value in m.net.state_dict().items():
        assert torch.equal(value, live[key])
    plain = Trainer(_method(), OptimConfig())
    with plain.averaged():  # no EMA: a no-op
        pass


# -- state round trip ------------------------------------------------------------------
def test_state_round_trip_continues_identically(tmp_path) -> None:
    optim = OptimConfig(optimizer="adamw", lr=0.05, weight_decay=0.01, schedule="cosine",
                        warmup=2, grad_clip=1.0, ema=0.9)
    batches = _batches(8)
    a = _method()
    ta = Trainer(a, optim, total_steps=8)
    for step in range(4):
        ta.step(batches[step], step)
    job = Job("regression", Regression, P(), "toy", object, P(), seed=3, optim=optim)
    path = save_checkpoint(tmp_path / "ckpt.pt", job, ta, 4)
    assert [f.name for f in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left
    loaded = load_checkpoint(path)  # weights_only=True
    assert loaded["format"] == FORMAT and loaded["step"] == 4 and loaded["seed"] == 3
    assert loaded["optim"]["optimizer"] == "adamw" and loaded["method"] == "regression"
    b = _method()
    tb = Trainer(b, optim, total_steps=8)
    b.net.weight.data.normal_()  # different weights, to be overwritten
    restore(b, tb, loaded)
    outs_a = [ta.step(batches[s], s) for s in range(4, 8)]
    outs_b = [tb.step(batches[s], s) for s in range(4, 8)]
    assert outs_a == outs_b
    for key, value in a.net.state_dict().items():
        assert torch.equal(value, b.net.state_dict()[key])
    for key, value in ta.ema_state()["net"].items():
        assert torch.equal(value, tb.ema_state()["net"][key])


def test_snapshot_inside_averaged_keeps_the_live_weights(tmp_path) -> None:
    m = _method()
    tr = Trainer(m, OptimConfig(lr=0.1, ema=0.5))
    for step, b in enumerate(_batches(3)):
        tr.step(b, step)
    live = m.net.weight.detach().clone()
    with tr.averaged():
        snap = snapshot(m, tr)
        job = Job("regression", Regression, P(), "toy", object, P())
        ckpt = load_checkpoint(save_checkpoint(tmp_path / "c.pt", job, tr, 3))
    assert torch.equal(snap["modules"]["net"]["weight"], live)
    assert torch.equal(ckpt["modules"]["net"]["weight"], live)
    fresh = _method()
    load_into(fresh, ckpt)  # the evaluation weights: the average
    assert torch.equal(fresh.net.weight.detach(), tr.ema_state()["net"]["weight"])
    load_into(fresh, ckpt, averaged=False)
    assert torch.equal(fresh.net.weight.detach(), live)


def test_snapshot_is_a_copy() -> None:
    m = _method()
    tr = Trainer(m, OptimConfig(lr=0.1))
    snap = snapshot(m, tr)
    before = snap["modules"]["net"]["weight"].clone()
    tr.step(_batches(1)[0], 0)
    assert torch.equal(snap["modules"]["net"]["weight"], before)
    assert not torch.equal(m.net.weight.detach(), before)
    restore(m, tr, snap)
    assert torch.equal(m.net.weight.detach(), before)


# -- the step's contract ---------------------------------------------------------------
def test_non_finite_objective_does_not_update() -> None:
    m = _method(scale=math.nan)
    tr = Trainer(m, OptimConfig(lr=0.1))
    before = _flat(m.net)
    # step 1: at step 0 a non-finite loss is the contract's failure (tests/
    # test_contract_properties.py), later it is left to the divergence check
    out = tr.step(_batches(1)[0], 1)
    assert math.isnan(out["loss"]) and "mse" in out
    params = torch.cat([p.detach().double().reshape(-1) for p in m.net.parameters()])
    assert torch.equal(params, before[:params.numel()])


def test_reported_loss_is_the_methods_when_given() -> None:
    class WithPenalty(Regression):
        def loss(self, batch, step):
            obj, metrics = super().loss(batch, step)
            return obj + 10.0, {**metrics, "loss": float(obj.detach())}

    m = WithPenalty(P(), _splits(), make_context())
    out = Trainer(m, OptimConfig()).step(_batches(1)[0], 0)
    assert out["loss"] == pytest.approx(out["mse"])  # not the objective (+10)


def test_not_trainable_only_evaluates() -> None:
    class Fixed(Regression):
        trainable = False

    m = Fixed(P(), _splits(), make_context())
    tr = Trainer(m, OptimConfig())
    before = _flat(m.net)
    out = tr.step(_batches(1)[0], 0)
    assert tr.optimizer is None and tr.state_dict()["optimizer"] is None
    assert out["loss"] == pytest.approx(out["mse"]) and m.net.weight.grad is None
    assert torch.equal(_flat(m.net)[:8], before[:8])


def test_no_trainable_parameters_is_a_contract_error() -> None:
    m = _method()
    m.net.requires_grad_(False)
    with pytest.raises(ContractError, match="no trainable parameters"):
        Trainer(m, OptimConfig())


# -- every registered method leaves optimisation to the harness -----------------------
def _methods():
    from bench.harness.planning.registry import Registry

    reg = Registry()
    return [reg.plugins["method"][n].cls for n in reg.names("method")
            if reg.plugins["method"][n].available]


OPTIM_NAMES = {f.name for f in dataclasses.fields(OptimConfig)} | {
    "warmup_steps", "ema_decay"}


@pytest.mark.parametrize("cls", _methods(), ids=lambda c: c.name)
def test_methods_declare_no_optimiser_settings(cls) -> None:
    """No method has optimiser parameters of its own (they would shadow the shared ones) or
    a train_step; its defaults are valid shared settings for every kind of data."""
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    assert not fields & OPTIM_NAMES, f"{cls.name} declares {sorted(fields & OPTIM_NAMES)}"
    assert not hasattr(cls, "train_step")
    for kind in ("toy2d", "tabular", "image"):
        OptimConfig(**cls.default_optim(kind))  # raises on a bad default
    assert cls.supports("toy2d", (2,)) is None


# -- execution options: bf16 autocast and channels-last ---------------------------------------
class _Conv(Method):
    """A conv net on (3, 8, 8) images with a deterministic loss."""

    name = "conv"
    Params = P

    def __init__(self, params, splits, ctx) -> None:
        super().__init__(params, splits, ctx)
        torch.manual_seed(0)
        self.net = nn.Conv2d(3, 4, 3, padding=1)
        self.dtypes: list[torch.dtype] = []

    def modules(self):
        return {"net": self.net}

    def loss(self, batch, step):
        out = self.net(batch)
        self.dtypes.append(out.dtype)
        return (out.float() ** 2).mean()

    def sample(self, n):
        return torch.zeros(n, 3, 8, 8)

    def log_prob(self, x):
        return LogLikelihood(-(x.flatten(1) ** 2).sum(1), "exact", "test")


@pytest.mark.parametrize("precision, channels_last", [("bf16", False), ("fp32", True)])
def test_execution_options_change_how_not_what(precision, channels_last):
    """bf16 runs the forward in bfloat16 (the objective and the weights stay fp32, within
    bf16's rounding of the fp32 step); channels-last gives the same step as the default."""
    from bench.api import Execution

    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    splits = Splits(x, x, x, (3, 8, 8), "test")
    ref, opt = _Conv(P(), splits, make_context()), _Conv(P(), splits, make_context())
    out_ref = Trainer(ref, OptimConfig(lr=1e-2)).step(x, 0)
    ex = Execution(precision=precision, channels_last=channels_last)
    out = Trainer(opt, OptimConfig(lr=1e-2), execution=ex).step(x, 0)
    assert math.isfinite(out["loss"])
    w_ref, w = ref.net.weight, opt.net.weight
    assert w.dtype == torch.float32
    if precision == "bf16":
        assert opt.dtypes == [torch.bfloat16]
        assert out["loss"] != out_ref["loss"]
        assert out["loss"] == pytest.approx(out_ref["loss"], rel=2e-2)
        assert torch.allclose(w, w_ref, atol=2e-3)
    else:
        assert opt.dtypes == [torch.float32] and out["loss"] == pytest.approx(out_ref["loss"])
        assert w.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(w, w_ref, atol=1e-6)
