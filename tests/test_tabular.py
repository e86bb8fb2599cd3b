"""The MAF tabular datasets (datasets/tabular.py, bench/data/maf.py): splits and preprocessing
checked against independent recomputations on the shared data and on small synthetic
files in the raw MAF formats; error paths; the download path through a local file URL."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.api.errors import DataError
from bench.data import maf
from bench.harness.planning.registry import Registry

SHARED = os.environ.get("BENCH_DATA_DIR")
SHARED_MINIBOONE = Path(SHARED) / "miniboone" if SHARED else None
needs_shared = pytest.mark.skipif(
    SHARED_MINIBOONE is None or not (SHARED_MINIBOONE / "test.npy").is_file(),
    reason="shared data folder not available: set BENCH_DATA_DIR to a folder with "
    "miniboone/{train,val,test,raw_head_1523}.npy",
)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def make(registry: Registry, name: str, root: Path, **params):
    cls = registry.get("dataset", name)
    return cls(cls.Params(**params), data_dir=root)


def mean_std(x: np.ndarray, ddof: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), x.std(axis=0, ddof=ddof)


# --- shared data -------------------------------------------------------------------------


@needs_shared
def test_presplit_miniboone_shared(registry):
    splits = make(registry, "miniboone", Path(SHARED)).splits()
    assert tuple(splits.train.shape) == (2956, 43)
    assert tuple(splits.val.shape) == (328, 43)
    assert tuple(splits.test.shape) == (3648, 43)
    assert splits.event_shape == (43,)
    assert {t.dtype for t in (splits.train, splits.val, splits.test)} == {torch.float32}
    assert "pre-split" in splits.provenance and "reduced" in splits.provenance
    assert "test = standard MAF test split" in splits.provenance
    assert splits.split_names["test"] == "MAF MINIBOONE test split (3648 rows)"
    assert "reduced" in splits.split_names["train"]
    np.testing.assert_allclose(
        splits.test.numpy(), np.load(SHARED_MINIBOONE / "test.npy").astype(np.float32))


@needs_shared
def test_raw_miniboone_matches_independent_recomputation(registry, tmp_path):
    (tmp_path / "miniboone").mkdir()
    shutil.copy(SHARED_MINIBOONE / "raw_head_1523.npy", tmp_path / "miniboone" / "data.npy")
    splits = make(registry, "miniboone", tmp_path).splits()
    raw = np.load(SHARED_MINIBOONE / "raw_head_1523.npy")
    n_test = int(0.1 * 1523)
    n_val = int(0.1 * (1523 - n_test))
    assert (n_test, n_val) == (152, 137)
    sizes = [splits.train.shape[0], splits.val.shape[0], splits.test.shape[0]]
    assert sizes == [1523 - n_test - n_val, n_val, n_test]
    mu, sd = mean_std(raw[: 1523 - n_test])
    expect = [(raw[:1234] - mu) / sd, (raw[1234:1371] - mu) / sd, (raw[1371:] - mu) / sd]
    for got, want in zip((splits.train, splits.val, splits.test), expect, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    both = torch.cat([splits.train, splits.val]).double().numpy()
    np.testing.assert_allclose(both.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(both.std(axis=0), 1, atol=1e-5)
    assert "raw" in splits.provenance and "data.npy" in splits.provenance
    assert "standard MAF splits" not in splits.provenance
    # forcing the pre-split source where there is none is an error, not a download
    with pytest.raises(DataError, match="presplit"):
        make(registry, "miniboone", tmp_path, source="presplit").splits()


# --- synthetic raw files ----------------------------------------------------------------


def power_expected(raw: np.ndarray) -> list[np.ndarray]:
    rng = np.random.RandomState(42)
    x = raw.copy()
    rng.shuffle(x)
    n = len(x)
    x = x[:, [0, 2, 4, 5, 6, 7]]
    v, g, s = 0.01 * rng.rand(n, 1), 0.001 * rng.rand(n, 1), rng.rand(n, 3)
    x = x + np.concatenate([g, v, s, np.zeros((n, 1))], axis=1)
    test, rest = x[n - n // 10:], x[: n - n // 10]
    n_val = len(rest) // 10
    mu, sd = mean_std(rest)
    return [(a - mu) / sd for a in (rest[:-n_val], rest[-n_val:], test)]


def test_power_synthetic(registry, tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(200, 8)) * np.arange(1, 9)
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", raw)
    a = make(registry, "power", tmp_path).splits()
    b = make(registry, "power", tmp_path).splits()
    assert [a.train.shape[0], a.val.shape[0], a.test.shape[0]] == [162, 18, 20]
    assert a.event_shape == (6,)
    for x, y, want in zip((a.train, a.val, a.test), (b.train, b.val, b.test),
                          power_expected(raw), strict=True):
        assert torch.equal(x, y)  # the seeded shuffle and noise are deterministic
        np.testing.assert_allclose(x.numpy(), want, rtol=1e-5, atol=1e-5)
    # columns 1 and 3 are removed: changing them changes nothing, changing column 0 does
    other = raw.copy()
    other[:, [1, 3]] = rng.normal(size=(200, 2))
    np.save(tmp_path / "power" / "data.npy", other)
    assert torch.equal(make(registry, "power", tmp_path).splits().train, a.train)
    other[:, 0] += rng.normal(size=200)
    np.save(tmp_path / "power" / "data.npy", other)
    assert not torch.equal(make(registry, "power", tmp_path).splits().train, a.train)


def place_gas_archive(root: Path, blob: bytes, monkeypatch) -> Path:
    """A MAF archive holding ``blob`` as the GAS pickle at ``<root>/maf/data.tar.gz``, its md5
    pinned (GAS is read only through the verified archive)."""
    archive = root / "maf" / "data.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("data/gas/ethylene_CO.pickle")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    monkeypatch.setattr(maf, "MAF_ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setattr(maf, "MAF_ARCHIVE_URL", (root / "offline").as_uri())
    return archive


def test_gas_synthetic(registry, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    n = 300
    s1, s2, s4 = rng.normal(size=(3, n))
    frame = pd.DataFrame({
        "Time": np.arange(n, dtype=float), "Meth": rng.normal(size=n),
        "Eth": rng.normal(size=n), "s1": s1, "s2": s2,
        "s3": 2 * s1 + 0.01 * rng.normal(size=n),  # almost identical to s1
        "s4": s4, "s5": -3 + s1 + 0.01 * rng.normal(size=n),
    })
    frame.columns = pd.Index(list(frame.columns), dtype=object)  # as old pandas pickled it
    place_gas_archive(tmp_path, pickle.dumps(frame, protocol=2), monkeypatch)
    splits = make(registry, "gas", tmp_path).splits()
    # s1 goes first (first column with a > 0.98 partner), then s3; s5 is left alone
    kept = frame[["s2", "s4", "s5"]]
    want = ((kept - kept.mean()) / kept.std()).values  # the whole frame, ddof=1
    assert [splits.train.shape[0], splits.val.shape[0], splits.test.shape[0]] == [243, 27, 30]
    assert splits.event_shape == (3,)
    got = torch.cat([splits.train, splits.val, splits.test]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.std(axis=0, ddof=1), 1, atol=1e-5)


def test_hepmass_synthetic(registry, tmp_path):
    rng = np.random.default_rng(2)

    def frame(n: int, extra: bool) -> pd.DataFrame:
        x = rng.normal(size=(n, 5))
        x[rng.random(n) < 0.3, 2] = -9.0  # f2: its smallest value repeats -> removed
        x[rng.random(n) < 0.3, 4] = 0.5  # f4: a repeated value that is not the smallest
        cols = {"# label": rng.integers(0, 2, n).astype(float)}
        cols.update({f"f{i}": x[:, i] for i in range(5)})
        if extra:
            cols["junk"] = rng.normal(size=n)
        return pd.DataFrame(cols)

    train, test = frame(400, False), frame(150, True)
    (tmp_path / "hepmass").mkdir()
    train.to_csv(tmp_path / "hepmass" / "1000_train.csv", index=False)
    test.to_csv(tmp_path / "hepmass" / "1000_test.csv", index=False)
    splits = make(registry, "hepmass", tmp_path).splits()

    feats = ["f0", "f1", "f3", "f4"]
    sig_train = train[train["# label"] == 1][feats].values
    sig_test = test[test["# label"] == 1][feats].values
    mu, sd = mean_std(sig_train, ddof=1)
    n_val = int(0.1 * len(sig_train))
    assert splits.event_shape == (4,)
    assert splits.val.shape[0] == n_val
    assert splits.train.shape[0] == len(sig_train) - n_val
    assert splits.test.shape[0] == len(sig_test) < 150
    np.testing.assert_allclose(torch.cat([splits.train, splits.val]).numpy(),
                               (sig_train - mu) / sd, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(splits.test.numpy(), (sig_test - mu) / sd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("folder", ["BSDS300", "bsds300"])
def test_bsds300_synthetic(registry, tmp_path, folder):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(3)
    parts = {k: rng.normal(size=(n, 63)) for k, n in
             (("train", 50), ("validation", 10), ("test", 20))}
    (tmp_path / folder).mkdir()
    with h5py.File(tmp_path / folder / "BSDS300.hdf5", "w") as f:
        for k, v in parts.items():
            f[k] = v
    splits = make(registry, "bsds300", tmp_path).splits()
    assert splits.event_shape == (63,) and splits.train.dtype == torch.float32
    for got, k in zip((splits.train, splits.val, splits.test), parts, strict=True):
        np.testing.assert_allclose(got.numpy(), parts[k].astype(np.float32))


def test_bsds300_without_h5py(registry, tmp_path, monkeypatch):
    (tmp_path / "BSDS300").mkdir()
    (tmp_path / "BSDS300" / "BSDS300.hdf5").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(DataError, match="pip install h5py"):
        make(registry, "bsds300", tmp_path).splits()


# --- errors -----------------------------------------------------------------------------


def test_missing_data_and_no_network(registry, tmp_path, monkeypatch):
    monkeypatch.setattr(maf, "MAF_ARCHIVE_URL", (tmp_path / "nowhere.tar.gz").as_uri())
    with pytest.raises(DataError) as err:
        make(registry, "miniboone", tmp_path / "root").splits()
    msg = str(err.value)
    assert "\n" not in msg and "download failed" in msg
    assert str(tmp_path / "root" / "miniboone" / "data.npy") in msg
    assert "train.npy/val.npy/test.npy" in msg
    with pytest.raises(DataError, match="1000_train.csv and 1000_test.csv"):
        make(registry, "hepmass", tmp_path / "root").splits()
    assert not (tmp_path / "root" / "maf" / "data.tar.gz.part").exists()


@pytest.mark.parametrize("bad", ["columns", "nan"])
def test_malformed_raw_file(registry, tmp_path, bad):
    data = np.random.default_rng(4).normal(size=(100, 42 if bad == "columns" else 43))
    if bad == "nan":
        data[5, 7] = np.nan
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", data)
    with pytest.raises(DataError, match=str(tmp_path / "miniboone" / "data.npy")):
        make(registry, "miniboone", tmp_path).splits()


def test_malformed_presplit(registry, tmp_path):
    (tmp_path / "miniboone").mkdir()
    for split, n in (("train", 30), ("val", 5), ("test", 5)):
        np.save(tmp_path / "miniboone" / f"{split}.npy", np.zeros((n, 43 if n == 30 else 40)))
    with pytest.raises(DataError, match="val.npy"):
        make(registry, "miniboone", tmp_path).splits()


def build_archive(path: Path, members: dict[str, np.ndarray]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, array in members.items():
            buf = io.BytesIO()
            np.save(buf, array)
            info = tarfile.TarInfo(name)
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_md5_ok_extracts_only_the_dataset(registry, tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    raw = rng.normal(size=(120, 43))
    archive = tmp_path / "served.tar.gz"
    md5 = build_archive(archive, {"data/miniboone/data.npy": raw,
                                  "data/power/data.npy": rng.normal(size=(50, 8))})
    monkeypatch.setattr(maf, "MAF_ARCHIVE_URL", archive.as_uri())
    monkeypatch.setattr(maf, "MAF_ARCHIVE_MD5", md5)
    root = tmp_path / "root"
    (root / "maf").mkdir(parents=True)
    (root / "maf" / "data.tar.gz").write_bytes(b"truncated")  # a bad cached archive
    ds = make(registry, "miniboone", root, source="raw")
    splits = ds.splits()
    assert maf.md5_file(root / "maf" / "data.tar.gz") == md5  # downloaded again
    assert (root / "miniboone" / "data.npy").is_file()
    assert not (root / "power").exists()
    assert [splits.train.shape[0], splits.val.shape[0], splits.test.shape[0]] == [98, 10, 12]
    # idempotent: with local files, prepare() does not download again
    monkeypatch.setattr(maf, "MAF_ARCHIVE_URL", (tmp_path / "gone").as_uri())
    ds.prepare()


def test_download_md5_mismatch_removes_file(registry, tmp_path, monkeypatch):
    archive = tmp_path / "served.tar.gz"
    build_archive(archive, {"data/miniboone/data.npy": np.zeros((20, 43))})
    monkeypatch.setattr(maf, "MAF_ARCHIVE_URL", archive.as_uri())
    monkeypatch.setattr(maf, "MAF_ARCHIVE_MD5", "0" * 32)
    root = tmp_path / "root"
    with pytest.raises(DataError, match="md5 mismatch"):
        make(registry, "miniboone", root).prepare()
    assert list((root / "maf").iterdir()) == []
    assert not (root / "miniboone").exists()


def test_selection_string_sets_source(registry, tmp_path):
    ds = registry.dataset("power[source=presplit]", data_dir=tmp_path)
    assert ds.params.source == "presplit"
    with pytest.raises(DataError, match="presplit"):
        ds.prepare()


def test_gas_pickle_of_old_pandas(registry, tmp_path, monkeypatch):
    """The archive's GAS pickle names pandas < 0.20 modules; the converter maps them."""
    rng = np.random.default_rng(6)
    frame = pd.DataFrame(rng.normal(size=(60, 6)),
                         columns=pd.Index(["Time", "Meth", "Eth", "a", "b", "c"], dtype=object))
    blob = pickle.dumps(frame, protocol=2).replace(b"pandas.core.indexes.base",
                                                   b"pandas.indexes.base")
    with pytest.raises(ImportError):
        pd.read_pickle(io.BytesIO(blob))
    place_gas_archive(tmp_path, blob, monkeypatch)
    splits = make(registry, "gas", tmp_path).splits()
    assert "converted from the md5-verified" in splits.provenance
    kept = frame[["a", "b", "c"]]
    np.testing.assert_allclose(torch.cat([splits.train, splits.val, splits.test]).numpy(),
                               ((kept - kept.mean()) / kept.std()).values, rtol=1e-5, atol=1e-5)
