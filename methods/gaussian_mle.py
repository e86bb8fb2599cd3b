"""The full-covariance Gaussian fitted by maximum likelihood: the floor every flow must beat.

Closed form (mean and covariance of the training rows, ddof=0, plus a tiny ridge), so it
needs no training steps (``trainable = False``: the harness builds no optimiser and only
validates once); `loss` is the training NLL of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.api import LogLikelihood, Method, RunContext, Splits, at_least, non_negative

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = ["GaussianMLE"]


@dataclass
class GaussianMLEParams:
    ridge: float = field(default=1e-6, metadata=non_negative())
    batch_size: int = field(default=1024, metadata=at_least(1))


class GaussianMLE(Method):
    """Full-covariance Gaussian, maximum-likelihood fit to the training split (closed form)."""

    name = "gaussian_mle"
    Params = GaussianMLEParams
    trainable = False

    def __init__(self, params: GaussianMLEParams, splits: Splits, ctx: RunContext) -> None:
        import torch

        from bench.science.gaussian import GaussianStats

        super().__init__(params, splits, ctx)
        x = splits.train.reshape(splits.train.shape[0], -1).double()
        mean = x.mean(0)
        cov = torch.cov(x.T, correction=0).reshape(x.shape[1], x.shape[1])
        cov = cov + params.ridge * torch.eye(x.shape[1], dtype=cov.dtype)
        self.stats = GaussianStats(mean, torch.linalg.cholesky(cov)).to(ctx.device)
        self.gen = torch.Generator().manual_seed(ctx.seed)

    def loss(self, batch: Tensor, step: int = 0) -> Tensor:
        """Mean NLL (nats) of a (b, *event_shape) batch under the fitted Gaussian."""
        return -self.log_prob(batch).values.mean()

    def log_prob(self, x: Tensor) -> LogLikelihood:
        lp = self.stats.dist().log_prob(x.reshape(x.shape[0], -1).to(self.stats.mean))
        return LogLikelihood(lp.float(), kind="exact", estimator="closed-form Gaussian")

    def sample(self, n: int) -> Tensor:
        import torch

        z = torch.randn(n, self.stats.mean.numel(), generator=self.gen, dtype=torch.float64)
        x = self.stats.mean + z.to(self.stats.mean.device) @ self.stats.scale_tril.T
        return x.float().reshape(n, *self.event_shape)

    def modules(self) -> dict[str, nn.Module]:
        return {"stats": self.stats}

    def extra_state(self) -> dict[str, Tensor]:
        return {"gen": self.gen.get_state()}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        if "gen" in state:
            self.gen.set_state(state["gen"])
