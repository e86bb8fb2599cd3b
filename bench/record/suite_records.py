"""A suite's exported records: ``results/suites/<name>/records.jsonl``, one finished run per
line, small enough to commit, and what ``bench suite report`` rebuilds the page from.

A line holds a `RunRecord`'s run id, name, status, parameters, tags (provenance: commit,
host, versions, data; and the suite's ``suite``, ``suite.method``, ``suite.device_class``),
final metrics, and only the histories a page needs: the validation NLL and the training
seconds at each validation (anytime curves), each validation's seconds (estimates), and for
a speed-up study the per-step seconds and NFE (per-iteration cost). No per-step loss, no
artifacts (local paths). Lines follow the suite's order (method entry, dataset, seed) and
are written with sorted keys, so the same records give the same bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.api import DataError, RunRecord

__all__ = ["ANYTIME_HISTORY", "STUDY_HISTORY", "suite_dir", "export_path", "to_line",
           "write_records", "read_records"]

#: the histories every exported record keeps (anytime curves)
ANYTIME_HISTORY = ("val_nll", "train_seconds_at_eval", "val_seconds")
#: and those of a speed-up study's records (per-iteration cost)
STUDY_HISTORY = ("step_seconds", "nfe_forward", "nfe_backward")


def suite_dir(root: Path, name: str) -> Path:
    """A suite's folder: ``root/results/suites/<name>`` (store, run folders, export)."""
    return Path(root) / "results" / "suites" / name


def export_path(root: Path, name: str) -> Path:
    return suite_dir(root, name) / "records.jsonl"


def _number(v: Any) -> Any:
    """A float as JSON can hold it: non-finite ones as strings ("nan", "inf")."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def to_line(rec: RunRecord, history: Sequence[str] = ANYTIME_HISTORY) -> str:
    """One record as one line of JSON (sorted keys; non-finite numbers as strings)."""
    data = {"run_id": rec.run_id, "name": rec.name, "status": rec.status,
            "params": {k: _number(v) for k, v in rec.params.items()},
            "tags": dict(rec.tags),
            "metrics": {k: _number(float(v)) for k, v in rec.metrics.items()},
            "history": {k: [[int(s), _number(float(v))] for s, v in rec.history[k]]
                        for k in history if rec.history.get(k)}}
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def write_records(path: Path, records: Sequence[RunRecord],
                  history: Sequence[str] = ANYTIME_HISTORY) -> Path:
    """Write the records (in the order given) to ``path``, atomically."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(to_line(r, history) + "\n" for r in records)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def _float(v: Any) -> float:
    return float(v)  # "nan" and "inf" strings too


def read_records(path: Path) -> list[RunRecord]:
    """The records of an export, in its order.

    Raises:
        DataError: no such file, or a line that is not an exported record (its number).
    """
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DataError(f"no exported records at {path} ({exc.strerror or exc}): run "
                        "`bench suite run` (or `bench suite export`) first") from None
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            out.append(RunRecord(
                run_id=d["run_id"], name=d["name"], status=d["status"],
                params=dict(d["params"]), tags={k: str(v) for k, v in d["tags"].items()},
                metrics={k: _float(v) for k, v in d["metrics"].items()},
                history={k: [(int(s), _float(v)) for s, v in pts]
                         for k, pts in d["history"].items()}))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{path}:{i}: not an exported record ({type(exc).__name__}: "
                            f"{exc})") from None
    return out
