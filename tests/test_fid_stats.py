"""Streamed, sharded and saved FID statistics (bench/science/fid_stats.py): chunked sums equal
the one-shot mean and covariance, two gloo ranks with one all_reduce give the one-shot
statistics on both ranks, memory is one chunk plus (d,) and (d, d), and statistics files
round-trip and are refused for another network, resize or dimension."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from bench.api.errors import DataError
from bench.science import fid
from bench.science.fid_stats import (
    FeatureStats,
    all_reduce,
    cached_stats,
    fid_from_stats,
    is_stats_file,
    load_stats,
    save_stats,
    shard,
    sharded_features,
    stream_features,
)

EPS = np.finfo(np.float64).eps


def _bounds(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Worst-case float64 error bounds of the streamed mean and covariance against the
    one-shot ones: each sum of n products is within n eps of the sum of its absolute terms
    (Higham's gamma_n); both routes err, and the covariance's n mu mu^T carries the mean's
    error, so a factor 4 over n eps (mean|x_i x_j| + |mu_i mu_j|) n / (n - 1) covers both."""
    n = len(f)
    a = np.abs(f)
    mean_tol = 2 * n * EPS * a.mean(0)
    mu = np.abs(f.mean(0))
    cov_tol = 4 * n * EPS * (a.T @ a / n + np.outer(mu, mu)) * n / (n - 1)
    return mean_tol, cov_tol


def test_chunked_stats_equal_the_one_shot_formula() -> None:
    rng = np.random.default_rng(0)
    f = 1.5 * rng.gamma(2.0, size=(1000, 16)) + 3.0  # non-negative with an offset, as pool3
    stats = FeatureStats(16)
    for lo, hi in [(0, 1), (1, 1), (1, 300), (300, 999), (999, 1000)]:  # uneven, one empty
        stats.add(f[lo:hi])
    mu, cov = fid.feature_stats(f)
    mean_tol, cov_tol = _bounds(f)
    assert stats.n == 1000 and np.all(np.abs(stats.mean - mu) <= mean_tol)
    assert np.all(np.abs(stats.cov - cov) <= cov_tol)
    # a 1/n instead of 1/(n - 1) would be 1e-3 relative: the bound is far below that
    assert cov_tol.max() < 1e-9 * np.abs(cov).max()
    merged = FeatureStats(16).add(f[:400]).merge(FeatureStats(16).add(f[400:]))
    assert np.all(np.abs(merged.cov - cov) <= cov_tol)
    g = 0.8 * rng.gamma(2.0, size=(700, 16)) + 2.5
    want = fid.frechet_distance(mu, cov, *fid.feature_stats(g))
    # the FID's sensitivity to the covariances is O(1) per entry: the entrywise bound times d
    assert abs(fid_from_stats(stats, FeatureStats(16).add(g)) - want) <= 16 * cov_tol.sum()
    back = FeatureStats.from_moments(stats.mean, stats.cov, stats.n)
    assert np.allclose(back.cov, stats.cov, rtol=0, atol=cov_tol.max())
    with pytest.raises(DataError):
        FeatureStats(16).add(f[:, :8])
    with pytest.raises(DataError):
        _ = FeatureStats(16).add(f[:1]).cov  # n - 1 = 0


class Stand:
    """A stand-in extractor: 8 deterministic features per image, with the labels the
    statistics files carry; counts calls and the largest chunk it was given."""

    def __init__(self, sha256: str = "a" * 64, resize: str = "tf1", dim: int = 8) -> None:
        self.sha256, self.resize, self.dim = sha256, resize, dim
        self.id = f"stand:{sha256[:12]}+{resize}"
        self.calls, self.largest = 0, 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.largest = max(self.largest, len(images))
        x = images.reshape(len(images), -1).astype(np.float64)
        return np.stack([x.mean(1) + k * x[:, k % x.shape[1]] for k in range(self.dim)], 1)


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 1, 2, 3), dtype=np.uint8)


def test_stream_holds_one_chunk_and_keeps_the_first_rows() -> None:
    ex, images = Stand(), _images(50_000)
    stats, kept = stream_features(images, ex, keep_rows=10_000, chunk=4096)
    assert ex.largest == 4096 and ex.calls == 13  # ceil(50000 / 4096) chunks, one at a time
    # the accumulator is (d,) and (d, d) whatever n: no feature matrix is kept in it
    assert vars(stats).keys() == {"dim", "n", "sum", "outer"}
    assert stats.sum.shape == (8,) and stats.outer.shape == (8, 8) and stats.n == 50_000
    assert np.array_equal(kept, ex(images[:10_000]))  # the capped subset: the first rows
    big = FeatureStats(2048).add(np.ones((3, 2048)))
    assert big.sum.shape == (2048,) and big.outer.shape == (2048, 2048)
    assert shard(10, 0, 3) == (0, 3) and shard(10, 2, 3) == (6, 10)
    assert all_reduce(stats) is stats  # no process group: nothing


