"""Tests of bench.data.files: SHA-256 checks, verified downloads from a real local HTTP
server, and the restricted unpickler (a malicious pickle never runs)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import pickle
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bench.api.errors import DataError
from bench.data import files

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB: more than one read block


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    """http://127.0.0.1:<port>/ serving tmp_path/www (holding data.bin = PAYLOAD)."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "data.bin").write_bytes(PAYLOAD)
    handler = functools.partial(_Quiet, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- hashes ----------------------------------------------------------------------------------
def test_sha256_file_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    want = hashlib.sha256(PAYLOAD).hexdigest()
    assert files.sha256_file(path) == want
    files.verify_sha256(path, want.upper())  # case does not matter
    files.verify_file(path, sha256=want, md5=hashlib.md5(PAYLOAD).hexdigest())
    with pytest.raises(DataError) as err:
        files.verify_sha256(path, "0" * 64)
    msg = str(err.value)
    assert str(path) in msg and want in msg and "0" * 64 in msg and "\n" not in msg
    with pytest.raises(DataError, match="md5"):
        files.verify_file(path, sha256=want, md5="0" * 32)  # both digests are checked
    with pytest.raises(DataError, match="sha256"):
        files.verify_bytes(PAYLOAD + b"x", "blob", sha256=want)


# -- downloads -------------------------------------------------------------------------------
def test_download_verifies_and_renames(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "data.bin"
    got = files.download(server + "data.bin", dest, hashlib.sha256(PAYLOAD).hexdigest())
    assert got == dest and dest.read_bytes() == PAYLOAD
    assert not dest.with_name("data.bin.part").exists()


def test_download_with_a_wrong_hash_keeps_nothing(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    with pytest.raises(DataError, match="does not match the pinned") as err:
        files.download(server + "data.bin", dest, "ab" * 32)
    assert "\n" not in str(err.value)
    assert not dest.exists() and not dest.with_name("data.bin.part").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]


def test_download_of_a_missing_page_is_a_data_error(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "nope.bin"
    with pytest.raises(DataError, match="404"):
        files.download(server + "nope.bin", dest, "ab" * 32)
    assert not dest.exists() and not dest.with_name("nope.bin.part").exists()


def test_unreachable_url_fails_fast_with_a_placement_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/data.bin"  # nothing listens there
    dest = tmp_path / "data.bin"
    t0 = time.perf_counter()
    with pytest.raises(DataError) as err:
        files.download(url, dest, "ab" * 32, timeout=3.0)
    assert time.perf_counter() - t0 < 3.0
    msg = str(err.value)
    assert url in msg and str(dest) in msg and "by hand" in msg and "\n" not in msg
    assert not dest.exists() and not dest.with_name("data.bin.part").exists()


# -- restricted unpickling -------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        cmd = f"{shlex.quote(sys.executable)} -c \"open({str(self.marker)!r}, 'w')\""
        return (os.system, (cmd,))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / f"pwned-{protocol}"
    blob = pickle.dumps({b"data": _Evil(marker)}, protocol=protocol)
    with pytest.raises(DataError, match="refusing to unpickle") as err:
        files.safe_unpickle(blob)
    assert ("posix.system" in str(err.value) or "nt.system" in str(err.value)
            or "os.system" in str(err.value))
    assert not marker.exists()
    if protocol == 2:  # the control: the plain unpickler would have run it
        pickle.loads(blob)
        assert marker.exists()


@pytest.mark.parametrize("gadget", [eval, exec, getattr, __import__, np.load, os.remove])
def test_other_gadgets_are_refused(gadget) -> None:
    blob = pickle.dumps(gadget, protocol=2)
    with pytest.raises(DataError, match="refusing"):
        files.safe_unpickle(blob)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickles_round_trip(protocol: int) -> None:
    rng = np.random.default_rng(0)
    obj = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
           b"labels": [1, 2, 3], b"batch_label": b"training batch 1 of 5",
           b"filenames": [b"a.png", b"b.png", b"c.png"],
           "f64": rng.normal(size=(2, 3)), "f32_fortran": np.asfortranarray(np.eye(3, 4, 1,
                                                                            np.float32)),
           "scalar": np.int64(7), "tuple": (1, 2.5, None, True), "set": {1, 2}}
    out = files.safe_unpickle(pickle.dumps(obj, protocol=protocol))
    assert out.keys() == obj.keys()
    for key, value in obj.items():
        if isinstance(value, np.ndarray):
            assert out[key].dtype == value.dtype and np.array_equal(out[key], value)
        else:
            assert out[key] == value


def test_old_numpy_module_names_are_accepted() -> None:
    """Pickles from numpy 1.x (the CIFAR-10 batches) name numpy.core.multiarray."""
    x = np.arange(12, dtype=np.uint8).reshape(3, 4)
    blob = pickle.dumps({b"data": x}, protocol=2)
    assert b"cnumpy._core.multiarray\n_reconstruct\n" in blob
    old = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert np.array_equal(files.safe_unpickle(old)[b"data"], x)


def test_malformed_pickle_is_a_data_error() -> None:
    with pytest.raises(DataError, match="malformed pickle"):
        files.safe_unpickle(pickle.dumps([1, 2, 3])[:-3])


def _py2_str(b: bytes) -> bytes:
    """A Python 2 ``str`` in a pickle (SHORT_BINSTRING / BINSTRING)."""
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + len(b).to_bytes(4, "little") + b


def test_python2_cifar_batch_pickle_loads() -> None:
    """The opcodes of a CIFAR-10 batch as Python 2 cPickle (protocol 2) wrote it: py2 strings
    for keys, dtype fields and the pixel buffer; numpy.core.multiarray._reconstruct."""
    data = (np.arange(2 * 3072) % 251).astype(np.uint8)
    p = b"\x80\x02}q\x00(" + _py2_str(b"data")
    p += b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85"
    p += _py2_str(b"b") + b"\x87Rq\x03(K\x01M\x02\x00M\x00\x0c\x86cnumpy\ndtype\nq\x04"
    p += _py2_str(b"u1") + b"K\x00K\x01\x87Rq\x05(K\x03" + _py2_str(b"|")
    p += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + _py2_str(data.tobytes()) + b"tb"
    p += _py2_str(b"labels") + b"]q\x06(K\x01K\x02e" + _py2_str(b"batch_label")
    p += _py2_str(b"training batch 1 of 5") + b"u."
    out = files.safe_unpickle(p)
    assert out[b"batch_label"] == b"training batch 1 of 5" and out[b"labels"] == [1, 2]
    assert out[b"data"].shape == (2, 3072) and out[b"data"].dtype == np.uint8
    assert np.array_equal(out[b"data"].ravel(), data)
