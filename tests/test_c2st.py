"""The classifier two-sample test (`bench.science.c2st`): 0.5 on data against data, the Bayes
accuracy as its ceiling, the checkerboard blur that the median-bandwidth MMD misses, and its
recording by the vector sample scorer (`bench.harness.scoring.vector_samples`)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.api import DataError
from bench.science.c2st import c2st
from bench.science.sample_metrics import median_bandwidth, mmd2


def _normal(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:, 0] += shift
    return x


def test_data_against_data_reads_one_half():
    # two independent draws of one distribution: 0.5 in expectation (a flexible classifier
    # reads a little below, see the module doc); 5 SE of this seeded draw
    est = c2st(_normal(500, 3, 1), _normal(500, 3, 2), seed=0)
    assert abs(est.value - 0.5) < 5 * est.se
    # the se is the binomial one over the 2n held-out predictions (the same float64 formula:
    # rel 1e-12 is a few hundred ulps of slack)
    assert est.n == 500 and est.se == pytest.approx(math.sqrt(est.value * (1 - est.value)
                                                              / 1000), rel=1e-12)


def test_separated_gaussians_reach_but_do_not_beat_the_bayes_accuracy():
    # N(0, I) vs N(delta e_1, I): the Bayes classifier thresholds x_1 at delta / 2, accuracy
    # Phi(delta / 2) = 0.933 at delta = 3; an MLP learns that line, and no classifier beats
    # it beyond noise: within 5 SE either side
    delta = 3.0
    bayes = 0.5 * (1 + math.erf(delta / 2 / math.sqrt(2)))
    est = c2st(_normal(500, 2, 3, shift=delta), _normal(500, 2, 4), seed=1)
    assert abs(est.value - bayes) < 5 * est.se, (est, bayes)


def test_c2st_sees_the_checkerboard_blur_that_mmd_misses(registry):
    """Exact checkerboard rows against the same distribution convolved with N(0, 0.75^2 I),
    2000 rows per side. Measured on seeded draws: C2ST 0.54-0.60 (z = (c - 0.5)/se 5.6-13;
    this draw 0.603, z = 13), MMD^2 with the median bandwidth (about 4) z = 0.8-1.3. The
    Bayes accuracy 1/2 + TV/2 = 0.729 (|p - q| integrated numerically on a 0.01 grid; the
    blurred density is a sum of 8 products of normal-CDF differences) bounds the C2ST. At a
    0.3 blur (Bayes 0.609) neither sees it at this n (C2ST 0.49-0.51, MMD |z| < 0.7)."""
    cls = registry.get("dataset", "checkerboard")
    board, g = cls(cls.Params()), torch.Generator().manual_seed(11)
    ref, x = board._sample(2000, g), board._sample(2000, g)  # float64 draws
    x = x + 0.75 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    seen = c2st(x, ref, seed=0)
    assert 0.5 + 5 * seen.se < seen.value < 0.729 + 5 * seen.se, seen  # 5 SE of each
    missed = mmd2(x, ref, median_bandwidth(ref))
    assert abs(missed.value) < 5 * missed.se, missed


def test_c2st_refuses_bad_input():
    with pytest.raises(DataError, match="equal sizes of at least 10"):
        c2st(torch.zeros(9, 2), torch.zeros(9, 2))
    with pytest.raises(DataError, match="equal sizes"):  # 0.5 is chance only for equal sizes
        c2st(torch.zeros(20, 2), torch.zeros(30, 2))
    with pytest.raises(DataError, match=r"\(n, d\)"):
        c2st(torch.zeros(20, 2), torch.zeros(20, 3))
    with pytest.raises(DataError, match="finite"):
        c2st(torch.full((20, 2), math.nan), torch.zeros(20, 2))


class _Toy:
    """Samples the ``toy_splits`` fixture's N((1, 1), diag(1, 0.25)); the named sampler
    "far" shifts the first coordinate by 3 standard deviations."""

    def sample(self, n: int) -> torch.Tensor:
        return torch.randn(n, 2) * torch.tensor([1.0, 0.5]) + 1.0

    def modules(self) -> dict:
        return {}

    def samplers(self) -> dict:
        return {"far": lambda n: self.sample(n) + torch.tensor([3.0, 0.0])}


class _Rec:
    def __init__(self) -> None:
        self.metrics, self.tags = {}, {}

    def log_metrics(self, m: dict) -> None:
        self.metrics.update(m)

    def set_tags(self, t: dict) -> None:
        self.tags.update(t)


def test_the_vector_scorer_records_c2st_per_sampler_and_its_floor(toy_splits, tmp_path):
    # through the scoring stage, which refuses a metric without a spec (ContractError)
    from bench.api import Job, MetricSpec, ScoreContext
    from bench.api.metric_specs import BUILTIN_SPECS
    from bench.harness.scoring.scorers import VectorSampleScorer, run_scorers

    rec = _Rec()
    run_scorers([VectorSampleScorer()], _Toy(), toy_splits,
                ScoreContext(Job("m", object, None, "d", object, None), None, tmp_path), rec)
    m, tags = rec.metrics, rec.tags
    assert m["sample_metrics_n"] == 100  # all the test rows
    for key in ("c2st", "c2st.far", "c2st_floor"):
        assert 0 <= m[key] <= 1 and m[key + "_se"] > 0, key
    for key in ("c2st", "c2st_floor"):  # the data's own distribution: 0.5 within 5 SE
        assert abs(m[key] - 0.5) < 5 * m[key + "_se"], key
    # shifted by 3 std: the Bayes accuracy Phi(1.5) = 0.933 bounds it; 5 SE below at least
    assert m["c2st.far"] > 0.933 - 5 * m["c2st.far_se"]
    assert "MLPClassifier" in tags["sample_metrics.c2st"]
    assert tags["sample_metrics.c2st"].endswith("; 100 rows per side")
    spec = MetricSpec.from_json(tags["bench.spec.c2st"])
    assert spec == BUILTIN_SPECS["c2st"] and (spec.unit, spec.better) == ("accuracy", "lower")
