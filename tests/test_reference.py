"""Published numbers (results/reference/*.csv) and `bench table --reference`."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from bench.api import ConfigError, DataError, RunRecord
from bench.record.reference import (
    COMPARABLE_ROW,
    DAGGER,
    DATA_ROW,
    REFERENCE_DIR,
    Published,
    load_reference,
    read_reference_csv,
    reference_table,
)

HEADER = "method,dataset,metric,value,std,split,kind,estimator,citation,status,note\n"
GOOD = "M,power,test_nll,-0.5,,full,exact,ode,Someone 2020 Table 2,checked: Table 2,\n"
REDUCED = "MAF MINIBOONE pre-split (train 2956, val 328, test 3648 rows; reduced: train/val cut)"


def test_committed_csvs_load_and_every_row_has_a_citation_and_a_status():
    rows = load_reference()
    assert {p.source.split(":")[0] for p in rows} >= {"tabular.csv", "images.csv"}
    for p in rows:
        assert p.citation and (p.status.startswith("checked: ") or
                               p.status.startswith("not checked")), p.source
    by = {(p.method, p.dataset, p.metric): p for p in rows}
    ffjord = by[("FFJORD", "miniboone", "test_nll")]  # NLL in nats: positive on MINIBOONE
    assert ffjord.value == pytest.approx(10.43) and not ffjord.checked
    assert by[("FFJORD", "bsds300", "test_nll")].value < 0  # sign: NLL, not log-likelihood
    simple, fixed = "DDPM [L_simple]", "DDPM [L, fixed isotropic Sigma]"  # Ho et al. Table 1
    assert by[(simple, "cifar10", "fid")].checked and by[(simple, "cifar10", "fid")].value == 3.17
    assert by[(simple, "cifar10", "test_bpd")].value == 3.75  # L_simple: better FID, worse bound
    assert by[(fixed, "cifar10", "test_bpd")].value == 3.70
    assert all(by[(m, "cifar10", "test_bpd")].checked for m in (simple, fixed))
    assert {p.kind for p in rows if p.metric == "test_bpd" and "DDPM" in p.method} == {"bound"}
    assert all(p.value > 0 for p in rows if p.metric in ("test_bpd", "fid"))
    with open(REFERENCE_DIR / "tabular.csv") as f:  # one row per (method, dataset, metric)
        assert len(list(csv.DictReader(f))) == len(
            [p for p in rows if p.source.startswith("tabular.csv")])


@pytest.mark.parametrize("body, message", [
    (GOOD.replace("-0.5", "abc"), r"bad\.csv:3: value 'abc' is not a number"),
    (GOOD.replace("-0.5", "nan"), "not finite"),
    (GOOD.replace("test_nll", "nll"), "metric 'nll' is not one of"),
    (GOOD.replace(",exact,", ",maybe,"), "kind 'maybe' is not one of"),
    (GOOD.replace("checked: Table 2", "checked:"), "status must be"),
    (GOOD.replace("checked: Table 2", "yes"), "status must be"),
    (GOOD.replace("Someone 2020 Table 2", ""), "empty citation"),
    (GOOD.replace(",,full", ",-1,full"), "std -1.0 is negative"),
    (GOOD.rstrip("\n") + ",extra\n", "more fields than the header"),
])
def test_malformed_rows_give_one_clear_line(tmp_path: Path, body, message):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + GOOD + body)
    with pytest.raises(DataError, match=message):
        read_reference_csv(path)


def test_malformed_files_and_folders(tmp_path: Path):
    (tmp_path / "h.csv").write_text(HEADER.replace(",status", ",state") + GOOD)
    with pytest.raises(DataError, match="missing status; unknown state"):
        read_reference_csv(tmp_path / "h.csv")
    (tmp_path / "h.csv").write_text(HEADER)
    with pytest.raises(DataError, match="no rows"):
        read_reference_csv(tmp_path / "h.csv")
    with pytest.raises(DataError, match="no reference CSVs"):
        load_reference(tmp_path / "empty")
    (tmp_path / "a.csv").write_text(HEADER + GOOD)
    (tmp_path / "h.csv").write_text(HEADER + GOOD.replace("-0.5", "-0.6"))
    with pytest.raises(DataError, match=r"h\.csv:2: .*already given at a\.csv:2"):
        load_reference(tmp_path)
    (tmp_path / "h.csv").unlink()
    (p,) = load_reference(tmp_path)
    assert p.checked and p.std is None and p.cell() == "-0.50 ✓"


def _rec(dataset, value, seed=0, prov="MAF full", split="MAF test split (3648 rows)",
         method="interflow", run_id=None) -> RunRecord:
    params = {"method": method, "dataset": dataset, "seed": seed, "steps": 100}
    tags = {"test_nll.kind": "exact", "test_nll.estimator": "ode exact", "test_split": split,
            "dataset_provenance": prov, "split.train": f"{dataset} train rows"}
    return RunRecord(run_id or f"{method}-{dataset}-{seed}-{prov[:5]}", "r", params, tags,
                     {"test_nll": value}, status="FINISHED")


PUBS = [Published("FFJORD", "miniboone", "test_nll", 10.43, None, "full MAF split", "exact",
                  "ode", "Grathwohl 2019 Table 2", "not checked", "", "t.csv:2"),
        Published("MAF", "miniboone", "test_nll", 11.75, 0.44, "full MAF split", "exact",
                  "cov", "Papamakarios 2017", "checked: Table 1", "", "t.csv:3"),
        Published("FFJORD", "power", "test_nll", -0.46, None, "full MAF split", "exact",
                  "ode", "Grathwohl 2019 Table 2", "not checked", "", "t.csv:4")]


def test_our_number_sits_beside_the_published_one_with_the_reduced_flag():
    recs = [_rec("miniboone", 18.0, 0, REDUCED), _rec("miniboone", 20.0, 1, REDUCED),
            _rec("miniboone", 12.0, 0), _rec("checkerboard", 3.0)]
    tab, notes = reference_table(recs, "test_nll", PUBS)
    assert list(tab.columns) == ["miniboone", "miniboone (reduced)", "power"]
    assert tab.loc["interflow (exact)", "miniboone (reduced)"] == "19.000 ± 1.414 (2)"
    assert tab.loc["interflow (exact)", "miniboone"] == "12.000 (1)"
    for col in ("miniboone", "miniboone (reduced)"):  # the published numbers in both
        assert tab.loc["FFJORD [published]", col] == f"10.43{DAGGER}"
        assert tab.loc["MAF [published]", col] == "11.75 ± 0.44 ✓"
    assert tab.loc[COMPARABLE_ROW, "miniboone (reduced)"].startswith(
        "NO - reduced: not comparable with the full-data published number")
    assert tab.loc[COMPARABLE_ROW, "miniboone"].startswith("yes")
    assert tab.loc[DATA_ROW, "miniboone"] == "miniboone train rows; MAF test split (3648 rows)"
    assert tab.loc["interflow (exact)", "power"] == "" and tab.loc[COMPARABLE_ROW, "power"] == ""
    assert "our runs on checkerboard: no published test_nll to compare" in notes
    assert any(n.startswith("published FFJORD (miniboone, power): exact") for n in notes)
    assert any("never a pass/fail threshold" in n for n in notes)
    assert tab.index.name == "test_nll (nats, test split, lower is better)"


def test_a_scored_subset_or_a_non_standard_split_is_not_comparable():
    recs = [_rec("miniboone", 11.0, split="MAF test split (3648 rows), first 100 of 3648 rows"),
            _rec("power", 1.0, prov="power test images, not the standard train/test split")]
    tab, _ = reference_table(recs, "test_nll", PUBS)
    assert set(tab.columns) == {"miniboone (not standard)", "power (not standard)"}
    assert tab.loc[COMPARABLE_ROW, "power (not standard)"].startswith("NO - not the standard")
    assert tab.loc["FFJORD [published]", "power (not standard)"] == f"-0.46{DAGGER}"


def test_no_runs_and_no_published_metric():
    tab, _ = reference_table([], "test_nll", PUBS)
    assert list(tab.index) == ["FFJORD [published]", "MAF [published]"]
    assert list(tab.columns) == ["miniboone", "power"]
    with pytest.raises(ConfigError, match="no published numbers for metric 'train_seconds'"):
        reference_table([], "train_seconds", PUBS)


def test_bench_table_reference_cli(tracking_uri):
    from click.testing import CliRunner

    from bench.cli.main import main
    from bench.record.mlflow_sink import MlflowSink

    for rec in (_rec("miniboone", 18.0, 0, REDUCED), _rec("miniboone", 20.0, 1, REDUCED)):
        sink = MlflowSink(tracking_uri, "t")
        sink.start(rec.name, rec.params, rec.tags)
        sink.log_metrics(rec.metrics)
        sink.end("FINISHED")
    runner = CliRunner()
    args = ["table", "--tracking-uri", tracking_uri, "--experiment", "t"]
    res = runner.invoke(main, [*args, "--reference", "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert "miniboone (reduced)" in res.stdout and "19.000 ± 1.414 (2)" in res.stdout
    assert f"10.43{DAGGER}" in res.stdout  # FFJORD, from results/reference/tabular.csv
    assert "not comparable with the full-data published number" in res.stdout
    assert "never a pass/fail threshold" in res.stderr
    plain = runner.invoke(main, args)  # the default table is unchanged: no published rows
    assert plain.exit_code == 0 and "published" not in plain.stdout
    assert "interflow (exact)" in plain.stdout
    bad = runner.invoke(main, [*args, "--reference", "--metric", "train_seconds"])
    assert bad.exit_code == 2 and "no published numbers" in bad.stderr
