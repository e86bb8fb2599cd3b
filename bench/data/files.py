"""Verified files: SHA-256 checks, downloads that verify before they land, safe unpickling.

Torch-free (stdlib + numpy). The rules of the project's data code:

- a file with a pinned hash is verified (`verify_sha256`) before it is opened;
- a download is streamed to ``<dest>.part``, verified, then renamed atomically to ``dest``:
  a half-written or wrong file never has the final name (`download`);
- pickled data is read only through `safe_unpickle`, whose unpickler can build plain
  containers and numpy arrays and nothing else, so a malicious pickle cannot run code.
"""

from __future__ import annotations

import codecs
import hashlib
import http.client
import io
import logging
import os
import pickle
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bench.api.errors import DataError

__all__ = ["sha256_file", "md5_file", "verify_sha256", "verify_md5", "verify_file",
           "verify_bytes", "download",
           "Pin", "PinnedFolder", "SafeUnpickler", "safe_unpickle"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    return _digest(Path(path), "sha256")


def md5_file(path: str | Path) -> str:
    """Hex md5 of a file (only where md5 is the officially published checksum)."""
    return _digest(Path(path), "md5")


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise DataError (one line: file, got, expected) unless the file's SHA-256 matches."""
    got = sha256_file(path)
    if got != expected.lower():
        raise DataError(f"{path}: sha256 {got} does not match the expected {expected}")


def verify_md5(path: str | Path, expected: str) -> None:
    """Raise DataError (one line: file, got, expected) unless the file's md5 matches."""
    got = md5_file(path)
    if got != expected.lower():
        raise DataError(f"{path}: md5 {got} does not match the expected {expected}")


def _wanted(sha256: str | None, md5: str | None) -> dict[str, str]:
    wanted = {a: w.lower() for a, w in (("sha256", sha256), ("md5", md5)) if w is not None}
    if not wanted:
        raise ValueError("a checksum is needed: sha256 or md5")
    return wanted


def _compare(what: object, hashes: dict[str, Any], wanted: dict[str, str]) -> None:
    for algorithm, want in wanted.items():
        got = hashes[algorithm].hexdigest()
        if got != want:
            raise DataError(f"{what}: {algorithm} {got} does not match the expected {want}")


def verify_file(path: str | Path, *, sha256: str | None = None,
                md5: str | None = None) -> None:
    """Check a file against every given digest in one read (SHA-256 and, where it is the
    officially published checksum, md5 too). DataError (one line) on a mismatch."""
    wanted = _wanted(sha256, md5)
    hashes = {a: hashlib.new(a) for a in wanted}
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            for h in hashes.values():
                h.update(block)
    _compare(path, hashes, wanted)


def verify_bytes(data: bytes, what: str, *, sha256: str | None = None,
                 md5: str | None = None) -> None:
    """`verify_file` for bytes already in memory (e.g. a member read from a zip)."""
    wanted = _wanted(sha256, md5)
    _compare(what, {a: hashlib.new(a, data) for a in wanted}, wanted)


def _progress(total: int | None, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                file=sys.stderr, disable=not sys.stderr.isatty(), leave=False)


def download(url: str, dest: str | Path, sha256: str, *, timeout: float = 15.0) -> Path:
    """Download ``url`` to ``dest`` and verify its SHA-256 before it takes the final name.

    The bytes are streamed to ``<dest>.part`` (progress bar on stderr when it is a
    terminal), the SHA-256 of the .part is checked against ``sha256``, and the .part is
    renamed to ``dest`` (atomic on one file system).

    Args:
        url: the file's address.
        dest: where the verified file goes (its folder is created).
        sha256: the pinned hex SHA-256 of the file.
        timeout: seconds without an answer from the server before giving up.

    Returns:
        ``dest`` as a Path.

    Raises:
        DataError: no network or a server error (one line: the URL, the reason and where
            to put the file by hand), or a hash mismatch (the .part is deleted).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "bench-data/1"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(part, "wb") as f:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with _progress(total, dest.name) as bar:
                for block in iter(lambda: resp.read(_CHUNK), b""):
                    f.write(block)
                    h.update(block)
                    bar.update(len(block))
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, timeouts too
        part.unlink(missing_ok=True)
        if isinstance(e, urllib.error.HTTPError):
            reason = f"HTTP {e.code} {e.reason}"
        else:
            reason = f"{type(e).__name__}: {getattr(e, 'reason', None) or e}"
        raise DataError(f"cannot download {url} ({reason}); download it "
                        f"by hand and place it at {dest}") from None
    got = h.hexdigest()
    if got != sha256.lower():
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: downloaded sha256 {got} does not match the pinned {sha256}; "
                        f"the file was not kept")
    os.replace(part, dest)
    log.info("downloaded %s to %s (sha256 verified)", url, dest)
    return dest


class Pin(NamedTuple):
    """Pinned digests of one file: SHA-256, and md5 where it is the official checksum."""

    sha256: str
    md5: str | None = None


class PinnedFolder:
    """Files with pinned digests in one folder: each verified once per state (size, mtime)
    before use, and downloaded from ``url + name`` on demand.

    Args:
        folder: where the files are.
        pins: file name -> `Pin`.
        url: the base address of the files (None: no public download).
    """

    def __init__(self, folder: Path, pins: dict[str, Pin], url: str | None = None) -> None:
        self.folder, self.pins, self.url = Path(folder), pins, url
        self._verified: dict[str, tuple[int, int]] = {}

    def path(self, name: str) -> Path:
        return self.folder / name

    def checked(self, name: str) -> Path:
        """The file's path, after its digests were checked (DataError on a mismatch)."""
        path = self.path(name)
        stat = path.stat()
        state = (stat.st_size, stat.st_mtime_ns)
        if self._verified.get(name) != state:
            verify_file(path, sha256=self.pins[name].sha256, md5=self.pins[name].md5)
            self._verified[name] = state
        return path

    def download_missing(self, names: tuple[str, ...] | list[str]) -> None:
        """`download` each missing file (DataError with the placement line when offline)."""
        for name in names:
            if not self.path(name).is_file():
                if self.url is None:
                    raise DataError(f"{self.path(name)} is missing (no public download)")
                download(self.url + name, self.path(name), self.pins[name].sha256)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
        ("builtins", "slice"): slice,
    }
    for module in ("numpy.core", "numpy._core"):  # pickles name either, by numpy version
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers and numpy arrays/dtypes/scalars.

    ``find_class`` (every global a pickle refers to: the only way a pickle runs code) is
    answered from a fixed allow-list; anything else raises DataError. Opened with
    ``encoding="bytes"`` by `safe_unpickle`, so Python 2 pickles (the CIFAR-10 batches)
    keep their byte-string keys.
    """

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if SafeUnpickler._allowed is None:
            SafeUnpickler._allowed = _numpy_globals()
        if module == "__builtin__":  # Python 2 pickles
            module = "builtins"
        try:
            return SafeUnpickler._allowed[(module, name)]
        except KeyError:
            raise DataError(f"refusing to unpickle {module}.{name}: only numpy arrays and "
                            "plain containers are allowed") from None


def safe_unpickle(data: bytes, *, encoding: str = "bytes") -> Any:
    """Unpickle ``data`` with `SafeUnpickler` (numpy arrays and plain containers only).

    Raises:
        DataError: the pickle refers to anything outside the allow-list, or is malformed.
    """
    try:
        return SafeUnpickler(io.BytesIO(data), encoding=encoding).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as e:
        raise DataError(f"malformed pickle: {type(e).__name__}: {e}") from None
