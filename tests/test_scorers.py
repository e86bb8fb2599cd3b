"""Scoring as a declared stage: `MetricSpec` (validation, JSON, families), the specs a run
records and the record side reads back, the scorer loop's contract checks, and a metric
added by one plug-in file that reaches `bench run --json`, its result line, `bench table`
and the report without any change to bench/record or bench/cli."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.api import ConfigError, ContractError, MetricSpec, RunRecord, Scorer, Scores
from bench.api.metric_specs import BUILTIN_SPECS, HEADLINE, specs_for
from bench.api.scoring import find_spec, spec_tags, specs_from_tags
from bench.cli.main import main

# a third-party scorer: the whole of what it takes to add a metric
SCORER = '''
import torch

from bench.api import MetricSpec, Scorer, Scores

N = 256


class SquaredNorm(Scorer):
    """Mean squared norm of model samples against the test rows' (vector data)."""

    name = "sq_norm"
    specs = (
        MetricSpec("sq_norm_gap", "squared data units", "lower", "estimate", se=True,
                   headline=True,
                   description="|mean squared norm of 256 samples - that of the test rows|"),
        MetricSpec("sq_norm_test", "squared data units", "", "exact",
                   description="mean squared norm of the test rows"),
    )

    def applies(self, job, splits):
        return len(splits.event_shape) == 1 or "vector data only"

    def score(self, model, splits, ctx):
        torch.manual_seed(ctx.seed)
        with torch.no_grad():
            norms = model.sample(N).flatten(1).double().pow(2).sum(1)
        test = float(splits.test.flatten(1).double().pow(2).sum(1).mean())
        return Scores({"sq_norm_gap": abs(float(norms.mean()) - test),
                       "sq_norm_gap_se": float(norms.std() / N ** 0.5),
                       "sq_norm_test": test}, tags={"sq_norm.samples": str(N)})
