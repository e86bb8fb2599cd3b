"""InterFlow (Albergo and Vanden-Eijnden, ICLR 2023): a flow trained by stochastic
interpolants with a quadratic loss and no ODE solve.

With x_t = I_t(x_0, x_1) between a base sample x_0 (t=0) and a data sample x_1 (t=1), the
velocity v_t(x) minimises G(v) = E_{t, x_0, x_1}[|v_t(x_t)|^2 - 2 dI_t/dt . v_t(x_t)]
whose minimiser is v_t(x) = E[dI_t/dt | x_t = x]. Sampling and likelihood integrate
dX/dt = v_t(X) with the harness's shared engine (`bench.science.ode`).

Vectors (n, d) use an MLP (`bench.science.nets`); images (n, C, H, W) use Ho et al.'s DDPM
U-Net as the velocity (`bench.science.unet.VelocityUNet`, time embedding of 1000 t; the same
``unet_*`` fields as DDPM and the CNF), a N(0, I) base of the image shape, and the loss summed
over every non-batch dimension. Optimisation on images (``InterFlow.default_optim("image")``):
Adam lr 2e-4, constant rate (the papers decay it by 0.985-0.995 per 1000 epochs), clipping
at norm 1, EMA of the weights 0.9999 with a warm-up of its decay (stochastic interpolants,
Albergo, Boffi and Vanden-Eijnden 2023, Table 3: lr 2e-4, EMA 0.9999 from step 10k).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from bench.api import ConfigError, DatasetRef, FlowMethod, RunContext, Splits
from bench.science.unet_config import UNetParams

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = ["InterFlow", "InterFlowParams"]


@dataclass
class InterFlowParams(UNetParams):
    """InterFlow settings (the optimiser's are the harness's shared ``OptimConfig``: lr,
    schedule, warmup, grad_clip, ema, ...; this method's defaults are ``InterFlow.optim``).

    Attributes:
        interpolant: I_t(x_0, x_1) (`bench.science.interpolants`).
        net, hidden, activation: the velocity network of vectors (`bench.science.nets`).
        unet_ch, unet_ch_mult, unet_num_res_blocks, unet_attn_resolutions, dropout: the
            velocity U-Net of images (`bench.science.unet_config.UNetParams`).
        time_dist, beta_a, beta_b: distribution of t in the loss (uniform or Beta(a, b)).
        base: the base density at t=0: None (``base=none``, the default) for N(0, I), or a
            dataset selection with the data's event shape (e.g. ``base=8gaussians``; its
            closed-form density gives the likelihood; without one the
            method reports no likelihood).
    """

    interpolant: Literal["trig", "linear", "quadratic"] = "trig"
    net: Literal["mlp", "concat", "concatsquash"] = "mlp"
    hidden: tuple[int, ...] = (512, 512, 512)
    activation: Literal["softplus", "tanh", "relu", "elu", "silu", "gelu"] = "silu"
    batch_size: int = 512
    time_dist: Literal["uniform", "beta"] = "uniform"
    beta_a: float = 1.0
    beta_b: float = 1.0
    base: DatasetRef | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.beta_a <= 0 or self.beta_b <= 0:
            raise ValueError("beta_a and beta_b must be > 0")


class InterFlow(FlowMethod):
    """InterFlow: velocity of a stochastic interpolant, quadratic loss, ODE sampling."""

    name = "interflow"
    Params = InterFlowParams
    test_params = {"hidden": (16, 16), "batch_size": 64, "unet_ch": 8, "unet_ch_mult": (1, 2),
                   "unet_num_res_blocks": 1, "unet_attn_resolutions": (4,), "dropout": 0.0}
    optim: ClassVar[dict[str, Any]] = {"lr": 1e-3, "schedule": "cosine", "grad_clip": 1.0}
    #: images: Adam 2e-4 at a constant rate (the papers decay it by 0.985-0.995 per 1000
    #: epochs, about constant), clipping at 1, EMA 0.9999 with its decay warmed up
    image_optim: ClassVar[dict[str, Any]] = {"lr": 2e-4, "schedule": "constant",
                                             "grad_clip": 1.0, "ema": 0.9999,
                                             "ema_warmup": True}
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
        problem = self.supports("", self.event_shape)
        if problem:
            raise ConfigError(problem)
        self.dim = splits.dim
        self.interpolant = get_interpolant(params.interpolant)
        if len(self.event_shape) == 3:
            self.v: nn.Module = build_unet(params, self.event_shape, velocity=True)
        else:
            self.v = build_net(self.dim, params.hidden, params.activation, params.net)
        self.v.to(ctx.device)
        self.gen = torch.Generator(device="cpu").manual_seed(ctx.seed)
        self.base_dataset = None
        if params.base is not None:
            self.base_dataset = ctx.datasets.get("base")
            if self.base_dataset is None:
                raise ConfigError(f"base {params.base!r}: the harness passes the dataset as "
                                  "ctx.datasets['base']")
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
        return self.v

    # -- training -----------------------------------------------------------------------
    def sample_time(self, n: int) -> Tensor:
        import torch

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

    def loss(self, batch: Tensor, step: int = 0) -> Tensor:
        """G(v) on a batch of data x_1 (n, *event_shape) with fresh base samples and times:
        the mean over the batch of |v|^2 - 2 dI/dt . v, summed over every non-batch
        dimension."""
        x_1 = batch.to(self.ctx.device)
        n = x_1.shape[0]
        x_0 = self.base_sample(n)
        path = self.interpolant.sample(x_0, x_1, self.sample_time(n))
        v = self.v(path.t, path.x_t)
        v, dx_t = v.reshape(n, -1), path.dx_t.reshape(n, -1)  # views: (n, D)
        return ((v * v).sum(1) - 2 * (dx_t * v).sum(1)).mean()

    # -- state ----------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"v": self.v}

    def extra_state(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "gen" in state:
            self.gen.set_state(state["gen"])