MEASURE = {"max_rows": 200, "kid_subsets": 3, "kid_subset_size": 50}


def _rank(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    calls = []
    real = dist.all_reduce
    dist.all_reduce = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    try:
        f = np.random.default_rng(5).gamma(2.0, size=(301, 6)) + 1.0
        lo, hi = shard(len(f), rank, 2)
        stats = all_reduce(FeatureStats(6).add(f[lo:hi]))
        s2, kept = sharded_features(_images(301), Stand(), keep_rows=200, chunk=64)
        from bench.cli.fid import measure  # the command's sharded path, in-process

        n_calls = len(calls)  # one per accumulator so far
        res, _ = measure(_images(301), _images(157), None, Stand(), **MEASURE)
        np.savez(f"{out}-{rank}.npz", mean=stats.mean, cov=stats.cov, n=stats.n,
                 mean2=s2.mean, cov2=s2.cov, kept=kept, calls=n_calls, fid=res["fid"],
                 kid=res["kid"])
    finally:
        dist.all_reduce = real
        dist.destroy_process_group()


def test_two_gloo_ranks_give_the_one_shot_stats_on_both(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # spawned children import us
    worker = importlib.import_module("test_fid_stats")._rank
    ctx = mp.start_processes(worker, args=(f"file://{tmp_path / 'pg'}", str(tmp_path / "r")),
                             nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the ranks did not finish in 120 s (deadlock?)")
    f = np.random.default_rng(5).gamma(2.0, size=(301, 6)) + 1.0
    mu, cov = fid.feature_stats(f)
    mean_tol, cov_tol = _bounds(f)
    one = stream_features(_images(301), Stand(), keep_rows=200)
    from bench.cli.fid import measure

    single, _ = measure(_images(301), _images(157), None, Stand(), **MEASURE)
    # summation order differs: ~n eps relative in the covariances, amplified at most by the
    # condition number of S_a S_b in the eigenvalue roots; x 100
    sa, sb = one[0], stream_features(_images(157), Stand(), keep_rows=0)[0]
    fid_tol = 100 * 301 * EPS * np.linalg.cond(sa.cov @ sb.cov) * single["fid"]
    for rank in (0, 1):
        with np.load(tmp_path / f"r-{rank}.npz") as z:
            assert z["n"] == 301 and int(z["calls"]) == 2  # one all_reduce per accumulator
            assert np.all(np.abs(z["mean"] - mu) <= mean_tol)
            assert np.all(np.abs(z["cov"] - cov) <= cov_tol)
            _, tol2 = _bounds(Stand()(_images(301)))
            assert np.all(np.abs(z["cov2"] - one[0].cov) <= tol2)
            assert np.array_equal(z["kept"], one[1])  # rows 0..199, across the shard edge
            # `bench fid`'s path: KID from the same kept rows, FID from summed statistics
            assert z["kid"] == single["kid"] and single["fid_from"] == "streamed statistics"
            assert abs(z["fid"] - single["fid"]) <= fid_tol


def test_stats_file_round_trip_and_refusals(tmp_path: Path) -> None:
    ex = Stand()
    stats, _ = stream_features(_images(40), ex, keep_rows=0)
    path = save_stats(tmp_path / "ref.npz", stats, ex)
    assert is_stats_file(path) and not list(tmp_path.glob(".stats-*"))
    back = load_stats(path, ex)
    assert back.n == 40 and np.array_equal(back.mean, stats.mean)
    assert np.array_equal(back.cov, stats.cov) or np.allclose(back.cov, stats.cov, rtol=1e-14)
    with np.load(path) as z:
        assert str(z["extractor"]) == ex.id and str(z["resize"]) == "tf1"
    for other, field in [(Stand(sha256="b" * 64), "sha256"), (Stand(resize="clean"), "resize"),
                         (Stand(dim=4), "dim")]:
        with pytest.raises(DataError, match=field) as info:
            load_stats(path, other)
        assert "\n" not in str(info.value)
    np.save(tmp_path / "x.npy", np.zeros(3))
    np.savez(tmp_path / "feats.npz", mu=np.zeros(3))
    for bad in (tmp_path / "feats.npz", tmp_path / "x.npy", tmp_path / "none.npz"):
        assert not is_stats_file(bad)
        with pytest.raises(DataError):
            load_stats(bad, ex)


def test_cached_stats_computed_once(tmp_path: Path) -> None:
    ex, images = Stand(), _images(30)
    first = cached_stats(images, ex, tmp_path, keep_rows=10, chunk=7)
    again = cached_stats(images.copy(), ex, tmp_path, keep_rows=10, chunk=7)
    assert ex.calls == 5 and len(list(tmp_path.iterdir())) == 1  # 30 / 7 -> 5 chunks, once
    assert np.array_equal(first[0].pack(), again[0].pack()) and np.array_equal(first[1],
                                                                               again[1])
    cached_stats(images, ex, tmp_path, keep_rows=20)  # another cap: another entry
    assert len(list(tmp_path.iterdir())) == 2
