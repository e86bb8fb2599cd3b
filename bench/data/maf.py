"""The MAF tabular benchmarks (Papamakarios et al. 2017): files, preprocessing, download.

POWER, GAS, HEPMASS, MINIBOONE and BSDS300 preprocessed and split exactly as in
github.com/gpapamak/maf ``datasets/*.py`` (the code FFJORD, NSF and InterFlow reuse),
re-written here in plain numpy/pandas. Every ``preprocess_*`` function returns
``(train, val, test)`` float64 arrays of shape (n, d); the quirks of the reference (GAS
normalised with statistics of the whole frame, HEPMASS features removed by the count of
their smallest value) are kept on purpose so that test NLLs stay comparable with
published tables.

Files live under a data root as ``<root>/<folder>/<file>`` with the folder names of the
canonical archive (``miniboone``, ``power``, ``gas``, ``hepmass``, ``BSDS300``), which
`fetch_dataset` downloads from Zenodo record 1161203 and checks by md5. GAS is never
unpickled at run time: its pickle is converted once from the verified archive to a checked
.npy (`bench.data.mafgas`); a loose ``ethylene_CO.pickle`` is refused.
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.api.errors import DataError
from bench.data import mafgas

if TYPE_CHECKING:  # pandas is imported where the raw files are read (slow import)
    import pandas as pd

__all__ = [
    "MAF_ARCHIVE_URL", "MAF_ARCHIVE_MD5", "MAF_RECORD", "MAF_SIZES", "MAF_DIMS", "RAW_FILES",
    "ARCHIVE_DIRS", "split_maf", "normalise_train_val", "preprocess_miniboone",
    "preprocess_power", "preprocess_gas", "preprocess_hepmass", "read_raw", "read_presplit",
    "dataset_folders", "find_local", "missing_message", "md5_file", "download_archive",
    "extract_dataset", "fetch_dataset",
]

log = logging.getLogger(__name__)

MAF_RECORD = "zenodo.org/records/1161203"
MAF_ARCHIVE_URL = f"https://{MAF_RECORD}/files/data.tar.gz"
MAF_ARCHIVE_MD5 = "9b9c9b0375315ad270eba4ce80c093ab"

#: (train, val, test) rows of the standard MAF splits.
MAF_SIZES: dict[str, tuple[int, int, int]] = {
    "power": (1659917, 184435, 204928),
    "gas": (852174, 94685, 105206),
    "hepmass": (315123, 35013, 174987),
    "miniboone": (29556, 3284, 3648),
    "bsds300": (1000000, 50000, 250000),
}
#: Features after preprocessing.
MAF_DIMS: dict[str, int] = {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}
#: Raw files of each dataset, inside its folder.
RAW_FILES: dict[str, tuple[str, ...]] = {
    "power": ("data.npy",),
    "gas": ("ethylene_CO.pickle",),
    "hepmass": ("1000_train.csv", "1000_test.csv"),
    "miniboone": ("data.npy",),
    "bsds300": ("BSDS300.hdf5",),
}
#: Folder of each dataset in the archive (under ``data/``) and under the data root.
ARCHIVE_DIRS = {"power": "power", "gas": "gas", "hepmass": "hepmass",
                "miniboone": "miniboone", "bsds300": "BSDS300"}
_RAW_COLUMNS = {"power": 8, "miniboone": 43, "bsds300": 63}
_PRESPLIT = ("train.npy", "val.npy", "test.npy")

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def split_maf(data: np.ndarray) -> Arrays:
    """The MAF split of rows (n, d): the last int(0.1 n) rows are test, then the last
    int(0.1 n_rest) of the rest are validation, the remaining rows train."""
    n_test = int(0.1 * data.shape[0])
    n_val = int(0.1 * (data.shape[0] - n_test))
    if n_test < 1 or n_val < 1:
        raise DataError(f"too few rows ({data.shape[0]}) for the MAF 10%/10% split")
    rest = data[:-n_test]
    return rest[:-n_val], rest[-n_val:], data[-n_test:]


def normalise_train_val(train: np.ndarray, val: np.ndarray, test: np.ndarray) -> Arrays:
    """Standardise all splits by the mean and std (ddof=0) of train and val stacked."""
    both = np.vstack((train, val))
    mu, s = both.mean(axis=0), both.std(axis=0)
    return (train - mu) / s, (val - mu) / s, (test - mu) / s


def preprocess_miniboone(data: np.ndarray) -> Arrays:
    """MINIBOONE ``data.npy`` (n, 43), already feature-cleaned -> normalised splits."""
    return normalise_train_val(*split_maf(data))


def preprocess_power(data: np.ndarray) -> Arrays:
    """POWER ``data.npy`` (n, 8): seeded shuffle, drop columns 3 and 1, uniform noise
    (dequantisation at each column's resolution), split, normalise by train+val."""
    rng = np.random.RandomState(42)
    data = np.array(data)  # a copy: the shuffle is in place
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(np.delete(data, 3, axis=1), 1, axis=1)
    # the reference draws voltage noise first, then gap, then sub-metering
    voltage = 0.01 * rng.rand(n, 1)
    gap = 0.001 * rng.rand(n, 1)
    sub_metering = rng.rand(n, 3)
    data = data + np.hstack((gap, voltage, sub_metering, np.zeros((n, 1))))
    return normalise_train_val(*split_maf(data))


def preprocess_gas(frame: pd.DataFrame) -> Arrays:
    """GAS frame: drop Meth, Eth, Time, then `preprocess_gas_values` of the rest."""
    return preprocess_gas_values(frame.drop(columns=list(mafgas.DROPPED)).to_numpy())


def preprocess_gas_values(values: np.ndarray) -> Arrays:
    """GAS sensor columns (n, k): drop the first column correlated (> 0.98) with another
    until none is; standardise with the whole frame's mean/std (ddof=1); split."""
    import pandas as pd

    frame = pd.DataFrame(np.asarray(values, dtype=np.float64))
    while True:
        counts = (frame.corr() > 0.98).values.sum(axis=1)
        if not np.any(counts > 1):
            break
        frame = frame.drop(columns=frame.columns[np.where(counts > 1)[0][0]])
    frame = (frame - frame.mean()) / frame.std()
    return split_maf(frame.values)


def preprocess_hepmass(train: pd.DataFrame, test: pd.DataFrame) -> Arrays:
    """HEPMASS frames: keep the signal rows (label 1) and drop the label, drop the test
    frame's last column, standardise by train mean/std (ddof=1), drop features whose
    smallest value occurs more than 5 times in train, then cut validation from train."""
    train = train[train[train.columns[0]] == 1].drop(columns=train.columns[0])
    test = test[test[test.columns[0]] == 1].drop(columns=test.columns[0])
    test = test.drop(columns=test.columns[-1])
    mu, s = train.mean(), train.std()
    x_train, x_test = ((train - mu) / s).values, ((test - mu) / s).values
    if not np.all(np.isfinite(x_train)) or x_train.shape[1] != x_test.shape[1]:
        raise DataError(
            f"HEPMASS train/test columns do not match or a feature is constant "
            f"(train {list(train.columns)}, test {list(test.columns)})"
        )
    n_min = (x_train == x_train.min(axis=0)).sum(axis=0)
    keep = n_min <= 5
    x_train, x_test = x_train[:, keep], x_test[:, keep]
    if not np.all(np.isfinite(x_test)):
        raise DataError("HEPMASS test split has non-finite values after normalisation")
    n_val = int(0.1 * x_train.shape[0])
    if n_val < 1:
        raise DataError(f"too few HEPMASS signal rows ({x_train.shape[0]}) to split")
    return x_train[:-n_val], x_train[-n_val:], x_test


def _check(array: np.ndarray, path: Path, columns: int | None) -> np.ndarray:
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"{path}: dtype {array.dtype}, expected a numeric (float) array")
    if array.ndim != 2 or (columns is not None and array.shape[1] != columns):
        want = f"(n, {columns})" if columns is not None else "(n, d)"
        raise DataError(f"{path}: expected an array of shape {want}, got {array.shape}")
    if array.shape[0] == 0:
        raise DataError(f"{path}: has no rows")
    bad = int((~np.isfinite(array)).any(axis=1).sum())
    if bad:
        raise DataError(f"{path}: {bad} of {array.shape[0]} rows have non-finite values "
                        "(NaN/inf)")
    return array


