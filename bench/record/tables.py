"""Recorded runs -> comparison tables (pandas): methods x datasets, mean +- std over seeds.

Every likelihood a run recorded becomes its own row, labelled with its kind (exact or
bound), so DDPM's variational bound never sits in the same row as an exact NLL. Datasets
with a closed-form density get a "truth" row (the true test NLL).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.api.errors import ConfigError

__all__ = ["long_results", "comparison_table", "render", "export"]

SUFFIXES = ("_se", "_nfe", "_gap")


def _dataset_label(row: pd.Series) -> str:
    prov = str(row.get("tags.dataset_provenance", "") or "")
    name = str(row["params.dataset"])
    return f"{name} (reduced)" if "reduced" in prov else name


def long_results(runs: pd.DataFrame, metric: str = "test_nll") -> pd.DataFrame:
    """One row per (run, likelihood): method, dataset, seed, row label, kind, value."""
    if runs.empty or "params.method" not in runs:
        return pd.DataFrame(columns=["method", "dataset", "seed", "row", "kind", "value"])
    runs = runs[runs["status"] == "FINISHED"]
    cols = [c for c in runs.columns if c.startswith(f"metrics.{metric}")
            and not c.endswith(SUFFIXES)]
    rows = []
    for _, r in runs.iterrows():
        ds = _dataset_label(r)
        for c in cols:
            v = r[c]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            key = c[len("metrics."):]
            kind = r.get(f"tags.{key}.kind", "") or ""
            if "hutchinson" in str(r.get(f"tags.{key}.estimator", "") or ""):
                kind += ", hutchinson"  # an unbiased estimate, not the exact divergence
            extra = key[len(metric) + 1:] if key != metric else ""
            label = r["params.method"] + (f" [{extra}]" if extra else "")
            label += f" ({kind})" if kind else ""
            rows.append({"method": r["params.method"], "dataset": ds,
                         "seed": r.get("params.seed"), "row": label, "kind": kind,
                         "value": float(v)})
        truth = r.get(f"metrics.true_{metric}")
        if truth is not None and not (isinstance(truth, float) and math.isnan(truth)):
            rows.append({"method": "truth", "dataset": ds, "seed": r.get("params.seed"),
                         "row": "truth (closed form)", "kind": "exact", "value": float(truth)})
    out = pd.DataFrame(rows)
    if not out.empty:  # the truth does not depend on the method: count it once per seed
        truth = out["method"] == "truth"
        out = pd.concat([out[~truth],
                         out[truth].drop_duplicates(["dataset", "seed"])], ignore_index=True)
    return out


def _cell(values: pd.Series) -> str:
    n = len(values)
    if n == 1:
        return f"{values.iloc[0]:.3f} (1)"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f} ({n})"


def comparison_table(runs: pd.DataFrame, metric: str = "test_nll") -> pd.DataFrame:
    """Rows: method [likelihood] (kind); columns: datasets; cells: mean ± std (count)."""
    long = long_results(runs, metric)
    if long.empty:
        raise ConfigError(f"no finished runs with metric {metric!r} recorded yet; "
                         "run `bench run` first")
    tab = long.groupby(["row", "dataset"])["value"].apply(_cell).unstack("dataset")
    tab = tab.fillna("")
    tab.index.name = f"{metric} (nats, test split)"
    order = sorted(tab.index, key=lambda s: (s.startswith("truth"), s))
    return tab.loc[order]


def render(tab: pd.DataFrame, fmt: str) -> str:
    if fmt == "markdown":
        return tab.to_markdown()
    if fmt == "csv":
        return tab.to_csv()
    if fmt == "latex":
        return tab.to_latex()
    if fmt == "json":
        return tab.to_json(orient="index", indent=1)
    raise ConfigError(f"unknown format {fmt!r}")


def export(tab: pd.DataFrame, path: Path) -> Path:
    fmt = {".md": "markdown", ".csv": "csv", ".tex": "latex", ".json": "json"}.get(path.suffix)
    if fmt is None:
        raise ConfigError(f"--out {path}: use a .md, .csv, .tex or .json file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(tab, fmt) + "\n")
    return path
