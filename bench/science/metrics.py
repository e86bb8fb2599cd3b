"""Evaluation owned by the harness: NLL (nats) with standard errors, bits/dim, the true NLL
of known densities, and sample plots of 2-D data."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from bench.api import Dataset, LogLikelihood

__all__ = ["NLLSummary", "summarize", "true_nll", "bits_per_dim", "plot_samples_2d"]


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


def bits_per_dim(nll_nats: float, dim: int) -> float:
    return nll_nats / (dim * math.log(2.0))


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


def finite_or_raise(values: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in values.values())


def to_device(x: Tensor, device: str) -> Tensor:
    return x.to(torch.device(device))
