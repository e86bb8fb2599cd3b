"""DDPM (Ho et al. 2020): epsilon-prediction diffusion, scored two ways.

- ``extra_likelihoods(x)["elbo"]``: the variational bound (kind "bound") of the discrete
  reverse chain, L_T + sum_t L_{t-1} + L_0 (see `bench.diffusion`);
- ``log_prob(x)``: the exact likelihood (kind "exact") of the same network's
  probability-flow ODE (VP-SDE view, Song et al. 2021) through `bench.science.ode`, the engine
  InterFlow and the CNF use. DDPM time s runs data -> noise; the harness time is t = 1 - s.
  The network index of continuous time s is ``sT - 1`` (trained on the integers 0..T-1), and
  the density is evaluated at ``s_min`` (default 1/T, the noise level of x_1: index 0, the
  smallest one the network was trained on).

Data: vectors (2-D, tabular) use an MLP and a Gaussian decoder density; images
(event shape (C, H, W), 8-bit values scaled to [-1, 1] by v -> 2v/255 - 1) use Ho et al.'s
U-Net, the discretized Gaussian decoder and clipping of the predicted x_0 to [-1, 1] in the
bound and in sampling. Image likelihoods are log-probabilities of the 8-bit image: the
PF-ODE density is evaluated at uniformly dequantized points x + u, u ~ U(-1/255, 1/255)^D,
plus D log(2/255) (Jensen: a lower bound on the bin probability; bits/dim = -ll / (D ln 2)).
"""

from __future__ import annotations

import copy
import logging
import math
import zlib
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from bench.api import LogLikelihood, Method, RunContext, Splits
from bench.science.diffusion import DiffusionSchedule, VPProbabilityFlow
from bench.science.ode import log_likelihood, standard_normal_log_prob
from bench.api.errors import ConfigError
from bench.science.unet import EpsMLP, UNet

__all__ = ["DDPM"]

log = logging.getLogger(__name__)


@dataclass
class Params:
    """DDPM settings. Defaults follow Ho et al. where they apply (T, schedule, grad clip)."""

    T: int = 1000  # diffusion steps (linear betas scaled by 1000/T when T != 1000)
    schedule: Literal["linear", "cosine"] = "linear"
    loss: Literal["simple", "vlb", "hybrid"] = "simple"
    vlb_weight: float = 0.001  # lambda of the hybrid loss L_simple + lambda L_vlb
    variance: Literal["fixedlarge", "fixedsmall"] = "fixedlarge"  # sigma_t^2 = beta_t | beta~_t
    sampler: Literal["ancestral", "ddim"] = "ancestral"
    sample_steps: int = 0  # 0: all T steps; k < T: k evenly spaced steps (respaced chain)
    hidden: tuple[int, ...] = (256, 256, 256)  # MLP (vector data)
    activation: str = "silu"
    time_embed_dim: int = 128
    unet_ch: int = 128  # U-Net (image data)
    unet_ch_mult: tuple[int, ...] | None = None  # None: (1,2,2,2), or (1,2,2) if H % 8 != 0
    unet_num_res_blocks: int = 2
    unet_attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1  # U-Net only
    lr: float | None = None  # None: 2e-4 for images (Ho et al.), 1e-3 for vectors
    batch_size: int = 128
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    warmup_steps: int = 0  # linear learning-rate warm-up (Ho et al.: 5000 on CIFAR-10)
    ema: bool = False  # evaluate with an exponential moving average of the weights
    ema_decay: float = 0.9999  # effective decay min(decay, (1 + n) / (10 + n)) after n updates
    elbo_t_draws: int = 0  # 0: every KL term; k > 0: unbiased estimate from k draws of t
    val_t_draws: int = 100  # draws of t in the bound estimate used for early stopping
    ode_s_min: float | None = None  # PF-ODE density at s_min; None: 1/T
    eval_chunk: int = 1000  # rows per batch in sampling and in the bound


