"""Readers of the image archives, in their original formats, to uint8 NCHW arrays.

Torch-free at import (numpy; PIL and scipy are imported inside the functions that need
them). Every reader takes the expected digest of its file and checks it before parsing;
`bench.data.files` holds the checks, the downloads and the restricted unpickler.

- MNIST: gzip idx3 files (`read_idx_images`).
- CIFAR-10: ``cifar-10-python.tar.gz``, pickled batches read with `files.safe_unpickle`
  (numpy arrays and plain containers only; never ``pickle.load``) (`read_cifar_archive`).
- ImageNet 32x32 (Chrabaszcz et al. 2017): npz batches, either extracted in a folder or
  inside ``Imagenet32_{train,val}_npz.zip``; ``np.load(allow_pickle=False)``
  (`read_imagenet32`).
- Oxford Flowers 102: ``102flowers.tgz`` (``jpg/image_XXXXX.jpg``) + ``setid.mat``;
  shorter side resized to r with PIL's Lanczos (antialiased) filter, centre-cropped to
  r x r, cached once as a uint8 .npy whose name carries the archive's SHA-256 and r, with a
  ``.sha256`` sidecar checked at every load (`flowers_images`, `read_flowers_setid`).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import re
import tarfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.api.errors import DataError
from bench.data import files

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["to_model_scale", "fixed_split", "read_idx_images", "read_cifar_archive",
           "IMAGENET32_TRAIN", "IMAGENET32_VAL", "IMAGENET32_ZIPS", "IMAGENET32_MD5",
           "read_imagenet32_batch", "read_imagenet32", "resize_center_crop",
           "read_flowers_setid", "flowers_images", "flowers_cache_path"]

log = logging.getLogger(__name__)


def to_model_scale(x: np.ndarray) -> Tensor:
    """uint8 images (n, C, H, W) -> float32 tensor 2 v / 255 - 1 in [-1, 1] (in place after
    the one float copy: peak memory = the uint8 array + the float32 result)."""
    import torch

    if x.dtype != np.uint8:
        raise DataError(f"expected uint8 images, got {x.dtype}")
    return torch.from_numpy(np.ascontiguousarray(x)).float().div_(127.5).sub_(1.0)


def fixed_split(x: np.ndarray, sizes: tuple[int, int, int]) -> list[np.ndarray]:
    """Three disjoint parts of x of the given sizes, by a fixed permutation (RandomState(0))."""
    perm = np.random.RandomState(0).permutation(x.shape[0])
    a, b, c = sizes
    return [x[perm[:a]], x[perm[a:a + b]], x[perm[a + b:a + b + c]]]


def _check(path: Path, sha256: str | None, md5: str | None = None) -> None:
    if sha256 is not None or md5 is not None:
        files.verify_file(path, sha256=sha256, md5=md5)


# -- MNIST, CIFAR-10 -----------------------------------------------------------------------
def read_idx_images(path: Path, sha256: str | None = None) -> np.ndarray:
    """MNIST idx3 file (gzip) -> uint8 array (n, rows, cols), checked against ``sha256``."""
    _check(path, sha256)
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051 or len(raw) != 16 + n * rows * cols:
        raise DataError(f"{path} is not an idx3 image file (magic {magic}, {len(raw)} bytes)")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def read_cifar_archive(path: Path, sha256: str | None = None,
                       md5: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-python.tar.gz -> (train (n, 3, 32, 32), test (m, 3, 32, 32)) uint8 (n = 50000,
    m = 10000 in the real archive), checked against the digests given; the batches go
    through the restricted unpickler whatever the checksum."""
    _check(path, sha256, md5)

    def batch(tar: tarfile.TarFile, name: str) -> np.ndarray:
        member = tar.extractfile(f"cifar-10-batches-py/{name}")
        if member is None:
            raise DataError(f"{path} has no cifar-10-batches-py/{name}")
        d = files.safe_unpickle(member.read())
        data = d.get(b"data") if isinstance(d, dict) else None
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{path}: {name} has no (n, 3072) b'data' array")
        return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)

    try:
        with tarfile.open(path, "r:gz") as tar:
            train = np.concatenate([batch(tar, f"data_batch_{i}") for i in range(1, 6)])
            test = batch(tar, "test_batch")
    except (tarfile.TarError, KeyError, OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    return train, test


# -- ImageNet 32x32 ------------------------------------------------------------------------
IMAGENET32_TRAIN = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11))
IMAGENET32_VAL = "val_data.npz"
IMAGENET32_ZIPS = {"train": "Imagenet32_train_npz.zip", "val": "Imagenet32_val_npz.zip"}
# image-net.org publishes no checksum and no SHA-256 could be confirmed. These md5 of the
# extracted npz files agree across several public loaders (torchvision-style IMAGENET32 /
# ImageNetDS classes) but are unofficial: pass them with strict=False (a mismatch is logged).
IMAGENET32_MD5 = dict(zip((*IMAGENET32_TRAIN, IMAGENET32_VAL), (
    "464fde20de6eb44c28cc1a8c11544bb1", "bdb56e71882c3fd91619d789d5dd7c79",
    "83ff36d76ea26867491a281ea6e1d03b", "98ff184fe109d5c2a0f6da63843880c7",
    "62b8803e13c3e6de9498da7aaaae57c8", "e0b06665f890b029f1d8d0a0db26e119",
    "9731f469aac1622477813c132c5a847a", "60aed934b9d26b7ee83a1a83bdcfbe0f",
    "b96328e6affd718660c2561a6fe8c14c", "1dc618d544c554220dd118f72975470c",
    "a8c04a389f2649841fb7a01720da9dd9"), strict=True))


