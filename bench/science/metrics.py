"""Evaluation formulas owned by the harness: NLL (nats) with standard errors, the uniform
dequantization of 8-bit data and bits/dim, the true NLL of known densities, and sample plots
of 2-D data.

8-bit data (``Splits.dequantization == "uniform-8bit"``) lie on the grid x = 2v/255 - 1,
v = 0..255, i.e. at the centres of bins of width 2/255 tiling [-1 - 1/255, 1 + 1/255]. For a
continuous density p on that scale, with u ~ U(-1/255, 1/255)^D,

    log P(x) = log int_bin p(x + u) du = log E_u[p(x + u)] + D log(2/255)
             >= E_u[log p(x + u)] + D log(2/255)            (Jensen),

so ``log p(x + u) + D log(2/255)`` for one draw u is an unbiased estimate of a lower bound on
the log-probability of the discrete image (Theis et al. 2016; Ho et al. 2020). The log
determinant of the scaling v -> 2v/255 - 1 is inside the D log(2/255): a bin of width 1 on
the 0..255 scale has width 2/255 here. Bits/dim = -log P / (D ln 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from bench.api import Dataset, LogLikelihood

__all__ = ["NLLSummary", "summarize", "true_nll", "bits_per_dim", "plot_samples_2d",
           "UNIFORM_8BIT", "DEQUANTIZATION_LABEL", "dequantize_uniform_8bit",
           "dequantization_log_offset"]

#: the ``Splits.dequantization`` value of 8-bit data scaled to [-1, 1] by 2v/255 - 1
UNIFORM_8BIT = "uniform-8bit"
DEQUANTIZATION_LABEL = ("uniform dequantization x + u, u ~ U(-1/255, 1/255)^D, of the 8-bit "
                        "grid 2v/255-1, + D log(2/255) (Jensen lower bound on log P(bin))")


@dataclass
class NLLSummary:
    """Mean negative log-likelihood (nats) over a split, its standard error, and labels."""

    mean: float
    se: float
    n: int
    kind: str
    estimator: str
    nfe: int

    def metrics(self, prefix: str) -> dict[str, float]:
        return {prefix: self.mean, f"{prefix}_se": self.se, f"{prefix}_nfe": float(self.nfe)}


def summarize(ll: LogLikelihood) -> NLLSummary:
    nll = -ll.values.detach().double().cpu()
    n = nll.numel()
    se = float(nll.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return NLLSummary(float(nll.mean()), se, n, ll.kind, ll.estimator, ll.nfe)


def true_nll(dataset: Dataset, x: Tensor) -> NLLSummary:
    """NLL of the dataset's own closed-form density on x (the best any model can do)."""
    lp = dataset.log_prob(x.double())
    return summarize(LogLikelihood(lp, "exact", "closed-form density", 0))


def bits_per_dim(nll_nats: float | Tensor, dim: int) -> float | Tensor:
    """Negative log-likelihood in nats of a D-dimensional example -> bits per dimension,
    nll / (D ln 2)."""
    return nll_nats / (dim * math.log(2.0))


def dequantize_uniform_8bit(x: Tensor, generator: torch.Generator) -> Tensor:
    """x + u, u ~ U(-1/255, 1/255) per entry: a uniform point in the bin of each grid value.

    Args:
        x: (n, *shape) data on the grid 2v/255 - 1.
        generator: CPU generator (the noise is drawn on the CPU, then moved to x's device).
    """
    u = (torch.rand(x.shape, generator=generator, dtype=torch.float64) * 2 - 1) / 255.0
    return x + u.to(device=x.device, dtype=x.dtype)


def dequantization_log_offset(dim: int) -> float:
    """D log(2/255): log of the bin volume, added to log p(x + u) to bound log P(bin)."""
    return dim * math.log(2.0 / 255.0)


def plot_samples_2d(samples: Tensor, reference: Tensor, path: Path, title: str) -> Path:
    """Side-by-side 2-D histograms of model samples and held-out data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, r = samples.detach().cpu().numpy(), reference.detach().cpu().numpy()
    lo = min(r[:, 0].min(), r[:, 1].min()) - 0.5
    hi = max(r[:, 0].max(), r[:, 1].max()) + 0.5
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, data, name in ((axes[0], s, "model samples"), (axes[1], r, "test data")):
        ax.hist2d(data[:, 0], data[:, 1], bins=100, range=[[lo, hi], [lo, hi]], cmap="viridis")
        ax.set_title(name)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
