"""InterFlow (Albergo and Vanden-Eijnden, ICLR 2023): a flow trained by stochastic
interpolants with a quadratic loss and no ODE solve.

With x_t = I_t(x_0, x_1) between a base sample x_0 (t=0) and a data sample x_1 (t=1), the
velocity v_t(x) minimises G(v) = E_{t, x_0, x_1}[|v_t(x_t)|^2 - 2 dI_t/dt . v_t(x_t)]
whose minimiser is v_t(x) = E[dI_t/dt | x_t = x]. Sampling and likelihood integrate
dX/dt = v_t(X) with the harness's shared engine (`bench.science.ode`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from bench.api import FlowMethod, Splits
from bench.api.errors import ConfigError
from bench.science.interpolants import get_interpolant
from bench.science.nets import build_net
from bench.harness.optim import EMA, make_optimizer, make_scheduler

__all__ = ["InterFlow"]


@dataclass
class InterFlowParams:
    interpolant: str = "trig"
    net: str = "mlp"
    hidden: tuple[int, ...] = (512, 512, 512)
    activation: str = "silu"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: int = 0
    batch_size: int = 512
    grad_clip: float = 1.0
    ema: float = 0.0
    time_dist: Literal["uniform", "beta"] = "uniform"
    beta_a: float = 1.0
    beta_b: float = 1.0
    base: str = "gaussian"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError("batch_size must be >= 1 and lr > 0")
        if self.beta_a <= 0 or self.beta_b <= 0:
            raise ValueError("beta_a and beta_b must be > 0")


class InterFlow(FlowMethod):
    """InterFlow: velocity of a stochastic interpolant, quadratic loss, ODE sampling."""

    name = "interflow"
    Params = InterFlowParams
    test_params = {"hidden": (16, 16), "batch_size": 64}

    def __init__(self, params: InterFlowParams, splits: Splits, ctx) -> None:
        super().__init__(params, splits, ctx)
        self.dim = splits.dim
        self.interpolant = get_interpolant(params.interpolant)
        self.v = build_net(self.dim, params.hidden, params.activation, params.net).to(ctx.device)
        self.opt = make_optimizer(self.v, params.lr, params.weight_decay)
        self.sched = make_scheduler(self.opt, params.schedule, ctx.max_steps, params.warmup)
        self.ema = EMA(self.v, params.ema)
        self.gen = torch.Generator(device="cpu").manual_seed(ctx.seed)
        self.base_dataset = None
        if params.base != "gaussian":
            if ctx.load_dataset is None:
                raise ConfigError("a dataset base density needs the harness's load_dataset")
            self.base_dataset = ctx.load_dataset(params.base)
            base_shape = tuple(self.base_dataset.splits().event_shape)
            if base_shape != tuple(splits.event_shape):
                raise ConfigError(
                    f"base {params.base!r} has shape {base_shape}, data has "
                    f"{tuple(splits.event_shape)}"
                )
            if not self.base_dataset.has_log_prob:
                self.likelihood = "none"  # no closed-form base density: no NLL

    # -- the base density (t = 0) -------------------------------------------------------
    def base_sample(self, n: int) -> Tensor:
        if self.base_dataset is not None:
            x = self.base_dataset.sample(n, generator=self.gen)
        else:
            x = torch.randn(n, self.dim, generator=self.gen)
        return x.to(self.ctx.device)

    def base_log_prob(self, x_0: Tensor) -> Tensor:
        if self.base_dataset is not None:
            return self.base_dataset.log_prob(x_0)
        return super().base_log_prob(x_0)

    def velocity_field(self) -> torch.nn.Module:
        return self.ema.model()

    # -- training -----------------------------------------------------------------------
    def sample_time(self, n: int) -> Tensor:
        p = self.params
        if p.time_dist == "beta":
            dist = torch.distributions.Beta(torch.tensor(p.beta_a), torch.tensor(p.beta_b))
            # torch's Beta has no generator argument: seed it from ours for reproducibility
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.gen))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                t = dist.sample((n,))
        else:
            t = torch.rand(n, generator=self.gen)
        return t.to(self.ctx.device)

    def loss(self, x_1: Tensor) -> Tensor:
        """G(v) on a batch of data x_1 (n, dim) with fresh base samples and times."""
        n = x_1.shape[0]
        x_0 = self.base_sample(n)
        path = self.interpolant.sample(x_0, x_1, self.sample_time(n))
        v = self.v(path.t, path.x_t)
        return ((v * v).sum(1) - 2 * (path.dx_t * v).sum(1)).mean()

    def train_step(self, batch: Tensor, step: int) -> dict[str, float]:
        self.v.train()
        loss = self.loss(batch.to(self.ctx.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.params.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.v.parameters(), self.params.grad_clip)
        self.opt.step()
        self.sched.step()
        self.ema.update()
        return {"loss": float(loss.detach()), "lr": self.sched.get_last_lr()[0]}

    # -- state ----------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"v": self.v}

    def state_dict(self) -> dict:
        state = {"v": self.v.state_dict(), "opt": self.opt.state_dict(),
                 "sched": self.sched.state_dict()}
        if self.ema.shadow is not None:
            state["ema"] = self.ema.shadow.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.v.load_state_dict(state["v"])
        if "opt" in state:
            self.opt.load_state_dict(state["opt"])
            self.sched.load_state_dict(state["sched"])
        if self.ema.shadow is not None and "ema" in state:
            self.ema.shadow.load_state_dict(state["ema"])
