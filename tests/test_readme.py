"""The plug-in examples (the README's method, docs/extending.md's dataset) are complete:
loaded from --plugins, they train with the harness's Trainer and reach the closed-form
maximum-likelihood fit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from bench.api import OptimConfig
from bench.harness import make_context
from bench.harness.planning.registry import Registry
from bench.harness.planning.selection import build_params
from bench.harness.training.optim import Trainer

ROOT = Path(__file__).resolve().parents[1]
#: the pages with plug-in examples: the README's method, the docs' dataset
PAGES = [ROOT / "README.md", ROOT / "docs" / "extending.md"]


def _blocks() -> dict[str, str]:
    text = "\n".join(p.read_text() for p in PAGES)
    found = {}
    for m in re.finditer(r"\(`(methods|datasets)/(\w+)\.py`\):\n\n```python\n(.*?)```", text,
                         re.S):
        found[f"{m.group(1)}/{m.group(2)}.py"] = m.group(3)
    return found


@pytest.fixture()
def plugins(tmp_path):
    blocks = _blocks()
    assert set(blocks) == {"methods/diag_gaussian.py", "datasets/ring.py"}
    for rel, code in blocks.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text(code)
    return Registry(extra_dirs=[tmp_path])


def test_readme_examples_work(plugins):
    ring_cls = plugins.get("dataset", "ring")
    ds = ring_cls(build_params(ring_cls.Params, ring_cls.test_params, "ring"))
    splits = ds.splits()
    assert splits.train.shape == (240, 2)
    cls = plugins.get("method", "diag_gaussian")
    m = cls(build_params(cls.Params, {}, "diag"), splits, make_context())
    assert m.default_optim("toy2d") == {"lr": 1e-2}
    trainer = Trainer(m, OptimConfig(lr=0.05))
    assert not any(hasattr(m, a) for a in ("opt", "optimizer", "train_step"))
    before = -m.log_prob(splits.test).values.mean()
    for step in range(300):
        trainer.step(splits.train, step)
    after = -m.log_prob(splits.test).values.mean()
    assert after < before - 0.1
    var = splits.train.var(0, unbiased=False)  # the MLE of a diagonal Gaussian
    assert torch.allclose(m.net["log_sigma"].exp() ** 2, var, rtol=0.05)
