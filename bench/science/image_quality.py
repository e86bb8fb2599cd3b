"""Sample quality beyond FID on feature vectors (Inception pool3 for images): improved
precision and recall, density and coverage, and a memorisation check.

- Improved precision/recall (Kynkäänniemi et al. 2019, k = 3): each set's support is the
  union of balls around its points with radius the distance to the point's k-th nearest
  neighbour in its own set. Precision = the fraction of generated points inside the real
  support; recall = the fraction of real points inside the generated support.
- Density and coverage (Naeem et al. 2020, k = 5; written from the paper and the MIT
  ``prdc`` package's definitions): density = (1 / kM) sum_j sum_i 1[fake_j in B(real_i,
  r_i)] (about 1 for matching distributions, above 1 where samples crowd a few real
  points); coverage = the fraction of real points whose ball holds at least one fake point.
- Memorisation: the distance of each generated sample to its nearest training point,
  against the same distance of held-out (test) points. ``ratio`` = median over samples /
  median over held-out points (about 1 without copying, near 0 for copies);
  ``close_fraction`` = the fraction of samples closer to the training set than the held-out
  set's ``quantile`` (1%) quantile (about ``quantile`` without copying). A run is flagged
  when ``close_fraction`` exceeds ``quantile`` by 5 standard errors (binomial over the
  samples and over the held-out points that set the threshold).

Balls are closed (``<=``), as in NVlabs' precision/recall code; ``prdc`` uses ``<``, the same
for continuous features. Distances are Euclidean in float64, computed in row chunks so that
no matrix larger than about 256 MB is held.
"""

from __future__ import annotations

import math

import numpy as np

from bench.api.errors import DataError
from bench.api.metric_specs import IMAGE_QUALITY_SPECS

__all__ = ["K_PR", "K_DC", "MEM_QUANTILE", "IMAGE_QUALITY_SPECS", "knn_radii",
           "precision_recall", "density_coverage", "memorisation", "feature_metrics"]

#: nearest neighbours of improved precision/recall (Kynkäänniemi et al. 2019)
K_PR = 3
#: nearest neighbours of density/coverage (Naeem et al. 2020)
K_DC = 5
#: the held-out quantile of the memorisation check
MEM_QUANTILE = 0.01
_CHUNK_BYTES = 1 << 28


