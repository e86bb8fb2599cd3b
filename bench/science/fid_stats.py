"""FID statistics at any sample count: streamed, sharded over ranks, saved to a file.

`FeatureStats` accumulates, in float64, the count n, the sum s = sum x and the sum of outer
products Q = sum x x^T of feature chunks; mean = s / n and covariance = (Q - n mu mu^T) /
(n - 1) (``np.cov``'s n - 1). Memory is (d,) + (d, d) whatever n, so 50,000 x 2048 features
are never held: only one chunk at a time. The three sums add over chunks and over ranks:
`all_reduce` sums them in one ``torch.distributed.all_reduce`` of one packed float64 tensor.
The raw second moment loses about log10(E[x^2] / var x) digits to cancellation against the
mean; Inception pool3 features (non-negative, std comparable to the mean) lose ~1 of 16.

Statistics files (`save_stats`, `load_stats`): an .npz (no pickles) with mu, sigma, n, the
extractor's network SHA-256, its resize rule, the feature dimension and a format marker;
loading refuses a file made with another network or resize (they give incomparable FIDs).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from bench.api.errors import DataError

__all__ = ["FeatureStats", "STATS_FORMAT", "all_reduce", "fid_from_stats", "save_stats",
           "load_stats", "is_stats_file", "rank_world", "shard", "stream_features",
           "sharded_features", "cached_stats"]

log = logging.getLogger(__name__)

STATS_FORMAT = "bench-fid-stats/1"


class FeatureStats:
    """Float64 sufficient statistics of (n, d) features: n, sum (d,), outer sum (d, d)."""

    def __init__(self, dim: int) -> None:
        if int(dim) < 1:
            raise DataError(f"feature dimension must be >= 1, got {dim}")
        self.dim = int(dim)
        self.n = 0.0
        self.sum = np.zeros(self.dim)
        self.outer = np.zeros((self.dim, self.dim))

    def add(self, chunk: np.ndarray) -> FeatureStats:
        """Add the rows of a (m, d) chunk (m may be 0); returns self."""
        f = np.asarray(chunk, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise DataError(f"expected (m, {self.dim}) features, got {f.shape}")
        self.n += float(len(f))
        self.sum += f.sum(axis=0)
        self.outer += f.T @ f
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another accumulator's sums (another chunk range or rank); returns self."""
        if other.dim != self.dim:
            raise DataError(f"cannot merge {other.dim}-d statistics into {self.dim}-d ones")
        self.n += other.n
        self.sum += other.sum
        self.outer += other.outer
        return self

    @property
    def mean(self) -> np.ndarray:
        if self.n < 1:
            raise DataError("no features accumulated")
        return self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        """(Q - n mu mu^T) / (n - 1), symmetric by construction of Q."""
        if self.n < 2:
            raise DataError(f"a covariance needs n >= 2 features, got {self.n:g}")
        mu = self.mean
        return (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)

    @classmethod
    def from_moments(cls, mu: np.ndarray, sigma: np.ndarray, n: float) -> FeatureStats:
        """The accumulator whose mean, covariance and count are these (a loaded file)."""
        mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
        stats = cls(len(mu))
        stats.n = float(n)
        stats.sum = stats.n * mu
        stats.outer = (stats.n - 1) * sigma + stats.n * np.outer(mu, mu)
        return stats

    def pack(self) -> np.ndarray:
        """[n, sum, outer.ravel()], one float64 vector (what `all_reduce` sends)."""
        return np.concatenate([[self.n], self.sum, self.outer.ravel()])

    def unpack(self, flat: np.ndarray) -> FeatureStats:
        """Set the sums from a `pack`ed vector; returns self."""
        d = self.dim
        self.n = float(flat[0])
        self.sum = np.array(flat[1:1 + d], dtype=np.float64)
        self.outer = np.array(flat[1 + d:], dtype=np.float64).reshape(d, d)
        return self


def all_reduce(stats: FeatureStats) -> FeatureStats:
    """Sum ``stats`` over the ranks of the initialised process group, in place, with ONE
    ``all_reduce`` of the packed float64 vector (on this rank's CUDA device under NCCL);
    without a process group, nothing. Returns ``stats``."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stats
    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend() == "nccl" else torch.device("cpu"))
    flat = torch.from_numpy(stats.pack()).to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return stats.unpack(flat.cpu().numpy())


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """FID of two accumulators: `bench.science.fid.frechet_distance` of their moments."""
    from bench.science.fid import frechet_distance

    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous slice [start, stop) of n items over ``world`` ranks (sizes
    differ by at most one, rank order = item order)."""
    return rank * n // world, (rank + 1) * n // world


def stream_features(images: np.ndarray, extractor, keep_rows: int, chunk: int = 500,
                    offset: int = 0) -> tuple[FeatureStats, np.ndarray]:
    """Features of uint8 ``images`` chunk by chunk into a `FeatureStats`; keeps the rows
    whose global index (``offset`` + i) is below ``keep_rows`` (the capped, first-rows
    subset for KID and the feature metrics). Only one chunk of features is held at a time.

    Returns:
        (statistics, kept features (k, d)).
    """
    dim = getattr(extractor, "dim", None)
    stats: FeatureStats | None = FeatureStats(dim) if dim else None
    kept: list[np.ndarray] = []
    for start in range(0, len(images), max(1, int(chunk))):
        f = extractor(images[start:start + chunk])
        stats = stats if stats is not None else FeatureStats(f.shape[1])
        stats.add(f)
        take = max(0, min(len(f), keep_rows - offset - start))
        if take:
            kept.append(f[:take])
    if stats is None:
        raise DataError("no images to compute features of")  # (an extractor without dim)
    keep = np.concatenate(kept) if kept else np.empty((0, stats.dim))
    return stats, keep


