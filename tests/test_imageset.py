"""Image sets (bench/data/imageset.py): the uint8 <-> model-scale round trip, reading
.npz/.npy/PNG folders in either layout, the refusals, and the sample grid PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.api.errors import DataError
from bench.data.imageset import read_image_set, to_uint8, write_grid_png


def _images(n: int = 5, c: int = 3, h: int = 6, w: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def test_to_uint8_inverts_the_model_scale_on_the_grid() -> None:
    v = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    for dtype in (torch.float32, torch.float64):
        x = v.to(dtype) / 127.5 - 1.0  # datasets/images.py's to_model_scale, 2v/255 - 1
        assert np.array_equal(to_uint8(x), v.numpy())
    # off-grid values round to the nearest level; out of range and NaN are clipped
    x = torch.tensor([-1.5, -1.0, 2 * 10.4 / 255 - 1, 2 * 10.6 / 255 - 1, 1.2, float("nan")])
    assert to_uint8(x.view(1, 1, 1, 6)).ravel().tolist() == [0, 0, 10, 11, 255, 0]
    assert to_uint8(x.view(1, 1, 1, 6)).dtype == np.uint8


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("key", ["x", "arr_0", "images"])
def test_npz_round_trip(tmp_path: Path, layout: str, key: str) -> None:
    x = _images()
    stored = x if layout == "nchw" else x.transpose(0, 2, 3, 1)
    np.savez(tmp_path / "a.npz", **{key: stored})
    assert np.array_equal(read_image_set(tmp_path / "a.npz"), x)


def test_npz_prefers_x_and_npy_and_grey(tmp_path: Path) -> None:
    x = _images()
    np.savez(tmp_path / "two.npz", y=np.arange(5), x=x)
    assert np.array_equal(read_image_set(tmp_path / "two.npz"), x)
    np.save(tmp_path / "a.npy", x.transpose(0, 2, 3, 1))
    assert np.array_equal(read_image_set(tmp_path / "a.npy"), x)
    grey = _images(c=1)[:, 0]  # (n, H, W)
    np.save(tmp_path / "g.npy", grey)
    assert np.array_equal(read_image_set(tmp_path / "g.npy"), grey[:, None])
    np.save(tmp_path / "i.npy", x.astype(np.int64))  # integers in 0..255 are exact
    assert np.array_equal(read_image_set(tmp_path / "i.npy"), x)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_png_folder_round_trip(tmp_path: Path, mode: str) -> None:
    x = _images(n=4, c=3 if mode == "RGB" else 1)
    for i, im in enumerate(x[::-1]):  # written in reverse; read back sorted by name
        arr = im.transpose(1, 2, 0) if mode == "RGB" else im[0]
        Image.fromarray(arr, mode).save(tmp_path / f"{3 - i:03d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert np.array_equal(read_image_set(tmp_path), x)


def test_folder_of_grey_and_colour_reads_as_colour(tmp_path: Path) -> None:
    x = _images(n=2)
    Image.fromarray(x[0].transpose(1, 2, 0)).save(tmp_path / "a.png")
    Image.fromarray(x[1, 0]).save(tmp_path / "b.png")
    got = read_image_set(tmp_path)
    assert got.shape == (2, 3, 6, 7)
    assert np.array_equal(got[0], x[0]) and np.array_equal(got[1], np.repeat(x[1, :1], 3, 0))


def test_refusals(tmp_path: Path) -> None:
    def refused(obj, match: str, name: str = "bad.npy") -> None:
        if obj is not None:
            np.save(tmp_path / name, obj)
        with pytest.raises(DataError, match=match):
            read_image_set(tmp_path / name)

    refused(np.zeros((2, 3, 4, 4), np.float32), "floats are refused")  # [0, 1]? [-1, 1]? no
    refused(np.full((2, 3, 4, 4), 300, np.int64), "outside 0..255")
    refused(np.zeros((0, 3, 4, 4), np.uint8), "no images")
    refused(np.zeros((2, 3, 3, 3), np.uint8), "ambiguous")
    refused(np.zeros((2, 5, 4, 4), np.uint8), "no channel axis")
    refused(np.zeros((2, 4), np.uint8), "expected")
    refused(np.array([{"a": 1}], dtype=object), "not a readable numpy file")
    np.savez(tmp_path / "many.npz", a=np.zeros(3), b=np.zeros(3))
    refused(None, "no array 'x'", "many.npz")
    refused(None, "no image set", "missing.npz")
    (tmp_path / "a.txt").write_text("x")
    refused(None, "expected an .npz", "a.txt")
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(_images(1)[0].transpose(1, 2, 0)).save(folder / "a.png")
    Image.fromarray(_images(1, h=8)[0].transpose(1, 2, 0)).save(folder / "b.png")
    refused(None, "mixed sizes", "mixed")
    (tmp_path / "empty").mkdir()
    refused(None, "no .png", "empty")


@pytest.mark.parametrize("c", [3, 1])
def test_grid_png_places_every_image(tmp_path: Path, c: int) -> None:
    x, nrow, pad = _images(n=5, c=c), 3, 2
    path = write_grid_png(x, tmp_path / "sub" / "grid.png", nrow=nrow, pad=pad)
    grid = np.asarray(Image.open(path))
    grid = grid[..., None] if c == 1 else grid
    h, w = x.shape[2:]
    assert grid.shape == (2 * (h + pad) + pad, 3 * (w + pad) + pad, c)
    mask = np.ones(grid.shape[:2], bool)
    for k in range(5):
        top, left = pad + (k // nrow) * (h + pad), pad + (k % nrow) * (w + pad)
        assert np.array_equal(grid[top:top + h, left:left + w], x[k].transpose(1, 2, 0))
        mask[top:top + h, left:left + w] = False
    assert not grid[mask].any()  # padding and the empty sixth cell are black
    with pytest.raises(DataError):
        write_grid_png(x[:0], tmp_path / "empty.png")
