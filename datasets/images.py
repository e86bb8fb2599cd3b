"""Image datasets: CIFAR-10 (3x32x32) and MNIST (1x28x28), 8-bit values scaled to [-1, 1].

Model scale (Ho et al.'s DDPM convention): ``x = 2 v / 255 - 1`` for a uint8 value v; the
splits stay on this grid (no noise added) and are labelled ``dequantization =
"uniform-8bit"``: the harness, not the dataset or the method, dequantizes the test images
uniformly within their bins of width 2/255 when it scores a continuous density, and reports
log-probabilities of the 8-bit image and bits/dim = NLL / (D ln 2) for every method
(`bench.science.metrics`). Tensors are float32 NCHW.

Files looked up under the data root (``BENCH_DATA_DIR`` or the user cache folder):

- full archives, standard splits: ``<root>/cifar10/cifar-10-python.tar.gz`` (train 45000 =
  the first 45000 of the 50000 training images, val = the last 5000, test = the standard
  10000) and ``<root>/mnist/{train,t10k}-images-idx3-ubyte.gz`` (55000 / 5000 / 10000);
- offline, test images only: ``<root>/cifar10/test.npz`` (the 10000 CIFAR-10 test images
  from a JPEG copy, a lossy proxy) and ``<root>/mnist/t10k-images-idx3-ubyte.gz``; these
  are split 8000/1000/1000 by a fixed permutation (numpy RandomState(0)) and labelled as not
  the standard train/test split.

Checksums (md5 of the canonical archives, sha256 of the offline proxy) are verified before
reading; nothing is downloaded (a missing file is a `DataError` naming what to put where).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np

from bench.api import Dataset, Splits
from bench.api.errors import DataError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["CIFAR10", "MNIST", "to_model_scale", "read_idx_images", "read_cifar_archive",
           "DEQUANTIZATION"]

log = logging.getLogger(__name__)

DEQUANTIZATION = "uniform-8bit"  # 8-bit grid 2v/255-1; the harness adds the noise
OFFLINE_SIZES = (8000, 1000, 1000)
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
CHECKSUMS = {  # file name -> (algorithm, hex digest)
    "cifar-10-python.tar.gz": ("md5", "c58f30108f718f92721af3b95e74349a"),
    "test.npz": ("sha256", "5979e62f53d695f37a361f54872a0971b779da6a64f018a01bd7ffc53f56ded4"),
    "train-images-idx3-ubyte.gz": ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "t10k-images-idx3-ubyte.gz": ("md5", "9fb629c4189551a2d022fa330f9573f3"),
}


def to_model_scale(x: np.ndarray) -> Tensor:
    """uint8 images (n, C, H, W) -> float32 tensor 2 v / 255 - 1 in [-1, 1]."""
    import torch

    if x.dtype != np.uint8:
        raise DataError(f"expected uint8 images, got {x.dtype}")
    return torch.from_numpy(np.ascontiguousarray(x)).float() / 127.5 - 1.0


def read_idx_images(path: Path) -> np.ndarray:
    """MNIST idx3 file (gzip) -> uint8 array (n, rows, cols)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051 or len(raw) != 16 + n * rows * cols:
        raise DataError(f"{path} is not an idx3 image file (magic {magic}, {len(raw)} bytes)")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def read_cifar_archive(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-python.tar.gz -> (train (50000, 3, 32, 32), test (10000, 3, 32, 32)) uint8.

    The batches are pickles: call only on an archive whose checksum was verified.
    """
    def batch(tar: tarfile.TarFile, name: str) -> np.ndarray:
        member = tar.extractfile(f"cifar-10-batches-py/{name}")
        if member is None:
            raise DataError(f"{path} has no cifar-10-batches-py/{name}")
        d = pickle.load(io.BytesIO(member.read()), encoding="bytes")  # checksum verified
        return np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)

    try:
        with tarfile.open(path, "r:gz") as tar:
            train = np.concatenate([batch(tar, f"data_batch_{i}") for i in range(1, 6)])
            test = batch(tar, "test_batch")
    except (tarfile.TarError, KeyError, OSError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    return train, test


def _verify(path: Path) -> None:
    algo, want = CHECKSUMS[path.name]
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != want:
        raise DataError(f"{path}: {algo} {h.hexdigest()} does not match the expected {want}")


def _fixed_split(x: np.ndarray, sizes: tuple[int, int, int]) -> list[np.ndarray]:
    perm = np.random.RandomState(0).permutation(x.shape[0])
    a, b, c = sizes
    return [x[perm[:a]], x[perm[a:a + b]], x[perm[a + b:a + b + c]]]


@dataclass
class ImageParams:
    """source: "auto" (the full archive when present, else the offline test images),
    "full" (the canonical archive only) or "test-only" (the offline test images only)."""

    source: Literal["auto", "full", "test-only"] = "auto"


class _ImageDataset(Dataset):
    """Common code; subclasses set the file names and the readers."""

    kind: ClassVar[str] = "image"
    Params = ImageParams
    label: ClassVar[str]
    offline_label: ClassVar[str]
    folder: ClassVar[str]
    full_files: ClassVar[tuple[str, ...]]
    offline_file: ClassVar[str]
    full_sizes: ClassVar[tuple[int, int, int]]
    source_hint: ClassVar[str]

    def _path(self, name: str) -> Path:
        return self.data_dir / self.folder / name

    def _use_full(self) -> bool:
        have_full = all(self._path(f).is_file() for f in self.full_files)
        have_offline = self._path(self.offline_file).is_file()
        src = self.params.source
        if src == "full" or (src == "auto" and have_full):
            if not have_full:
                missing = [f for f in self.full_files if not self._path(f).is_file()]
                raise DataError(f"{self.name}: place {', '.join(missing)} in "
                                f"{self.data_dir / self.folder} ({self.source_hint})")
            return True
        if not have_offline:
            raise DataError(f"{self.name}: no data: place {self.offline_file} (test images) or "
                            f"{' + '.join(self.full_files)} ({self.source_hint}) in "
                            f"{self.data_dir / self.folder}, or set BENCH_DATA_DIR")
        return False

    def prepare(self) -> None:
        """Check that the files are present and their checksums match (no download)."""
        files = self.full_files if self._use_full() else (self.offline_file,)
        for name in files:
            _verify(self._path(name))

    def _read_full(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _read_offline(self) -> np.ndarray:
        raise NotImplementedError

    def load(self) -> Splits:
        if self._use_full():
            train_all, test = self._read_full()
            n_train, n_val, _ = self.full_sizes
            parts = [train_all[:n_train], train_all[n_train:n_train + n_val], test]
            prov = (f"{self.label} standard split: train = first {n_train} training images, "
                    f"val = last {n_val} training images, test = the standard test set")
            names = {"train": f"{self.label} train[:{n_train}]",
                     "val": f"{self.label} train[{n_train}:]",
                     "test": f"{self.label} standard test set ({test.shape[0]} images)"}
        else:
            parts = _fixed_split(self._read_offline(), OFFLINE_SIZES)
            sizes = "/".join(str(p.shape[0]) for p in parts)
            prov = (f"{self.offline_label}, split {sizes} by a fixed permutation "
                    "(RandomState(0)) - not the standard train/test split")
            names = {k: f"{self.offline_label}, {k} part ({p.shape[0]})"
                     for k, p in zip(("train", "val", "test"), parts, strict=True)}
        train, val, test = (to_model_scale(p) for p in parts)
        log.info("%s: %s", self.name, prov)
        return Splits(train, val, test, tuple(train.shape[1:]), prov, names, DEQUANTIZATION)


class CIFAR10(_ImageDataset):
    """CIFAR-10 32x32 colour images (8-bit, scaled to [-1, 1])."""

    name = "cifar10"
    event_shape = (3, 32, 32)
    label = "CIFAR-10"
    offline_label = "CIFAR-10 test images (JPEG proxy)"
    folder = "cifar10"
    full_files = ("cifar-10-python.tar.gz",)
    offline_file = "test.npz"
    full_sizes = (45000, 5000, 10000)
    source_hint = CIFAR_URL

    def _read_full(self) -> tuple[np.ndarray, np.ndarray]:
        return read_cifar_archive(self._path(self.full_files[0]))

    def _read_offline(self) -> np.ndarray:
        with np.load(self._path(self.offline_file)) as d:
            x = d["x"]
        if x.shape[1:] != (32, 32, 3):
            raise DataError(f"{self._path(self.offline_file)}: expected (n, 32, 32, 3) NHWC "
                            f"images, got {x.shape}")
        return x.transpose(0, 3, 1, 2)


class MNIST(_ImageDataset):
    """MNIST 28x28 grey-scale digits (8-bit, scaled to [-1, 1])."""

    name = "mnist"
    event_shape = (1, 28, 28)
    label = "MNIST"
    offline_label = "MNIST test images"
    folder = "mnist"
    full_files = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")
    offline_file = "t10k-images-idx3-ubyte.gz"
    full_sizes = (55000, 5000, 10000)
    source_hint = MNIST_URL

    def _read_full(self) -> tuple[np.ndarray, np.ndarray]:
        train, test = (read_idx_images(self._path(f)) for f in self.full_files)
        return train[:, None], test[:, None]

    def _read_offline(self) -> np.ndarray:
        return read_idx_images(self._path(self.offline_file))[:, None]
