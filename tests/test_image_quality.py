"""Precision/recall, density/coverage and the memorisation check on constructed feature
sets where the answer is known (`bench.science.image_quality`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from bench.api import DataError
from bench.science import image_quality as iq


def _reference(real: np.ndarray, fake: np.ndarray, k_pr: int, k_dc: int) -> dict[str, float]:
    """The four definitions written out on full distance matrices (scipy's cdist)."""
    rr, ff, rf = cdist(real, real), cdist(fake, fake), cdist(real, fake)
    r_pr = np.sort(rr, axis=1)[:, k_pr]  # column 0 is the point itself
    f_pr = np.sort(ff, axis=1)[:, k_pr]
    r_dc = np.sort(rr, axis=1)[:, k_dc]
    return {"precision": (rf <= r_pr[:, None]).any(0).mean(),
            "recall": (rf <= f_pr[None, :]).any(1).mean(),
            "density": (rf <= r_dc[:, None]).sum() / (k_dc * len(fake)),
            "coverage": (rf.min(1) <= r_dc).mean()}


@pytest.mark.parametrize("chunk_bytes", [8 * 7, 1 << 28])
def test_the_four_match_their_definitions_on_full_distance_matrices(monkeypatch, chunk_bytes):
    # a 7-column chunk forces many row chunks; the default holds everything in one
    monkeypatch.setattr(iq, "_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(120, 6)), rng.normal(0.3, 1.2, size=(90, 6))
    want = _reference(real, fake, iq.K_PR, iq.K_DC)
    p, r = iq.precision_recall(real, fake)
    d, c = iq.density_coverage(real, fake)
    # continuous draws: no distance ties a radius, so the counts agree exactly
    assert (p, r, d, c) == pytest.approx((want["precision"], want["recall"],
                                          want["density"], want["coverage"]), abs=0)
    assert 0 < p < 1 and 0 < r < 1  # the shifted, wider set differs in both directions


def _modes(n_per: int, n_modes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n_per points around each of n_modes centres 100 apart (unit spread): no k-NN ball
    of one mode reaches another."""
    rng = np.random.default_rng(seed)
    centres = 100.0 * np.eye(n_modes, dim)
    labels = np.repeat(np.arange(n_modes), n_per)
    return centres[labels] + rng.normal(size=(len(labels), dim)), labels


def test_identical_sets_have_precision_recall_coverage_one():
    x, _ = _modes(50, 4, 8, 1)
    assert iq.precision_recall(x, x.copy()) == (1.0, 1.0)
    assert iq.density_coverage(x, x.copy())[1] == 1.0


def test_a_set_restricted_to_half_the_modes_has_recall_and_coverage_one_half():
    real, labels = _modes(60, 10, 12, 2)
    fake = real[labels < 5]  # the real points of modes 0-4 only
    p, r = iq.precision_recall(real, fake)
    d, c = iq.density_coverage(real, fake)
    # every fake point is a real point (distance 0): precision 1; the real points of modes
    # 0-4 are fake points themselves, those of modes 5-9 are ~100 from any fake ball
    assert (p, r, c) == (1.0, 0.5, 0.5)
    # fresh draws from the same five modes: precision stays near 1, recall near one half
    fresh, flab = _modes(60, 10, 12, 3)
    p2, r2 = iq.precision_recall(real, fresh[flab < 5])
    assert r2 <= 0.5 and p2 > 0.5  # no real point of modes 5-9 can be inside


def test_density_is_above_one_where_samples_crowd_few_real_points():
    real, labels = _modes(60, 4, 8, 4)
    crowd = np.repeat(real[:5], 40, axis=0)  # 200 samples on 5 real points
    d, c = iq.density_coverage(real, crowd)
    # each copy sits in its own point's ball and its k nearest neighbours' balls: > 1
    assert d > 1.0 and c < 0.2


def _split(n: int, dim: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=(n, dim)) for _ in range(3))


def test_memorisation_flags_a_copied_training_subset_and_not_fresh_samples():
    train, test, fresh = _split(600, 16, 5)
    rng = np.random.default_rng(6)
    copies = train[rng.choice(600, 300, replace=False)] + 1e-6 * rng.normal(size=(300, 16))
    mem = iq.memorisation(copies, train, test)
    assert mem["flagged"] == 1.0 and mem["close_fraction"] == 1.0 and mem["ratio"] < 1e-3
    honest = iq.memorisation(fresh, train, test)
    assert honest["flagged"] == 0.0
    # fresh and held-out points are exchangeable: close_fraction is q within 5 of its SE, and
    # the ratio of medians is 1 within 5 SE (SE of a median: sqrt(pi/2) sd / sqrt(n), each
    # side; sd/median of the distances measured on the held-out side)
    assert abs(honest["close_fraction"] - iq.MEM_QUANTILE) < 5 * honest["close_se"]
    d_held = iq._nearest(test, train)
    rel = math.sqrt(math.pi / 2) * d_held.std() / np.median(d_held) * math.sqrt(2 / 600)
    assert abs(honest["ratio"] - 1) < 5 * rel
    half = np.concatenate([copies[:150], fresh[:150]])
    assert iq.memorisation(half, train, test)["close_fraction"] >= 0.5


def test_feature_metrics_records_what_its_specs_declare():
    real, _ = _modes(30, 3, 8, 7)
    fake, _ = _modes(30, 3, 8, 8)
    train, _ = _modes(40, 3, 8, 9)
    declared = {s.name for s in iq.IMAGE_QUALITY_SPECS}
    metrics, tags = iq.feature_metrics(fake, real, train, ref_label="test split")
    assert set(metrics) == declared
    assert "k=3" in tags["quality.estimator"] and "test split" in tags["quality.estimator"]
    assert tags["memorisation.verdict"].startswith("not flagged")
    metrics, tags = iq.feature_metrics(fake, real, None)
    assert set(metrics) == declared - {"memorisation_ratio", "memorisation_close_fraction"}
    assert "train split" in tags["memorisation.skipped"]


def test_bad_feature_sets_are_one_line_errors():
    x = np.zeros((10, 4))
    with pytest.raises(DataError, match="different widths"):
        iq.precision_recall(x, np.zeros((10, 5)))
    with pytest.raises(DataError, match="n >= 4"):
        iq.precision_recall(x[:3], x)
    with pytest.raises(DataError, match="finite"):
        iq.density_coverage(np.full((10, 4), np.nan), x)


def test_too_few_rows_are_skipped_with_the_reason():
    x, _ = _modes(2, 2, 8, 10)  # 4 rows: density/coverage need k + 1 = 6
    metrics, tags = iq.feature_metrics(x, x, x)
    assert metrics == {} and "at least 6 each" in tags["quality.skipped"]