def _features(x: np.ndarray, what: str, least: int = 1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < least or not np.isfinite(x).all():
        raise DataError(f"{what}: expected finite (n >= {least}, d) features, got shape "
                        f"{x.shape}")
    return x


def _chunk_len(n_rows: int, n_cols: int) -> int:
    """Rows per chunk so that a (rows, n_cols) float64 block stays under _CHUNK_BYTES."""
    return max(1, min(n_rows, _CHUNK_BYTES // (8 * max(n_cols, 1))))


def _distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)); b_sq = (b * b).sum(1)."""
    d2 = (a * a).sum(1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(d2, 0.0))


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row of x to its k-th nearest neighbour among the other rows."""
    x = _features(x, "k-NN radii", least=k + 1)
    sq = (x * x).sum(1)
    out = np.empty(len(x))
    step = _chunk_len(len(x), len(x))
    for i in range(0, len(x), step):
        d = _distances(x[i:i + step], x, sq)
        out[i:i + len(d)] = np.partition(d, k, axis=1)[:, k]  # index 0: the row itself
    return out


def _cross(real: np.ndarray, fake: np.ndarray, r_real: np.ndarray,
           r_fake: np.ndarray | None) -> dict[str, np.ndarray]:
    """One pass over real x fake distances: per fake point, the count of real balls holding
    it; per real point, whether a fake ball holds it (when r_fake is given) and whether its
    own ball holds a fake point."""
    f_sq = (fake * fake).sum(1)
    count = np.zeros(len(fake), dtype=np.int64)
    in_fake = np.zeros(len(real), dtype=bool)
    covered = np.zeros(len(real), dtype=bool)
    step = _chunk_len(len(real), len(fake))
    for i in range(0, len(real), step):
        d = _distances(real[i:i + step], fake, f_sq)
        inside = d <= r_real[i:i + step, None]
        count += inside.sum(0)
        covered[i:i + step] = inside.any(1)
        if r_fake is not None:
            in_fake[i:i + step] = (d <= r_fake[None, :]).any(1)
    return {"count": count, "in_fake": in_fake, "covered": covered}


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = K_PR) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` against ``real`` features (n, d)."""
    real = _features(real, "precision/recall (real)", least=k + 1)
    fake = _features(fake, "precision/recall (fake)", least=k + 1)
    _same_dim(real, fake)
    res = _cross(real, fake, knn_radii(real, k), knn_radii(fake, k))
    return float((res["count"] > 0).mean()), float(res["in_fake"].mean())


def density_coverage(real: np.ndarray, fake: np.ndarray,
                     k: int = K_DC) -> tuple[float, float]:
    """Density and coverage of ``fake`` against ``real`` features (n, d)."""
    real = _features(real, "density/coverage (real)", least=k + 1)
    fake = _features(fake, "density/coverage (fake)", least=1)
    _same_dim(real, fake)
    res = _cross(real, fake, knn_radii(real, k), None)
    return float(res["count"].sum() / (k * len(fake))), float(res["covered"].mean())


def _same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise DataError(f"feature sets of different widths: {a.shape[1]} and {b.shape[1]}")


def _nearest(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    t_sq = (train * train).sum(1)
    step = _chunk_len(len(x), len(train))
    return np.concatenate([_distances(x[i:i + step], train, t_sq).min(1)
                           for i in range(0, len(x), step)])


def memorisation(gen: np.ndarray, train: np.ndarray, heldout: np.ndarray,
                 quantile: float = MEM_QUANTILE) -> dict[str, float]:
    """Nearest-training-point distances of generated vs held-out points.

    Returns:
        ratio (median generated / median held-out), close_fraction (generated points below
        the held-out ``quantile``), threshold (that quantile's distance), close_se (the
        standard error of close_fraction - quantile under no copying), flagged (1.0 when
        close_fraction > quantile + 5 close_se, else 0.0).
    """
    gen = _features(gen, "memorisation (generated)")
    train = _features(train, "memorisation (train)")
    heldout = _features(heldout, "memorisation (held-out)", least=2)
    _same_dim(gen, train)
    _same_dim(heldout, train)
    d_gen, d_held = _nearest(gen, train), _nearest(heldout, train)
    threshold = float(np.quantile(d_held, quantile))
    close = float((d_gen < threshold).mean())
    median_held = float(np.median(d_held))
    q = float(quantile)
    se = math.sqrt(q * (1 - q) / len(gen) + q * (1 - q) / len(heldout))
    return {"ratio": float(np.median(d_gen)) / median_held if median_held > 0 else math.nan,
            "close_fraction": close, "threshold": threshold, "close_se": se,
            "flagged": float(close > q + 5 * se)}


def feature_metrics(f_gen: np.ndarray, f_ref: np.ndarray, f_train: np.ndarray | None = None,
                    *, ref_label: str = "reference", train_label: str = "train",
                    skipped: str = "no held-out reference (the reference is the train split)"
                    ) -> tuple[dict[str, float], dict[str, str]]:
    """Precision, recall, density and coverage of generated vs reference features, and the
    memorisation check against ``f_train`` with the reference as the held-out set (pass
    ``f_train=None`` when the reference is the training split itself or there is no
    training set: then it is skipped, and the tag ``memorisation.skipped`` says ``skipped``).

    Returns:
        (metrics, tags) in the names of `IMAGE_QUALITY_SPECS`; with at most
        max(`K_PR`, `K_DC`) rows in a set, none, and the tag ``quality.skipped`` says why.
    """
    n_min = min(len(f_gen), len(f_ref))
    if n_min <= max(K_PR, K_DC):
        return {}, {"quality.skipped": f"{len(f_gen)} generated and {len(f_ref)} {ref_label} "
                                       f"feature vectors: at least {max(K_PR, K_DC) + 1} each "
                                       "needed"}
    precision, recall = precision_recall(f_ref, f_gen, K_PR)
    density, coverage = density_coverage(f_ref, f_gen, K_DC)
    metrics = {"precision": precision, "recall": recall, "density": density,
               "coverage": coverage}
    n_gen, n_ref = len(f_gen), len(f_ref)
    tags = {"quality.estimator": (
        f"improved precision/recall (Kynkaanniemi et al. 2019, k={K_PR}) and density/"
        f"coverage (Naeem et al. 2020, k={K_DC}) of {n_gen} generated vs {n_ref} {ref_label} "
        "feature vectors (all four move with n: compare at equal n)")}
    if f_train is None:
        tags["memorisation.skipped"] = skipped
        return metrics, tags
    mem = memorisation(f_gen, f_train, f_ref, MEM_QUANTILE)
    metrics.update({"memorisation_ratio": mem["ratio"],
                    "memorisation_close_fraction": mem["close_fraction"]})
    tags["memorisation.estimator"] = (
        f"nearest-neighbour distances to {len(f_train)} {train_label} feature vectors: "
        f"{n_gen} generated vs {n_ref} held-out ({ref_label}); threshold = the held-out "
        f"{MEM_QUANTILE:.0%} quantile ({mem['threshold']:.4g})")
    tags["memorisation.verdict"] = (
        f"flagged: {mem['close_fraction']:.1%} of samples are closer to a training image than "
        f"{1 - MEM_QUANTILE:.0%} of held-out images (expected {MEM_QUANTILE:.0%} +- "
        f"{mem['close_se']:.1%})" if mem["flagged"] else
        f"not flagged: {mem['close_fraction']:.1%} of samples below the held-out "
        f"{MEM_QUANTILE:.0%} quantile (expected {MEM_QUANTILE:.0%} +- {mem['close_se']:.1%})")
    return metrics, tags