def _load_npy(path: Path) -> np.ndarray:
    """np.load of one .npy (never a pickle), every failure one line naming the file."""
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: the file is empty (0 bytes)")
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if "allow_pickle" in reason:
            reason = "an object (pickled) array; expected numbers"
        raise DataError(f"cannot read {path}: {reason}") from None


def _read_hdf5(path: Path) -> Arrays:
    try:
        import h5py
    except ImportError:
        raise DataError(f"reading {path} needs h5py: pip install h5py") from None
    with h5py.File(path, "r") as f:
        if not {"train", "validation", "test"} <= set(f.keys()):
            raise DataError(f"{path}: expected datasets 'train', 'validation', 'test'")
        return tuple(_check(np.asarray(f[k][:]), path, _RAW_COLUMNS["bsds300"])
                     for k in ("train", "validation", "test"))


def read_raw(name: str, folder: Path) -> Arrays:
    """Read the raw MAF files of `name` from `folder`, check them and preprocess them.

    Args:
        name: "power" | "gas" | "hepmass" | "miniboone" | "bsds300".
        folder: the folder holding ``RAW_FILES[name]``.

    Returns:
        (train, val, test) arrays of shape (n, d).

    Raises:
        DataError: a file is unreadable, has the wrong number of columns or NaN/inf values.
    """
    import pandas as pd

    paths = [folder / f for f in RAW_FILES[name]]
    try:
        if name == "bsds300":
            return _read_hdf5(paths[0])
        if name == "gas":
            cache = mafgas.find_cache(folder)
            if cache is None:
                raise DataError(mafgas.refusal(paths[0], folder.parent, MAF_ARCHIVE_MD5))
            return preprocess_gas_values(_check(mafgas.read_cache(cache), cache, None))
        if name == "hepmass":
            frames = [pd.read_csv(p, index_col=False) for p in paths]
            for p, fr in zip(paths, frames, strict=True):
                _check(fr.to_numpy(), p, None)
            return preprocess_hepmass(*frames)
        data = _check(_load_npy(paths[0]), paths[0], _RAW_COLUMNS[name])
        return preprocess_power(data) if name == "power" else preprocess_miniboone(data)
    except (OSError, ValueError, EOFError, pd.errors.ParserError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"cannot read {name} data in {folder}: {reason}") from None


