"""InterFlow (Albergo and Vanden-Eijnden, ICLR 2023): a flow trained by stochastic
interpolants with a quadratic loss and no ODE solve.

With x_t = I_t(x_0, x_1) between a base sample x_0 (t=0) and a data sample x_1 (t=1), the
velocity v_t(x) minimises G(v) = E_{t, x_0, x_1}[|v_t(x_t)|^2 - 2 dI_t/dt . v_t(x_t)]
whose minimiser is v_t(x) = E[dI_t/dt | x_t = x]. Sampling and likelihood integrate
dX/dt = v_t(X) with the harness's shared engine (`bench.science.ode`).

Vectors (n, d) use an MLP (`bench.science.nets`); images (n, C, H, W) use Ho et al.'s DDPM
U-Net as the velocity (`bench.science.unet.VelocityUNet`, time embedding of 1000 t; the same
``unet_*`` fields as DDPM and the CNF), a N(0, I) base of the image shape, and the loss summed
over every non-batch dimension.

Stochastic interpolants (Albergo, Boffi and Vanden-Eijnden 2023): ``gamma`` != none adds a
latent gamma(t) z to the path; ``objective`` chooses what is learned (the drift b; b and the
score s; b and the denoiser eta = E[z | x_t], s = -eta / gamma; or v and eta with
b = v - gamma gamma' s); ``sampler=sde`` samples dX = (b + eps s) dt + sqrt(2 eps) dW
(`bench.science.sde`). With gamma = none and a score objective the interpolant is one-sided
(the N(0, I) base is the latent). ``log_prob`` stays the exact probability-flow ODE
likelihood of b; with a score, ``extra_likelihoods`` adds the backward-SDE estimate
(``test_nll_sde``, kind "estimate"), and ``samplers()`` offers ODE and SDE samples of the
same model. Optimisation on images: ``InterFlow.image_optim`` (Albergo, Boffi and
Vanden-Eijnden 2023, Table 3). ``coupling=ot`` pairs each batch's x_0 and x_1 by their exact
optimal transport plan (OT-CFM, `bench.science.couplings`): training changes, not the
likelihood (the exact ODE likelihood of the learned field).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from bench.api import (
    ConfigError,
    DatasetRef,
    FlowMethod,
    RunContext,
    Splits,
    at_least,
    in_range,
    non_negative,
    positive,
)
from bench.science.unet_config import UNetParams

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = ["InterFlow", "InterFlowParams"]


@dataclass
class InterFlowParams(UNetParams):
    """InterFlow settings (the optimiser's are the harness's shared ``OptimConfig``: lr,
    schedule, warmup, grad_clip, ema, ...; this method's defaults are ``InterFlow.optim``).

    Attributes:
        interpolant: I_t(x_0, x_1) (`bench.science.interpolants`); learned: sine series
            on the trig path, maximised by the paper's max-min to shorten the path
            (`bench.science.learned_paths`; deterministic, gamma=none, objective velocity).
        path_modes, path_lr_factor: the learned path's sine modes and relative learning rate.
        record_path: log the path length (kinetic energy of v along the path, with its
            standard error, and E|dI/dt|^2) at step 0, every tenth of the budget and the
            last step (always on with interpolant=learned).
        net, hidden, activation: the velocity network of vectors (`bench.science.nets`).
        unet_ch, unet_ch_mult, unet_num_res_blocks, unet_attn_resolutions, dropout: the
            velocity U-Net of images (`bench.science.unet_config.UNetParams`).
        time_dist, beta_a, beta_b: distribution of t in the loss (uniform or Beta(a, b)).
        base: the base density at t=0: None (``base=none``, the default) for N(0, I), or a
            dataset selection with the data's event shape (e.g. ``base=8gaussians``; its
            closed-form density gives the likelihood; without one the
            method reports no likelihood).
        gamma, gamma_a: the latent's scale: none (deterministic, ICLR 2023), sqrt
            (sqrt(gamma_a t (1 - t))), t1mt (t (1 - t)), sin2 (sin^2(pi t)).
        objective: what is learned: velocity (b), velocity_score (b, s), velocity_denoiser
            (b, eta), split (v, eta); auto: velocity_denoiser with ``sampler=sde`` and
            eps > 0, else velocity.
        sampler, eps, eps_schedule, sde_steps, sde_method: ``sample(n)`` by the ODE or the
            forward SDE with eps(t) = eps * (1 | 4 t (1 - t)), fixed steps, Euler-Maruyama
            or Heun.
        antithetic: each loss averaged over a draw and its antithetic partner with the same
            (x_1, t): z -> -z with a latent (gamma != none), else x_0 -> -x_0 (the N(0, I)
            base is the Gaussian part; needs ``base=none``).
        t_min: with a latent or a score, training times and the fields' times lie in
            [t_min, 1 - t_min] (gamma' and 1/gamma are singular at the ends).
        sde_likelihood: report the backward-SDE likelihood estimate (needs a score).
        coupling: how a batch pairs x_0 and x_1: independent, or ot (minibatch optimal
            transport, Tong et al. 2023; a fixed deterministic path, `bench.science.couplings`).
    """

    interpolant: Literal["trig", "linear", "quadratic", "vp", "encdec", "learned"] = "trig"
    path_modes: int = field(default=4, metadata=at_least(1))
    path_lr_factor: float = field(default=0.3, metadata=positive())
    record_path: bool = False
    net: Literal["mlp", "concat", "concatsquash"] = "mlp"
    hidden: tuple[int, ...] = field(default=(512, 512, 512), metadata=at_least(1))
    activation: Literal["softplus", "tanh", "relu", "elu", "silu", "gelu"] = "silu"
    batch_size: int = field(default=512, metadata=at_least(1))
    time_dist: Literal["uniform", "beta"] = "uniform"
    beta_a: float = field(default=1.0, metadata=positive())
    beta_b: float = field(default=1.0, metadata=positive())
    base: DatasetRef | None = None
    gamma: Literal["none", "sqrt", "t1mt", "sin2"] = "none"
    gamma_a: float = field(default=2.0, metadata=positive())
    objective: Literal["auto", "velocity", "velocity_score", "velocity_denoiser", "split"] = "auto"
    sampler: Literal["ode", "sde"] = "ode"
    eps: float = field(default=1.0, metadata=non_negative())
    eps_schedule: Literal["constant", "t1mt"] = "constant"
    sde_steps: int = field(default=200, metadata=at_least(1))
    sde_method: Literal["euler", "heun"] = "heun"
    antithetic: bool = False
    t_min: float = field(default=1e-3, metadata=in_range(0, 0.5, hi_open=True))
    sde_likelihood: bool = True
    coupling: Literal["independent", "ot"] = "independent"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.interpolant == "vp" and self.gamma_a >= 4:
            raise ValueError("gamma_a must be < 4 with interpolant=vp (gamma < 1)")
        if self.interpolant == "vp" and self.gamma == "sin2":
            raise ValueError("interpolant=vp needs gamma < 1: use gamma=sqrt or t1mt")
        if self.interpolant == "encdec" and self.gamma == "none":
            raise ValueError("interpolant=encdec needs a latent: gamma=sqrt|t1mt|sin2")
        if self.sampler == "sde" and self.eps > 0 and self.resolved_objective == "velocity":
            raise ValueError("sampler=sde with eps > 0 needs a score: objective="
                             "velocity_score|velocity_denoiser|split")
        if self.resolved_objective == "split" and self.gamma == "none":
            raise ValueError("objective=split needs gamma != none (b = v + gamma' eta)")
        if (self.resolved_objective != "velocity" and self.gamma == "none"
                and self.base is not None):
            raise ValueError("a one-sided score (gamma=none) needs the N(0, I) base")
        if self.antithetic and self.gamma == "none" and self.base is not None:
            raise ValueError("antithetic=true with gamma=none pairs x_0 with -x_0, which "
                             "needs the symmetric N(0, I) base (base=none)")
        if self.interpolant == "learned" and self.is_stochastic_interpolant:
            raise ValueError("interpolant=learned needs gamma=none and objective=velocity")
        if self.coupling == "ot" and (self.is_stochastic_interpolant or self.antithetic
                                      or self.record_path or self.interpolant == "learned"):
            raise ValueError("coupling=ot re-pairs x_0 and x_1 of a fixed deterministic path: "
                             "needs gamma=none, objective=velocity, interpolant != learned, "
                             "antithetic=false, record_path=false")
        if self.path_modes < 1 or not self.path_lr_factor > 0:
            raise ValueError("need path_modes >= 1 and path_lr_factor > 0")

    @property
    def resolved_objective(self) -> str:
        """The objective with ``auto`` resolved."""
        if self.objective != "auto":
            return self.objective
        sde = self.sampler == "sde" and self.eps > 0
        return "velocity_denoiser" if sde else "velocity"

    @property
    def is_stochastic_interpolant(self) -> bool:
        """Whether the stochastic-interpolant machinery is used (else ICLR 2023's, bit for bit)."""
        return self.gamma != "none" or self.resolved_objective != "velocity"


class InterFlow(FlowMethod):
    """InterFlow: drift (and score) of an interpolant, quadratic losses, ODE or SDE sampling."""

    name = "interflow"
    Params = InterFlowParams
    test_params = {"hidden": (16, 16), "batch_size": 64, "unet_ch": 8, "unet_ch_mult": (1, 2),
                   "unet_num_res_blocks": 1, "unet_attn_resolutions": (4,), "dropout": 0.0}
    optim: ClassVar[dict[str, Any]] = {"lr": 1e-3, "schedule": "cosine", "grad_clip": 1.0}
    #: images: Adam 2e-4 at a constant rate (the papers decay it by 0.985-0.995 per 1000
    #: epochs, about constant), clipping at 1, EMA 0.9999 with its decay warmed up
    image_optim: ClassVar[dict[str, Any]] = {"lr": 2e-4, "schedule": "constant", "grad_clip": 1.0,
                                             "ema": 0.9999, "ema_warmup": True}
    event_ranks = (1, 3)

    @classmethod
    def default_optim(cls, kind: str) -> dict[str, Any]:
        """``image_optim`` on images, ``optim`` (unchanged) on vectors."""
        return dict(cls.image_optim if kind == "image" else cls.optim)

    def __init__(self, params: InterFlowParams, splits: Splits, ctx: RunContext) -> None:
        import torch

        from bench.science.interpolants import get_interpolant
        from bench.science.nets import build_net
        from bench.science.unet import build_unet

        super().__init__(params, splits, ctx)
        if problem := self.supports("", self.event_shape):
            raise ConfigError(problem)
        self.dim = splits.dim
        self.dequantization = splits.dequantization

        def net() -> nn.Module:
            if len(self.event_shape) == 3:
                return build_unet(params, self.event_shape, velocity=True).to(ctx.device)
            return build_net(self.dim, params.hidden, params.activation, params.net).to(ctx.device)

        self.v: nn.Module = net()
        self.s: nn.Module | None = None
        self.stochastic_interpolant = None
        self.score: nn.Module | None = None
        if params.is_stochastic_interpolant:
            self._build_stochastic(net)
        elif params.interpolant == "learned":
            from bench.science.learned_paths import FourierInterpolant

            self.interpolant = FourierInterpolant(params.path_modes, params.path_lr_factor)
            self.interpolant.to(ctx.device)
        else:
            self.interpolant = get_interpolant(params.interpolant)
        self.record_path = (params.interpolant == "learned" or params.record_path
                            ) and self.stochastic_interpolant is None
        self._train_rows = splits.train if self.record_path else None
        self.gen = torch.Generator(device="cpu").manual_seed(ctx.seed)
        self.base_dataset = None
        if params.base is not None:
            self.base_dataset = ctx.datasets.get("base")
            if self.base_dataset is None:
                raise ConfigError(f"base {params.base!r}: the harness passes the dataset as "
                                  "ctx.datasets['base']")
            base_shape = tuple(self.base_dataset.splits().event_shape)
            if base_shape != tuple(splits.event_shape):
                raise ConfigError(f"base {params.base!r} has shape {base_shape}, data has "
                                  f"{tuple(splits.event_shape)}")
            if not self.base_dataset.has_log_prob:
                self.likelihood = "none"  # no closed-form base density: no NLL

    def _build_stochastic(self, net) -> None:
        from bench.science.si_objectives import OBJECTIVES, DriftField, ScoreField
        from bench.science.si_paths import build_stochastic_interpolant

        p = self.params
        self.stochastic_interpolant = build_stochastic_interpolant(
            p.interpolant, p.gamma, p.gamma_a, p.t_min, one_sided=p.gamma == "none")
        learned = OBJECTIVES[p.resolved_objective]
        if len(learned) > 1:
            self.s = net()
        self.fields = nets = dict(zip(learned, (self.v, self.s), strict=False))
        self.drift = DriftField(nets, self.stochastic_interpolant)
        self.score = ScoreField(nets, self.stochastic_interpolant) if self.s is not None else None

    # -- the base density (t = 0) -------------------------------------------------------
    def base_sample(self, n: int) -> Tensor:
        import torch

        if self.base_dataset is not None:
            x = self.base_dataset.sample(n, generator=self.gen)
        else:
            x = torch.randn(n, *self.event_shape, generator=self.gen)
        return x.to(self.ctx.device)

    def base_log_prob(self, x_0: Tensor) -> Tensor:
        if self.base_dataset is not None:
            return self.base_dataset.log_prob(x_0)
        return super().base_log_prob(x_0)

    def velocity_field(self) -> nn.Module:
        return self.v if self.stochastic_interpolant is None else self.drift

    # -- sampling and the SDE likelihood ------------------------------------------------
    def _sde_config(self):
        from bench.science.sde import SDEConfig

        p = self.params
        return SDEConfig(steps=p.sde_steps, method=p.sde_method, eps=p.eps,
                         schedule=p.eps_schedule)

    def sample_sde(self, n: int) -> Tensor:
        """n samples of the forward SDE dX = (b + eps s) dt + sqrt(2 eps) dW from the base."""
        from bench.science.sde import sde_integrate

        return sde_integrate(self.velocity_field(), self.score, self.base_sample(n), 0.0, 1.0,
                             self._sde_config(), self.gen)

    def sample(self, n: int, t: float = 1.0) -> Tensor:
        if self.params.sampler == "sde" and t == 1.0:
            return self.sample_sde(n)
        return super().sample(n, t)

    @property
    def default_sampler(self) -> str:
        """Which of `samplers` ``sample`` is (the harness scores it once)."""
        return self.params.sampler

    def samplers(self) -> dict[str, Any]:
        """{"ode": n -> samples, "sde": n -> samples} of the same model (SDE: with a score)."""
        out: dict[str, Any] = {"ode": lambda n: FlowMethod.sample(self, n)}
        if self.score is not None:
            out["sde"] = self.sample_sde
        return out

    def extra_likelihoods(self, x: Tensor) -> dict[str, Any]:
        """{"sde": the backward-SDE estimate of log p(x)} with a score, eps > 0, real-valued
        data and ``sde_likelihood``; else {}. One path per example (the harness's standard
        error over examples covers the estimator's noise), the Ito control variate on."""
        import torch

        from bench.api import LogLikelihood
        from bench.science.sde import sde_log_likelihood

        p = self.params
        if (self.score is None or not p.sde_likelihood
                or p.eps <= 0 or self.dequantization != "none"):
            return {}
        cfg, solver = self._sde_config(), self.ctx.solver
        div = solver.divergence_for(self.dim)
        gen = torch.Generator().manual_seed(self.ctx.seed + 7919)
        vals = [sde_log_likelihood(self.velocity_field(), self.score, xc, self.base_log_prob,
                                   cfg, gen, divergence=div).values
                for xc in torch.split(x, solver.chunk_for(x.device))]
        label = (f"backward {cfg.label()} euler-maruyama, ito control variate, div={div}, "
                 "1 path/example")
        return {"sde": LogLikelihood(values=torch.cat(vals), kind="estimate",
                                     estimator=label, nfe=cfg.steps)}

    # -- training -----------------------------------------------------------------------
    def sample_time(self, n: int) -> Tensor:
        import torch

        p = self.params
        if p.time_dist == "beta":
            dist = torch.distributions.Beta(torch.tensor(p.beta_a), torch.tensor(p.beta_b))
            seed = int(torch.randint(2**31 - 1, (1,), generator=self.gen))  # Beta has no generator
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                t = dist.sample((n,))
        else:
            t = torch.rand(n, generator=self.gen)
        return t.to(self.ctx.device)

    def loss(self, batch: Tensor, step: int = 0) -> Tensor | tuple[Tensor, dict[str, float]]:
        """G(v) on a batch of data x_1 (n, *event_shape) with fresh base samples and times:
        the mean over the batch of |v|^2 - 2 dI/dt . v, summed over every non-batch
        dimension. With the stochastic interpolant: the sum of its fields' losses."""
        if self.stochastic_interpolant is not None:
            return self._stochastic_loss(batch)
        x_1 = batch.to(self.ctx.device)
        x_0, t = self.base_sample(x_1.shape[0]), self.sample_time(x_1.shape[0])
        if self.params.coupling == "ot":  # OT-CFM: pairs drawn from the batch's exact OT plan
            from bench.science.couplings import couple

            x_0, x_1 = couple(x_0, x_1, "ot", self.gen)
        if self.params.antithetic:  # each (x_1, t) with x_0 and -x_0, in one forward pass
            import torch

            x_0, x_1, t = torch.cat([x_0, -x_0]), torch.cat([x_1, x_1]), torch.cat([t, t])
        n = x_1.shape[0]
        path = self.interpolant.sample(x_0, x_1, t)
        v = self.v(path.t, path.x_t)
        v, dx_t = v.reshape(n, -1), path.dx_t.reshape(n, -1)  # views: (n, D)
        objective = ((v * v).sum(1) - 2 * (dx_t * v).sum(1)).mean()
        if self.record_path and self._path_step(step):
            return objective, self.path_metrics()
        return objective

    def _path_step(self, step: int) -> bool:
        """Step 0, every tenth of the budget (500 steps without one) and the last step."""
        total = self.ctx.max_steps
        every = max(1, total // 10) if total else 500
        return step % every == 0 or (total is not None and step == total - 1)

    def path_metrics(self, n: int | None = None, n_t: int = 16) -> dict[str, float]:
        """``path_length`` = int_0^1 E|v_t(x_t)|^2 dt of the live v along the path (Gauss-
        Legendre in t, n draws per node, the same draws at every call), its standard error
        ``path_length_se`` and ``path_dI2`` = E|dI/dt|^2 (`learned_paths.path_metrics`)."""
        from bench.science.learned_paths import path_metrics

        return path_metrics(self.v, self.interpolant, self._train_rows, self.event_shape,
                            base=self.base_dataset, seed=self.ctx.seed + 104729,
                            n=n or (256 if len(self.event_shape) == 3 else 2048), n_t=n_t,
                            device=self.ctx.device)

    def _stochastic_loss(self, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The sum of the quadratic losses of the learned fields (`bench.science.si_objectives`)
        at t in [t_min, 1 - t_min], with fresh x_0, t, z."""
        import torch

        from bench.science.si_objectives import interpolant_losses

        x_1 = batch.to(self.ctx.device)
        n, t_min = x_1.shape[0], self.params.t_min
        x_0 = self.base_sample(n)
        t = t_min + (1.0 - 2.0 * t_min) * self.sample_time(n)
        z = torch.randn(x_1.shape, generator=self.gen).to(self.ctx.device)
        losses = interpolant_losses(self.fields, self.stochastic_interpolant, x_0, x_1, t, z,
                                    self.params.antithetic)
        total = sum(losses.values())
        return total, {f"loss_{k}": float(v.detach()) for k, v in losses.items()}

    # -- state ----------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        out = {"v": self.v} if self.s is None else {"v": self.v, "s": self.s}
        if self.stochastic_interpolant is None and self.params.interpolant == "learned":
            out["path"] = self.interpolant  # the harness's one optimiser ascends it
        return out

    def extra_state(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "gen" in state:
            self.gen.set_state(state["gen"])
