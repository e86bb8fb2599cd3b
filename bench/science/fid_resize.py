"""The resize before the FID Inception network, a labelled choice (Parmar et al. 2022 show
that it moves FID by several points):

- ``tf1``: TensorFlow 1.x ``resize_bilinear`` (align_corners=False, no half-pixel centres, no
  antialiasing), the rule of the original TF FID code and torch-fidelity, hence of the
  published FIDs. Rule name ``tf1-bilinear-299``.
- ``clean``: clean-fid's "clean" mode (Parmar et al., MIT licence; our own code, written from
  its ``cleanfid/resize.py``, ``make_resizer("PIL", False, "bicubic", (299, 299))``): each
  channel as a float32 PIL ``F`` image, ``Image.resize`` bicubic (PIL antialiases when
  downsampling), clipped to [0, 255], no quantisation after. Rule name
  ``clean-pil-bicubic-299``.

Both take float (N, C, H, W) holding uint8 values and return float32 / ``x.dtype`` (N, C,
*size); the caller normalises with (x - 128) / 128 (what clean-fid's Inception wrapper does
too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bench.api.errors import ConfigError

__all__ = ["Resize", "RESIZES", "tf1_bilinear_resize", "clean_resize", "get_resize"]


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _check(x: Tensor) -> None:
    if x.dim() != 4 or not torch.is_floating_point(x):
        raise ValueError(f"expected a float (N, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}")


def tf1_bilinear_resize(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """TensorFlow 1.x ``resize_bilinear`` (align_corners=False, half_pixel_centers=False).

    Output pixel i samples the input at s = i * (in / out) (scale rounded to float32, product
    in ``x.dtype``), lo = floor(s), hi = min(lo + 1, in - 1), lerp a + (b - a) * frac: first
    along the width, then the height, which is bit for bit torch-fidelity's
    ``interpolate_bilinear_2d_like_tensorflow1x(..., align_corners=False, method="slow")``.

    Args:
        x: (N, C, H, W) floating point.
        size: output (height, width), or one int for both.

    Returns:
        (N, C, *size) of ``x.dtype``.
    """
    _check(x)
    out_h, out_w = _size(size)

    def axis(n_in: int, n_out: int) -> tuple[Tensor, Tensor, Tensor]:
        scale = torch.tensor(n_in / n_out, dtype=torch.float32, device=x.device)
        pos = torch.arange(n_out, dtype=x.dtype, device=x.device) * scale
        lo = pos.long()  # floor: pos >= 0
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, pos - lo.float()

    xlo, xhi, dx = axis(x.shape[3], out_w)
    ylo, yhi, dy = axis(x.shape[2], out_h)
    left = x.index_select(3, xlo)
    rows = left + (x.index_select(3, xhi) - left) * dx.view(1, 1, 1, out_w)
    top = rows.index_select(2, ylo)
    return top + (rows.index_select(2, yhi) - top) * dy.view(1, 1, out_h, 1)


def clean_resize(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """clean-fid's "clean" resize: every (image, channel) plane as a float32 PIL ``F`` image,
    bicubic ``Image.resize`` to (width, height) = size reversed, clipped to [0, 255]. Runs
    on the CPU (PIL) and returns float32 on ``x``'s device.

    Args:
        x: (N, C, H, W) floating point with values in [0, 255] (uint8 images).
        size: output (height, width), or one int for both.
    """
    from PIL import Image

    _check(x)
    out_h, out_w = _size(size)
    planes = x.detach().to("cpu", torch.float32).numpy()
    out = np.empty((*planes.shape[:2], out_h, out_w), dtype=np.float32)
    for i in range(planes.shape[0]):
        for c in range(planes.shape[1]):
            img = Image.fromarray(np.ascontiguousarray(planes[i, c]), mode="F")
            out[i, c] = np.asarray(img.resize((out_w, out_h), resample=Image.BICUBIC))
    np.clip(out, 0, 255, out=out)
    return torch.from_numpy(out).to(x.device)


@dataclass(frozen=True)
class Resize:
    """A named resize: ``name`` (the choice: tf1, clean), ``rule`` (the label in extractor
    ids and tags), ``fn(x, size)``, and one line saying what it is."""

    name: str
    rule: str
    fn: Callable[[Tensor, int | tuple[int, int]], Tensor]
    description: str


RESIZES: dict[str, Resize] = {
    "tf1": Resize("tf1", "tf1-bilinear-299", tf1_bilinear_resize,
                  "TF1 bilinear, no antialiasing (torch-fidelity, the published FIDs)"),
    "clean": Resize("clean", "clean-pil-bicubic-299", clean_resize,
                    "PIL bicubic with antialiasing (clean-fid)"),
}


def get_resize(name: str) -> Resize:
    """The resize called ``name``; an unknown name is a one-line `ConfigError`."""
    if name not in RESIZES:
        raise ConfigError(f"FID resize must be one of {', '.join(RESIZES)}, got {name!r}")
    return RESIZES[name]
