"""The MAF tabular density-estimation benchmarks: POWER, GAS, HEPMASS, MINIBOONE, BSDS300.

Preprocessed and split exactly as in Papamakarios et al. 2017 (github.com/gpapamak/maf),
the version FFJORD, NSF and InterFlow report on; the science lives in `bench.data.maf`.

Data is looked up under the data root (``BENCH_DATA_DIR`` or the user cache folder):

- a pre-split folder ``<root>/<name>/{train,val,test}.npy`` (already normalised), or
- the raw files of the MAF archive: ``<root>/miniboone/data.npy``, ``<root>/power/data.npy``,
  ``<root>/hepmass/1000_{train,test}.csv``,
  ``<root>/BSDS300/BSDS300.hdf5`` (lowercase ``bsds300`` also accepted), or
- else `prepare()` downloads the archive (Zenodo record 1161203, 857 MB, md5-checked) and
  extracts the files of the one dataset asked for.

GAS is the exception: its raw file is a pandas pickle, which is never opened loose. It is
converted once, from the md5-verified archive (``<root>/maf/data.tar.gz``, downloaded if
absent), to ``<root>/gas/ethylene_CO-<sha256 prefix>.npy`` with a ``.sha256`` sidecar checked
at every load (`bench.data.mafgas`); a hand-placed ``ethylene_CO.pickle`` is refused.

``source=presplit`` or ``source=raw`` forces one of the two; the provenance of the splits
says which was used and whether the row counts are those of the standard MAF splits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from bench.api import Dataset, Splits
from bench.api.errors import DataError
from bench.data import maf  # torch-free: file formats, preprocessing, sizes

log = logging.getLogger(__name__)

_SPLITS = ("train", "val", "test")


@dataclass
class MAFParams:
    """Parameters of the MAF datasets.

    Attributes:
        source: "auto" (pre-split folder if present, else the raw file, else download),
            "raw" (the raw MAF file, downloaded if absent) or "presplit" (the folder with
            train.npy/val.npy/test.npy only).
    """

    source: Literal["auto", "raw", "presplit"] = "auto"


def _split_labels(label: str, sizes: tuple[int, ...], std: tuple[int, ...]) -> dict[str, str]:
    names = {}
    for split, n, n_std in zip(_SPLITS, sizes, std, strict=True):
        if n == n_std:
            names[split] = f"MAF {label} {split} split ({n} rows)"
        else:
            names[split] = f"reduced {label} {split} ({n} rows; the MAF {split} split has {n_std})"
    if sizes[0] + sizes[1] == std[1] and sizes[2] == std[2]:
        for split in ("train", "val"):
            names[split] = (f"reduced {label} {split} ({sizes[_SPLITS.index(split)]} rows, "
                            "cut from the standard MAF validation split)")
    return names


def _status(sizes: tuple[int, ...], std: tuple[int, ...]) -> str:
    """How the row counts compare with the standard MAF splits."""
    if tuple(sizes) == tuple(std):
        return "standard MAF splits"
    test = ("test = standard MAF test split" if sizes[2] == std[2]
            else "test is NOT the standard MAF test split")
    if sizes[0] + sizes[1] == std[1] and sizes[2] == std[2]:
        return f"reduced: train/val cut from the standard validation split, {test}"
    return (f"reduced: not the standard sizes (train {std[0]}, val {std[1]}, test {std[2]}), "
            f"{test}")


class _MAFDataset(Dataset):
    """Common code of the MAF datasets (no `name`: not a plug-in by itself)."""

    kind: ClassVar[str] = "tabular"
    Params: ClassVar[type] = MAFParams
    label: ClassVar[str]

    def _local(self) -> tuple[str, Path] | None:
        return maf.find_local(self.data_dir, self.name, self.params.source)

    def prepare(self) -> None:
        """Download and extract the raw files unless local data is there (idempotent)."""
        if self._local() is not None:
            return
        if self.params.source == "presplit":
            folder = self.data_dir / self.name
            raise DataError(f"{self.label} source=presplit but {folder}/ has no "
                            "train.npy/val.npy/test.npy")
        folder = maf.fetch_dataset(self.data_dir, self.name)
        log.info("%s raw files extracted to %s", self.label, folder)

    def load(self) -> Splits:
        """The MAF splits as float32 tensors of shape (n, d)."""
        import torch

        found = self._local()
        if found is None:
            raise DataError(maf.missing_message(
                self.name, self.data_dir, "no download was tried (prepare() not called)"))
        kind, folder = found
        if kind == "presplit":
            arrays = maf.read_presplit(self.name, folder)
            where = f"pre-split folder {folder}"
        else:
            arrays = maf.read_raw(self.name, folder)
            names = maf.RAW_FILES[self.name] if self.name != "gas" else (
                f"{maf.mafgas.find_cache(folder).name} (converted from the md5-verified "
                "archive's ethylene_CO.pickle)",)
            files = ", ".join(str(folder / f) for f in names)
            where = (f"file {files} (splits as stored)" if self.name == "bsds300"
                     else f"raw {files} with the MAF preprocessing")
        train, val, test = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
                            for a in arrays)
        sizes = (train.shape[0], val.shape[0], test.shape[0])
        std = maf.MAF_SIZES[self.name]
        provenance = (f"MAF {self.label} {where} (train {sizes[0]}, val {sizes[1]}, "
                      f"test {sizes[2]} rows; {_status(sizes, std)})")
        log.info("%s", provenance)
        return Splits(
            train=train, val=val, test=test, event_shape=(train.shape[1],),
            provenance=provenance, split_names=_split_labels(self.label, sizes, std),
        )


class Power(_MAFDataset):
    """POWER (UCI household electric power, MAF preprocessing): 6 features."""

    name = "power"
    event_shape = (maf.MAF_DIMS["power"],)
    label = "POWER"


class Gas(_MAFDataset):
    """GAS (UCI gas sensor array, ethylene-CO, MAF preprocessing): 8 features."""

    name = "gas"
    event_shape = (maf.MAF_DIMS["gas"],)
    label = "GAS"


class Hepmass(_MAFDataset):
    """HEPMASS (UCI, signal events of the 1000 mass set, MAF preprocessing): 21 features."""

    name = "hepmass"
    event_shape = (maf.MAF_DIMS["hepmass"],)
    label = "HEPMASS"


class Miniboone(_MAFDataset):
    """MINIBOONE (UCI particle identification, MAF preprocessing): 43 features."""

    name = "miniboone"
    event_shape = (maf.MAF_DIMS["miniboone"],)
    label = "MINIBOONE"


class BSDS300(_MAFDataset):
    """BSDS300 (8x8 natural-image patches, last pixel dropped, MAF version): 63 features."""

    name = "bsds300"
    event_shape = (maf.MAF_DIMS["bsds300"],)
    label = "BSDS300"
