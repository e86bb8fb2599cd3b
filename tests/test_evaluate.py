"""Harness-owned scoring (bench/harness/scoring/likelihood.py, bench/science/metrics.py): the 8-bit
dequantization and bits/dim against closed forms, extra likelihoods on the grid, the true
NLL and the gap."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from bench.api import Dataset, LogLikelihood, Method, Splits
from bench.harness import make_context
from bench.harness.scoring.likelihood import evaluate
from bench.science.metrics import (
    DEQUANTIZATION_LABEL,
    UNIFORM_8BIT,
    bits_per_dim,
    dequantization_log_offset,
    dequantize_uniform_8bit,
)

HALF_BIN = 1.0 / 255.0


@dataclass
class P:
    batch_size: int = 8


class Density(Method):
    """A fixed density given as a function; extra likelihoods as a function of grid data."""

    name = "density"
    Params = P

    def __init__(self, splits, log_prob, extra=None):
        super().__init__(P(), splits, make_context())
        self._lp, self._extra = log_prob, extra
        self.seen = None

    def modules(self):
        return {}

    def loss(self, batch, step):
        return -self._lp(batch).mean()

    def sample(self, n):
        return torch.zeros(n, *self.event_shape)

    def log_prob(self, x):
        self.seen = x
        return LogLikelihood(self._lp(x), "exact", "closed form", nfe=7)

    def extra_likelihoods(self, x):
        if self._extra is None:
            return {}
        return {"discrete": LogLikelihood(self._extra(x), "exact", "grid pmf")}


def _image_splits(x: torch.Tensor) -> Splits:
    return Splits(x, x, x, tuple(x.shape[1:]), "grid data", {"test": "all of it"},
                  UNIFORM_8BIT)


def _grid(v: torch.Tensor) -> torch.Tensor:
    return 2 * v.double() / 255 - 1


def test_dequantization_noise_stays_in_the_bin_and_is_fixed_by_the_seed() -> None:
    x = _grid(torch.randint(0, 256, (500, 3, 2, 2), generator=torch.Generator().manual_seed(0)))
    a = dequantize_uniform_8bit(x, torch.Generator().manual_seed(5))
    b = dequantize_uniform_8bit(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    u = a - x
    assert float(u.abs().max()) <= HALF_BIN and float(u.abs().max()) > 0.99 * HALF_BIN
    assert abs(float(u.mean())) < 1e-4  # centred
    assert dequantization_log_offset(12) == pytest.approx(12 * math.log(2 / 255))
    assert bits_per_dim(8 * 12 * math.log(2), 12) == pytest.approx(8.0)


def test_uniform_density_on_the_grid_box_gives_exactly_8_bits_per_dim() -> None:
    """A density uniform on [-1 - 1/255, 1 + 1/255]^D puts 1/256 on each of the 256 bins of
    every dimension: log P(bin) = -D log 256 exactly (no Jensen gap for a density constant
    on the bins), i.e. 8 bits/dim."""
    shape = (3, 4, 4)
    d = math.prod(shape)
    x = _grid(torch.randint(0, 256, (50, *shape), generator=torch.Generator().manual_seed(1)))
    x = x.float()
    edge = 1 + HALF_BIN

    def uniform(y):
        inside = (y.abs() <= edge + 1e-6).reshape(y.shape[0], -1).all(1)
        lp = torch.full((y.shape[0],), -d * math.log(2 * edge), dtype=torch.float64)
        return torch.where(inside, lp, torch.tensor(-math.inf, dtype=torch.float64))

    method = Density(_image_splits(x), uniform)
    metrics, tags = evaluate(method, None, _image_splits(x))
    assert metrics["test_bpd"] == pytest.approx(8.0, abs=1e-9)
    assert metrics["test_nll"] == pytest.approx(d * math.log(256), rel=1e-12)
    assert metrics["test_nll_nfe"] == 7.0
    assert tags["test_bpd.dequantization"] == DEQUANTIZATION_LABEL
    assert DEQUANTIZATION_LABEL in tags["test_nll.estimator"]
    # log_prob got dequantized points, not the grid
    assert not torch.equal(method.seen, x) and float((method.seen - x).abs().max()) < edge


def test_known_discrete_density_gives_its_entropy() -> None:
    """Data = grid value v repeated c_v times; the model is P(v) = c_v / N spread uniformly
    over each bin (a density constant on bins, so the Jensen bound is tight): the mean NLL
    is the entropy H(P) exactly, both from the dequantized density and from the discrete
    extra likelihood (which must receive the grid)."""
    counts = 1 + torch.arange(256) % 4
    pmf = counts.double() / counts.sum()
    x = _grid(torch.repeat_interleave(torch.arange(256), counts)).float().reshape(-1, 1, 1, 1)
    entropy = float(-(pmf * pmf.log()).sum())

    def density(y):
        v = torch.floor((y.double().reshape(-1) + 1 + HALF_BIN) * 255 / 2).clamp(0, 255)
        return pmf[v.long()].log() - math.log(2 / 255)

    def discrete(y):
        v = (y.double().reshape(-1) + 1) * 127.5
        assert torch.allclose(v, v.round(), atol=1e-4), "extra likelihood got non-grid data"
        return pmf[v.round().long()].log()

    splits = _image_splits(x)
    metrics, tags = evaluate(Density(splits, density, discrete), None, splits)
    assert metrics["test_nll"] == pytest.approx(entropy, rel=1e-9)
    assert metrics["test_nll_discrete"] == pytest.approx(entropy, rel=1e-9)
    assert metrics["test_bpd"] == pytest.approx(entropy / math.log(2), rel=1e-9)
    assert metrics["test_bpd_discrete"] == pytest.approx(entropy / math.log(2), rel=1e-9)
    assert tags["test_nll_discrete.kind"] == "exact"
    assert "grid" in tags["test_bpd_discrete.dequantization"]


class Gauss(Dataset):
    name = "gauss"
    has_log_prob = True

    def load(self):
        x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
        return Splits(x[:100], x[100:200], x[200:], (2,), "N(0, I)")

    def log_prob(self, x):
        return torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(1)


def test_true_nll_and_gap_on_real_valued_data() -> None:
    ds = Gauss()
    splits = ds.splits()
    exact = Density(splits, lambda y: ds.log_prob(y.double()))
    metrics, tags = evaluate(exact, ds, splits)
    assert metrics["true_test_nll"] == pytest.approx(metrics["test_nll"], rel=1e-12)
    assert metrics["test_nll_gap"] == pytest.approx(0.0, abs=1e-12)
    assert "test_bpd" not in metrics and tags["test_nll.kind"] == "exact"
    worse = Density(splits, lambda y: ds.log_prob(y.double()) - 0.5)
    metrics, _ = evaluate(worse, ds, splits)
    assert metrics["test_nll_gap"] == pytest.approx(0.5, rel=1e-9)
    assert torch.equal(worse.seen, splits.test)  # real-valued data: no noise added


def test_gap_has_a_paired_standard_error_over_test_rows() -> None:
    """model = truth - 0.5 on every row: the per-row gap is the constant 0.5, so its paired
    SE is 0 (up to double rounding: values O(10) times eps 2.2e-16, a few ulps, bound 1e-12)
    while the NLL's own SE (the spread of the rows) is not; a Gaussian of scale s against
    N(0, I): gap_i = (1/(2 s^2) - 1/2) |x_i|^2 + d log s, whose SE is |1/(2 s^2) - 1/2| times
    the SE of |x_i|^2 (closed form in the rows; agreement to 1e-9 relative, double sums)."""
    ds = Gauss()
    splits = ds.splits()
    shifted = Density(splits, lambda y: ds.log_prob(y.double()) - 0.5)
    metrics, _ = evaluate(shifted, ds, splits)
    assert metrics["test_nll_gap"] == pytest.approx(0.5, rel=1e-9)
    assert metrics["test_nll_gap_se"] < 1e-12
    assert metrics["test_nll_se"] > 0.05  # 100 rows of a 2-D Gaussian NLL: std ~1, SE ~0.1
    s = 1.5
    wide = Density(splits, lambda y: torch.distributions.Normal(0.0, s).log_prob(
        y.double()).sum(1))
    metrics, _ = evaluate(wide, ds, splits)
    r2 = splits.test.double().pow(2).sum(1)
    expected = abs(1 / (2 * s**2) - 0.5) * float(r2.std(unbiased=True)) / math.sqrt(len(r2))
    assert metrics["test_nll_gap_se"] == pytest.approx(expected, rel=1e-9)
