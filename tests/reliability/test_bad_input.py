"""Bad input through the real CLI: malformed pre-split data, impossible budgets, unknown
names, wrong types, bad seeds and devices. Each is one ``error:`` line and a non-zero exit
(2: bad selection or settings; 1: bad data), and a run recorded before still reads back
intact afterwards."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from tests.reliability._cli import TINY, TOY, assert_refused, bench

D = 43  # MINIBOONE features


@pytest.fixture(scope="module")
def store(tmp_path_factory, _mlflow_template):
    """A store holding one small real run (FINISHED), and that run as first read back."""
    import shutil

    from bench.record.mlflow_sink import load_records

    tmp = tmp_path_factory.mktemp("store")
    shutil.copy(_mlflow_template, tmp / "runs.db")
    uri = f"sqlite:///{tmp / 'runs.db'}"
    res = bench("run", "--tracking-uri", uri, "--results-dir", str(tmp / "results"),
                "-m", "gaussian_mle", "-d", TOY, *TINY)
    assert res.exit_code == 0, res.output
    (before,) = load_records(uri)
    assert before.status == "FINISHED"
    return {"uri": uri, "results": str(tmp / "results"), "before": before}


def run_on(store, *args: str):
    return bench("run", "--tracking-uri", store["uri"], "--results-dir", store["results"],
                 *args)


def intact(store) -> None:
    """The first run still reads back the same; nothing new FINISHED."""
    from bench.record.mlflow_sink import load_records

    runs = load_records(store["uri"])
    first = next(r for r in runs if r.run_id == store["before"].run_id)
    assert first.status == "FINISHED" and first.metrics == store["before"].metrics
    assert [r.run_id for r in runs if r.status == "FINISHED"] == [first.run_id]


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def presplit(root: Path, **override: bytes | None) -> Path:
    """``<root>/miniboone/{train,val,test}.npy`` of finite rows, with files replaced
    (bytes) or left out (None) by ``override``."""
    rng = np.random.default_rng(0)
    folder = root / "miniboone"
    folder.mkdir(parents=True)
    for split, n in (("train", 120), ("val", 30), ("test", 30)):
        data = override.get(split, _npy(rng.standard_normal((n, D))))
        if data is not None:
            (folder / f"{split}.npy").write_bytes(data)
    return root


def _nan_rows() -> bytes:
    x = np.random.default_rng(1).standard_normal((30, D))
    x[[2, 7, 9], 4] = np.nan
    return _npy(x)


GOOD_TRAIN = _npy(np.random.default_rng(2).standard_normal((120, D)))
DATA_CASES = {  # case -> (files replaced, words the error line must hold)
    "wrong shape": ({"train": _npy(np.zeros((120, 5)))}, ["train.npy", "(n, 43)", "(120, 5)"]),
    "wrong ndim": ({"train": _npy(np.zeros(120))}, ["train.npy", "(n, 43)", "(120,)"]),
    "NaN rows": ({"val": _nan_rows()}, ["val.npy", "3 of 30 rows", "NaN"]),
    "truncated": ({"train": GOOD_TRAIN[:1000]}, ["train.npy", "cannot read"]),
    "empty file": ({"test": b""}, ["test.npy", "empty (0 bytes)"]),
    "no rows": ({"test": _npy(np.zeros((0, D)))}, ["test.npy", "no rows"]),
    "object dtype": ({"train": _npy(np.full((10, D), "a", dtype=object))},
                     ["train.npy", "object (pickled) array"]),
    "strings": ({"train": _npy(np.full((10, D), "a"))}, ["train.npy", "dtype <U1"]),
    "missing split": ({"val": None}, ["has train.npy, test.npy but no val.npy"]),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_malformed_presplit_data(store, tmp_path, case, one_thread):
    files, words = DATA_CASES[case]
    root = presplit(tmp_path / "data", **files)
    res = run_on(store, "-m", "gaussian_mle", "-d", "miniboone", "--data-dir", str(root),
                 *TINY)
    assert_refused(res, 1, *words)
    intact(store)


def test_missing_data_dir(store, tmp_path):
    res = run_on(store, "-m", "gaussian_mle", "-d", "miniboone[source=presplit]",
                 "--data-dir", str(tmp_path / "nowhere"), *TINY)
    assert_refused(res, 1, "source=presplit", str(tmp_path / "nowhere"))
    intact(store)


def test_unreadable_file(store, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    root = presplit(tmp_path / "data")
    (root / "miniboone" / "val.npy").chmod(0)
    res = run_on(store, "-m", "gaussian_mle", "-d", "miniboone", "--data-dir", str(root),
                 *TINY)
    assert_refused(res, 1, "val.npy", "Permission denied")
    intact(store)


SETTINGS = {  # case -> (arguments, words); every one exits 2 before a run is opened
    "--steps 0": (["--steps", "0"], ["--steps must be >= 1, got 0"]),
    "--steps -3": (["--steps", "-3"], ["--steps must be >= 1, got -3"]),
    "--max-seconds 0": (["--max-seconds", "0"], ["--max-seconds must be > 0"]),
    "--max-seconds -5": (["--max-seconds", "-5"], ["--max-seconds must be > 0"]),
    "--eval-every 0": (["--eval-every", "0"], ["--eval-every must be >= 1, got 0"]),
    "--patience 0": (["--patience", "0"], ["--patience must be >= 1"]),
    "--seeds a,b": (["--seeds", "a,b"], ["--seeds must be comma-separated integers"]),
    "--seeds 0,1,0": (["--seeds", "0,1,0"], ["--seeds repeats 0"]),
    "--device tpu9": (["--device", "tpu9"], ["--device 'tpu9' is not a device"]),
    "unknown method": (["-m", "nosuch"], ["unknown method 'nosuch'"]),
    "unknown dataset": (["-d", "nosuch"], ["unknown dataset 'nosuch'"]),
    "unknown parameter": (["-m", "interflow[nosuch=1]"], ["unknown parameter 'nosuch'"]),
    "wrong parameter type": (["-m", "interflow[batch_size=abc]"],
                             ["bad value 'abc'", "'batch_size' (int)"]),
    "--set unknown key": (["--set", "nosuch=1"], ["--set nosuch", "no selected method"]),
    "--set wrong type": (["--set", "lr=fast"], ["bad value 'fast'", "'lr' (float)"]),
}


@pytest.mark.parametrize("case", list(SETTINGS))
def test_impossible_settings_exit_2_before_any_run(store, case):
    extra, words = SETTINGS[case]
    sel = {"-m": "gaussian_mle", "-d": TOY}
    args = []
    for flag in ("-m", "-d"):
        if flag in extra:
            i = extra.index(flag)
            sel[flag] = extra[i + 1]
            extra = extra[:i] + extra[i + 2:]
        args += [flag, sel[flag]]
    res = run_on(store, *args, *[a for a in TINY if a not in ("--steps", "2")], *extra,
                 *(["--steps", "2"] if "--steps" not in extra and "--max-seconds" not in extra
                   else []))
    assert_refused(res, 2, *words)
    intact(store)