def read_presplit(name: str, folder: Path) -> Arrays:
    """Read already-normalised ``train.npy``, ``val.npy``, ``test.npy`` from `folder`.

    Raises:
        DataError: a file is unreadable, not (n, MAF_DIMS[name]) or has NaN/inf values.
    """
    return tuple(_check(_load_npy(folder / f), folder / f, MAF_DIMS[name])
                 for f in _PRESPLIT)


def dataset_folders(root: Path, name: str) -> list[Path]:
    """Folders that may hold `name` under `root`: the archive's name, then lowercase."""
    names = dict.fromkeys((ARCHIVE_DIRS[name], name))
    return [Path(root) / n for n in names]


def find_local(root: Path, name: str, source: str = "auto") -> tuple[str, Path] | None:
    """Find local data of `name` under `root`.

    Args:
        source: "auto" (a pre-split folder first, then raw files), "presplit" or "raw".

    Returns:
        ("presplit" | "raw", folder), or None if there is none.

    Raises:
        DataError: a pre-split folder lacks one of its three files and there is no raw data
            (one line naming the missing split, rather than a download).
    """
    for kind in ("presplit", "raw"):
        if source not in ("auto", kind):
            continue
        for folder in dataset_folders(root, name):
            if kind == "presplit" and all((folder / f).is_file() for f in _PRESPLIT):
                return kind, folder
            if kind == "raw" and _raw_present(folder, name):
                return kind, folder
    if source != "raw":
        for folder in dataset_folders(root, name):
            have = [f for f in _PRESPLIT if (folder / f).is_file()]
            if have:
                missing = [f for f in _PRESPLIT if f not in have]
                raise DataError(f"pre-split folder {folder} has {', '.join(have)} but no "
                                f"{', '.join(missing)}: add the missing split(s)")
    return None


