"""Untrusted files: the GAS pickle is never unpickled unless it came out of the MAF archive
whose md5 matched, in the same read; the converted .npy is refused when tampered with; no
code in a malicious pickle ever runs (its __reduce__ would write a marker file)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.api.errors import DataError
from bench.data import maf, mafgas
from tests.reliability._cli import TINY, assert_refused, bench


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Evil(marker), protocol=2)


def gas_frame_pickle(n: int = 200) -> bytes:
    rng = np.random.default_rng(3)
    cols = pd.Index(["Time", "Meth", "Eth", "s1", "s2", "s3"], dtype=object)
    return pickle.dumps(pd.DataFrame(rng.normal(size=(n, 6)), columns=cols), protocol=2)


def archive_with(root: Path, blob: bytes) -> tuple[Path, str]:
    path = root / "maf" / "data.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(mafgas.GAS_MEMBER)
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def test_loose_pickle_refused_by_the_cli_no_code_run(tmp_path):
    """A hand-placed (or swapped) ethylene_CO.pickle: exit 1, one line, marker not written."""
    marker = tmp_path / "marker"
    (tmp_path / "data" / "gas").mkdir(parents=True)
    (tmp_path / "data" / "gas" / "ethylene_CO.pickle").write_bytes(evil_pickle(marker))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    res = subprocess.run(
        [sys.executable, "-m", "bench.cli.main", "run", "-m", "gaussian_mle", "-d", "gas",
         "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"),
         *TINY], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert "refusing to unpickle" in lines[0] and "no pinned SHA-256" in lines[0]
    assert "MAF archive" in lines[0] and "data.tar.gz" in lines[0]
    assert all(ln.startswith("error: ") for ln in lines) and len(lines) <= 2
    assert not marker.exists()


def test_malicious_pickle_in_a_verified_archive_still_refused(tmp_path):
    """Defence in depth: even with the archive's md5 matching, the restricted unpickler
    builds only numpy/pandas data classes."""
    marker = tmp_path / "marker"
    archive, md5 = archive_with(tmp_path, evil_pickle(marker))
    with pytest.raises(DataError, match=r"refusing to unpickle (__builtin__|builtins)\.exec"):
        mafgas.convert_from_archive(archive, md5, tmp_path / "gas")
    assert not marker.exists() and not list((tmp_path).rglob("ethylene_CO-*.npy"))


def test_tampered_archive_nothing_unpickled(tmp_path):
    marker = tmp_path / "marker"
    archive, _ = archive_with(tmp_path, evil_pickle(marker))
    with pytest.raises(DataError, match="nothing was unpickled"):
        mafgas.convert_from_archive(archive, "0" * 32, tmp_path / "gas")
    assert not marker.exists()


@pytest.fixture()
def converted(tmp_path, monkeypatch):
    """A data root whose GAS was converted from a verified archive, then the archive gone."""
    archive, md5 = archive_with(tmp_path, gas_frame_pickle())
    monkeypatch.setattr(maf, "MAF_ARCHIVE_MD5", md5)
    cache = mafgas.convert_from_archive(archive, md5, tmp_path / "gas")
    archive.unlink()
    return tmp_path, cache


def test_converted_cache_round_trip(converted):
    root, cache = converted
    sha = hashlib.sha256(gas_frame_pickle()).hexdigest()
    assert cache.name == f"ethylene_CO-{sha[:16]}.npy"
    values = mafgas.read_cache(cache)
    want = pickle.loads(gas_frame_pickle())[["s1", "s2", "s3"]].to_numpy()
    np.testing.assert_array_equal(values, want)
    assert maf.find_local(root, "gas") == ("raw", root / "gas")


def test_tampered_cache_refused_by_the_cli(converted):
    root, cache = converted
    values = np.load(cache)
    values[0, 0] += 1.0
    np.save(cache, values)  # same shape, one number changed: the sidecar no longer matches
    res = bench("run", "--tracking-uri", f"sqlite:///{root / 'runs.db'}", "--results-dir",
                str(root / "results"), "-m", "gaussian_mle", "-d", "gas", "--data-dir",
                str(root), *TINY)
    assert_refused(res, 1, "GAS cache", "refusing it", cache.name)


def test_cache_replaced_with_a_pickle_and_matching_sidecar(converted):
    """Whoever rewrites both the .npy and its sidecar can change numbers, never run code:
    the .npy is loaded with allow_pickle=False."""
    root, cache = converted
    marker = root / "marker"
    np.save(cache, np.array([_Evil(marker)], dtype=object), allow_pickle=True)
    sidecar = cache.with_name(cache.name + ".sha256")
    sidecar.write_text(f"{hashlib.sha256(cache.read_bytes()).hexdigest()}  {cache.name}\n")
    with pytest.raises(DataError, match="cannot read GAS cache"):
        mafgas.read_cache(cache)
    assert not marker.exists()
