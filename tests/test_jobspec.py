"""`JobSpec`: a planned `Job` -> spec -> JSON -> spec -> `Job` gives back the planned job
(equal, field by field) with the same job key, for every plug-in pair the plan accepts;
a spec that names something unknown or holds a value of the wrong type is one ConfigError.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from bench.api import ConfigError, Execution, JobSpec, SampleEval, SolverConfig
from bench.harness.planning.jobspec import from_spec, to_spec
from bench.harness.planning.plan import plan_jobs
from bench.harness.training.runfolder import job_key

# settings off their defaults, so that a field the spec dropped would show
SOLVER = SolverConfig(method="bosh3", rtol=1e-4, atol=2e-4, divergence="hutchinson",
                      n_probes=3, val_tol=1e-3)
SETTINGS = dict(steps=7, max_seconds=30.0, eval_every=3, patience=2, val_rows=50,
                test_rows=40, eval_at_seconds=(1.0, 2.5), solver=SOLVER, n_samples=11,
                sample_eval=SampleEval(samples=4, reference="val", grid=0),
                execution=Execution(precision="bf16", channels_last=True))


def _round_trip(job, registry):
    spec = to_spec(job, key=job_key(job))
    again = JobSpec.from_json(spec.to_json())
    assert again == spec
    return from_spec(again, registry)


def _pairs(registry):
    def names(kind):
        return sorted(n for n, p in registry.plugins[kind].items() if p.available)

    return [(m, d) for m in names("method") for d in names("dataset")]


def test_every_plannable_pair_round_trips(registry, tmp_path):
    planned = 0
    for method, dataset in _pairs(registry):
        try:
            (job,) = plan_jobs(registry, [method], [dataset], [5], [("lr", "2")],
                               data_dir=tmp_path, **SETTINGS)
        except ConfigError as exc:
            assert "cannot model" in str(exc), exc  # only unsupported pairs are skipped
            continue
        job = dataclasses.replace(job, work_dir=tmp_path / "runs" / job_key(job),
                                  checkpoint_every=9, checkpoint_minutes=0.5, resume="never")
        back = _round_trip(job, registry)
        assert back == job, (method, dataset)
        assert job_key(back) == job_key(job)
        assert back.optim.lr == 2.0 and isinstance(back.optim.lr, float)
        planned += 1
    assert planned >= 10  # the built-in plug-ins make at least ten pairs


def test_tuples_refs_and_none_survive_json(registry, tmp_path):
    (job,) = plan_jobs(registry, ["interflow[hidden=(16,8),base=gaussian[dim=2]]"],
                       ["8gaussians[n_train=300]"], data_dir=tmp_path)
    spec = to_spec(job)
    text = spec.to_json()
    assert json.loads(text)["method_params"]["hidden"] == [16, 8]  # plain JSON, no pickles
    back = _round_trip(job, registry)
    assert back == job and back.method_params.hidden == (16, 8)
    assert set(back.refs) == {"base"} and back.refs["base"][0].name == "gaussian"
    assert back.budget.val_rows is None and back.data_dir == tmp_path


@pytest.mark.parametrize(("change", "words"), [
    ({"method": "nosuch"}, "nosuch"),
    ({"method_params": {"hiddenn": [4]}}, "hiddenn"),
    ({"method_params": {"hidden": "16"}}, "hidden"),
    ({"budget": {"steps": 0}}, "--steps"),
    ({"optim": {"lr": True}}, "lr"),
    ({"solver": {"divergence": "approx"}}, "divergence"),
])
def test_bad_spec_is_one_config_error(registry, tmp_path, change, words):
    (job,) = plan_jobs(registry, ["interflow"], ["8gaussians"], data_dir=tmp_path)
    spec = dataclasses.replace(to_spec(job), **change)
    with pytest.raises(ConfigError, match=words):
        from_spec(JobSpec.from_json(spec.to_json()), registry)


@pytest.mark.parametrize("text", ["[1]", "{\"method\": \"a\"}", "not json",
                                  "{\"method\": \"a\", \"dataset\": \"b\", \"x\": 1}"])
def test_from_json_refuses_what_is_not_a_spec(text):
    with pytest.raises(ConfigError):
        JobSpec.from_json(text)


SCORER = '''
from bench.api.scoring import MetricSpec, Scorer, Scores


class SampleNorm(Scorer):
    name = "sample_norm"
    specs = (MetricSpec("sample_sq_norm", better="lower", kind="statistic"),)

    def score(self, model, splits, ctx):
        return Scores({"sample_sq_norm": 0.0})
'''


def test_plugin_scorers_travel_by_name(tmp_path):
    from bench.harness.planning.registry import Registry

    (tmp_path / "scorers").mkdir()
    (tmp_path / "scorers" / "norm.py").write_text(SCORER)
    registry = Registry(extra_dirs=[tmp_path])
    (job,) = plan_jobs(registry, ["interflow"], ["8gaussians"], data_dir=tmp_path)
    assert [c.name for c in job.scorers] == ["sample_norm"]
    spec = to_spec(job, (tmp_path,), key=job_key(job))
    assert spec.scorers == ("sample_norm",) and spec.plugin_dirs == (str(tmp_path),)
    back = _round_trip(job, registry)
    assert back == job and job_key(back) == job_key(job)
