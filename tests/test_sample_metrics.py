"""Sample-based metrics: closed forms, the null within its standard error, calibrated standard
errors, chunking, and the harness's recording (`bench.harness.scoring.vector_samples`)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.api import DataError, Splits
from bench.harness.scoring.vector_samples import score_samples
from bench.record.tables import comparison_table
from bench.science.sample_metrics import (
    energy_distance,
    median_bandwidth,
    mmd2,
    sliced_wasserstein,
    two_sample_scores,
)


def _normal(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:, 0] += shift
    return x


def test_same_distribution_is_within_three_se_of_zero_and_a_shift_is_not():
    x, y = _normal(600, 3, 1), _normal(600, 3, 2)
    null = two_sample_scores(x, y, bandwidth=2.0, seed=0)
    for name in ("mmd2", "energy"):  # unbiased: 0 in expectation
        assert abs(null[name].value) < 3 * null[name].se, name
        assert null[name].n == 600
    alt = two_sample_scores(x, _normal(600, 3, 3, shift=1.0), bandwidth=2.0, seed=0)
    for name in ("mmd2", "energy"):
        assert alt[name].value > 5 * alt[name].se, name
    # SW_2 is biased upward: two null draws agree with each other, a shift stands out
    null2 = sliced_wasserstein(_normal(600, 3, 4), _normal(600, 3, 5), seed=1)
    assert null["swd"].value > 0
    assert abs(null["swd"].value - null2.value) < 3 * math.hypot(null["swd"].se, null2.se)
    assert alt["swd"].value - null["swd"].value > 5 * math.hypot(alt["swd"].se,
                                                                   null["swd"].se)


def test_energy_distance_of_two_1d_gaussians_matches_the_closed_form():
    # X - Y ~ N(delta, 2): E|X - Y| = s sqrt(2/pi) exp(-delta^2 / (2 s^2))
    # + delta (1 - 2 Phi(-delta / s)), s = sqrt 2; E|X - X'| = E|Y - Y'| = 2 / sqrt(pi)
    delta, s = 1.5, math.sqrt(2.0)
    phi = 0.5 * math.erfc(delta / s / math.sqrt(2))
    e_xy = s * math.sqrt(2 / math.pi) * math.exp(-delta**2 / (2 * s * s)) + delta * (1 - 2 * phi)
    truth = 2 * e_xy - 2 * (2 / math.sqrt(math.pi))
    est = energy_distance(_normal(2000, 1, 6), _normal(2000, 1, 7, shift=delta))
    assert abs(est.value - truth) < 3 * est.se
    assert est.se < 0.1 * truth  # and the test is not vacuous


def test_mmd2_of_two_gaussians_matches_the_closed_form():
    # N(0, I) vs N(delta e_1, I) in d dims, k = exp(-|u|^2 / (2 h^2)):
    # MMD^2 = 2 (h^2 / (h^2 + 2))^(d/2) (1 - exp(-delta^2 / (2 (h^2 + 2))))
    d, h, delta = 3, 1.5, 1.0
    truth = 2 * (h * h / (h * h + 2)) ** (d / 2) * (1 - math.exp(-delta**2 / (2 * (h * h + 2))))
    est = mmd2(_normal(2000, d, 8), _normal(2000, d, 9, shift=delta), bandwidth=h)
    assert abs(est.value - truth) < 3 * est.se
    assert est.se < 0.1 * truth


def test_sliced_w2_of_two_gaussians_matches_the_closed_form():
    # theta.X ~ N(0, 1), theta.Y ~ N(theta.m, 1): W_2^2 = (theta.m)^2, E_theta = |m|^2 / d
    d, delta = 4, 3.0  # SW_2 = 1.5 (not 1: SW_2 and SW_2^2 differ)
    est = sliced_wasserstein(_normal(2000, d, 10), _normal(2000, d, 11, shift=delta), seed=3)
    truth = delta / math.sqrt(d)
    assert abs(est.value - truth) < 3 * est.se
    assert est.se < 0.1 * truth
    assert sliced_wasserstein(_normal(2000, d, 10), _normal(2000, d, 11, shift=delta),
                              seed=3) == est  # seeded: deterministic


@pytest.mark.parametrize("shift", [0.0, 0.6])
def test_u_statistic_standard_errors_are_calibrated(shift):
    """The spread over independent replications matches the reported se (the null: the
    degenerate case, where the zeta_2 term sets it; a shift: the zeta_1 term)."""
    vals, ses = {"mmd2": [], "energy": []}, {"mmd2": [], "energy": []}
    for r in range(60):
        x, y = _normal(150, 2, 100 + 2 * r), _normal(150, 2, 101 + 2 * r, shift)
        for name, est in (("mmd2", mmd2(x, y, 1.5)), ("energy", energy_distance(x, y))):
            vals[name].append(est.value)
            ses[name].append(est.se)
    for name in vals:
        ratio = torch.tensor(vals[name]).std().item() / (sum(ses[name]) / len(ses[name]))
        assert 0.6 < ratio < 1.4, (name, ratio)


def test_chunked_equals_unchunked_and_mmd_is_symmetric():
    x, y = _normal(203, 5, 12), _normal(203, 5, 13, shift=0.3)
    for f in (lambda a, b, c: mmd2(a, b, 2.0, chunk_entries=c),
              lambda a, b, c: energy_distance(a, b, chunk_entries=c)):
        full, tiny = f(x, y, 1 << 30), f(x, y, 37)
        assert full.value == pytest.approx(tiny.value, rel=1e-10, abs=1e-14)
        assert full.se == pytest.approx(tiny.se, rel=1e-10)
        assert f(y, x, 37).value == pytest.approx(full.value, rel=1e-10, abs=1e-14)


def test_median_bandwidth_and_input_checks():
    pts = torch.tensor([[0.0], [1.0], [3.0]])  # distances 1, 3, 2
    assert median_bandwidth(pts) == pytest.approx(2.0)
    with pytest.raises(DataError):
        mmd2(torch.zeros(10, 2), torch.zeros(9, 2), 1.0)
    with pytest.raises(DataError):
        energy_distance(torch.full((10, 2), math.nan), torch.zeros(10, 2))


# --- the harness side ---------------------------------------------------------------------

class _Fake:
    """Samples N(shift e_1, I) through a module (counted as network evaluations)."""

    def __init__(self, d: int, shift: float = 0.0, named: dict | None = None,
                 can_sample: bool = True) -> None:
        self.d, self.shift, self.named, self.can = d, shift, named, can_sample
        self.net = torch.nn.Identity()

    def sample(self, n: int) -> torch.Tensor:
        if not self.can:
            raise NotImplementedError("no sampler")
        x = torch.randn(n, self.d)
        x[:, 0] += self.shift
        return self.net(x)

    def modules(self) -> dict:
        return {"net": self.net}

    def samplers(self) -> dict:
        return {k: (lambda n, s=s: _Fake(self.d, s).sample(n)) for k, s in
                (self.named or {}).items()}


def _splits(d: int = 3, n: int = 800, image: bool = False) -> Splits:
    g = torch.Generator().manual_seed(0)
    shape = (1, 2, 2) if image else (d,)
    rows = [torch.randn(n, *shape, generator=g) for _ in range(3)]
    return Splits(*rows, event_shape=shape, provenance="synthetic N(0, I)",
                  split_names={"test": "N(0, I) test rows"})


def _score(method, splits, **kw):
    logged, tagged = {}, {}
    out = score_samples(method, splits, logged.update, tagged.update, **kw)
    assert out == (logged, tagged)
    return logged, tagged


def test_score_samples_records_every_sampler_against_the_test_split():
    splits = _splits()
    m, tags = _score(_Fake(3, named={"ode": 0.0, "sde": 1.5}), splits, n=400, seed=1)
    assert m["sample_metrics_n"] == 400
    for key in ("", ".ode", ".sde", "_floor"):
        for name in ("mmd2", "energy", "swd"):
            assert math.isfinite(m[name + key]) and m[name + key + "_se"] > 0
    for name in ("mmd2", "energy"):  # right distribution: ~0; shifted: clearly positive
        assert abs(m[name]) < 3 * m[name + "_se"] and abs(m[name + ".ode"]) < 3 * m[
            name + ".ode_se"]
        assert m[name + ".sde"] > 5 * m[name + ".sde_se"]
    assert m["sample_nfe"] == 1 and m["sample_nfe.sde"] == 0  # the named ones bypass net
    assert tags["sample_metrics.reference"] == "N(0, I) test rows: 400 of 800 rows " \
                                               "(seeded subset)"
    for key in ("kernel", "bandwidth_rule", "estimator", "floor"):
        assert tags[f"sample_metrics.{key}"]
    again, _ = _score(_Fake(3, named={"ode": 0.0, "sde": 1.5}), splits, n=400, seed=1)
    assert again == {**m, **{k: again[k] for k in again if k.startswith("sample_seconds")}}
    # the table puts the samplers side by side, with the floor row and the se
    from bench.api import RunRecord

    rec = RunRecord("r1", "fake-toy-s0", {"method": "fake", "dataset": "toy", "seed": 0},
                    {"test_split": "test"}, m, status="FINISHED")
    tab, _ = comparison_table([rec], "mmd2")
    assert list(tab.columns) == ["toy", "toy [ode]", "toy [sde]"]
    assert tab.loc["fake", "toy [sde]"] == \
        f"{m['mmd2.sde']:.3g} ± {m['mmd2.sde_se']:.3g} (1)"
    assert tab.loc["floor (train vs test rows)", "toy"].startswith(f"{m['mmd2_floor']:.3g} ±")


def test_gaussian_mle_samples_score_near_zero(registry):
    from bench.harness.running.context import make_context

    cls = registry.get("method", "gaussian_mle")
    splits = _splits(d=4, n=1000)
    method = cls(cls.Params(), splits, make_context(seed=0))
    m, _ = _score(method, splits, seed=0)
    assert m["sample_metrics_n"] == 1000  # default: min(test rows, 5000)
    for name in ("mmd2", "energy"):
        assert abs(m[name]) < 3 * m[name + "_se"]
    assert abs(m["swd"] - m["swd_floor"]) < 3 * math.hypot(m["swd_se"], m["swd_floor_se"])


def test_score_samples_skips_cleanly():
    m, tags = _score(_Fake(3, can_sample=False), _splits(), n=100)
    assert not any(k.startswith(("mmd2", "energy", "swd")) and "floor" not in k for k in m)
    assert tags["sample_metrics.skipped"] == "cannot sample: no sampler"
    m, tags = _score(_Fake(4), _splits(image=True))
    assert m == {} and "not vector data" in tags["sample_metrics.skipped"]


def test_a_default_sampler_among_the_named_ones_is_drawn_once():
    calls = {"ode": 0, "sde": 0}

    class _Named(_Fake):
        default_sampler = "sde"

        def samplers(self) -> dict:
            def make(name, shift):
                def draw(n):
                    calls[name] += 1
                    return _Fake(self.d, shift).sample(n)
                return draw
            return {"ode": make("ode", 0.0), "sde": make("sde", 1.5)}

        def sample(self, n):  # never called: the named "sde" is the default
            raise AssertionError("sample() drawn although it is the named 'sde'")

    m, tags = _score(_Named(3), _splits(), n=300, seed=2)
    assert calls == {"ode": 1, "sde": 1}
    for name in ("mmd2", "energy", "swd"):
        assert m[name] == m[name + ".sde"] and m[name + "_se"] == m[name + ".sde_se"]
        assert m[name] != m[name + ".ode"]
    assert tags["sample_metrics.default_sampler"] == "sde"
