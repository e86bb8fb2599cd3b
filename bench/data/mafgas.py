"""GAS of the MAF archive: its pickle converted once, from the verified archive, to a checked .npy.

The archive's ``gas/ethylene_CO.pickle`` is a pandas (< 0.20, Python 2) DataFrame pickle,
and unpickling runs whatever code the pickle names. No SHA-256 of that file is published,
so it is trusted only as a member of the MAF archive whose md5 (Zenodo's published
checksum, `bench.data.maf.MAF_ARCHIVE_MD5`) matches:

- `convert_from_archive` streams the archive once, hashing every byte it reads, keeps the
  member's bytes in memory, and unpickles them only after the whole archive's md5 matched
  (the bytes unpickled are the bytes hashed: nothing can swap the file in between), with
  an allow-list of numpy/pandas globals as a second wall;
- the sensor columns (Meth, Eth, Time dropped) go to ``<folder>/ethylene_CO-<sha16>.npy``
  (named by the pickle's SHA-256) with a ``.sha256`` sidecar, written atomically;
- runs read only that .npy (`read_cache`: sidecar checked, ``allow_pickle=False``). A loose
  ``ethylene_CO.pickle`` is never opened (`refusal` says what to do instead).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.api.errors import DataError
from bench.data import files

__all__ = ["GAS_MEMBER", "PICKLE", "DROPPED", "cache_path", "find_cache", "read_cache",
           "refusal", "unpickle_frame", "convert_from_archive"]

log = logging.getLogger(__name__)

GAS_MEMBER = "data/gas/ethylene_CO.pickle"
PICKLE = "ethylene_CO.pickle"
DROPPED = ("Meth", "Eth", "Time")
_MAX_MEMBER = 1 << 30  # the real pickle is ~ 80 MB

# globals a DataFrame pickle of pandas 0.x-3.x names (after pandas' own legacy mapping)
_MODULES = re.compile(r"^(pandas(\.[\w.]+)?|numpy(\.[\w.]+)?|_codecs|copy_reg|copyreg|"
                      r"builtins|__builtin__)$")
_NAMES = re.compile(r"^(_new_Index|_unpickle_block|_reconstruct|_frombuffer|_reconstructor|"
                    r"ndarray|dtype|scalar|encode|slice|object|bytearray|"
                    r"(?=[A-Z])\w*(Index|Block|BlockManager|DataFrame|Series|NDArray|List))$")


def cache_path(folder: Path, pickle_sha256: str) -> Path:
    """The converted GAS columns, named by the SHA-256 of the pickle they came from."""
    return Path(folder) / f"ethylene_CO-{pickle_sha256[:16]}.npy"


def find_cache(folder: Path) -> Path | None:
    """A converted GAS file with its sidecar in ``folder``, or None."""
    for path in sorted(Path(folder).glob("ethylene_CO-*.npy")):
        if path.with_name(path.name + ".sha256").is_file():
            return path
    return None


def read_cache(path: Path) -> np.ndarray:
    """The GAS sensor columns (n, k) float64, after the cache's sidecar SHA-256 matched.

    Raises:
        DataError: the cache does not match its sidecar, or is not a numeric 2-D array.
    """
    sidecar = path.with_name(path.name + ".sha256")
    recorded = (sidecar.read_text().split() or [""])[0]
    got = files.sha256_file(path)
    if got != recorded:
        raise DataError(f"GAS cache {path} has sha256 {got}, not the {recorded or '(none)'} "
                        f"recorded in {sidecar.name}: refusing it; delete both files to "
                        "convert again from the MAF archive")
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read GAS cache {path}: {exc}") from None
    if values.ndim != 2 or values.dtype != np.float64:
        raise DataError(f"GAS cache {path}: expected float64 (n, k), got {values.dtype} "
                        f"{values.shape}")
    return values


def refusal(path: Path, root: Path, md5: str) -> str:
    """One line: why a loose ``ethylene_CO.pickle`` is not opened, and what to do."""
    return (f"refusing to unpickle {path}: no pinned SHA-256 of ethylene_CO.pickle is known, "
            f"so GAS is read only via the MAF archive (md5 {md5} verified): place data.tar.gz "
            f"at {Path(root) / 'maf' / 'data.tar.gz'} (or let bench download it) and it is "
            f"converted once to .npy, or place train.npy/val.npy/test.npy in "
            f"{Path(root) / 'gas'}/")


def _unpickler(base: type) -> type:
    import pandas as pd

    legacy = {"pandas.core.index": "pandas.core.indexes.base",
              "pandas.indexes.base": "pandas.core.indexes.base",
              "pandas.indexes.numeric": "pandas.core.indexes.base",
              "pandas.indexes.range": "pandas.core.indexes.range"}

    class _Restricted(base):  # type: ignore[misc, valid-type]
        def find_class(self, module: str, name: str) -> Any:
            if not (_MODULES.match(module) and _NAMES.match(name)):
                raise DataError(f"refusing to unpickle {module}.{name}: not a numpy/pandas "
                                "data class")
            if name in ("Int64Index", "UInt64Index", "Float64Index"):
                return pd.Index
            return super().find_class(legacy.get(module, module), name)

    return _Restricted


def unpickle_frame(data: bytes, what: str) -> Any:
    """A pandas DataFrame from pickle bytes already verified by their archive's checksum,
    through pandas' legacy unpickler restricted to numpy/pandas data classes.

    Raises:
        DataError: a global outside the allow-list, a malformed pickle, or not a DataFrame
            with columns Meth, Eth, Time.
    """
    import pandas as pd

    try:
        from pandas.compat.pickle_compat import Unpickler as base
    except ImportError:  # pragma: no cover - a pandas without its compat unpickler
        base = pickle.Unpickler
    try:
        frame = _unpickler(base)(io.BytesIO(data), encoding="latin1").load()
    except DataError as exc:
        raise DataError(f"{what}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign file is one line
        raise DataError(f"{what}: cannot unpickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(frame, pd.DataFrame) or not set(DROPPED) <= set(frame.columns):
        raise DataError(f"{what}: expected a pandas DataFrame with columns Meth, Eth, Time")
    return frame


class _Hashing(io.RawIOBase):
    """A read-only stream that hashes every byte read through it."""

    def __init__(self, f: Any) -> None:
        self.f, self.md5 = f, hashlib.md5()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self.f.readinto(b)
        self.md5.update(memoryview(b)[:n])
        return n


def convert_from_archive(archive: Path, md5: str, folder: Path) -> Path:
    """Convert the archive's GAS pickle to ``cache_path(folder, sha)`` plus its sidecar.

    Args:
        archive: the MAF ``data.tar.gz``.
        md5: its pinned md5; nothing is unpickled unless the bytes read match it.
        folder: where the .npy goes (created).

    Returns:
        The .npy path.

    Raises:
        DataError: the archive's md5 is wrong, it has no GAS member, or the pickle is bad.
    """
    data = None
    try:
        with open(archive, "rb") as raw, _Hashing(raw) as stream:
            with tarfile.open(fileobj=io.BufferedReader(stream), mode="r|*") as tar:
                for m in tar:
                    name = m.name[2:] if m.name.startswith("./") else m.name
                    if name == GAS_MEMBER and m.isfile() and m.size <= _MAX_MEMBER:
                        data = tar.extractfile(m).read()
            while stream.read(1 << 20):  # the rest, so that the md5 covers every byte
                pass
            got = stream.md5.hexdigest()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot read {GAS_MEMBER} from {archive}: {exc}") from None
    if got != md5.lower():
        raise DataError(f"{archive}: md5 {got} does not match the expected {md5}; "
                        "nothing was unpickled")
    if data is None:
        raise DataError(f"{archive} has no {GAS_MEMBER}")
    sha = hashlib.sha256(data).hexdigest()
    frame = unpickle_frame(data, f"{GAS_MEMBER} in {archive}")
    values = frame.drop(columns=list(DROPPED)).to_numpy(dtype=np.float64)
    cache = cache_path(folder, sha)
    cache.parent.mkdir(parents=True, exist_ok=True)
    part = cache.with_name(cache.name + ".part")
    with open(part, "wb") as f:
        np.save(f, values, allow_pickle=False)
    os.replace(part, cache)
    sidecar = cache.with_name(cache.name + ".sha256")
    sidecar.write_text(f"{files.sha256_file(cache)}  {cache.name}\n")
    log.info("GAS converted from %s (pickle sha256 %s) to %s", archive, sha, cache)
    return cache