def read_imagenet32_batch(source: Path | bytes, what: str) -> np.ndarray:
    """One npz batch (a path or its bytes): key 'data' (n, 3072) uint8 rows in CHW order ->
    (n, 3, 32, 32) uint8. Loaded with ``allow_pickle=False``."""
    try:
        with np.load(io.BytesIO(source) if isinstance(source, bytes) else source,
                     allow_pickle=False) as d:
            data = d["data"]
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read ImageNet32 batch {what}: {e}") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{what}: expected 'data' (n, 3072) uint8, got {data.shape} "
                        f"{data.dtype}")
    return data.reshape(-1, 3, 32, 32)


def _imagenet32_member(folder: Path, name: str, md5: dict[str, str] | None,
                       strict: bool) -> np.ndarray:
    want = (md5 or {}).get(name)
    path = folder / name
    if path.is_file():
        data: bytes | None = None
        what = str(path)
    else:
        archive = folder / IMAGENET32_ZIPS["val" if name == IMAGENET32_VAL else "train"]
        if not archive.is_file():
            raise DataError(f"ImageNet32: neither {path} nor {archive} exists")
        try:
            with zipfile.ZipFile(archive) as z:
                members = [m for m in z.namelist() if m.rsplit("/", 1)[-1] == name]
                if not members:
                    raise DataError(f"{archive} has no {name}")
                data = z.read(members[0])
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"cannot read {archive}: {e}") from None
        what = f"{archive}:{members[0]}"
    if want is not None:
        try:
            if data is None:
                files.verify_file(path, md5=want)
            else:
                files.verify_bytes(data, what, md5=want)
        except DataError as e:
            if strict:
                raise
            log.warning("%s (an unofficial digest: reading it anyway)", e)
    return read_imagenet32_batch(path if data is None else data, what)


