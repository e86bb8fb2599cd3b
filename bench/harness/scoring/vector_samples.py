"""Sample-based scoring of vector-data runs, the same for every method: n samples of the
method's default sampler and of each named sampler (the optional ``method.samplers()`` hook:
``{name: callable(n) -> (n, *event_shape) samples}``, e.g. ``{"ode": ..., "sde": ...}``),
each compared with the TEST split by MMD^2, the energy distance and the sliced
Wasserstein-2 distance, with standard errors (definitions in `bench.science.sample_metrics`),
and by the classifier two-sample test on at most `bench.science.c2st.MAX_ROWS` of those rows
per side (`bench.science.c2st`: an MLP's cross-validated accuracy, 0.5 = indistinguishable),
and the same four between training rows and the test rows: the floor a model that samples
the data distribution itself would reach at this n.

Recorded metrics: ``mmd2``, ``energy``, ``swd``, ``c2st`` (default sampler),
``<metric>.<sampler>`` for each named one, ``<metric>_floor``, each with ``<key>_se``;
``sample_metrics_n`` (rows per side), ``sample_metrics_bandwidth``,
``sample_seconds[.<sampler>]`` and ``sample_nfe[.<sampler>]`` (forward calls of
``method.modules()`` per sampling call). Tags
``sample_metrics.kernel``, ``.bandwidth_rule``, ``.reference``, ``.estimator``, ``.floor``,
``.c2st`` (classifier, folds, normalisation, rows per side);
``sample_metrics[.<sampler>].skipped`` with the reason where a sampler cannot be scored
(never a number then).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from bench.api import ContractError, Method, Splits
from bench.harness.scoring.cost import forward_calls, synchronize
from bench.science import c2st as c2
from bench.science import sample_metrics as sm

__all__ = ["score_samples", "sample_scores"]

log = logging.getLogger(__name__)

SKIP_TAG = "sample_metrics.skipped"


def _subset(x: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n rows of x (n, d): all of them in order when x has n rows, else a seeded subset."""
    if x.shape[0] == n:
        return x
    return x[torch.randperm(x.shape[0], generator=gen)[:n]]


def _draw(fn: Callable[[int], torch.Tensor], n: int, modules: list, seed: int,
          device: str) -> tuple[torch.Tensor, float, float]:
    """fn(n) with the global RNG seeded (and restored after), in no_grad: the samples on the
    CPU, the seconds it took and the forward calls of ``modules``."""
    cuda = str(device).startswith("cuda")
    with forward_calls(modules) as calls, \
            torch.random.fork_rng(devices=[torch.device(device)] if cuda else []):
        torch.manual_seed(seed)
        synchronize(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = fn(n)
        synchronize(device)
        seconds = time.perf_counter() - t0
    return out.detach().cpu(), seconds, float(calls[0])


def score_samples(method: Method, splits: Splits, log_metrics: Callable,
                  set_tags: Callable, *, n: int | None = None, seed: int = 0,
                  device: str = "cpu", test_rows: int | None = None,
                  max_rows: int = sm.MAX_ROWS) -> tuple[dict[str, float], dict[str, str]]:
    """Score the samples of ``method`` (and of its named samplers) against the test split;
    record and return (metrics, tags). Call with the evaluation weights in place (inside
    ``trainer.averaged()``). Deterministic for a given ``seed``.

    Args:
        n: samples per sampler and reference rows (default and cap: min(test rows,
            ``max_rows``)).
        seed: seeds the subsets, the sampling (global RNG, restored after), the directions
            and the bootstrap.
        test_rows: use only the first N test rows (as `evaluate` does).
    """
    metrics, tags = sample_scores(method, splits, n=n, seed=seed, device=device,
                                  test_rows=test_rows, max_rows=max_rows)
    set_tags(tags)
    if metrics:
        log_metrics(metrics)
    return metrics, tags


def sample_scores(method: Method, splits: Splits, *, n: int | None = None, seed: int = 0,
                  device: str = "cpu", test_rows: int | None = None,
                  max_rows: int = sm.MAX_ROWS) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) of `score_samples`, recorded nowhere."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    if len(splits.event_shape) != 1 or splits.dequantization != "none":
        tags[SKIP_TAG] = "not vector data (images are scored by FID/KID)"
        return metrics, tags
    test = splits.test if test_rows is None else splits.test[:test_rows]
    rows = min(test.shape[0], max_rows if n is None else min(n, max_rows))
    if rows < 4:
        tags[SKIP_TAG] = f"{rows} test rows: at least 4 needed"
        return metrics, tags
    gen = torch.Generator().manual_seed(seed)
    ref = _subset(test.reshape(test.shape[0], -1).double(), rows, gen)
    bandwidth = sm.median_bandwidth(ref, seed=seed)
    test_label = splits.split_names.get("test", "test")
    tags.update({
        "sample_metrics.reference": f"{test_label}: {rows} of {test.shape[0]} rows"
                                    + (" (seeded subset)" if rows < test.shape[0] else ""),
        "sample_metrics.kernel": sm.KERNEL, "sample_metrics.bandwidth_rule": sm.BANDWIDTH_RULE,
        "sample_metrics.estimator": sm.ESTIMATOR})
    c2st_rows = _c2st_rows(rows)
    tags["sample_metrics.c2st"] = (
        f"{c2.CLASSIFIER}; {c2st_rows} rows per side" if c2st_rows else
        f"not scored: {rows} rows per side, at least {2 * c2.FOLDS} needed")
    metrics.update({"sample_metrics_n": float(rows), "sample_metrics_bandwidth": bandwidth})
    n_floor = min(rows, splits.train.shape[0])
    if n_floor >= 4:
        train = _subset(splits.train.reshape(splits.train.shape[0], -1).double(), n_floor, gen)
        _put(metrics, "_floor", _scores(train, ref[:n_floor], bandwidth, seed))
        tags["sample_metrics.floor"] = (f"{n_floor} training rows vs {n_floor} reference rows "
                                        "(the same metrics, data against data)")
    samplers, default = _samplers(method)
    modules = list(method.modules().values())
    for module in modules:
        module.eval()
    for suffix, fn in samplers.items():
        _score_sampler(suffix, fn, ref, bandwidth, splits, modules, seed, device,
                       metrics, tags)
    if default is not None:
        _alias_default(default, metrics, tags)
    log.debug("sample metrics of %s: %s", type(method).__name__, metrics)
    return metrics, tags


