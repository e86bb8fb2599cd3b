"""The final scoring, the same for every method: test NLL (exact or bound, labelled, NFE per
solve), the method's extra likelihoods, the dataset's true NLL and the gap to it, and on
8-bit image data the uniform dequantization (done here once, never inside a method) and
bits/dim. Formulas in `bench.science.metrics`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bench.api import ContractError, Dataset, LogLikelihood, Method, Splits
from bench.harness.planning.preflight import likelihood_problem
from bench.harness.scoring.cost import synchronize
from bench.science.metrics import (
    DEQUANTIZATION_LABEL,
    UNIFORM_8BIT,
    NLLSummary,
    bits_per_dim,
    dequantization_log_offset,
    dequantize_uniform_8bit,
    plot_samples_2d,
    summarize,
    true_nll,
)

if TYPE_CHECKING:  # the trainer is passed in (its EMA weights); scoring sits below training
    from bench.harness.training.optim import Trainer

__all__ = ["evaluate", "data_log_likelihood", "plot_samples", "paired_se", "DEQUANT_SEED"]

#: seed of the dequantization noise: the same noise for every method, run and seed
DEQUANT_SEED = 0
DISCRETE_LABEL = "none: a log-probability of the 8-bit data on the grid"


def data_log_likelihood(method: Method, x: torch.Tensor, dequantization: str,
                        dequant_seed: int = DEQUANT_SEED) -> LogLikelihood:
    """``method.log_prob`` of x, as a log-probability of the 8-bit data when
    ``dequantization == "uniform-8bit"`` (log p(x + u) + D log(2/255), u from a generator
    seeded with ``dequant_seed``), else of x itself.

    Args:
        x: (n, *event_shape) test rows (on the grid 2v/255 - 1 for 8-bit data).
    """
    if dequantization != UNIFORM_8BIT:
        return method.log_prob(x)
    gen = torch.Generator().manual_seed(dequant_seed)
    ll = method.log_prob(dequantize_uniform_8bit(x, gen))
    dim = int(x[0].numel())
    return LogLikelihood(values=ll.values + dequantization_log_offset(dim), kind=ll.kind,
                         estimator=f"{ll.estimator}; {DEQUANTIZATION_LABEL}", nfe=ll.nfe)


def evaluate(method: Method, dataset: Dataset | None, splits: Splits, device: str = "cpu",
             *, trainer: Trainer | None = None, dequant_seed: int = DEQUANT_SEED,
             test_rows: int | None = None) -> tuple[dict[str, float], dict[str, str]]:
    """Score a trained method on the test split, in eval mode (with the EMA weights when
    given its ``trainer``; or call it inside ``trainer.averaged()``).

    Args:
        dataset: the dataset instance, for its closed-form density (None: no true NLL).
        test_rows: score only the first N test rows (the ``test_split`` tag says so).

    Returns:
        (metrics, tags). Metrics: ``test_nll``/``_se``/``_nfe`` and ``test_nll_<name>`` for
        each extra likelihood; on 8-bit data ``test_bpd``/``_se`` and ``test_bpd_<name>``;
        with a closed-form dataset ``true_test_nll``/``_se`` and ``test_nll_gap`` with
        ``test_nll_gap_se``, the paired standard error over test rows (`paired_se`);
        ``eval_seconds``. Tags: ``<metric>.kind`` and ``.estimator`` of every likelihood,
        ``<bpd metric>.dequantization``, ``test_split``.
    """
    test = splits.test
    tags: dict[str, str] = {"test_split": splits.split_names.get("test", "test")}
    if test_rows is not None and test_rows < test.shape[0]:
        test = test[:test_rows]
        tags["test_split"] += f", first {test_rows} of {splits.test.shape[0]} rows"
    for module in method.modules().values():
        module.eval()
    averaged = trainer.averaged() if trainer is not None else contextlib.nullcontext()
    synchronize(device)
    t0 = time.perf_counter()
    with averaged:
        results, model_ll = _likelihoods(method, test.to(device), splits.dequantization,
                                         dequant_seed)
    synchronize(device)
    metrics: dict[str, float] = {"eval_seconds": time.perf_counter() - t0}
    image = splits.dequantization == UNIFORM_8BIT
    for name, s in results.items():
        metrics.update(s.metrics(name))
        tags[f"{name}.kind"] = s.kind
        tags[f"{name}.estimator"] = s.estimator
        if image:
            bpd = name.replace("test_nll", "test_bpd", 1)
            metrics[bpd] = bits_per_dim(s.mean, splits.dim)
            metrics[f"{bpd}_se"] = bits_per_dim(s.se, splits.dim)
            tags[f"{bpd}.dequantization"] = (DEQUANTIZATION_LABEL if name == "test_nll"
                                             else DISCRETE_LABEL)
    if dataset is not None and dataset.has_log_prob:
        metrics.update(_truth(dataset, test, metrics.get("test_nll"), model_ll))
    return metrics, tags


def _likelihoods(method: Method, x: torch.Tensor, dequantization: str, dequant_seed: int
                 ) -> tuple[dict[str, NLLSummary], torch.Tensor | None]:
    """The summaries of ``test_nll`` and each ``test_nll_<name>`` on x (n, *event_shape),
    and the per-row log-likelihood (n,) of ``test_nll`` (None for a method without one)."""
    results: dict[str, NLLSummary] = {}
    if method.likelihood == "none":
        return results, None
    with torch.no_grad():
        ll = data_log_likelihood(method, x, dequantization, dequant_seed)
        who = getattr(method, "name", type(method).__name__)
        results["test_nll"] = summarize(_checked(ll, x.shape[0], f"{who}.log_prob(x)"))
        for key, extra in method.extra_likelihoods(x).items():
            what = f"{who}.extra_likelihoods(x)[{key!r}]"
            results[f"test_nll_{key}"] = summarize(_checked(extra, x.shape[0], what))
    return results, ll.values.detach().double().cpu()


def _truth(dataset: Dataset, test: torch.Tensor, test_nll: float | None,
           model_ll: torch.Tensor | None) -> dict[str, float]:
    """``true_test_nll``/``_se`` of the dataset's closed form on test (n, *event_shape), and
    the gap ``test_nll_gap``/``_se`` (paired over rows) to the model's ``test_nll``."""
    true_ll = dataset.log_prob(test.double()).detach().double().cpu()
    t = true_nll(dataset, test)
    out = {"true_test_nll": t.mean, "true_test_nll_se": t.se}
    if test_nll is not None:
        out["test_nll_gap"] = test_nll - t.mean
        if model_ll is not None and model_ll.shape == true_ll.shape:
            out["test_nll_gap_se"] = paired_se(true_ll - model_ll)
    return out


