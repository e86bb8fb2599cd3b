"""Published numbers (``results/reference/*.csv``) beside our measured ones.

Each CSV row is one published number: method, dataset (our plug-in name), metric (our
metric key: ``test_nll`` in nats, ``test_bpd`` in bits/dim, ``fid``), value, std (blank if
none given), split (the data it was measured on), kind (exact, bound or estimate),
estimator, citation (paper and table) and status: ``checked: <where in the paper's text it
was read>`` or ``not checked...``. An unchecked number is shown with a dagger and a note,
for orientation only: nothing here is a pass/fail threshold.

`reference_table` lays our runs (mean ± std over seeds, per configuration, exactly as
`bench.record.tables.comparison_table` groups them) and the published numbers out as one
table, rows x datasets. Two rows on top say, for each of our columns, which data our runs
trained and were scored on and whether that is comparable with a full-data published
number: a reduced split (e.g. the offline MINIBOONE) is flagged as not comparable.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.api import ConfigError, DataError, RunRecord
from bench.api.metric_specs import HEADLINE, specs_for
from bench.record.tables import _cell, _unit, long_results

__all__ = ["Published", "REFERENCE_DIR", "read_reference_csv", "load_reference",
           "reference_table", "DAGGER"]

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "results" / "reference"
COLUMNS = ("method", "dataset", "metric", "value", "std", "split", "kind", "estimator",
           "citation", "status", "note")
OPTIONAL = ("std", "note")
#: the metrics a published number may give: the built-in headline ones (their specs)
METRICS = HEADLINE
KINDS = ("exact", "bound", "estimate")
DAGGER = "†"
CHECK = "✓"
DATA_ROW = "our data (train; test)"
COMPARABLE_ROW = "ours comparable with published?"


@dataclass(frozen=True)
class Published:
    """One published number, as its CSV row says (``source``: ``file:line``)."""

    method: str
    dataset: str
    metric: str
    value: float
    std: float | None
    split: str
    kind: str
    estimator: str
    citation: str
    status: str
    note: str
    source: str

    @property
    def checked(self) -> bool:
        """True only when the status says where in the paper's text it was read."""
        return self.status.startswith("checked:") and len(self.status) > len("checked:")

    def cell(self) -> str:
        """``[≤ ]value[ ± std]`` then ✓ (checked against the paper's text) or † (not)."""
        text = ("≤ " if self.kind == "bound" else "") + f"{self.value:.2f}"
        text += f" ± {self.std:.2f}" if self.std is not None else ""
        return text + (f" {CHECK}" if self.checked else DAGGER)


