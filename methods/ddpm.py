"""DDPM (Ho et al. 2020): epsilon-prediction diffusion, scored two ways.

- ``extra_likelihoods(x)["elbo"]``: the variational bound (kind "bound") of the discrete
  reverse chain, L_T + sum_t L_{t-1} + L_0 (see `bench.diffusion`);
- ``log_prob(x)``: the likelihood of the same network's probability-flow ODE (kind "exact";
  "estimate" when the harness's ``divergence`` (``auto`` on more than 128 dimensions, i.e.
  images) takes Hutchinson's trace estimator; VP-SDE view, Song et al. 2021) through
  `bench.science.ode`, the engine InterFlow and the CNF use. DDPM time s runs data ->
  noise; the harness time is t = 1 - s.
  The network index of continuous time s is ``sT - 1`` (trained on the integers 0..T-1), and
  the density is evaluated at ``s_min`` (default 1/T, the noise level of x_1: index 0, the
  smallest one the network was trained on).

Data: vectors (2-D, tabular) use an MLP and a Gaussian decoder density; images
(event shape (C, H, W), 8-bit values scaled to [-1, 1] by v -> 2v/255 - 1) use Ho et al.'s
U-Net, the discretized Gaussian decoder and clipping of the predicted x_0 to [-1, 1] in the
bound and in sampling. On images the bound is a log-probability of the 8-bit image (the
discretized decoder), while ``log_prob`` is the PF-ODE density of the point it is given: the
harness dequantizes the test images uniformly and adds D log(2/255) (`bench.science.metrics`).

Optimisation is the harness's (``DDPM.default_optim``): Adam, lr 2e-4 on images (Ho et al.)
and 1e-3 on vectors, gradient clipping at norm 1; Ho et al.'s EMA of the weights is
``ema=0.9999`` (with their warm-up of the decay, ``ema_warmup``, on by default) and their
learning-rate warm-up ``warmup=5000``.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from bench.api import (
    LogLikelihood,
    Method,
    RunContext,
    Splits,
    at_least,
    in_range,
    non_negative,
)
from bench.api.errors import ConfigError
from bench.science.unet_config import UNetParams

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

__all__ = ["DDPM"]

log = logging.getLogger(__name__)


@dataclass
class Params(UNetParams):
    """DDPM settings. Defaults follow Ho et al. where they apply (T, noise schedule, the
    U-Net of images: the shared ``unet_*`` fields and ``dropout`` of
    `bench.science.unet_config.UNetParams`); the optimiser's (lr, grad_clip, warmup, ema)
    are the harness's shared settings."""

    # diffusion steps (linear betas scaled by 1000/T when T != 1000)
    T: int = field(default=1000, metadata=at_least(2))
    noise_schedule: Literal["linear", "cosine"] = "linear"  # of the betas (lr: `schedule`)
    loss: Literal["simple", "vlb", "hybrid"] = "simple"
    # lambda of the hybrid loss L_simple + lambda L_vlb
    vlb_weight: float = field(default=0.001, metadata=non_negative())
    variance: Literal["fixedlarge", "fixedsmall"] = "fixedlarge"  # sigma_t^2 = beta_t | beta~_t
    sampler: Literal["ancestral", "ddim"] = "ancestral"
    # 0: all T steps; k < T: k evenly spaced steps (respaced chain)
    sample_steps: int = field(default=0, metadata=non_negative())
    hidden: tuple[int, ...] = field(default=(256, 256, 256), metadata=at_least(1))  # MLP
    activation: Literal["softplus", "tanh", "relu", "elu", "silu", "gelu"] = "silu"
    time_embed_dim: int = field(default=128, metadata=at_least(2))  # sin and cos pairs
    batch_size: int = field(default=128, metadata=at_least(1))
    # 0: every KL term; k > 0: unbiased estimate from k draws of t
    elbo_t_draws: int = field(default=0, metadata=non_negative())
    # draws of t in the bound estimate used for early stopping (0: every KL term)
    val_t_draws: int = field(default=100, metadata=non_negative())
    # PF-ODE density at s_min; None: 1/T
    ode_s_min: float | None = field(default=None, metadata=in_range(0, 1, lo_open=True,
                                                                     hi_open=True))
    eval_chunk: int = field(default=1000, metadata=at_least(1))  # rows per batch, eval