'''
TOY = "8gaussians[n_train=300,n_val=60,n_test=120]"
TINY = ["--steps", "20", "--eval-every", "10", "-q", "--n-samples", "0", "--rtol", "1e-3",
        "--atol", "1e-3"]


# specs --------------------------------------------------------------------------------
def test_metric_spec_is_validated_and_round_trips_as_json():
    spec = MetricSpec("fid", "none", "lower", "statistic", headline=True, description="FID")
    assert MetricSpec.from_json(spec.to_json()) == spec
    assert json.loads(spec.to_json()) == {"name": "fid", "headline": True,
                                          "description": "FID"}  # defaults left out
    newer = json.dumps({"name": "x", "better": "higher", "field_of_a_newer_bench": 1})
    assert MetricSpec.from_json(newer) == MetricSpec("x", better="higher")
    for bad in ({"name": "a b"}, {"name": "x", "better": "up"}, {"name": "x", "kind": "?"},
                {"name": "x", "aggregate": "sum"}, {"name": "x", "variants": "seed"},
                {"name": "x", "description": "two\nlines"}):
        with pytest.raises(ContractError):
            MetricSpec(**bad)
    for text in ("{not json", "[1]", '{"unit": "nats"}'):
        with pytest.raises(ContractError):
            MetricSpec.from_json(text)


def test_find_spec_covers_se_companions_and_families():
    s = BUILTIN_SPECS
    cases = {"test_nll": "test_nll", "test_nll_se": "test_nll", "test_nll_elbo": "test_nll",
             "test_nll_elbo_se": "test_nll", "test_nll_elbo_nfe": "test_nll_nfe",
             "test_nll_gap_se": "test_nll_gap", "test_bpd_elbo_se": "test_bpd",
             "mmd2.ode": "mmd2", "mmd2.ode_se": "mmd2", "mmd2_floor_se": "mmd2_floor",
             "sample_nfe.sde": "sample_nfe", "fid": "fid"}
    assert {k: find_spec(k, s).name for k in cases} == cases
    # no spec: not a scorer's figure (training's), or a companion that is not declared
    assert find_spec("train_seconds", s) is None and find_spec("fid_se", s) is None
    assert HEADLINE == ("test_nll", "test_bpd", "fid", "kid")


def test_recorded_spec_tags_fit_a_tracker_and_override_the_builtin_ones():
    """MLflow's sink cuts a tag at 5000 characters (bench.record.mlflow_sink): every
    built-in spec's JSON fits with room to spare; a record's own spec wins over the
    built-in one of its name, and a tag that does not parse leaves the built-in one."""
    tags = spec_tags(BUILTIN_SPECS.values())
    assert max(len(v) for v in tags.values()) < 1000
    assert specs_from_tags(tags) == BUILTIN_SPECS
    flipped = MetricSpec("fid", better="higher", headline=True)
    rec = RunRecord("r1", "m-d-s0", tags={**spec_tags([flipped]),
                                          "bench.spec.kid": '{"name": "kid", "better": 7}'})
    specs = specs_for([rec])
    assert specs["fid"] == flipped and specs["kid"] == BUILTIN_SPECS["kid"]


def test_tables_read_unit_and_direction_from_the_record():
    from bench.record.tables import comparison_table

    spec = MetricSpec("wall", "furlongs", "higher", "estimate", se=True)
    recs = [RunRecord(f"r{s}", f"m-d-s{s}", params={"method": "m", "dataset": "d", "seed": s},
                      metrics={"wall": 1.0 + s, "wall_se": 0.1}, tags=spec_tags([spec]),
                      status="FINISHED") for s in (0, 1)]
    tab, _ = comparison_table(recs, "wall")
    assert tab.index.name == ("wall (furlongs, ± se for one seed, std over seeds else, "
                              "higher is better)")
    assert tab.iloc[0, 0] == "1.500 ± 0.707 (2)"  # mean ± std of 1 and 2 over seeds
    one, _ = comparison_table(recs[:1], "wall")
    assert one.iloc[0, 0] == "1.000 ± 0.100 (1)"  # one seed: its own se


# the scorer loop ----------------------------------------------------------------------
class _Rec:
    def __init__(self):
        self.metrics, self.tags, self.artifacts = {}, {}, []

    def log_metrics(self, m):
        self.metrics.update(m)

    def set_tags(self, t):
        self.tags.update(t)

    def log_artifact(self, p):
        self.artifacts.append(p)


class _Declared(Scorer):
    name = "declared"
    specs = (MetricSpec("a", se=True),)

    def score(self, model, splits, ctx):
        return Scores({"a": 1.0, "a_se": 0.5}, {"a.estimator": "toy"})


class _Undeclared(_Declared):
    name = "undeclared"

    def score(self, model, splits, ctx):
        return Scores({"a": 1.0, "b": 2.0})


class _NotScores(_Declared):
    name = "not_scores"

    def score(self, model, splits, ctx):
        return {"a": 1.0}


class _Skips(_Declared):
    name = "skips"

    def applies(self, job, splits):
        return "needs images"


def _ctx(toy_splits, tmp_path):
    from bench.api import Job, ScoreContext

    job = Job("m", object, None, "d", object, None)
    return ScoreContext(job, None, tmp_path)


def test_run_scorers_records_specs_and_checks_the_contract(toy_splits, tmp_path):
    from bench.harness.scoring.scorers import run_scorers

    rec, ctx = _Rec(), _ctx(toy_splits, tmp_path)
    run_scorers([_Declared(), _Skips()], None, toy_splits, ctx, rec)
    assert rec.metrics == {"a": 1.0, "a_se": 0.5}
    assert rec.tags["a.estimator"] == "toy"
    assert MetricSpec.from_json(rec.tags["bench.spec.a"]) == _Declared.specs[0]
    assert rec.tags["scorer.skips.skipped"] == "needs images" and "bench.spec.b" not in rec.tags
    with pytest.raises(ContractError, match="recorded b, which its specs do not declare"):
        run_scorers([_Undeclared()], None, toy_splits, ctx, _Rec())
    with pytest.raises(ContractError, match="returned dict, not bench.api.Scores"):
        run_scorers([_NotScores()], None, toy_splits, ctx, _Rec())


def test_scorers_of_puts_builtins_first_and_refuses_a_taken_name():
    import dataclasses

    from bench.api import Job
    from bench.harness.scoring.scorers import BUILTIN_SCORERS, LikelihoodScorer, scorers_of

    job = Job("m", object, None, "d", object, None, scorers=(_Declared, LikelihoodScorer))
    names = [s.name for s in scorers_of(job)]
    assert names == [c.name for c in BUILTIN_SCORERS] + ["declared"]

    class Clash(_Declared):
        name = "likelihood"

    with pytest.raises(ConfigError, match="scorer name 'likelihood' is taken twice"):
        scorers_of(dataclasses.replace(job, scorers=(Clash,)))


# one file adds a metric, end to end ---------------------------------------------------
@pytest.fixture()
def plugin_dir(tmp_path) -> Path:
    folder = tmp_path / "plug" / "scorers"
    folder.mkdir(parents=True)
    (folder / "sq_norm.py").write_text(textwrap.dedent(SCORER))
    return tmp_path / "plug"


def test_a_plugin_scorer_file_adds_a_metric_everywhere(plugin_dir, tmp_path, monkeypatch,
                                                       tracking_uri, registry, data_dir):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    plug = ["--plugins", str(plugin_dir)]
    listed = runner.invoke(main, [*plug, "list"])
    assert listed.exit_code == 0, listed.output
    scorers = listed.output.split("scorers:\n")[1].splitlines()
    assert any(line.split()[0] == "sq_norm" for line in scorers)
    assert {"likelihood", "sample_metrics", "image_samples", "sample_plot"} <= {
        line.split()[0] for line in scorers if line.startswith("  ")}

    run = ["run", "--tracking-uri", tracking_uri, "--results-dir", str(tmp_path / "results"),
           "-m", "interflow[hidden=(8,8),batch_size=16]", "-d", TOY, *TINY]
    res = runner.invoke(main, [*plug, *run, "--json"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    (out,) = json.loads(res.stdout)
    test = registry.dataset(TOY, data_dir).splits().test.flatten(1).double()
    # the same float64 mean of 120 squared norms, computed by the same ops: equal to
    # rounding (relative 1e-12 >> 120 * 2^-53 ~ 1.3e-14, the summation's worst case)
    assert out["sq_norm_test"] == pytest.approx(float(test.pow(2).sum(1).mean()), rel=1e-12)
    assert out["sq_norm_gap"] >= 0 and out["sq_norm_gap_se"] > 0
    line = runner.invoke(main, [*plug, *run, "--seeds", "1"]).output
    assert "sq_norm_gap " in line and "squared data units" in line

    from bench.record.mlflow_sink import load_records

    recs = load_records(tracking_uri)
    assert all(r.tags["sq_norm.samples"] == "256" for r in recs)
    assert all("sq_norm_gap" in specs_for([r]) for r in recs)  # the spec travelled
    tab = runner.invoke(main, ["table", "--tracking-uri", tracking_uri, "--metric",
                               "sq_norm_gap"])
    assert tab.exit_code == 0, tab.output
    assert ("sq_norm_gap (squared data units, ± se for one seed, std over seeds else, "
            "lower is better)") in tab.output
    assert "interflow" in tab.output and "(2)" in tab.output  # the two runs: one config
    rep = runner.invoke(main, ["report", "--tracking-uri", tracking_uri, "--out",
                               str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "### sq_norm_gap" in md and "- sq_norm_gap: |mean squared norm of 256" in md
