"""The plug-in contract, checked for every method and dataset the registry finds."""

from __future__ import annotations

import io

import pytest
import torch

from bench.harness import make_context
from bench.api import RunContext
from bench.api import SolverConfig
from bench.api.errors import DataError
from bench.harness.registry import Registry
from bench.harness.selection import build_params

_REG = Registry()
METHODS = [n for n in _REG.names("method") if _REG.plugins["method"][n].available]
DATASETS = _REG.names("dataset")


def _ctx(seed=0):
    return make_context(seed=seed, solver=SolverConfig(rtol=1e-5, atol=1e-5), max_steps=10,
                      load_dataset=lambda sel: _REG.dataset(sel))


def _method(name, splits, seed=0):
    cls = _REG.get("method", name)
    return cls(build_params(cls.Params, dict(cls.test_params), name), splits, _ctx(seed))


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_contract(name, data_dir):
    cls = _REG.get("dataset", name)
    ds = cls(build_params(cls.Params, dict(cls.test_params), name), data_dir=data_dir)
    try:
        splits = ds.splits()
    except DataError as e:
        pytest.skip(f"no local data for {name}: {e}")
    assert cls.kind in ("toy2d", "tabular", "image")
    assert splits.provenance
    for part in ("train", "val", "test"):
        x = getattr(splits, part)
        assert x.dtype == torch.float32 and x.shape[0] > 0
        assert tuple(x.shape[1:]) == tuple(splits.event_shape)
        assert torch.isfinite(x).all()
    if cls.has_log_prob:
        lp = ds.log_prob(splits.test[:200].double())
        assert lp.shape == (min(200, splits.test.shape[0]),) and torch.isfinite(lp).all()


@pytest.mark.parametrize("name", METHODS)
def test_method_contract(name, toy_splits):
    torch.manual_seed(0)
    method = _method(name, toy_splits)
    batch = toy_splits.train[: method.batch_size()]
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in
              method.modules().items()}
    out = method.train_step(batch, 0)
    assert "loss" in out and torch.isfinite(torch.tensor(float(out["loss"])))
    for key, module in method.modules().items():
        for (pname, p), _old in zip(module.named_parameters(), before[key], strict=True):
            assert p.grad is not None, f"no gradient reaches {key}.{pname}"
            assert torch.isfinite(p.grad).all()
        if before[key]:  # closed-form methods have no parameters to update
            assert any(not torch.equal(p, o) for p, o in zip(module.parameters(), before[key],
                                                              strict=True)), "nothing updated"
    with torch.no_grad():
        samples = method.sample(16)
    assert samples.shape == (16, *toy_splits.event_shape) and torch.isfinite(samples).all()
    if method.likelihood == "none":
        return
    x = toy_splits.test[:32]
    with torch.no_grad():
        ll = method.log_prob(x)
    assert ll.values.shape == (32,) and torch.isfinite(ll.values).all()
    assert ll.kind in ("exact", "bound") and ll.estimator
    # state round trip: a fresh instance with another seed gives identical likelihoods
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # only tensors and plain values
    other = _method(name, toy_splits, seed=1)
    other.load_state_dict(state)
    with torch.no_grad():
        again = other.log_prob(x)
    assert torch.allclose(ll.values, again.values, atol=1e-6, rtol=0)
