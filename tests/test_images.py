"""Tests of the DDPM U-Net (bench/unet.py), the image datasets (datasets/images.py) and a
tiny image DDPM's bound in bits/dim. Tests that need the offline images skip without them."""

from __future__ import annotations

import gzip
import io
import math
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.api import OptimConfig, SolverConfig, Splits
from bench.api.errors import ConfigError, DataError
from bench.harness import make_context
from bench.harness.evaluate import evaluate
from bench.harness.optim import Trainer
from bench.harness.registry import Registry
from bench.harness.selection import build_params
from bench.science.metrics import DEQUANTIZATION_LABEL
from bench.science.nets import count_parameters
from bench.science.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def _dataset(registry: Registry, name: str, root: Path | None):
    cls = registry.get("dataset", name)
    return cls(cls.Params(), data_dir=root)


def _needs(root: Path | None, rel: str) -> Path:
    if root is None or not (root / rel).is_file():
        pytest.skip(f"offline data {rel} not found under the data root (set BENCH_DATA_DIR)")
    return root


# U-Net ---------------------------------------------------------------------------------
TINY = {"ch": 8, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (4,),
        "dropout": 0.0}


@pytest.mark.parametrize(("c", "res", "kw"), [(3, 8, TINY),
                                              (1, 28, {**TINY, "ch_mult": (1, 2, 2),
                                                       "attn_resolutions": (14,)})])
def test_unet_output_shape(c: int, res: int, kw: dict) -> None:
    net = UNet(c, res, **kw)
    x = torch.randn(3, c, res, res)
    assert net(x, torch.tensor([0.0, 10.5, 99.0])).shape == x.shape
    assert net(x, torch.tensor(7.0)).shape == x.shape  # one time for the whole batch


def test_unet_parameter_count_of_a_tiny_config() -> None:
    """Counted by hand from Ho et al.'s architecture (temb 4ch, 3x3 convs, 1x1 skips)."""
    def res(c_in: int, c_out: int, temb: int = 32) -> int:
        n = 2 * c_in + (9 * c_in * c_out + c_out) + (temb * c_out + c_out) + 2 * c_out
        n += 9 * c_out * c_out + c_out
        return n + (c_in * c_out + c_out if c_in != c_out else 0)

    def attn(c: int) -> int:
        return 2 * c + 4 * (c * c + c)

    expected = (8 * 32 + 32) + (32 * 32 + 32)  # time embedding
    expected += 9 * 3 * 8 + 8  # conv_in
    expected += res(8, 8) + (9 * 8 * 8 + 8) + res(8, 16) + attn(16)  # down (8x8, 4x4)
    expected += res(16, 16) + attn(16) + res(16, 16)  # middle
    expected += res(32, 16) + attn(16) + res(24, 16) + attn(16) + (9 * 16 * 16 + 16)  # up 4x4
    expected += res(24, 8) + res(16, 8)  # up 8x8
    expected += 2 * 8 + (9 * 8 * 3 + 3)  # norm_out, conv_out
    assert count_parameters(UNet(3, 8, **TINY)) == expected


def test_unet_cifar10_config_has_ho_et_al_parameter_count() -> None:
    assert count_parameters(UNet(3, 32)) == 35_746_307  # "35.7M" in Ho et al. 2020


def test_unet_rejects_resolution_not_divisible_by_the_levels() -> None:
    with pytest.raises(ConfigError, match="not divisible"):
        UNet(1, 28, ch=8, ch_mult=(1, 2, 2, 2))


# datasets ------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "rel", "shape"), [
    ("cifar10", "cifar10/test.npz", (3, 32, 32)),
    ("mnist", "mnist/t10k-images-idx3-ubyte.gz", (1, 28, 28)),
])
def test_offline_images_load(registry, data_dir, name: str, rel: str, shape: tuple) -> None:
    root = _needs(data_dir, rel)
    splits = _dataset(registry, name, root).splits()
    assert (splits.train.shape[0], splits.val.shape[0], splits.test.shape[0]) == (8000, 1000,
                                                                                   1000)
    for x in (splits.train, splits.val, splits.test):
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == shape
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
        v = (x + 1) * 127.5  # back to 8-bit values: integers in 0..255
        assert torch.allclose(v, v.round(), atol=1e-4)
    assert splits.event_shape == shape
    assert "not the standard train/test split" in splits.provenance
    assert "8000/1000/1000" in splits.provenance
    assert splits.dequantization == "uniform-8bit"  # the harness dequantizes
    if name == "cifar10":
        assert "JPEG proxy" in splits.provenance
    again = _dataset(registry, name, root).splits()
    assert torch.equal(again.test, splits.test)  # the split is deterministic