def read_imagenet32(folder: Path, *, val_rows: int = 10000, train_rows: int | None = None,
                    md5: dict[str, str] | None = None, strict: bool = True,
                    batches: tuple[str, ...] = IMAGENET32_TRAIN,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ImageNet32 splits (uint8 (n, 3, 32, 32)): train = the training batches in order
    minus their last ``val_rows`` images (its first ``train_rows`` only, when given), val =
    those last ``val_rows``, test = the official validation set (``val_data.npz``, 50000).

    Only the batches needed are read: the last one (val), then from the first until
    ``train_rows`` images are collected. ``md5`` maps batch file names to their digests: a
    mismatch is a DataError when ``strict``, else a logged warning (for digests that are not
    officially published). The npz files hold no pickles (``allow_pickle=False``).
    """
    loaded: dict[int, np.ndarray] = {}

    def get(i: int) -> np.ndarray:
        if i not in loaded:
            loaded[i] = _imagenet32_member(folder, batches[i], md5, strict)
        return loaded[i]

    tail, first, need = [], len(batches), val_rows  # val from the end, batch by batch
    while need > 0:
        first -= 1
        if first < 0:
            raise DataError(f"ImageNet32: fewer than {val_rows} training images in {folder}")
        part = get(first)
        tail.insert(0, part[max(0, part.shape[0] - need):])
        need -= tail[0].shape[0]
    cut = get(first).shape[0] - tail[0].shape[0]  # rows of batch `first` left for train
    train_parts, have = [], 0
    for i in range(first + 1):
        if train_rows is not None and have >= train_rows:
            break
        part = get(i)[:cut] if i == first else get(i)
        if train_rows is not None:
            part = part[:train_rows - have]
        train_parts.append(part)
        have += part.shape[0]
        if i != first:
            loaded.pop(i, None)  # free batches not needed again
    test = _imagenet32_member(folder, IMAGENET32_VAL, md5, strict)
    empty = np.zeros((0, 3, 32, 32), np.uint8)
    return np.concatenate(train_parts or [empty]), np.concatenate(tail), test


# -- Oxford Flowers 102 --------------------------------------------------------------------
def resize_center_crop(image: Any, resolution: int) -> np.ndarray:
    """PIL image -> (3, r, r) uint8: shorter side resized to r (Lanczos, antialiased),
    centre crop of r x r."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def read_flowers_setid(path: Path, sha256: str | None = None) -> dict[str, np.ndarray]:
    """setid.mat -> {"train": trnid, "val": valid, "test": tstid}, 1-based image ids."""
    from scipy.io import loadmat

    _check(path, sha256)
    try:
        mat = loadmat(path)
        return {k: np.asarray(mat[key]).ravel().astype(np.int64)
                for k, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid"))}
    except (KeyError, ValueError, OSError) as e:
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def flowers_cache_path(cache_dir: Path, resolution: int, tgz_sha256: str) -> Path:
    """The cache of the resized images: named by the archive's hash and the resolution."""
    return cache_dir / f"flowers102-{tgz_sha256[:16]}-{resolution}px.npy"


def _build_flowers(tgz: Path, resolution: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    found: dict[int, np.ndarray] = {}
    pattern = re.compile(r"(?:^|/)jpg/image_(\d{5})\.jpg$")
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            for member in tar:
                match = pattern.search(member.name)
                f = tar.extractfile(member) if match and member.isfile() else None
                if f is None:
                    continue
                with Image.open(io.BytesIO(f.read())) as image:
                    found[int(match.group(1))] = resize_center_crop(image, resolution)
    except (tarfile.TarError, OSError, EOFError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read {tgz}: {type(e).__name__}: {e}") from None
    if sorted(found) != list(range(1, len(found) + 1)):
        raise DataError(f"{tgz}: jpg/image_XXXXX.jpg ids are not 1..{len(found)}")
    return np.stack([found[i] for i in range(1, len(found) + 1)])


def flowers_images(tgz: Path, resolution: int, cache_dir: Path,
                   tgz_sha256: str) -> np.ndarray:
    """All images of 102flowers.tgz, row i = image id i + 1, as (n, 3, r, r) uint8.

    The archive is checked against ``tgz_sha256`` only when the cache is (re)built; the
    cache is checked against its ``.sha256`` sidecar at every load (a tampered cache is a
    DataError: delete it to rebuild).
    """
    cache = flowers_cache_path(cache_dir, resolution, tgz_sha256)
    sidecar = cache.with_name(cache.name + ".sha256")
    if cache.is_file() and sidecar.is_file():
        recorded = sidecar.read_text().split()[0]
        got = files.sha256_file(cache)
        if got != recorded:
            raise DataError(f"flowers cache {cache} has sha256 {got}, not the {recorded} "
                            "recorded when it was built: delete it to rebuild")
        return np.load(cache, allow_pickle=False)
    files.verify_sha256(tgz, tgz_sha256)
    log.info("resizing the Oxford Flowers 102 images to %d px (once; cached in %s)",
             resolution, cache)
    images = _build_flowers(tgz, resolution)
    cache_dir.mkdir(parents=True, exist_ok=True)
    part = cache.with_name(cache.name + ".part")
    with open(part, "wb") as f:
        np.save(f, images, allow_pickle=False)
    os.replace(part, cache)
    sidecar.write_text(f"{files.sha256_file(cache)}  {cache.name}\n")
    return images