def _write_npz(path: Path, **fields: np.ndarray) -> Path:
    """``np.savez`` to a temporary file beside ``path``, then renamed onto it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".stats-", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **fields)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sharded_features(images: np.ndarray, extractor, keep_rows: int, chunk: int = 500
                     ) -> tuple[FeatureStats, np.ndarray]:
    """`stream_features` over this rank's contiguous shard of ``images`` (every rank holds
    the same array), the statistics summed over ranks by one `all_reduce`, and the kept
    first ``keep_rows`` rows of the whole set gathered in order (each rank sends only its
    rows below ``keep_rows``). Without a process group: `stream_features` of all images.
    Every rank returns the same result."""
    rank, world = rank_world()
    start, stop = shard(len(images), rank, world)
    stats, kept = stream_features(images[start:stop], extractor, keep_rows, chunk, start)
    if world == 1:
        return stats, kept
    import torch.distributed as dist

    all_reduce(stats)
    parts: list[np.ndarray | None] = [None] * world
    dist.all_gather_object(parts, kept)
    return stats, np.concatenate([p for p in parts if p is not None])


def cached_stats(images: np.ndarray, extractor, cache_dir: Path | None, keep_rows: int,
                 chunk: int = 500) -> tuple[FeatureStats, np.ndarray]:
    """`stream_features` of reference images, cached in ``cache_dir`` (None: not cached) as
    .npz keyed by the SHA-256 of the array (dtype, shape, bytes), ``extractor.id`` and
    ``keep_rows``; written atomically. Returns (statistics, first ``keep_rows`` features)."""
    h = hashlib.sha256(f"{images.dtype}{images.shape}|{extractor.id}|{keep_rows}|".encode())
    h.update(np.ascontiguousarray(images).data)
    key = h.hexdigest()
    path = Path(cache_dir) / f"stats-{key[:40]}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    log.info("reference statistics from %s", path)
                    stats = FeatureStats(int(z["dim"])).unpack(z["packed"])
                    return stats, z["kept"].astype(np.float64)
        except (OSError, ValueError, KeyError, EOFError) as exc:
            log.warning("ignoring unreadable FID cache %s: %s", path, exc)
    stats, kept = stream_features(images, extractor, keep_rows, chunk)
    if path is not None:
        _write_npz(path, packed=stats.pack(), dim=np.array(stats.dim), kept=kept,
                   key=np.array(key), extractor=np.array(extractor.id))
    return stats, kept


def save_stats(path: Path | str, stats: FeatureStats, extractor) -> Path:
    """Write mu, sigma, n and the extractor's labels (``sha256``, ``resize``, ``id``) as an
    .npz (format `STATS_FORMAT`), atomically. Returns the path."""
    fields = {"format": np.array(STATS_FORMAT), "mu": stats.mean, "sigma": stats.cov,
              "n": np.array(stats.n), "dim": np.array(stats.dim),
              "sha256": np.array(str(extractor.sha256)), "resize": np.array(extractor.resize),
              "extractor": np.array(str(extractor.id))}
    return _write_npz(Path(path), **fields)


def _read_fields(path: Path) -> dict[str, np.ndarray]:
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable statistics file ({exc})") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a bare array, not a statistics .npz (bench fid --save-stats)")
    with z:
        fields = {k: z[k] for k in z.files}
    if fields.get("format") is None or str(fields["format"]) != STATS_FORMAT:
        raise DataError(f"{path}: not a bench FID statistics file (format "
                        f"{STATS_FORMAT} expected)")
    missing = [k for k in ("mu", "sigma", "n", "dim", "sha256", "resize") if k not in fields]
    if missing:
        raise DataError(f"{path}: statistics file lacks {', '.join(missing)}")
    return fields


def is_stats_file(path: Path | str) -> bool:
    """Whether ``path`` is an .npz written by `save_stats` (its format marker)."""
    path = Path(path)
    if not (path.is_file() and path.suffix == ".npz"):
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return "format" in z.files and str(z["format"]) == STATS_FORMAT
    except (OSError, ValueError, EOFError):
        return False


def load_stats(path: Path | str, extractor) -> FeatureStats:
    """The statistics saved by `save_stats`, checked against ``extractor``.

    Raises:
        DataError: unreadable, not a statistics file, or its network SHA-256, resize or
            feature dimension differs from the extractor's (one line naming the field).
    """
    path = Path(path)
    z = _read_fields(path)
    want = {"sha256": str(extractor.sha256), "resize": str(extractor.resize)}
    if getattr(extractor, "dim", None):
        want["dim"] = str(extractor.dim)
    for key, value in want.items():
        if str(z[key]) != value:
            raise DataError(f"{path}: statistics made with {key} {str(z[key])[:16]!r}, this "
                            f"extractor has {value[:16]!r}: FIDs would not compare")
    mu, sigma, n, dim = z["mu"], z["sigma"], float(z["n"]), int(z["dim"])
    if mu.shape != (dim,) or sigma.shape != (dim, dim) or not (n >= 2 and math.isfinite(n)):
        raise DataError(f"{path}: inconsistent statistics (mu {mu.shape}, sigma "
                        f"{sigma.shape}, dim {dim}, n {n:g})")
    return FeatureStats.from_moments(mu, sigma, n)