def _number(text: str, where: str, field: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise DataError(f"{where}: {field} {text!r} is not a number") from None
    if not math.isfinite(v):
        raise DataError(f"{where}: {field} {text!r} is not finite")
    return v


def _row(row: dict[str, str], where: str) -> Published:
    f = {k: (row.get(k) or "").strip() for k in COLUMNS}
    for k in COLUMNS:
        if k not in OPTIONAL and not f[k]:
            raise DataError(f"{where}: empty {k}")
    if f["metric"] not in METRICS:
        raise DataError(f"{where}: metric {f['metric']!r} is not one of {', '.join(METRICS)}")
    if f["kind"] not in KINDS:
        raise DataError(f"{where}: kind {f['kind']!r} is not one of {', '.join(KINDS)}")
    status = f["status"]
    if not (status.startswith("not checked") or
            (status.startswith("checked:") and status[len("checked:"):].strip())):
        raise DataError(f"{where}: status must be 'checked: <where in the paper>' or "
                        f"'not checked...', got {status!r}")
    std = _number(f["std"], where, "std") if f["std"] else None
    if std is not None and std < 0:
        raise DataError(f"{where}: std {std} is negative")
    return Published(f["method"], f["dataset"], f["metric"], _number(f["value"], where, "value"),
                     std, f["split"], f["kind"], f["estimator"], f["citation"], status,
                     f["note"], where)


def read_reference_csv(path: Path) -> list[Published]:
    """The rows of one reference CSV, validated.

    Raises:
        DataError: unreadable file, missing or unknown columns, an empty required field, a
            value that is not a finite number, an unknown metric or kind, a bad status.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    missing = [c for c in COLUMNS if c not in header and c not in OPTIONAL]
    unknown = [c for c in header if c not in COLUMNS]
    if missing or unknown:
        raise DataError(f"{path}: header must be {','.join(COLUMNS)}"
                        + (f"; missing {', '.join(missing)}" if missing else "")
                        + (f"; unknown {', '.join(unknown)}" if unknown else ""))
    out = []
    for row in reader:
        where = f"{path.name}:{reader.line_num}"
        if None in row:
            raise DataError(f"{where}: more fields than the header has")
        out.append(_row(row, where))
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def load_reference(folder: Path | None = None) -> list[Published]:
    """Every ``*.csv`` under ``folder`` (default ``results/reference/``), validated; one
    (method, dataset, metric) may appear only once across the files."""
    folder = Path(folder) if folder is not None else REFERENCE_DIR
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    if not files:
        raise DataError(f"no reference CSVs in {folder}")
    rows, seen = [], {}
    for path in files:
        for p in read_reference_csv(path):
            key = (p.method, p.dataset, p.metric)
            if key in seen:
                raise DataError(f"{p.source}: {key} already given at {seen[key]}")
            seen[key] = p.source
            rows.append(p)
    return rows


def _reduced(rec: RunRecord) -> str | None:
    """Why a run's data are not the full standard split (None: they are)."""
    prov = rec.tags.get("dataset_provenance", "")
    split = rec.tags.get("test_split", "")
    if "reduced" in prov.lower() or "reduced" in split.lower():
        return "reduced: not comparable with the full-data published number"
    if "not the standard" in prov.lower() or "first " in split:
        return "not the standard split: not comparable with the published number"
    return None


def _our_columns(long: pd.DataFrame, by_id: dict) -> dict[str, dict[str, str]]:
    """Per column label of ours: base dataset, data description, comparability."""
    cols: dict[str, dict[str, str]] = {}
    for label, group in long.groupby("dataset"):
        recs = [by_id[i] for i in group["run_id"] if i in by_id]
        data = sorted({f"{r.tags.get('split.train', 'train: unrecorded')}; "
                       f"{r.tags.get('test_split', 'test: unrecorded')}" for r in recs})
        why = sorted({w for w in (_reduced(r) for r in recs) if w})
        cols[str(label)] = {"dataset": recs[0].dataset if recs else str(label),
                            "data": " | ".join(data),
                            "comparable": ("NO - " + "; ".join(why)) if why else
                            "yes (full standard split)",
                            "provenance": " | ".join(sorted({r.tags.get("dataset_provenance",
                                                                         "unrecorded")
                                                             for r in recs}))}
    return cols


def reference_table(records: Sequence[RunRecord], metric: str = "test_nll",
                    published: Sequence[Published] | None = None
                    ) -> tuple[pd.DataFrame, list[str]]:
    """Our configurations and the published methods (rows) x datasets (columns).

    Columns are the datasets with a published ``metric``; our runs on a dataset appear in
    one column per dataset configuration (``miniboone (reduced)`` beside ``miniboone``),
    each holding the published numbers of its dataset too. Returns the table and its notes
    (our runs' provenance, every published number's split, estimator, citation, status).

    Raises:
        ConfigError: no published number for ``metric``.
    """
    pubs = [p for p in (published if published is not None else load_reference())
            if p.metric == metric]
    if not pubs:
        raise ConfigError(f"no published numbers for metric {metric!r}; the reference "
                          f"CSVs give {', '.join(METRICS)}")
    datasets = sorted({p.dataset for p in pubs})
    long, notes = long_results(records, metric)
    long = long[(long["method"] != "truth") & long["run_id"].notna()] if not long.empty \
        else long
    by_id = {r.run_id: r for r in records}
    ours = _our_columns(long, by_id) if not long.empty else {}
    elsewhere = sorted({c["dataset"] for c in ours.values()} - set(datasets))
    if elsewhere:
        notes.append(f"our runs on {', '.join(elsewhere)}: no published {metric} to compare")
    columns = _reference_columns(datasets, ours)
    body: dict[str, dict[str, str]] = {DATA_ROW: {}, COMPARABLE_ROW: {}}
    for col, _, src in columns:
        if src is None:
            continue
        body[DATA_ROW][col] = ours[src]["data"]
        body[COMPARABLE_ROW][col] = ours[src]["comparable"]
        cells = long[long["dataset"] == src].groupby("row")["value"].apply(_cell)
        for row, cell in cells.items():
            body.setdefault(str(row), {})[col] = cell
        notes.append(f"ours, {col}: {ours[src]['provenance']}")
    notes += _published_rows(pubs, columns, body)
    tab = pd.DataFrame.from_dict(body, orient="index")
    tab = tab.reindex(columns=[c for c, *_ in columns]).fillna("")
    if not ours:
        tab = tab.drop(index=[DATA_ROW, COMPARABLE_ROW])
    tab.index.name = _unit(metric, specs_for(records))
    return tab, notes


def _reference_columns(datasets: list[str], ours: dict[str, dict]
                       ) -> list[tuple[str, str, str | None]]:
    """(column label, dataset, our configuration label or None) per column: each published
    dataset, once per configuration of ours on it (flagged when not the standard split)."""
    columns: list[tuple[str, str, str | None]] = []
    for d in datasets:
        mine = sorted(label for label, c in ours.items() if c["dataset"] == d)
        if not mine:
            columns.append((d, d, None))
        for label in mine:
            flag = ours[label]["comparable"].startswith("NO") and "reduced" not in label
            columns.append((label + (" (not standard)" if flag else ""), d, label))
    return columns


def _published_rows(pubs: Sequence[Published], columns: list[tuple[str, str, str | None]],
                    body: dict[str, dict[str, str]]) -> list[str]:
    """Fill ``body`` with a "[published]" row per method; returns the notes that label every
    published number (kind, split, estimator, citation, status)."""
    described: dict[tuple, list[str]] = {}
    for p in pubs:
        row = f"{p.method} [published]"
        for col, d, _ in columns:
            if d == p.dataset:
                body.setdefault(row, {})[col] = p.cell()
        key = (p.method, p.kind, p.split, p.estimator, p.citation, p.status)
        described.setdefault(key, []).append(p.dataset)
    notes = [f"published {method} ({', '.join(names)}): {kind}; {split}; {estimator}; "
             f"{citation}; {status}"
             for (method, kind, split, estimator, citation, status), names in described.items()]
    notes.append(f"{CHECK} read in the paper's own text; {DAGGER} not checked against it: "
                 "shown for orientation, never a pass/fail threshold")
    return notes

