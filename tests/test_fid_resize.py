"""The labelled FID resize (bench/science/fid_resize.py): the clean path against clean-fid's own
resize bit for bit (clean-fid is a test dependency: pip install --no-deps clean-fid; only its
``cleanfid.resize`` module is imported, which needs torch, numpy and PIL, not torchvision),
and the two rules differ in pixels, in features and in the extractor's id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.api.errors import ConfigError
from bench.science import fid
from bench.science.fid_resize import RESIZES, clean_resize, get_resize, tf1_bilinear_resize


def _clean_fid_resizer():
    resize = pytest.importorskip("cleanfid.resize", reason="clean-fid is not installed")
    return resize.make_resizer("PIL", False, "bicubic", (299, 299))


@pytest.mark.parametrize(("c", "h", "w"), [(3, 32, 32), (1, 28, 28), (3, 17, 23)])
def test_clean_resize_equals_clean_fid_bit_for_bit(c: int, h: int, w: int) -> None:
    theirs = _clean_fid_resizer()
    x = np.random.default_rng(h * w).integers(0, 256, (2, c, h, w), dtype=np.uint8)
    rgb = np.repeat(x, 3, axis=1) if c == 1 else x  # grey -> RGB as PIL's convert("RGB")
    ours = clean_resize(torch.from_numpy(rgb).float(), 299).numpy()
    for i in range(len(x)):
        want = theirs(rgb[i].transpose(1, 2, 0))  # clean-fid takes one HWC uint8 image
        assert want.dtype == np.float32 and ours.dtype == np.float32
        assert np.array_equal(ours[i].transpose(1, 2, 0), want)
    assert ours.min() >= 0 and ours.max() <= 255  # clipped (bicubic overshoots on noise)


def test_tf1_and_clean_differ_and_unknown_is_one_error() -> None:
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 3, 32, 32))).float()
    a, b = tf1_bilinear_resize(x, 299), clean_resize(x, 299)
    assert a.shape == b.shape == (1, 3, 299, 299)
    # on uint8 noise the two kernels differ by tens of grey levels, not by rounding
    assert (a - b).abs().max() > 10
    assert {r.rule for r in RESIZES.values()} == {"tf1-bilinear-299", "clean-pil-bicubic-299"}
    with pytest.raises(ConfigError, match="tf1, clean"):
        get_resize("bicubic")


def test_resize_is_in_the_extractor_id_and_moves_the_features(data_dir: Path | None) -> None:
    try:
        path = fid.find_inception(data_dir)
    except fid.FIDUnavailable as exc:
        pytest.skip(str(exc))
    with pytest.raises(ConfigError):  # refused before the network loads
        fid.InceptionFeatures(path, resize="lanczos")
    tf1 = fid.InceptionFeatures(path, batch_size=2)
    clean = fid.InceptionFeatures(path, batch_size=2, resize="clean")
    # the tf1 id keeps its old text, so old records and cache keys stay valid
    assert tf1.id == f"inception-2015-12-05-pool3:{fid.INCEPTION_SHA256[:12]}+tf1-bilinear-299"
    assert clean.id.endswith("+clean-pil-bicubic-299") and clean.resize == "clean"
    images = np.random.default_rng(1).integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    fa, fb = tf1(images), clean(images)
    # features differ far beyond float32 rounding (~1e-6 relative) when only the resize does
    assert np.abs(fa - fb).max() > 1e-3 * np.abs(fa).max()
