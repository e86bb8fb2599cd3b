"""Image datasets: CIFAR-10, MNIST, ImageNet 32x32, Oxford Flowers 102; 8-bit, in [-1, 1].

Model scale (Ho et al.'s DDPM convention): ``x = 2 v / 255 - 1`` for a uint8 value v, float32
NCHW. The splits stay on this grid and are labelled ``dequantization = "uniform-8bit"``: the
harness, not the dataset or the method, dequantizes the test images uniformly within their
bins of width 2/255 and reports log-probabilities of the 8-bit images and bits/dim
(`bench.science.metrics`). Readers: `bench.data.imagedata`; checks, downloads and the
restricted unpickler: `bench.data.files`.

Files under the data root (``BENCH_DATA_DIR`` or the user cache folder):
``cifar10/cifar-10-python.tar.gz`` (train = first 45000 training images, val = last 5000,
test = the standard 10000); ``mnist/{train,t10k}-images-idx3-ubyte.gz`` (55000/5000/10000);
offline test images only, split 8000/1000/1000 by a fixed permutation (RandomState(0)) and
labelled as not the standard split: ``cifar10/test.npz`` (a lossy JPEG proxy) and
``mnist/t10k-images-idx3-ubyte.gz``; ``imagenet32/Imagenet32_{train,val}_npz.zip`` (or the
npz files extracted from them); ``flowers102/{102flowers.tgz,setid.mat}``.

``source``: "auto" never touches the network (the full files when present, else the offline
ones, else a one-line DataError naming both); "full" downloads missing canonical files
(SHA-256 verified before they take their name); "test-only" uses the offline files. Every
file's SHA-256 (and md5 where that is the official checksum) is checked before it is opened:
``PINS``, with the source of each digest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from bench.api import Dataset, Splits, at_least
from bench.api.errors import ConfigError, DataError
from bench.data import files, imagedata
from bench.data.files import Pin
from bench.data.imagedata import read_cifar_archive, read_idx_images, to_model_scale

__all__ = ["CIFAR10", "MNIST", "ImageNet32", "Flowers102", "PINS", "to_model_scale",
           "read_idx_images", "read_cifar_archive", "DEQUANTIZATION"]

log = logging.getLogger(__name__)

DEQUANTIZATION = "uniform-8bit"  # 8-bit grid 2v/255-1; the harness adds the noise
OFFLINE_SIZES = (8000, 1000, 1000)
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # torchvision's mirror
FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
IMAGENET32_URL = ("https://image-net.org/download-images.php (log in; 'Downsampled ImageNet "
                  "32x32', Chrabaszcz et al. 2017)")


PINS: dict[str, Pin] = {
    # sha256: Keras cifar10.load_data's file_hash (also in many public manifests); md5: the
    # one published on https://www.cs.toronto.edu/~kriz/cifar.html
    "cifar10/cifar-10-python.tar.gz": Pin(
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        "c58f30108f718f92721af3b95e74349a"),
    # the offline JPEG proxy: ../shared/data/SHA256SUMS
    "cifar10/test.npz": Pin("5979e62f53d695f37a361f54872a0971b779da6a64f018a01bd7ffc53f56ded4"),
    # MNIST: tensorflow/datasets url_checksums/mnist.txt (the t10k one also in SHA256SUMS);
    # no official checksum is published on yann.lecun.com
    "mnist/train-images-idx3-ubyte.gz": Pin(
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "mnist/t10k-images-idx3-ubyte.gz": Pin(
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    # Flowers: tensorflow/datasets url_checksums/oxford_flowers102.txt (same in other public
    # manifests); the VGG page publishes no checksum
    "flowers102/102flowers.tgz": Pin(
        "2d01ecc807db462958cfe3d92f57a8c252b4abd240eb955770201e45f783b246"),
    "flowers102/setid.mat": Pin(
        "46b8678f91fd95d3c8f4feab80d271a6c834a1dd896fe29fd3e6ad9ce5c8dccd"),
}
class _Files(Dataset):
    """Pinned files under ``<root>/<folder>`` (`files.PinnedFolder`)."""

    kind: ClassVar[str] = "image"
    folder: ClassVar[str]
    url: ClassVar[str]
    @property
    def _files(self) -> files.PinnedFolder:
        if "_pinned" not in self.__dict__:
            pins = {k.split("/", 1)[1]: v for k, v in PINS.items()
                    if k.startswith(self.folder + "/")}
            self._pinned = files.PinnedFolder(self.data_dir / self.folder, pins, self.url)
        return self._pinned


@dataclass
class ImageParams:
    """source: "auto" (the full archive when present, else the offline test images; never
    the network), "full" (the canonical files, downloaded when missing) or "test-only" (the
    offline test images only)."""

    source: Literal["auto", "full", "test-only"] = "auto"


class _ImageDataset(_Files):
    """CIFAR-10 and MNIST: full canonical files or the offline test images."""

    Params = ImageParams
    label: ClassVar[str]
    offline_label: ClassVar[str]
    full_files: ClassVar[tuple[str, ...]]
    offline_file: ClassVar[str]
    full_sizes: ClassVar[tuple[int, int, int]]

    def _use_full(self) -> bool:
        have_full = all(self._files.path(f).is_file() for f in self.full_files)
        src = self.params.source
        if src == "full" or (src == "auto" and have_full):
            return True
        if not self._files.path(self.offline_file).is_file():
            raise DataError(f"{self.name}: no data: place {self.offline_file} (test images) or "
                            f"{' + '.join(self.full_files)} (from {self.url}) in "
                            f"{self.data_dir / self.folder}, set BENCH_DATA_DIR, or use "
                            "source=full to download")
        return False

    def prepare(self) -> None:
        """Download missing canonical files (source "full" only) and verify the files."""
        if self._use_full():
            self._files.download_missing(self.full_files)
        for name in self.full_files if self._use_full() else (self.offline_file,):
            self._files.checked(name)

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
            parts = imagedata.fixed_split(self._read_offline(), OFFLINE_SIZES)
            sizes = "/".join(str(p.shape[0]) for p in parts)
            prov = (f"{self.offline_label}, split {sizes} by a fixed permutation "
                    "(RandomState(0)) - not the standard train/test split")
            names = {k: f"{self.offline_label}, {k} part ({p.shape[0]})"
                     for k, p in zip(("train", "val", "test"), parts, strict=True)}
        return _splits(self.name, parts, prov, names)


def _splits(name: str, parts: list[np.ndarray], prov: str, names: dict[str, str]) -> Splits:
    train, val, test = (to_model_scale(p) for p in parts)
    log.info("%s: %s", name, prov)
    return Splits(train, val, test, tuple(train.shape[1:]), prov, names, DEQUANTIZATION)


class CIFAR10(_ImageDataset):
    """CIFAR-10 32x32 colour images (8-bit, scaled to [-1, 1])."""

    name = "cifar10"
    event_shape = (3, 32, 32)
    label = "CIFAR-10"
    offline_label = "CIFAR-10 test images (JPEG proxy)"
    folder = "cifar10"
    url = CIFAR_URL
    full_files = ("cifar-10-python.tar.gz",)
    offline_file = "test.npz"
    full_sizes = (45000, 5000, 10000)

    def _read_full(self) -> tuple[np.ndarray, np.ndarray]:
        return read_cifar_archive(self._files.checked(self.full_files[0]), None)  # verified

    def _read_offline(self) -> np.ndarray:
        with np.load(self._files.checked(self.offline_file), allow_pickle=False) as d:
            x = d["x"]
        if x.shape[1:] != (32, 32, 3):
            raise DataError(f"{self._files.path(self.offline_file)}: expected (n, 32, 32, 3) NHWC "
                            f"images, got {x.shape}")
        return x.transpose(0, 3, 1, 2)


class MNIST(_ImageDataset):
    """MNIST 28x28 grey-scale digits (8-bit, scaled to [-1, 1])."""

    name = "mnist"
    event_shape = (1, 28, 28)
    label = "MNIST"
    offline_label = "MNIST test images"
    folder = "mnist"
    url = MNIST_URL
    full_files = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")
    offline_file = "t10k-images-idx3-ubyte.gz"
    full_sizes = (55000, 5000, 10000)

    def _read_full(self) -> tuple[np.ndarray, np.ndarray]:
        train, test = (read_idx_images(self._files.checked(f)) for f in self.full_files)
        return train[:, None], test[:, None]

    def _read_offline(self) -> np.ndarray:
        return read_idx_images(self._files.checked(self.offline_file))[:, None]


@dataclass
class ImageNet32Params:
    """train_rows: keep only the first N training images (None: all 1,271,167; as float32
    they take ~15.6 GB of memory, 12 KiB per image, so cap it on small machines)."""

    train_rows: int | None = field(default=None, metadata=at_least(1))


class ImageNet32(Dataset):
    """ImageNet 32x32 (Chrabaszcz et al. 2017 downsampled npz batches; 8-bit, in [-1, 1])."""

    name = "imagenet32"
    kind: ClassVar[str] = "image"
    event_shape = (3, 32, 32)
    Params = ImageNet32Params
    folder = "imagenet32"
    val_rows = 10000

    def __init__(self, params: ImageNet32Params | None = None,
                 data_dir: Path | None = None) -> None:
        super().__init__(params, data_dir)
        rows = self.params.train_rows
        if rows is not None and rows < 1:
            raise ConfigError(f"imagenet32: train_rows must be >= 1 or None, got {rows}")

    def prepare(self) -> None:
        """No download (the files are behind a login): check that they are present."""
        folder = self.data_dir / self.folder
        train = all((folder / n).is_file() for n in imagedata.IMAGENET32_TRAIN)
        val = (folder / imagedata.IMAGENET32_VAL).is_file()
        zips = imagedata.IMAGENET32_ZIPS
        if not (train or (folder / zips["train"]).is_file()) or not (
                val or (folder / zips["val"]).is_file()):
            raise DataError(f"imagenet32: place {zips['train']} and {zips['val']} (or the "
                            f"npz files extracted from them) in {folder}; get them from "
                            f"{IMAGENET32_URL}")

    def load(self) -> Splits:
        train, val, test = imagedata.read_imagenet32(
            self.data_dir / self.folder, val_rows=self.val_rows,
            train_rows=self.params.train_rows, md5=imagedata.IMAGENET32_MD5, strict=False)
        cap = "" if self.params.train_rows is None else f", first {train.shape[0]} kept"
        prov = (f"ImageNet 32x32 (Chrabaszcz et al. 2017 npz): train = the training batches "
                f"minus their last {val.shape[0]} images{cap}, val = those last "
                f"{val.shape[0]}, test = the official validation set ({test.shape[0]})")
        names = {"train": f"ImageNet32 train[:-{val.shape[0]}] ({train.shape[0]} images)",
                 "val": f"ImageNet32 train[-{val.shape[0]}:]",
                 "test": f"ImageNet32 official validation set ({test.shape[0]} images)"}
        return _splits(self.name, [train, val, test], prov, names)


@dataclass
class Flowers102Params:
    """resolution: side r of the square images (shorter side resized to r with PIL's
    Lanczos filter, centre crop r x r); source: "auto" (local files only) or "full"
    (download the missing official files)."""

    resolution: int = field(default=128, metadata=at_least(8))
    source: Literal["auto", "full"] = "auto"


class Flowers102(_Files):
    """Oxford Flowers 102, resized and centre-cropped to r x r (8-bit, in [-1, 1])."""

    name = "flowers102"
    event_shape = (3, 128, 128)
    Params = Flowers102Params
    folder = "flowers102"
    url = FLOWERS_URL
    needed = ("102flowers.tgz", "setid.mat")

    def __init__(self, params: Flowers102Params | None = None,
                 data_dir: Path | None = None) -> None:
        super().__init__(params, data_dir)
        r = self.params.resolution
        self.event_shape = (3, r, r)

    @classmethod
    def shape(cls, params: Flowers102Params) -> tuple[int, ...]:
        return (3, params.resolution, params.resolution)

    def _cache(self) -> Path:
        return imagedata.flowers_cache_path(self.data_dir / self.folder / "cache",
                                            self.params.resolution,
                                            PINS["flowers102/102flowers.tgz"].sha256)

    def prepare(self) -> None:
        """Download missing files (source "full"), else name them; verify setid.mat."""
        need = ("setid.mat",) if self._cache().is_file() else self.needed
        missing = [n for n in need if not self._files.path(n).is_file()]
        if missing and self.params.source != "full":
            raise DataError(f"flowers102: place {' + '.join(missing)} (from {self.url}) in "
                            f"{self.data_dir / self.folder}, or use source=full to download")
        self._files.download_missing(need)
        self._files.checked("setid.mat")

    def load(self) -> Splits:
        r = self.params.resolution
        images = imagedata.flowers_images(
            self._files.path("102flowers.tgz"), r, self.data_dir / self.folder / "cache",
            PINS["flowers102/102flowers.tgz"].sha256)
        ids = imagedata.read_flowers_setid(self._files.checked("setid.mat"))
        for k, v in ids.items():
            if v.size == 0 or v.min() < 1 or v.max() > images.shape[0]:
                raise DataError(f"flowers102: setid.mat {k} ids outside 1..{images.shape[0]}")
        parts = [images[ids[k] - 1] for k in ("train", "val", "test")]
        sizes = "/".join(str(p.shape[0]) for p in parts)
        prov = (f"Oxford Flowers 102 official split (setid.mat trnid/valid/tstid, {sizes}); "
                f"shorter side resized to {r} px (PIL Lanczos), centre crop {r}x{r}")
        names = {k: f"Oxford Flowers 102 {key} ({p.shape[0]} images, {r}x{r})"
                 for k, key, p in zip(("train", "val", "test"), ("trnid", "valid", "tstid"),
                                      parts, strict=True)}
        return _splits(self.name, parts, prov, names)