@pytest.mark.parametrize(("name", "files"), [("cifar10", "test.npz"),
                                             ("mnist", "t10k-images-idx3-ubyte.gz")])
def test_missing_images_raise_one_line_data_error(registry, tmp_path, name, files) -> None:
    with pytest.raises(DataError) as err:
        _dataset(registry, name, tmp_path).splits()
    msg = str(err.value)
    assert files in msg and str(tmp_path / name) in msg and "\n" not in msg


def test_corrupt_offline_file_fails_its_checksum(registry, tmp_path) -> None:
    (tmp_path / "cifar10").mkdir()
    np.savez(tmp_path / "cifar10" / "test.npz", x=np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match="does not match"):
        _dataset(registry, "cifar10", tmp_path).prepare()


def test_cifar_archive_and_idx_readers(registry, tmp_path) -> None:
    mod = sys.modules[registry.get("dataset", "cifar10").__module__]
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
            data = np.full((2, 3072), k, np.uint8)
            data[:, 1024:2048] = 100 + k  # the green plane
            blob = pickle.dumps({b"data": data, b"labels": [0, 1]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    train, test = mod.read_cifar_archive(path)
    assert train.shape == (10, 3, 32, 32) and test.shape == (2, 3, 32, 32)
    assert int(train[0, 1, 5, 5]) == 100 and int(test[0, 0, 0, 0]) == 5
    img = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    idx = tmp_path / "x-idx3-ubyte.gz"
    header = b"".join(int(v).to_bytes(4, "big") for v in (2051, 2, 4, 5))
    with gzip.open(idx, "wb") as f:
        f.write(header + img.tobytes())
    assert np.array_equal(mod.read_idx_images(idx), img)


# a tiny image DDPM ---------------------------------------------------------------------
def _image_splits(images: torch.Tensor, test: torch.Tensor | None = None) -> Splits:
    test = images if test is None else test
    return Splits(images, images, test, tuple(images.shape[1:]), "test images",
                  dequantization="uniform-8bit")


def _tiny_ddpm(images: torch.Tensor, **overrides):
    cls = Registry().get("method", "ddpm")
    params = build_params(cls.Params, {**cls.test_params, **overrides}, "method 'ddpm'")
    solver = SolverConfig(rtol=1e-2, atol=1e-2, divergence="hutchinson")
    return cls(params, _image_splits(images), make_context(solver=solver))


def test_tiny_ddpm_bits_per_dim_on_8x8_images() -> None:
    """Trained by the harness's Trainer (DDPM's image defaults: lr 2e-4, clipping at 1) and
    scored by the harness: the PF-ODE density of dequantized images + D log(2/255), and the
    bound (a discrete log-probability), both in bits/dim."""
    g = torch.Generator().manual_seed(0)
    v = torch.randint(0, 256, (6, 3, 8, 8), generator=g).float()
    images = v / 127.5 - 1  # 8-bit values on the [-1, 1] grid
    method = _tiny_ddpm(images)
    optim = OptimConfig(**method.default_optim("image"))
    assert optim.lr == 2e-4 and optim.grad_clip == 1.0
    trainer = Trainer(method, optim)
    torch.manual_seed(0)
    for step in range(3):
        assert math.isfinite(trainer.step(images, step)["loss"])
    metrics, tags = evaluate(method, None, _image_splits(images, images[:4]),
                             trainer=trainer)
    d = 3 * 8 * 8
    for name in ("test_bpd", "test_bpd_elbo"):
        assert math.isfinite(metrics[name]) and metrics[name] > 0
    assert metrics["test_bpd"] == pytest.approx(metrics["test_nll"] / (d * math.log(2)))
    assert tags["test_nll_elbo.kind"] == "bound"
    assert "discretized Gaussian decoder" in tags["test_nll_elbo.estimator"]
    assert tags["test_nll.kind"] == "exact" and "pf-ode" in tags["test_nll.estimator"]
    assert tags["test_bpd.dequantization"] == DEQUANTIZATION_LABEL
    s = method.sample(2)
    assert s.shape == (2, 3, 8, 8) and float(s.abs().max()) <= 1.0 + 1e-5


def test_tiny_ddpm_bound_on_cifar10_images(data_dir) -> None:
    root = _needs(data_dir, "cifar10/test.npz")
    with np.load(root / "cifar10" / "test.npz") as d:
        x = torch.from_numpy(d["x"][:4].transpose(0, 3, 1, 2).copy()).float() / 127.5 - 1
    method = _tiny_ddpm(x, unet_attn_resolutions=(16,))
    assert method.supports("image", (3, 32, 32)) is None
    elbo = method.extra_likelihoods(x)["elbo"]
    bpd = -elbo.values.double() / (3 * 32 * 32 * math.log(2))
    assert torch.isfinite(bpd).all() and torch.all(bpd > 0)
