"""The Python API (`bench.lab`): run a job and get its record; load a finished run (by run
id, checkpoint path or record) as a model that reproduces the recorded test NLL."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench import lab
from bench.api import ConfigError, SolverConfig

TOY = "8gaussians[n_train=500,n_val=100,n_test=200]"
METHOD = "interflow[hidden=(16,16),batch_size=128]"
SOLVER = SolverConfig(rtol=1e-4, atol=1e-4)  # the run's and the reload's: same numbers
RUN = dict(steps=30, eval_every=10, n_samples=0, solver=SOLVER)


def _test_split(registry) -> torch.Tensor:
    from bench.harness.planning.plan import resolve_dataset

    cls, params = resolve_dataset(registry, TOY)
    return cls(params).splits().test


def _nll(model, x: torch.Tensor) -> float:
    return -model.log_prob(x).values.mean().item()


def test_run_into_mlflow_then_load_by_run_id_and_by_path(tracking_uri, registry, one_thread,
                                                         tmp_path, capfd):
    from bench.record.mlflow_sink import MlflowSink, find_checkpoint, load_records

    sink = MlflowSink(tracking_uri, artifact_root=tmp_path / "artifacts")
    rec = lab.run(METHOD, TOY, seed=3, sink=sink, registry=registry, **RUN)
    assert rec.status == "FINISHED", rec.failure
    assert rec.params["p_method_hidden"] == (16, 16) and rec.seed == 3
    (stored,) = load_records(tracking_uri)
    assert stored.run_id == rec.run_id and stored.status == "FINISHED"
    assert stored.metrics["test_nll"] == pytest.approx(rec.metrics["test_nll"], rel=1e-12)

    test = _test_split(registry)
    by_id = lab.load(rec.run_id, tracking_uri=tracking_uri, solver=SOLVER, registry=registry)
    path = find_checkpoint(tracking_uri, rec.run_id)
    assert path.is_file() and path.name == "checkpoint.pt"
    by_path = lab.load(path, solver=SOLVER, registry=registry)
    for model in (by_id, by_path):
        assert model.method.name == "interflow" and model.checkpoint["method"] == "interflow"
        assert _nll(model, test) == pytest.approx(rec.metrics["test_nll"], abs=1e-5)

    # the density at time t: at t=0 the flow's base, N(0, I); at t=1 the learnt data density
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    base = -0.5 * (x * x).sum(1) - math.log(2 * math.pi)
    assert torch.allclose(by_id.log_prob(x, t=0.0).values, base, atol=1e-5)
    assert not torch.allclose(by_id.log_prob(x).values, base, atol=1e-2)
    samples = by_id.sample(7)
    assert samples.shape == (7, 2) and torch.isfinite(samples).all()
    assert capfd.readouterr().out == ""  # nothing of MLflow (or bench) on stdout


def test_run_into_memory_and_load_the_record(registry, one_thread):
    rec = lab.run(METHOD, TOY, registry=registry, **RUN)  # default sink: MemorySink
    assert rec.status == "FINISHED", rec.failure
    ckpt = Path(rec.artifacts["checkpoint.pt"])
    assert ckpt.is_file()  # copied out of the run's scratch folder
    assert [s for s, _ in rec.history["loss"]] == list(range(1, 31))
    assert [s for s, _ in rec.history["val_nll"]] == [10, 20, 30]
    model = lab.load(rec, solver=SOLVER, registry=registry)
    assert _nll(model, _test_split(registry)) == pytest.approx(rec.metrics["test_nll"],
                                                               abs=1e-5)
    assert lab.load(ckpt.parent, solver=SOLVER, registry=registry).path == ckpt


def test_bad_settings_and_sources_are_one_line_errors(registry, tracking_uri, tmp_path,
                                                      monkeypatch):
    with pytest.raises(ConfigError, match="nope"):
        lab.run(METHOD, TOY, nope=1, registry=registry, **RUN)
    with pytest.raises(ConfigError, match="interpolant"):
        lab.run(METHOD, TOY, interpolant="zigzag", registry=registry, **RUN)
    with pytest.raises(ConfigError, match="dataset.nope"):
        lab.run(METHOD, TOY, dataset__nope=1, registry=registry, **RUN)
    with pytest.raises(ConfigError, match="no checkpoint file"):
        lab.load(tmp_path / "missing.pt", registry=registry)
    with pytest.raises(ConfigError, match="no run"):
        lab.load("0" * 32, tracking_uri=tracking_uri, registry=registry)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="give tracking_uri"):
        lab.load("0" * 32, registry=registry)
    assert not (tmp_path / "results").exists()  # a lookup creates no store