def _generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator seeded from the run seed and a purpose, so that evaluation noise never
    coincides with data drawn from a generator seeded with the run seed itself."""
    import torch

    return torch.Generator().manual_seed(zlib.crc32(f"ddpm-{purpose}-{seed}".encode()))



class DDPM(Method):
    """DDPM (Ho et al. 2020): PF-ODE exact likelihood, ELBO bound, ancestral/DDIM sampling."""

    name = "ddpm"
    Params = Params
    test_params = {"T": 100, "hidden": (32, 32), "time_embed_dim": 16, "batch_size": 64,
                   "unet_ch": 8, "unet_ch_mult": (1, 2), "unet_num_res_blocks": 1,
                   "unet_attn_resolutions": (4,), "dropout": 0.0, "eval_chunk": 256}
    likelihood = "exact"
    event_ranks = (1, 3)

    @classmethod
    def default_optim(cls, kind: str) -> dict[str, Any]:
        """Adam with lr 2e-4 on images (Ho et al.), 1e-3 on vectors; clipping at norm 1;
        the EMA decay, when switched on with ``ema``, warms up as in Ho et al."""
        return {"lr": 2e-4 if kind == "image" else 1e-3, "grad_clip": 1.0,
                "ema_warmup": True}

    def __init__(self, params: Params, splits: Splits, ctx: RunContext) -> None:
        from bench.science.diffusion import DiffusionSchedule
        from bench.science.unet import EpsMLP, build_unet

        super().__init__(params, splits, ctx)
        p = params
        self.image = len(self.event_shape) == 3
        self.dim = splits.dim
        self.schedule = DiffusionSchedule.from_name(p.noise_schedule, p.T)
        if self.image:
            lo, hi = float(splits.train.min()), float(splits.train.max())
            if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
                raise ConfigError(f"ddpm expects images scaled to [-1, 1], got [{lo}, {hi}]")
            self.net: nn.Module = build_unet(p, self.event_shape)
        else:
            self.net = EpsMLP(self.dim, tuple(p.hidden), p.activation, p.time_embed_dim)
        self.net.to(ctx.device)
        self.decoder = "discretized" if self.image else "gaussian"

    # training -------------------------------------------------------------------------
    def loss(self, batch: Tensor, step: int = 0) -> tuple[Tensor, dict[str, float]]:
        """The loss on (b, *event_shape) data, per ``Params.loss``: ``simple`` mean
        ||eps - eps_theta||^2 (Ho et al.'s L_simple); ``vlb`` the unbiased one-t estimate
        (T L_t + L_T) / D of the negative ELBO in nats/dim (no clipping, as Ho et al.'s
        training code); ``hybrid`` L_simple + vlb_weight * vlb. Metrics: ``mse``, ``vlb``."""
        import torch

        p, sch = self.params, self.schedule
        x_0 = batch.to(self.ctx.device)
        n = x_0.shape[0]
        t = torch.randint(0, p.T, (n,), device=x_0.device)
        noise = torch.randn_like(x_0)
        x_t = sch.q_sample(x_0, t, noise)
        eps = self.net(x_t, t.float())
        mse = ((eps - noise) ** 2).reshape(n, -1).mean(1).mean()
        out = {"mse": float(mse.detach())}
        loss = mse
        if p.loss != "simple":
            vb = sch.vb_term(x_0, x_t, t, eps, p.variance, self.decoder, clip=False)
            vlb = ((p.T * vb + sch.prior_kl(x_0)) / self.dim).mean()
            loss = vlb if p.loss == "vlb" else mse + p.vlb_weight * vlb
            out["vlb"] = float(vlb.detach())
        return loss, out

    def _eval_net(self) -> nn.Module:
        """The network in eval mode (the harness swaps the EMA weights in when it has one)."""
        return self.net.eval()

    def _eps(self, net: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        return net(x, t.to(device=x.device, dtype=x.dtype))

    # sampling -------------------------------------------------------------------------
    def sample(self, n: int) -> Tensor:
        """n samples (n, *event_shape): ancestral (the respaced chain of Nichol and Dhariwal
        when sample_steps < T) or deterministic DDIM (eta = 0). NFE = number of steps."""
        import torch

        p = self.params
        k = p.sample_steps if 0 < p.sample_steps < p.T else p.T
        steps = torch.linspace(0, p.T - 1, k, dtype=torch.float64).round().long().unique()
        out = [self._sample_chunk(m, steps) for m in _chunks(n, p.eval_chunk)]
        return torch.cat(out) if out else torch.empty(0, *self.event_shape)

    def _sample_chunk(self, n: int, steps: Tensor) -> Tensor:
        import torch

        with torch.no_grad():
            p, ab_all = self.params, self.schedule.alphas_cumprod
            net = self._eval_net()
            x = torch.randn(n, *self.event_shape, device=self.ctx.device)
            for j in reversed(range(len(steps))):
                t = int(steps[j])
                ab = float(ab_all[t])
                ab_prev = float(ab_all[steps[j - 1]]) if j > 0 else 1.0
                eps = self._eps(net, x, torch.full((n,), float(t)))
                x_0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
                if self.image:
                    x_0 = x_0.clamp(-1.0, 1.0)
                    eps = (x - math.sqrt(ab) * x_0) / math.sqrt(1 - ab)
                if p.sampler == "ddim":
                    x = math.sqrt(ab_prev) * x_0 + math.sqrt(1 - ab_prev) * eps
                    continue
                beta = 1 - ab / ab_prev
                x = (beta * math.sqrt(ab_prev) * x_0 + (1 - ab_prev) * math.sqrt(1 - beta) * x) / (
                    1 - ab)
                if j > 0:
                    var = beta * (1 - ab_prev) / (1 - ab) if p.variance == "fixedsmall" else beta
                    x = x + math.sqrt(var) * torch.randn_like(x)
            return x.cpu()

    # likelihoods ----------------------------------------------------------------------
    def log_prob(self, x: Tensor) -> LogLikelihood:
        """Log-density (n,) of the probability-flow ODE model at s_min at the points
        x (n, *event_shape), through the harness's engine and solver settings: kind "exact",
        or "estimate" when the engine used Hutchinson's trace estimator."""
        from bench.science.diffusion import VPProbabilityFlow
        from bench.science.ode import standard_normal_log_prob

        p, sch, cfg = self.params, self.schedule, self.ctx.solver
        if self.ctx.engine is None:
            raise ConfigError("this RunContext has no ODE engine: build it with "
                              "bench.harness.make_context")
        net = self._eval_net()
        s_min = p.ode_s_min if p.ode_s_min is not None else 1.0 / p.T

        def score(s: Tensor, x_s: Tensor) -> Tensor:
            sigma = float(sch.vp_sigma(s))
            return -self._eps(net, x_s, sch.index(s).expand(x_s.shape[0])) / sigma

        flow = VPProbabilityFlow(sch, score)
        x = x.to(self.ctx.device)
        if cfg.divergence == "exact" and self.dim > cfg.AUTO_EXACT_MAX_DIM:
            log.warning("ddpm: exact divergence of a %d-dim image field costs %d "
                        "vector-Jacobian products per evaluation; consider "
                        "divergence=hutchinson", self.dim, self.dim)
        ll = self.ctx.engine.log_likelihood(flow, x, standard_normal_log_prob, t=1.0 - s_min)
        est = f"pf-ode (VP, s_min={s_min:g}, index sT-1) {ll.estimator}"
        return LogLikelihood(values=ll.values.cpu(), kind=ll.kind, estimator=est, nfe=ll.nfe)

    def extra_likelihoods(self, x: Tensor) -> dict[str, LogLikelihood]:
        """{"elbo": the negative-ELBO bound as a log-likelihood lower bound (n,)}."""
        return {"elbo": self._bound(x, self.params.elbo_t_draws, "elbo")}

    def validation_likelihood(self, x: Tensor) -> LogLikelihood:
        """Early stopping uses the bound estimated from `val_t_draws` draws of t (the ODE
        likelihood costs hundreds of function evaluations per validation)."""
        return self._bound(x, self.params.val_t_draws, "val")

    def _bound(self, x: Tensor, draws: int, purpose: str) -> LogLikelihood:
        import torch

        p = self.params
        gen = _generator(self.ctx.seed, purpose)
        values = torch.cat([self._neg_elbo(xc, gen, draws)
                            for xc in torch.split(x, p.eval_chunk)])
        if draws > 0:
            terms = (f"unbiased estimate of sum_t L_(t-1) from {draws} uniform draws "
                     f"of t in 1..{p.T - 1} per example (weight (T-1)/{draws})")
        else:
            terms = f"sum of all {p.T - 1} KL terms L_(t-1), one x_t draw each"
        dec = ("L_0 = discretized Gaussian decoder (8-bit bins of [-1,1], x_0 clipped)"
               if self.image else "L_0 = Gaussian decoder density -log N(x_0; mu(x_1,1), s_1^2)")
        est = (f"negative ELBO (Ho et al.) L_T + {terms} + {dec}; T={p.T} {p.noise_schedule} "
               f"{p.variance} variance, nats")
        return LogLikelihood(values=-values.float(), kind="bound", estimator=est,
                             nfe=(draws or p.T - 1) + 1)

    def _neg_elbo(self, x_0: Tensor, gen: torch.Generator, draws: int) -> Tensor:
        import torch

        with torch.no_grad():
            p, sch = self.params, self.schedule
            net = self._eval_net()
            x_0 = x_0.to(self.ctx.device)
            n = x_0.shape[0]

            def term(t: Tensor) -> Tensor:
                noise = torch.randn(x_0.shape, generator=gen).to(x_0)
                x_t = sch.q_sample(x_0, t, noise)
                eps = self._eps(net, x_t, t)
                return sch.vb_term(x_0, x_t, t, eps, p.variance, self.decoder,
                                   clip=self.image).double()

            total = sch.prior_kl(x_0).double() + term(torch.zeros(n, dtype=torch.long))
            if draws > 0:
                for _ in range(draws):
                    t = torch.randint(1, p.T, (n,), generator=gen)
                    total += (p.T - 1) / draws * term(t)
            else:
                for i in range(1, p.T):
                    total += term(torch.full((n,), i, dtype=torch.long))
            return total.cpu()

    # state ----------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}


def _chunks(n: int, size: int) -> list[int]:
    return [min(size, n - i) for i in range(0, n, size)]
