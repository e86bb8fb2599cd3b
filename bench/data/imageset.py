"""Image sets as uint8 arrays (n, C, H, W), C in {1, 3}: from the model scale, from files, and
to a sample grid PNG.

Model scale (``datasets/images.py``): x = 2 v / 255 - 1 for a uint8 value v, so
``to_uint8`` is round((x + 1) * 127.5) clipped to 0..255, the exact inverse on the grid.

``read_image_set`` reads an .npz (key ``x``, else ``arr_0``, else its only array), an .npy or
a folder of PNG/JPEG files (sorted by name). Arrays are (n, H, W) (grey), (n, H, W, C) or
(n, C, H, W); the layout is the one whose channel axis has 1 or 3 entries (an array where
both readings fit is refused as ambiguous). Values must be integers in 0..255: float arrays
are refused, whatever their range, since [0, 1], [-1, 1] and [0, 255] floats cannot be told
apart reliably; convert model-scale floats with `to_uint8`. Pillow is imported lazily.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.api.errors import DataError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["to_uint8", "read_image_set", "write_grid_png", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def to_uint8(x: Tensor) -> np.ndarray:
    """Model-scale images (n, C, H, W) in [-1, 1] -> uint8 (n, C, H, W), round((x+1)*127.5)
    clipped (NaN -> 0). The inverse of v -> 2 v / 255 - 1 on the 8-bit grid."""
    import torch

    v = ((x.detach().to("cpu", torch.float64) + 1.0) * 127.5).round()
    return v.nan_to_num(0.0).clamp(0, 255).to(torch.uint8).numpy()


def _as_uint8(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        if a.size and (a.min() < 0 or a.max() > 255):
            raise DataError(f"{what}: integer values {a.min()}..{a.max()} outside 0..255")
        return a.astype(np.uint8)
    raise DataError(f"{what}: dtype {a.dtype}, expected uint8 images (floats are refused: "
                    "convert [-1, 1] model-scale images with bench.data.imageset.to_uint8)")


def _to_nchw(a: np.ndarray, what: str) -> np.ndarray:
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise DataError(f"{what}: shape {a.shape}, expected (n, H, W), (n, H, W, C) or "
                        "(n, C, H, W) images")
    nchw, nhwc = a.shape[1] in (1, 3), a.shape[3] in (1, 3)
    if nchw and nhwc:
        raise DataError(f"{what}: shape {a.shape} is ambiguous (NCHW or NHWC)")
    if not (nchw or nhwc):
        raise DataError(f"{what}: shape {a.shape} has no channel axis of 1 or 3")
    return np.ascontiguousarray(a if nchw else a.transpose(0, 3, 1, 2))


def _read_array(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            for key in ("x", "arr_0"):
                if key in z.files:
                    return z[key]
            if len(z.files) == 1:
                return z[z.files[0]]
            raise DataError(f"{path}: no array 'x' or 'arr_0' among {z.files}")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable numpy file ({exc})") from exc


def _read_folder(path: Path) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: no {'/'.join(IMAGE_SUFFIXES)} files")
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                if im.mode in ("I", "I;16", "F"):
                    raise DataError(f"{f}: {im.mode} image, expected 8-bit grey or RGB")
                images.append(im.convert("L" if im.mode == "L" else "RGB"))
        except OSError as exc:
            raise DataError(f"{f}: not a readable image ({exc})") from exc
    if len({im.size for im in images}) > 1:
        sizes = sorted({im.size for im in images})
        raise DataError(f"{path}: images of mixed sizes (W, H) {sizes[:4]}")
    if len({im.mode for im in images}) > 1:  # grey and colour: colour throughout
        images = [im.convert("RGB") for im in images]
    a = np.stack([np.asarray(im) for im in images])
    return a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2)


def read_image_set(path: Path | str) -> np.ndarray:
    """uint8 images (n, C, H, W), C in {1, 3}, from an .npz, an .npy or a folder of PNG/JPEG
    files (see the module docstring for the rules).

    Raises:
        DataError: missing, empty, not integers in 0..255, no channel axis, mixed sizes.
    """
    path = Path(path)
    if path.is_dir():
        return np.ascontiguousarray(_read_folder(path))
    if not path.is_file():
        raise DataError(f"no image set at {path}")
    if path.suffix not in (".npz", ".npy"):
        raise DataError(f"{path}: expected an .npz or .npy file or a folder of images")
    a = _to_nchw(_as_uint8(_read_array(path), str(path)), str(path))
    if a.shape[0] == 0:
        raise DataError(f"{path}: no images")
    return a


def write_grid_png(images: np.ndarray, path: Path | str, nrow: int = 8, pad: int = 2) -> Path:
    """A grid of uint8 images (n, C, H, W), ``nrow`` per row, ``pad`` black pixels between
    and around them, as a PNG (grey for C = 1). Image k sits at row k // nrow, column
    k % nrow, top-left corner (pad + r (H + pad), pad + c (W + pad)).

    Returns:
        the written path.
    """
    from PIL import Image

    images = _as_uint8(np.asarray(images), "grid")
    if images.ndim != 4 or images.shape[1] not in (1, 3) or not len(images) or nrow < 1 \
            or pad < 0:
        raise DataError(f"grid of images {images.shape} (expected (n >= 1, 1 or 3, H, W)), "
                        f"nrow={nrow}, pad={pad}")
    n, c, h, w = images.shape
    cols, rows = min(nrow, n), math.ceil(n / nrow)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for k in range(n):
        top, left = pad + (k // nrow) * (h + pad), pad + (k % nrow) * (w + pad)
        grid[top:top + h, left:left + w] = images[k].transpose(1, 2, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
    return path