def _c2st_rows(rows: int) -> int:
    """Rows per side the C2ST scores (at most ``c2.MAX_ROWS``), 0 when too few."""
    rows = min(rows, c2.MAX_ROWS)
    return rows if rows >= 2 * c2.FOLDS else 0


def _scores(x: torch.Tensor, ref: torch.Tensor, bandwidth: float,
            seed: int) -> dict[str, sm.Estimate]:
    """MMD^2, energy and SW2 of equal-size x and ref, and the C2ST of their first
    `_c2st_rows` rows (none when too few)."""
    out = sm.two_sample_scores(x, ref, bandwidth, seed=seed)
    rows = _c2st_rows(x.shape[0])
    if rows:
        out["c2st"] = c2.c2st(x[:rows], ref[:rows], seed=seed)
    return out


def _put(metrics: dict[str, float], suffix: str, scores: dict[str, sm.Estimate]) -> None:
    for name, e in scores.items():
        metrics[f"{name}{suffix}"] = e.value
        metrics[f"{name}{suffix}_se"] = e.se


def _samplers(method: Method) -> tuple[dict[str, Callable[[int], torch.Tensor]], str | None]:
    """Key suffix -> sampler ("" the default ``method.sample``, ".<name>" each named one),
    and the named one that is the default (``method.default_sampler``) or None: that one is
    drawn and scored once, under both keys."""
    extra = getattr(method, "samplers", None)
    named = dict(extra()) if callable(extra) else {}
    default = getattr(method, "default_sampler", None)
    samplers: dict[str, Callable[[int], torch.Tensor]] = (
        {} if default in named else {"": method.sample})
    samplers.update({f".{k}": v for k, v in named.items()})
    return samplers, default if default in named else None


def _score_sampler(suffix: str, fn: Callable[[int], torch.Tensor], ref: torch.Tensor,
                   bandwidth: float, splits: Splits, modules: list, seed: int, device: str,
                   metrics: dict[str, float], tags: dict[str, str]) -> None:
    """Draw ref's row count of samples from ``fn`` and add their scores under ``suffix``."""
    rows = ref.shape[0]
    try:
        x, seconds, calls = _draw(fn, rows, modules, seed, device)
    except NotImplementedError as exc:
        tags[f"sample_metrics{suffix}.skipped"] = f"cannot sample: {exc}".strip(": ")
        return
    if tuple(x.shape) != (rows, *splits.event_shape):
        raise ContractError(f"sampler {suffix.lstrip('.') or 'sample'}({rows}) returned "
                            f"shape {tuple(x.shape)}, expected "
                            f"{(rows, *splits.event_shape)}")
    x = x.reshape(rows, -1).double()
    bad = int((~torch.isfinite(x).all(1)).sum())
    metrics[f"sample_seconds{suffix}"] = seconds
    metrics[f"sample_nfe{suffix}"] = calls
    if bad:
        tags[f"sample_metrics{suffix}.skipped"] = f"{bad} of {rows} samples not finite"
        return
    _put(metrics, suffix, _scores(x, ref, bandwidth, seed))


def _alias_default(default: str, metrics: dict[str, float], tags: dict[str, str]) -> None:
    """The default named sampler's keys also without their ``.<name>``."""
    suffix = f".{default}"
    for key in [k for k in metrics if suffix in k]:
        metrics[key.replace(suffix, "", 1)] = metrics[key]
    for key in [k for k in tags if suffix in k]:
        tags[key.replace(suffix, "", 1)] = tags[key]
    tags["sample_metrics.default_sampler"] = default
