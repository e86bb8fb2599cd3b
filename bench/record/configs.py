"""Which configuration a recorded run is: a method configuration (the method, its
parameters ``p_method_*`` and the shared optimisation settings ``optim_*``) and a dataset
configuration (the dataset, its parameters ``p_dataset_*``, its test split and provenance),
with short labels that name only what differs among the runs compared
(``interflow[interpolant=linear]`` beside ``interflow[interpolant=trig]``), and the newest
run of each configuration and seed (`bench.record.tables`, the report's plots).
"""

from __future__ import annotations

import ast
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from bench.api import RunRecord

__all__ = ["config_labels", "newest_per_seed", "SPLIT_FIELDS", "method_config", "dataset_config",
           "short_labels"]

SPLIT_FIELDS = ("split", "provenance")


def _norm(value: Any) -> str:
    """A parameter value as one canonical string, whether recorded typed or as text."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return value
    text = str(value)
    return text.replace(", ", ",") if isinstance(value, tuple | list) else text


def _fields(rec: RunRecord, prefixes: Sequence[str]) -> tuple[tuple[str, str], ...]:
    out = {}
    for k, v in rec.params.items():
        for p in prefixes:
            if k.startswith(p):
                out[k[len(p):]] = _norm(v)
    return tuple(sorted(out.items()))


def method_config(rec: RunRecord) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Method, its parameters, the shared optimisation settings, the training budget and
    the evaluation solver: runs that differ in any of them are different configurations."""
    harness = tuple(sorted((k, _norm(v)) for k, v in rec.params.items()
                           if k.startswith("solver_") or k in ("steps", "max_seconds")))
    return rec.method, tuple(sorted(_fields(rec, ("p_method_", "optim_", "exec_")) + harness))


def dataset_config(rec: RunRecord) -> tuple[str, tuple[tuple[str, str], ...]]:
    split = (("split", rec.tags.get("test_split", "")),
             ("provenance", rec.tags.get("dataset_provenance", "")))
    return rec.dataset, _fields(rec, ("p_dataset_",)) + split


def _show(key: str, value: str) -> str:
    if key == "provenance" and len(value) > 40:
        value = value[:39] + "…"
    return f"{key}={value}"


def _label(name: str, fields: dict[str, str], keys: list[str]) -> str:
    return name + (f"[{','.join(_show(k, fields.get(k, 'unset')) for k in keys)}]"
                   if keys else "")


def short_labels(configs: set, hide: tuple[str, ...] = ()) -> dict:
    """A short, unique label per configuration: its name, then the fields that differ
    among the configurations of that name (``hide``: shown only when needed to tell
    configurations apart), then " (reduced)" for a reduced split."""
    by_name: dict[str, list] = defaultdict(list)
    for c in configs:
        by_name[c[0]].append(c)
    out = {}
    for name, group in by_name.items():
        fields = [dict(c[1]) for c in group]
        keys = sorted({k for f in fields for k in f})
        differ = [k for k in keys if len({f.get(k, "unset") for f in fields}) > 1]
        main = [k for k in differ if k not in hide]
        reduced = {c: " (reduced)" if "reduced" in dict(c[1]).get("provenance", "") else ""
                   for c in group}
        labels = {c: _label(name, f, main) + reduced[c] for c, f in zip(group, fields,
                                                                          strict=True)}
        clash = Counter(labels.values())
        for c, f in zip(group, fields, strict=True):
            if clash[labels[c]] > 1:
                same = [d for d in group if labels[d] == labels[c]]
                extra = [k for k in hide if len({dict(d[1]).get(k) for d in same}) > 1]
                out[c] = _label(name, f, main + extra) + reduced[c]
            else:
                out[c] = labels[c]
    return out


def config_labels(records: Sequence[RunRecord]) -> dict[str | None, str]:
    """Run id -> the short label of its method configuration among ``records``
    (``interflow[interpolant=linear]``: the method and the settings that differ)."""
    labels = short_labels({method_config(r) for r in records})
    return {r.run_id: labels[method_config(r)] for r in records}


def newest_per_seed(runs: Sequence[RunRecord]) -> tuple[list[RunRecord], int]:
    """The newest run (the last in ``runs``, oldest first) of each (method configuration,
    dataset configuration, seed), in the order given, and how many earlier reruns it
    superseded."""
    newest = {(method_config(r), dataset_config(r), r.seed): i for i, r in enumerate(runs)}
    keep = sorted(newest.values())
    return [runs[i] for i in keep], len(runs) - len(keep)