def _raw_present(folder: Path, name: str) -> bool:
    if name == "gas":  # the converted .npy, never the pickle itself
        return mafgas.find_cache(folder) is not None
    return all((folder / f).is_file() for f in RAW_FILES[name])


def missing_message(name: str, root: Path, reason: str) -> str:
    """One line saying which files to place where."""
    folder = Path(root) / ARCHIVE_DIRS[name]
    files = RAW_FILES[name]
    if name == "gas":  # its pickle is read only from the verified archive
        return (f"GAS data not found and {' '.join(reason.split())}: place the MAF archive "
                f"data.tar.gz ({MAF_RECORD}, md5 {MAF_ARCHIVE_MD5}) at "
                f"{Path(root) / 'maf' / 'data.tar.gz'}, or train.npy/val.npy/test.npy in "
                f"{Path(root) / name}/")
    where = (f"{' and '.join(files)} from the MAF archive ({MAF_RECORD}) in {folder}/"
             if len(files) > 1 else
             f"{files[0]} from the MAF archive ({MAF_RECORD}) at {folder / files[0]}")
    reason = " ".join(reason.split())
    return (f"{name.upper()} data not found and {reason}: place {where}, "
            f"or train.npy/val.npy/test.npy in {Path(root) / name}/")


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file."""
    h = hashlib.md5()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_archive(root: Path, url: str | None = None, md5: str | None = None) -> Path:
    """Download the MAF archive to ``<root>/maf/data.tar.gz`` (reused if its md5 is right).

    Raises:
        DataError: the md5 does not match (the file is deleted).
        urllib.error.URLError, OSError: the download failed.
    """
    from tqdm.auto import tqdm

    url = url or MAF_ARCHIVE_URL
    md5 = md5 or MAF_ARCHIVE_MD5
    dest = Path(root) / "maf" / "data.tar.gz"
    if dest.is_file():
        if md5_file(dest) == md5:
            return dest
        log.warning("%s has a wrong md5; downloading it again", dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.md5()
    log.info("downloading %s to %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, part.open("wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="MAF data.tar.gz") as bar:
                while block := resp.read(1 << 20):
                    f.write(block)
                    h.update(block)
                    bar.update(len(block))
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if h.hexdigest() != md5:
        part.unlink()
        raise DataError(f"md5 mismatch for {url} (got {h.hexdigest()}, expected {md5}); "
                        "the download was deleted, try again")
    part.replace(dest)
    return dest


def extract_dataset(archive: Path, name: str, root: Path) -> Path:
    """Extract only ``data/<folder>/...`` of `name` into ``<root>/<folder>/``."""
    prefix = f"data/{ARCHIVE_DIRS[name]}/"
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            for m in tar.getmembers():
                path = m.name[2:] if m.name.startswith("./") else m.name
                if path.startswith(prefix) and m.isfile():
                    m.name = path[len("data/"):]
                    members.append(m)
            if not members:
                raise DataError(f"{archive} has no {prefix} members")
            log.info("extracting %d files of %s into %s", len(members), name, root)
            tar.extractall(Path(root), members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot extract {prefix} from {archive}: {exc}") from None
    return Path(root) / ARCHIVE_DIRS[name]


def fetch_dataset(root: Path, name: str) -> Path:
    """Download the archive if needed and extract the files of `name` into `root`.

    Returns:
        The folder now holding ``RAW_FILES[name]``.

    Raises:
        DataError: the download failed (one line saying which file to place where) or
            the archive's md5 is wrong.
    """
    folder = Path(root) / ARCHIVE_DIRS[name]
    loose = folder / mafgas.PICKLE
    if name == "gas" and loose.is_file() and not (Path(root) / "maf" / "data.tar.gz").is_file():
        raise DataError(mafgas.refusal(loose, root, MAF_ARCHIVE_MD5))
    try:
        archive = download_archive(root)
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(missing_message(name, root, f"download failed ({exc})")) from None
    if name == "gas":
        mafgas.convert_from_archive(archive, MAF_ARCHIVE_MD5, folder)
        return folder
    return extract_dataset(archive, name, root)