def _generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator seeded from the run seed and a purpose, so that evaluation noise never
    coincides with data drawn from a generator seeded with the run seed itself."""
    return torch.Generator().manual_seed(zlib.crc32(f"ddpm-{purpose}-{seed}".encode()))



class DDPM(Method):
    """DDPM (Ho et al. 2020): PF-ODE exact likelihood, ELBO bound, ancestral/DDIM sampling."""

    name = "ddpm"
    Params = Params
    test_params = {"T": 100, "hidden": (32, 32), "time_embed_dim": 16, "batch_size": 64,
                   "unet_ch": 8, "unet_ch_mult": (1, 2), "unet_num_res_blocks": 1,
                   "unet_attn_resolutions": (4,), "dropout": 0.0, "eval_chunk": 256}
    likelihood = "exact"

    def __init__(self, params: Params, splits: Splits, ctx: RunContext) -> None:
        super().__init__(params, splits, ctx)
        p = params
        self.image = len(self.event_shape) == 3
        self.dim = splits.dim
        self.schedule = DiffusionSchedule.from_name(p.schedule, p.T)
        if self.image:
            lo, hi = float(splits.train.min()), float(splits.train.max())
            if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
                raise ConfigError(f"ddpm expects images scaled to [-1, 1], got [{lo}, {hi}]")
            c, h, _ = self.event_shape
            mult = p.unet_ch_mult or ((1, 2, 2, 2) if h % 8 == 0 else (1, 2, 2))
            self.net: nn.Module = UNet(c, h, p.unet_ch, tuple(mult), p.unet_num_res_blocks,
                                       tuple(p.unet_attn_resolutions), p.dropout)
        else:
            self.net = EpsMLP(self.dim, tuple(p.hidden), p.activation, p.time_embed_dim)
        self.net.to(ctx.device)
        self.decoder = "discretized" if self.image else "gaussian"
        self.lr = p.lr if p.lr is not None else (2e-4 if self.image else 1e-3)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        self.ema_net: nn.Module | None = None
        if p.ema:
            self.ema_net = copy.deepcopy(self.net).requires_grad_(False)
        self.n_updates = 0

    # training -------------------------------------------------------------------------
    def train_step(self, batch: Tensor, step: int) -> dict[str, float]:
        """One Adam step on (b, *event_shape) data; loss per ``Params.loss``:
        ``simple`` mean ||eps - eps_theta||^2 (Ho et al.'s L_simple); ``vlb`` the unbiased
        one-t estimate (T L_t + L_T) / D of the negative ELBO in nats/dim (no clipping, as
        Ho et al.'s training code); ``hybrid`` L_simple + vlb_weight * vlb."""
        p, sch = self.params, self.schedule
        self.net.train()
        x_0 = batch.to(self.ctx.device)
        n = x_0.shape[0]
        t = torch.randint(0, p.T, (n,), device=x_0.device)
        noise = torch.randn_like(x_0)
        x_t = sch.q_sample(x_0, t, noise)
        eps = self.net(x_t, t.float())
        mse = ((eps - noise) ** 2).reshape(n, -1).mean(1).mean()
        out = {"mse": mse.item()}
        loss = mse
        if p.loss != "simple":
            vb = sch.vb_term(x_0, x_t, t, eps, p.variance, self.decoder, clip=False)
            vlb = ((p.T * vb + sch.prior_kl(x_0)) / self.dim).mean()
            loss = vlb if p.loss == "vlb" else mse + p.vlb_weight * vlb
            out["vlb"] = vlb.item()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if p.grad_clip > 0:
            out["grad_norm"] = float(nn.utils.clip_grad_norm_(self.net.parameters(),
                                                              p.grad_clip))
        if p.warmup_steps > 0:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr * min(1.0, (step + 1) / p.warmup_steps)
        self.optimizer.step()
        self.n_updates += 1
        if self.ema_net is not None:
            decay = min(p.ema_decay, (1 + self.n_updates) / (10 + self.n_updates))
            with torch.no_grad():
                for e, w in zip(self.ema_net.parameters(), self.net.parameters(), strict=True):
                    e.lerp_(w, 1.0 - decay)
                for e, w in zip(self.ema_net.buffers(), self.net.buffers(), strict=True):
                    e.copy_(w)
        out["loss"] = loss.item()
        return out

    def _eval_net(self) -> nn.Module:
        net = self.ema_net if self.ema_net is not None else self.net
        return net.eval()

    def _eps(self, net: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        return net(x, t.to(device=x.device, dtype=x.dtype))

    # sampling -------------------------------------------------------------------------
    def sample(self, n: int) -> Tensor:
        """n samples (n, *event_shape): ancestral (the respaced chain of Nichol and Dhariwal
        when sample_steps < T) or deterministic DDIM (eta = 0). NFE = number of steps."""
        p = self.params
        k = p.sample_steps if 0 < p.sample_steps < p.T else p.T
        steps = torch.linspace(0, p.T - 1, k, dtype=torch.float64).round().long().unique()
        self.ctx.log_metrics({"sample_nfe": float(len(steps))}, None)
        out = [self._sample_chunk(m, steps) for m in _chunks(n, p.eval_chunk)]
        return torch.cat(out) if out else torch.empty(0, *self.event_shape)

    @torch.no_grad()
    def _sample_chunk(self, n: int, steps: Tensor) -> Tensor:
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
        """Exact log-density (n,) of the probability-flow ODE model at s_min (images: of the
        8-bit bin, see the module docstring), with the harness's solver settings."""
        p, sch, cfg = self.params, self.schedule, self.ctx.solver_config()
        net = self._eval_net()
        s_min = p.ode_s_min if p.ode_s_min is not None else 1.0 / p.T

        def score(s: Tensor, x_s: Tensor) -> Tensor:
            sigma = float(sch.vp_sigma(s))
            return -self._eps(net, x_s, sch.index(s).expand(x_s.shape[0])) / sigma

        flow = VPProbabilityFlow(sch, score)
        x = x.to(self.ctx.device)
        offset, deq = 0.0, ""
        if self.image:
            if cfg.divergence == "exact":
                log.warning("ddpm: exact divergence of a %d-dim image field costs %d "
                            "vector-Jacobian products per evaluation; consider "
                            "divergence=hutchinson", self.dim, self.dim)
            gen = _generator(self.ctx.seed, "dequantization")
            u = (torch.rand(x.shape, generator=gen) * 2 - 1) / 255.0
            x = x + u.to(x)
            offset = self.dim * math.log(2.0 / 255.0)
            deq = ", uniform dequantization in the 8-bit bin + D log(2/255)"
        ll = log_likelihood(flow, x, standard_normal_log_prob, cfg, t=1.0 - s_min,
                            seed=self.ctx.seed)
        est = f"pf-ode (VP, s_min={s_min:g}, index sT-1) {ll.estimator}{deq}"
        return LogLikelihood(values=ll.values.cpu() + offset, kind="exact", estimator=est,
                             nfe=ll.nfe)

    def extra_likelihoods(self, x: Tensor) -> dict[str, LogLikelihood]:
        """{"elbo": the negative-ELBO bound as a log-likelihood lower bound (n,)}."""
        return {"elbo": self._bound(x, self.params.elbo_t_draws, "elbo")}

    def validation_likelihood(self, x: Tensor) -> LogLikelihood:
        """Early stopping uses the bound estimated from `val_t_draws` draws of t (the ODE
        likelihood costs hundreds of function evaluations per validation)."""
        return self._bound(x, self.params.val_t_draws, "val")

    def _bound(self, x: Tensor, draws: int, purpose: str) -> LogLikelihood:
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
        est = (f"negative ELBO (Ho et al.) L_T + {terms} + {dec}; T={p.T} {p.schedule} "
               f"{p.variance} variance, nats")
        return LogLikelihood(values=-values.float(), kind="bound", estimator=est,
                             nfe=(draws or p.T - 1) + 1)

    @torch.no_grad()
    def _neg_elbo(self, x_0: Tensor, gen: torch.Generator, draws: int) -> Tensor:
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

    def state_dict(self) -> dict:
        state = {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "n_updates": self.n_updates}
        if self.ema_net is not None:
            state["ema"] = self.ema_net.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.n_updates = int(state.get("n_updates", 0))
        if self.ema_net is not None:
            self.ema_net.load_state_dict(state.get("ema", state["net"]))


def _chunks(n: int, size: int) -> list[int]:
    return [min(size, n - i) for i in range(0, n, size)]