def paired_se(diff: torch.Tensor) -> float:
    """Standard error of a mean over test rows of paired per-row differences, e.g. model
    NLL_i - true NLL_i for ``test_nll_gap``: both NLLs are scored on the same rows, so the
    row-to-row spread they share cancels: for a model close to the truth the gap is known
    far better than either NLL, for one far from it about as well.

    Args:
        diff: (n,) per-row differences. Returns NaN for fewer than two rows.
    """
    n = diff.numel()
    return float(diff.double().std(unbiased=True) / n ** 0.5) if n > 1 else float("nan")


def _checked(ll: LogLikelihood, n: int, what: str) -> LogLikelihood:
    """The contract at the final score (`bench.harness.planning.properties.likelihood_problem`, the
    words of ``bench check``): (n,) values, a valid kind, an estimator label (non-finite
    values are recorded as they are: the mean then says so)."""
    problem = likelihood_problem(ll, n, what, full=False)
    if problem is None and not ll.estimator:
        problem = f"{what} has an empty estimator label"
    if problem:
        raise ContractError(problem)
    return ll


def plot_samples(method: Method, splits: Splits, n: int, path: Path, title: str) -> Path:
    """Side-by-side 2-D histograms of n model samples and the test split (2-D data only)."""
    for module in method.modules().values():
        module.eval()
    with torch.no_grad():
        samples = method.sample(n)
    return plot_samples_2d(samples, splits.test, path, title)
