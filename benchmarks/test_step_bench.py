"""Cost of one training step: maximum-likelihood CNF vs InterFlow on the same network.

Run with ``pytest benchmarks -p no:xdist --benchmark-only -s``. Both methods train the same
velocity network (``net``/``hidden``/``activation`` below) on the same fixed batch; each
keeps its own defaults otherwise (the CNF: dopri5 with FFJORD's training tolerances
atol 1e-8 / rtol 1e-6, adjoint, one Gaussian Hutchinson probe), including its default
optimiser settings; the step is the harness's (`bench.harness.training.optim.Trainer.step`). At the
end the ratio of median step times (CNF / InterFlow) is printed, and that of the minima.
``BENCH_DEVICE=cuda`` runs it on a GPU.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from bench.api import OptimConfig, Splits
from bench.api.errors import ConfigError, PluginUnavailable
from bench.harness import make_context
from bench.harness.planning.registry import Registry
from bench.harness.planning.selection import build_params, param_fields
from bench.harness.scoring.cost import peak_memory_bytes, reset_peak_memory, synchronize
from bench.harness.training.optim import Trainer
from bench.science.nets import count_parameters

DIM, BATCH = 8, 256
NET = {"net": "concatsquash", "hidden": (64, 64), "activation": "softplus"}  # FFJORD's layers
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")
MEDIANS: dict[str, float] = {}
MINIMA: dict[str, float] = {}
INFO: dict[str, dict] = {}


def _splits() -> Splits:
    g = torch.Generator().manual_seed(0)
    means = 2.0 * torch.randn(4, DIM, generator=g)
    data = means[torch.randint(0, 4, (3 * BATCH,), generator=g)]
    data = data + 0.5 * torch.randn(3 * BATCH, DIM, generator=g)
    return Splits(train=data[:BATCH], val=data[BATCH:2 * BATCH], test=data[2 * BATCH:],
                  event_shape=(DIM,), provenance=f"mixture of 4 Gaussians in {DIM}-D")


def _trainer(name: str) -> Trainer:
    try:
        cls = Registry().get("method", name)
    except (PluginUnavailable, ConfigError) as e:
        pytest.skip(f"{name} not available: {e}")
    fields = param_fields(cls.Params)
    overrides = {k: v for k, v in {**NET, "batch_size": BATCH}.items() if k in fields}
    params = build_params(cls.Params, overrides, name)
    torch.manual_seed(0)
    method = cls(params, _splits(), make_context(device=DEVICE, seed=0))
    return Trainer(method, OptimConfig(**cls.default_optim("tabular")))


@pytest.fixture(scope="module", autouse=True)
def ratio_report():
    yield
    for name, info in INFO.items():
        print(f"\n{name}: median step {MEDIANS.get(name, float('nan')):.4f} s, {info}")
    if "cnf" in MEDIANS and "interflow" in MEDIANS:
        ratio = MEDIANS["cnf"] / MEDIANS["interflow"]
        best = MINIMA["cnf"] / MINIMA["interflow"]
        print(f"\nCNF step / InterFlow step (d={DIM}, batch {BATCH}, {NET['net']} "
              f"{NET['hidden']}, {DEVICE}): {ratio:.1f}x of medians ({best:.1f}x of minima, "
              "the steadier figure on a busy machine)")


@pytest.mark.parametrize("name", ["cnf", "interflow"])
def test_train_step(benchmark, name):
    trainer = _trainer(name)
    method = trainer.method
    batch = _splits().train.to(DEVICE)
    steps = itertools.count()
    outs: list[dict[str, float]] = []

    def step() -> None:
        outs.append(trainer.step(batch, next(steps)))
        synchronize(DEVICE)

    step()  # warm-up (lazy initialisation, allocator)
    reset_peak_memory(DEVICE)
    benchmark(step)  # calibrated: at least 5 rounds and about a second of them
    last = outs[-1]
    info = {
        "parameters": sum(count_parameters(m) for m in method.modules().values()),
        "loss": round(last["loss"], 4),
        "nfe_forward": last.get("nfe_forward", 0.0),
        "nfe_backward": last.get("nfe_backward", 0.0),
        "peak_memory_mb": round(peak_memory_bytes(DEVICE) / 2**20, 1),
    }
    benchmark.extra_info.update(info)
    INFO[name] = info
    if benchmark.stats is not None:  # None under --benchmark-disable
        MEDIANS[name] = benchmark.stats.stats.median
        MINIMA[name] = benchmark.stats.stats.min
    assert all(torch.isfinite(torch.tensor(o["loss"])) for o in outs)
