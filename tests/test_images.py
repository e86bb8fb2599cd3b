"""Tests of the DDPM U-Net (bench/unet.py), the image datasets (datasets/images.py and the
readers in bench/data/imagedata.py, on small files written in each archive's real format),
bits/dim on data with a known density, and a tiny image DDPM's bound in bits/dim. Tests that
need the offline images skip without them."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import inspect
import io
import logging
import math
import os
import pickle
import sys
import tarfile
import threading
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.api import LogLikelihood, Method, OptimConfig, SolverConfig, Splits
from bench.api.errors import ConfigError, DataError
from bench.data import imagedata
from bench.harness import make_context
from bench.harness.planning.registry import Registry
from bench.harness.planning.selection import build_params
from bench.harness.scoring.likelihood import data_log_likelihood, evaluate
from bench.harness.training.optim import Trainer
from bench.science.metrics import DEQUANTIZATION_LABEL, bits_per_dim
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


# archives in their real formats -----------------------------------------------------------
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _module(registry: Registry):
    """The namespace the registry's image classes were defined in (their functions'
    globals: PINS, Pin). Not ``sys.modules[cls.__module__]``: another test's Registry()
    re-executes the plug-in file under the same module name, and patching that newer
    module would not reach this registry's classes (an order dependence found by a
    random-order run)."""
    cls = registry.get("dataset", "cifar10")
    for klass in cls.__mro__:
        for value in vars(klass).values():
            if inspect.isfunction(value) and value.__module__ == cls.__module__:
                return types.SimpleNamespace(**value.__globals__)
    raise AssertionError("no function defined beside the cifar10 class")


def _add(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def _write_cifar(path: Path, n: int, rng: np.random.Generator,
                 evil: object | None = None) -> dict[str, np.ndarray]:
    """A cifar-10-python.tar.gz like the original: protocol-2 pickles with bytes keys."""
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for k, name in enumerate(names):
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            batches[name] = data
            d = {b"batch_label": f"batch {k}".encode(), b"labels": [k % 10] * n,
                 b"data": evil if (evil is not None and k == 2) else data,
                 b"filenames": [f"img_{k}_{i}.png".encode() for i in range(n)]}
            _add(tar, f"cifar-10-batches-py/{name}", pickle.dumps(d, protocol=2))
        meta = {b"label_names": [b"airplane"], b"num_cases_per_batch": n}
        _add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
        _add(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
    return batches


def _write_idx(path: Path, images: np.ndarray) -> None:
    header = b"".join(int(v).to_bytes(4, "big") for v in (2051, *images.shape))
    with gzip.open(path, "wb") as f:
        f.write(header + images.tobytes())


def test_cifar_reader_on_a_real_format_archive(tmp_path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "cifar-10-python.tar.gz"
    batches = _write_cifar(path, 3, rng)
    train, test = imagedata.read_cifar_archive(path, _sha(path))
    assert train.shape == (15, 3, 32, 32) and test.shape == (3, 3, 32, 32)
    assert train.dtype == np.uint8
    row = batches["data_batch_2"][1]  # the 5th image: rows are R, G, B planes, row-major
    for c, h, w in [(0, 0, 0), (1, 5, 7), (2, 31, 30)]:
        assert train[4, c, h, w] == row[c * 1024 + h * 32 + w]
    assert np.array_equal(test.reshape(3, -1), batches["test_batch"])
    with pytest.raises(DataError, match="sha256 .* does not match"):
        imagedata.read_cifar_archive(path, "0" * 64)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch '{self.marker}'",))


def test_cifar_archive_with_a_malicious_batch_is_refused(tmp_path) -> None:
    """Even with a matching digest (the attacker's own archive) nothing runs."""
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-python.tar.gz"
    _write_cifar(path, 2, np.random.default_rng(0), evil=_Evil(marker))
    with pytest.raises(DataError, match="refusing to unpickle"):
        imagedata.read_cifar_archive(path, _sha(path))
    assert not marker.exists()


def test_idx_reader_checks_its_hash(tmp_path) -> None:
    img = np.random.default_rng(1).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    _write_idx(path, img)
    assert np.array_equal(imagedata.read_idx_images(path, _sha(path)), img)
    with pytest.raises(DataError, match="does not match"):
        imagedata.read_idx_images(path, "1" * 64)


def _write_imagenet32(folder: Path, sizes: list[int], n_val: int, zipped: bool,
                      rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Chrabaszcz et al.'s npz batches ('data' (n, 3072) uint8, 'labels' 1..1000, 'mean'),
    in Imagenet32_{train,val}_npz.zip or extracted."""
    folder.mkdir(parents=True, exist_ok=True)
    train = [rng.integers(0, 256, (n, 3072), dtype=np.uint8) for n in sizes]
    val = rng.integers(0, 256, (n_val, 3072), dtype=np.uint8)

    def blob(data: np.ndarray, mean: bool) -> bytes:
        buf = io.BytesIO()
        extra = {"mean": data.mean(0)} if mean else {}
        np.savez(buf, data=data, labels=rng.integers(1, 1001, data.shape[0]), **extra)
        return buf.getvalue()

    members = {name: blob(d, True) for name, d in zip(imagedata.IMAGENET32_TRAIN, train,
                                                      strict=True)}
    members[imagedata.IMAGENET32_VAL] = blob(val, False)
    for name, data in members.items():
        if zipped:
            which = "val" if name == imagedata.IMAGENET32_VAL else "train"
            with zipfile.ZipFile(folder / imagedata.IMAGENET32_ZIPS[which], "a") as z:
                z.writestr(f"Imagenet32_{which}_npz/{name}", data)
        else:
            (folder / name).write_bytes(data)
    return train, val


@pytest.mark.parametrize("zipped", [True, False])
def test_imagenet32_reader_splits(tmp_path, zipped: bool) -> None:
    sizes = [5, 4, 6, 3, 5, 4, 6, 5, 4, 3]  # val_rows 7 spans the last two batches
    train, val = _write_imagenet32(tmp_path, sizes, 6, zipped, np.random.default_rng(2))
    rows = np.concatenate(train).reshape(-1, 3, 32, 32)
    tr, va, te = imagedata.read_imagenet32(tmp_path, val_rows=7)
    assert np.array_equal(tr, rows[:-7]) and np.array_equal(va, rows[-7:])
    assert np.array_equal(te, val.reshape(-1, 3, 32, 32))
    assert te[1, 2, 3, 4] == val[1, 2 * 1024 + 3 * 32 + 4]  # CHW rows
    capped, va2, _ = imagedata.read_imagenet32(tmp_path, val_rows=7, train_rows=11)
    assert np.array_equal(capped, rows[:11]) and np.array_equal(va2, va)


def test_imagenet32_digests_strict_and_lenient(tmp_path, caplog) -> None:
    _write_imagenet32(tmp_path, [3] * 10, 2, True, np.random.default_rng(3))
    md5 = {imagedata.IMAGENET32_VAL: "0" * 32}
    with pytest.raises(DataError, match="md5 .* does not match"):
        imagedata.read_imagenet32(tmp_path, val_rows=2, md5=md5)
    with caplog.at_level(logging.WARNING):
        _, _, test = imagedata.read_imagenet32(tmp_path, val_rows=2, md5=md5, strict=False)
    assert test.shape == (2, 3, 32, 32) and "unofficial digest" in caplog.text


def test_imagenet32_npz_with_a_pickle_is_refused(tmp_path) -> None:
    path = tmp_path / "val_data.npz"
    np.savez(path, data=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="cannot read ImageNet32 batch"):
        imagedata.read_imagenet32_batch(path, str(path))


def test_imagenet32_plugin(registry, tmp_path, monkeypatch) -> None:
    cls = registry.get("dataset", "imagenet32")
    with pytest.raises(DataError) as err:
        cls(cls.Params(), data_dir=tmp_path).splits()
    msg = str(err.value)
    assert "Imagenet32_train_npz.zip" in msg and "image-net.org" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="train_rows"):
        cls(cls.Params(train_rows=0), data_dir=tmp_path)
    _write_imagenet32(tmp_path / "imagenet32", [4] * 10, 3, True, np.random.default_rng(4))
    monkeypatch.setattr(cls, "val_rows", 5)
    splits = cls(cls.Params(train_rows=20), data_dir=tmp_path).splits()  # md5s: warnings
    assert [s.shape[0] for s in (splits.train, splits.val, splits.test)] == [20, 5, 3]
    assert splits.event_shape == (3, 32, 32) and splits.dequantization == "uniform-8bit"
    assert "official validation set (3 images)" in splits.split_names["test"]
    assert float(splits.train.min()) >= -1 and float(splits.train.max()) <= 1


def _jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write_flowers(folder: Path, n: int, seed: int) -> tuple[Path, Path]:
    """102flowers.tgz (jpg/image_XXXXX.jpg, sizes varying) + setid.mat (scipy.io.savemat)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tgz = folder / "102flowers.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for i in range(1, n + 1):
            h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
            colour = rng.integers(0, 256, 3, dtype=np.uint8)
            _add(tar, f"jpg/image_{i:05d}.jpg", _jpeg(np.broadcast_to(colour, (h, w, 3))))
    ids = rng.permutation(n) + 1
    setid = folder / "setid.mat"
    savemat(setid, {"trnid": ids[None, :3].astype(np.uint16),
                    "valid": ids[None, 3:5].astype(np.uint16),
                    "tstid": ids[None, 5:].astype(np.uint16)})
    return tgz, setid


def test_resize_center_crop_is_exact_where_it_must_be() -> None:
    from PIL import Image

    r = 16
    wide = np.zeros((r, 2 * r, 3), np.uint8)  # quarters: red | green green | blue
    wide[:, : r // 2, 0] = 255
    wide[:, r // 2: 3 * r // 2, 1] = 255
    wide[:, 3 * r // 2:, 2] = 255
    out = imagedata.resize_center_crop(Image.fromarray(wide), r)
    assert out.shape == (3, r, r) and out.dtype == np.uint8
    assert (out[1] == 255).all() and (out[0] == 0).all() and (out[2] == 0).all()
    tall = np.full((90, 60, 3), (10, 200, 30), np.uint8)  # constant: stays constant
    out = imagedata.resize_center_crop(Image.fromarray(tall), 24)
    assert out.shape == (3, 24, 24)
    assert np.abs(out.astype(int) - np.array([10, 200, 30])[:, None, None]).max() <= 1
    grey = Image.fromarray(np.full((30, 40), 77, np.uint8), mode="L")  # grey -> RGB
    assert (imagedata.resize_center_crop(grey, 8) == 77).all()


def test_flowers_cache_is_built_once_checked_and_rebuilt_on_a_new_source(tmp_path) -> None:
    tgz, _ = _write_flowers(tmp_path / "src", 7, seed=5)
    cache = tmp_path / "cache"
    sha = _sha(tgz)
    first = imagedata.flowers_images(tgz, 16, cache, sha)
    assert first.shape == (7, 3, 16, 16) and first.dtype == np.uint8
    path = imagedata.flowers_cache_path(cache, 16, sha)
    assert path.is_file() and sha[:16] in path.name and "16px" in path.name
    tgz.write_bytes(b"not read again")  # the cache is used: the archive is not opened
    assert np.array_equal(imagedata.flowers_images(tgz, 16, cache, sha), first)
    tgz2, _ = _write_flowers(tmp_path / "src", 7, seed=6)  # a changed source
    second = imagedata.flowers_images(tgz2, 16, cache, _sha(tgz2))
    assert not np.array_equal(second, first)
    assert imagedata.flowers_cache_path(cache, 16, _sha(tgz2)).is_file()
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # tamper with the first cache
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="delete it to rebuild") as err:
        imagedata.flowers_images(tgz, 16, cache, sha)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="does not match"):  # a wrong archive is not cached
        imagedata.flowers_images(tgz2, 24, cache, sha)


class _Server:
    """A real HTTP server on 127.0.0.1 serving a folder (for the download policy)."""

    def __init__(self, folder: Path) -> None:
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def test_flowers_plugin_downloads_with_source_full(registry, tmp_path, monkeypatch) -> None:
    cls = registry.get("dataset", "flowers102")
    mod = _module(registry)
    tgz, setid = _write_flowers(tmp_path / "www", 9, seed=7)
    for name, path in (("102flowers.tgz", tgz), ("setid.mat", setid)):
        monkeypatch.setitem(mod.PINS, f"flowers102/{name}", mod.Pin(_sha(path)))
    root = tmp_path / "root"
    with pytest.raises(DataError) as err:  # auto: never the network
        cls(cls.Params(resolution=16), data_dir=root).splits()
    msg = str(err.value)
    assert "102flowers.tgz + setid.mat" in msg and "source=full" in msg and "\n" not in msg
    assert cls.shape(cls.Params(resolution=16)) == (3, 16, 16)
    server = _Server(tmp_path / "www")
    try:
        monkeypatch.setattr(cls, "url", server.url)
        splits = cls(cls.Params(resolution=16, source="full"), data_dir=root).splits()
    finally:
        server.close()
    assert [s.shape[0] for s in (splits.train, splits.val, splits.test)] == [3, 2, 4]
    assert splits.event_shape == (3, 16, 16) and splits.dequantization == "uniform-8bit"
    assert "official split" in splits.provenance and "setid.mat" in splits.provenance
    assert "tstid" in splits.split_names["test"]
    assert list((root / "flowers102" / "cache").glob("*.npy"))
    with pytest.raises(ConfigError, match="resolution"):
        cls(cls.Params(resolution=4), data_dir=root)


def test_full_source_without_network_gives_the_placement_line(registry, tmp_path,
                                                              monkeypatch) -> None:
    cls = registry.get("dataset", "mnist")
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(cls, "url", f"http://127.0.0.1:{port}/")
    with pytest.raises(DataError) as err:
        cls(cls.Params(source="full"), data_dir=tmp_path).splits()
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "mnist") in msg
    assert "by hand" in msg and "\n" not in msg


def test_auto_never_downloads(registry, tmp_path, monkeypatch) -> None:
    mod = _module(registry)
    monkeypatch.setattr(mod.files, "download", lambda *a, **k: pytest.fail("downloaded"))
    for name in ("cifar10", "mnist"):
        with pytest.raises(DataError, match="source=full"):
            _dataset(registry, name, tmp_path).splits()


def test_cifar_plugin_on_a_real_format_archive(registry, tmp_path, monkeypatch) -> None:
    mod, cls = _module(registry), registry.get("dataset", "cifar10")
    (tmp_path / "cifar10").mkdir()
    path = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    _write_cifar(path, 4, np.random.default_rng(8))
    with pytest.raises(DataError, match="sha256 .* does not match the expected 6d958be0"):
        _dataset(registry, "cifar10", tmp_path).splits()  # the pinned digest refuses it
    monkeypatch.setitem(mod.PINS, "cifar10/cifar-10-python.tar.gz", mod.Pin(_sha(path)))
    monkeypatch.setattr(cls, "full_sizes", (16, 4, 4))
    splits = _dataset(registry, "cifar10", tmp_path).splits()
    assert [s.shape[0] for s in (splits.train, splits.val, splits.test)] == [16, 4, 4]
    assert "standard split" in splits.provenance
    v = (splits.test + 1) * 127.5
    assert torch.allclose(v, v.round(), atol=1e-4)


# bits/dim on data with a known density ---------------------------------------------------
class _KnownDensity(Method):
    """A 'model' with a closed-form continuous density on the [-1, 1] scale."""

    name = "known"
    likelihood = "exact"

    def __init__(self, splits: Splits, log_density) -> None:
        super().__init__(None, splits, make_context())
        self.log_density = log_density

    def modules(self) -> dict:
        return {}

    def loss(self, batch, step):
        raise NotImplementedError

    def sample(self, n: int):
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> LogLikelihood:
        return LogLikelihood(self.log_density(x.double().flatten(1)), "exact", "closed form")


def _grid_images(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g).float() / 127.5 - 1


def test_uniform_density_on_the_bins_gives_exactly_8_bits_per_dim() -> None:
    """p uniform on [-1 - 1/255, 1 + 1/255]^D (the union of the 256 bins of every entry)
    gives every 8-bit image P = 256^-D: exactly 8 bits/dim through the harness."""
    shape = (3, 4, 4)
    d = 48
    x = _grid_images(64, shape)
    edge = 1 + 1 / 255

    def uniform(y: torch.Tensor) -> torch.Tensor:
        inside = (y.abs() <= edge).all(1)
        value = torch.full((y.shape[0],), -d * math.log(2 * edge), dtype=torch.float64)
        return torch.where(inside, value, torch.full_like(value, -math.inf))

    splits = _image_splits(x)
    method = _KnownDensity(splits, uniform)
    ll = data_log_likelihood(method, x, "uniform-8bit")
    assert torch.isfinite(ll.values).all()  # every dequantized point is inside the bins
    bpd = bits_per_dim(-ll.values, d)
    assert torch.allclose(bpd, torch.full_like(bpd, 8.0), rtol=0, atol=1e-9)
    metrics, tags = evaluate(method, None, splits)
    assert metrics["test_bpd"] == pytest.approx(8.0, abs=1e-9)
    assert tags["test_bpd.dequantization"] == DEQUANTIZATION_LABEL
    # the classic bug: the density of the dequantized point without the bin volume D log(2/255)
    no_offset = bits_per_dim(-uniform(x.flatten(1).double()).mean(), d)
    assert no_offset == pytest.approx(math.log2(2 * edge))  # ~1.006 bits/dim: wrong


def test_without_dequantization_a_peaked_density_gives_negative_bits_per_dim() -> None:
    """A density with narrow peaks (sigma 1e-4) at the 256 grid values of every entry puts
    mass ~1/256 on each bin, so the 8-bit data's true NLL is 8 bits/dim. Scored at the grid
    points themselves (no dequantization, no bin volume) it reports a *negative* bits/dim;
    the harness's dequantized score is a valid bound: >= 8 bits/dim."""
    sigma, shape = 1e-4, (1, 2, 3)
    d = 6
    x = _grid_images(32, shape, seed=1)
    centres = torch.arange(256, dtype=torch.float64) / 127.5 - 1

    def peaked(y: torch.Tensor) -> torch.Tensor:
        z = (y[..., None] - centres) / sigma  # (n, D, 256)
        comp = -0.5 * z**2 - math.log(sigma * math.sqrt(2 * math.pi)) - math.log(256)
        return torch.logsumexp(comp, -1).sum(1)

    method = _KnownDensity(_image_splits(x), peaked)
    raw = data_log_likelihood(method, x, "none")  # the bug: a density read as a probability
    raw_bpd = float(bits_per_dim(-raw.values.mean(), d))
    expected = (math.log(256) + math.log(sigma * math.sqrt(2 * math.pi))) / math.log(2)
    assert raw_bpd == pytest.approx(expected, rel=1e-6) and raw_bpd < -3.9
    bound = data_log_likelihood(method, x, "uniform-8bit")
    bound_bpd = float(bits_per_dim(-bound.values.mean(), d))
    assert math.isfinite(bound_bpd) and bound_bpd >= 8.0


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
    # 192 dimensions: the "auto" divergence is Hutchinson's, an unbiased estimate
    assert tags["test_nll.kind"] == "estimate" and "pf-ode" in tags["test_nll.estimator"]
    assert "hutchinson" in tags["test_nll.estimator"]
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
