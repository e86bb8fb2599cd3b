"""FFJORD-style continuous normalizing flow trained by maximum likelihood (Grathwohl et al.,
ICLR 2019), with optional RNODE regularization (Finlay et al., ICML 2020).

The model is the ODE dX/dt = v_t(X) from a standard Gaussian (t=0) to the data (t=1).
Training maximises log p_1(x) = log N(x_0; 0, I) - int_0^1 div v_t(x_t) dt by integrating
(x, log-density) from the data back to the base with dopri5 and the adjoint method, the
divergence estimated by Hutchinson's trace estimator with a probe fixed for each solve
(`bench.science.ode`). Evaluation is the harness's: the same engine with its own solver
settings and the exact trace (`FlowMethod.log_prob`).

Defaults are FFJORD's MINIBOONE setting (README of rtqichen/ffjord, ``train_tabular.py``):
concatsquash layers, softplus, 2 hidden layers of width 20 x data dimension, one block,
batch 1000, Adam lr 1e-3, weight decay 1e-6 (``CNF.optim``: the harness's shared optimiser
settings), training tolerances atol 1e-8 / rtol 1e-6, Gaussian probes. FFJORD's script
asks to learn the end time T (``train_T``), but at the pinned commit its T gets no gradient
(``CNF.forward`` detaches it), so T stays 1 as here by default; ``train_time=true`` learns
it for real. Off by default, ``net``/``hidden``/``activation`` give the very network
InterFlow trains, parameter for parameter.

Images (n, C, H, W): the field is the velocity U-Net InterFlow uses (`bench.science.unet.
VelocityUNet`, the shared ``unet_*`` fields), trained exactly like vectors: Hutchinson's
estimator (FFJORD's default) and the adjoint. Dropout must stay 0: a random field breaks the
adaptive solve and the adjoint's recomputation of the forward trajectory.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from bench.api import FlowMethod, RunContext, Splits, at_least, non_negative, positive
from bench.api.errors import ConfigError
from bench.science.unet_config import UNetParams

if TYPE_CHECKING:
    from torch import Tensor, nn

    from bench.science.ode import TrainingLikelihood
    from bench.science.solvers import TrainConfig

__all__ = ["CNF", "CNFParams"]

logger = logging.getLogger(__name__)


@dataclass
class CNFParams(UNetParams):
    """Parameters of the MLE CNF (FFJORD's names in brackets).

    Attributes:
        net: mlp | concat | concatsquash [layer_type].
        hidden: hidden widths; empty means ``n_hidden`` layers of ``hidden_mult`` x dim.
        hidden_mult, n_hidden: [hdim_factor, nhidden] used when ``hidden`` is empty.
        activation: [nonlinearity].
        solver, train_atol, train_rtol, step_size: training solves [solver, atol, rtol,
            step_size]; ``step_size`` only for fixed-step solvers (euler, rk4, ...).
        adjoint: gradients by the adjoint method (else backprop through the solver).
        divergence: hutchinson | exact, during training [divergence_fn].
        probe: gaussian | rademacher [rademacher]; n_probes per solve.
        kinetic_weight, jacobian_weight: RNODE penalties on int |v|^2 and int |eps^T J|^2.
        train_time, time_length: learn the end time T, v(t, x) = T f(T t, x) [train_T,
            time_length].
        unet_ch, unet_ch_mult, unet_num_res_blocks, unet_attn_resolutions: the U-Net of
            images (`bench.science.unet_config.UNetParams`); dropout must be 0.
    """

    net: Literal["mlp", "concat", "concatsquash"] = "concatsquash"
    hidden: tuple[int, ...] = field(default=(), metadata=at_least(1))
    hidden_mult: int = field(default=20, metadata=at_least(1))
    n_hidden: int = field(default=2, metadata=non_negative())
    activation: Literal["softplus", "tanh", "relu", "elu", "silu", "gelu"] = "softplus"
    batch_size: int = field(default=1000, metadata=at_least(1))
    solver: Literal["dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "euler",
                    "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams",
                    "fixed_adams"] = "dopri5"
    train_atol: float = field(default=1e-8, metadata=positive())
    train_rtol: float = field(default=1e-6, metadata=positive())
    step_size: float = field(default=0.0, metadata=non_negative())
    adjoint: bool = True
    divergence: Literal["hutchinson", "exact"] = "hutchinson"
    probe: Literal["gaussian", "rademacher"] = "gaussian"
    n_probes: int = field(default=1, metadata=at_least(1))
    kinetic_weight: float = field(default=0.0, metadata=non_negative())
    jacobian_weight: float = field(default=0.0, metadata=non_negative())
    train_time: bool = False
    time_length: float = field(default=1.0, metadata=positive())
    dropout: float = 0.0  # the U-Net's: 0, the ODE's field must be deterministic

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dropout != 0.0:
            raise ValueError("dropout must be 0 for the CNF: a random field breaks the "
                             "adaptive ODE solve and the adjoint")
        self.train_config()  # checks solver, step size, divergence and probe

    def widths(self, dim: int) -> tuple[int, ...]:
        """Hidden widths for data of dimension ``dim``."""
        return tuple(self.hidden) or (self.hidden_mult * dim,) * self.n_hidden

    def train_config(self) -> TrainConfig:
        from bench.science.solvers import TrainConfig  # torch-free: the plan builds Params

        try:
            return TrainConfig(
                method=self.solver, rtol=self.train_rtol, atol=self.train_atol,
                step_size=self.step_size or None, adjoint=self.adjoint,
                divergence=self.divergence, probe=self.probe, n_probes=self.n_probes,
                kinetic=self.kinetic_weight > 0, jacobian=self.jacobian_weight > 0,
            )
        except ConfigError as e:
            raise ValueError(str(e)) from None


class CNF(FlowMethod):
    """FFJORD CNF: maximum likelihood through the ODE (adjoint, Hutchinson trace)."""

    name = "cnf"
    Params = CNFParams
    test_params = {
        "hidden": (16, 16), "batch_size": 64, "train_atol": 1e-5, "train_rtol": 1e-5,
        "unet_ch": 8, "unet_ch_mult": (1, 2), "unet_num_res_blocks": 1,
        "unet_attn_resolutions": (4,),
    }
    likelihood = "exact"
    optim: ClassVar[dict[str, Any]] = {"lr": 1e-3, "weight_decay": 1e-6}
    event_ranks = (1, 3)

    def __init__(self, params: CNFParams, splits: Splits, ctx: RunContext) -> None:
        import torch

        from bench.science.nets import ScaledTimeField, build_net
        from bench.science.unet import build_unet

        super().__init__(params, splits, ctx)
        problem = self.supports("", self.event_shape)
        if problem:
            raise ConfigError(problem)
        self.dim = splits.dim
        self.image = len(self.event_shape) == 3
        self.device = torch.device(ctx.device)
        if self.image:
            net: nn.Module = build_unet(params, self.event_shape, velocity=True)
        else:
            net = build_net(self.dim, params.widths(self.dim), params.activation, params.net)
        self.v: nn.Module = ScaledTimeField(net, params.time_length) if params.train_time else net
        self.v.to(self.device)
        self.train_cfg = params.train_config()
        self.gen = torch.Generator(device="cpu").manual_seed(ctx.seed)
        self._last: TrainingLikelihood | None = None

    # -- the base density (t = 0) -------------------------------------------------------
    def base_sample(self, n: int) -> Tensor:
        """(n, *event_shape) standard Gaussian draws on the run's device."""
        import torch

        return torch.randn(n, *self.event_shape, generator=self.gen).to(self.device)

    def velocity_field(self) -> nn.Module:
        return self.v

    # -- training -----------------------------------------------------------------------
    def train_log_prob(self, x: Tensor, probes: Tensor | None = None) -> TrainingLikelihood:
        """The training solve on a (n, *event_shape) batch: log p(x) with gradients
        (`bench.science.ode.training_log_likelihood`).

        Args:
            x: (n, *event_shape) data.
            probes: optional (k, n, *event_shape) Hutchinson probes (default: drawn from
                the method's generator, ``n_probes`` of them).
        """
        from bench.science.ode import training_log_likelihood

        return training_log_likelihood(self.v, x, self.base_log_prob, self.train_cfg,
                                       generator=self.gen, probes=probes)

    def loss(self, batch: Tensor, step: int = 0) -> tuple[Tensor, dict[str, float]]:
        """The objective -mean log p(batch) (+ RNODE penalties) on a (b, *event_shape)
        batch.

        Metrics: ``loss`` (the mean NLL in nats, without penalties), ``nfe_forward``,
        ``kinetic`` / ``jacobian_frobenius`` / ``objective`` with penalties. A training
        solve that gives up (torchdiffeq asserts on exploding dynamics) returns a NaN
        objective, for the harness to raise on.
        """
        import torch

        p = self.params
        x = batch.to(self.device).reshape(batch.shape[0], *self.event_shape)
        self._last = None
        try:
            res = self.train_log_prob(x)
        except AssertionError as exc:  # torchdiffeq: "underflow in dt nan" and the like
            logger.warning("cnf step %d: training solve failed (%s)", step, exc)
            return torch.tensor(math.nan), {"nfe_forward": math.nan}
        self._last = res
        nll = -res.log_prob.mean()
        objective = nll
        out: dict[str, float] = {"loss": float(nll.detach()),
                                 "nfe_forward": float(res.nfe_forward)}
        if res.kinetic is not None:
            kinetic = res.kinetic.mean()
            objective = objective + p.kinetic_weight * kinetic
            out["kinetic"] = float(kinetic.detach())
        if res.jacobian is not None:
            jac = res.jacobian.mean()
            objective = objective + p.jacobian_weight * jac
            out["jacobian_frobenius"] = float(jac.detach())
        if res.kinetic is not None or res.jacobian is not None:
            out["objective"] = float(objective.detach())
        return objective, out

    def after_backward(self) -> dict[str, float]:
        """``nfe_backward``: the adjoint solve's function evaluations (0 without adjoint);
        ``end_time`` with a learned T."""
        from bench.science.nets import ScaledTimeField

        out = {"nfe_backward": float(self._last.nfe_backward if self._last else 0)}
        if isinstance(self.v, ScaledTimeField):
            out["end_time"] = float(self.v.end_time().detach())
        return out

    # -- state ----------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"v": self.v}

    def extra_state(self) -> dict[str, Any]:
        return {"probe_rng": self.gen.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "probe_rng" in state:
            self.gen.set_state(state["probe_rng"])
