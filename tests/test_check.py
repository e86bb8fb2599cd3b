"""``bench check``: passes on the README's plug-in examples and names the failed property on
broken plug-ins (the faults of issue 8: wrong-shape log_prob, no trainable modules, a Params
default of the wrong type, float64 data, NaN rows in a split)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli.check import check

ROOT = Path(__file__).resolve().parents[1]
#: the pages with plug-in examples: the README's method, the docs' dataset
PAGES = [ROOT / "README.md", ROOT / "docs" / "extending.md"]

# the README's examples, as a plug-in author would write them from it
METHOD = '''
"""A diagonal Gaussian fitted by maximum likelihood."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.api import LogLikelihood, Method


@dataclass
class Params:
    batch_size: int = 256


class DiagGaussian(Method):
    """Diagonal Gaussian, maximum likelihood."""

    name = "diag_gaussian"
    Params = Params
    test_params = {"batch_size": 32}
    optim = {"lr": 1e-2}

    def __init__(self, params, splits, ctx):
        super().__init__(params, splits, ctx)
        d = splits.dim
        self.net = torch.nn.ParameterDict({
            "mu": torch.nn.Parameter(torch.zeros(d)),
            "log_sigma": torch.nn.Parameter(torch.zeros(d)),
        })

    def modules(self):
        return {"net": self.net}

    def _log_prob(self, x):
        z = (x.flatten(1) - self.net["mu"]) / self.net["log_sigma"].exp()
        return (-0.5 * z**2 - self.net["log_sigma"] - 0.5 * math.log(2 * math.pi)).sum(1)

    def loss(self, batch, step):
        return -self._log_prob(batch).mean()

    def sample(self, n):
        z = torch.randn(n, self.net["mu"].numel())
        x = self.net["mu"] + self.net["log_sigma"].exp() * z
        return x.reshape(n, *self.event_shape)

    def log_prob(self, x):
        return LogLikelihood(self._log_prob(x), kind="exact", estimator="closed form")
'''

DATASET = '''
"""A noisy unit circle."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.api import Dataset, Splits


@dataclass
class Params:
    n: int = 3000
    noise: float = 0.1
    data_seed: int = 0


class Ring(Dataset):
    """Points on the unit circle plus Gaussian noise."""

    name = "ring"
    kind = "toy2d"
    Params = Params
    test_params = {"n": 300}

    def sample(self, n, generator=None):
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        theta = torch.rand(n, generator=g) * 2 * math.pi
        x = torch.stack([theta.cos(), theta.sin()], 1)
        return x + self.params.noise * torch.randn(n, 2, generator=g)

    def load(self):
        g = torch.Generator().manual_seed(self.params.data_seed)
        n = self.params.n
        x = self.sample(n, g)
        a, b = int(0.8 * n), int(0.9 * n)
        return Splits(x[:a], x[a:b], x[b:], (2,), "synthetic ring")
'''


def _run(tmp_path: Path, text: str, *args: str):
    path = tmp_path / "plugin.py"
    path.write_text(text)
    return CliRunner().invoke(check, [str(path), *args], catch_exceptions=False)


def _readme_blocks() -> dict[str, str]:
    found = {}
    for m in re.finditer(r"\(`(methods|datasets)/(\w+)\.py`\):\n\n```python\n(.*?)```",
                         "\n".join(p.read_text() for p in PAGES), re.S):
        found[f"{m.group(1)}/{m.group(2)}.py"] = m.group(3)
    return found


@pytest.mark.parametrize("text, kind, name", [(METHOD, "method", "diag_gaussian"),
                                              (DATASET, "dataset", "ring")])
def test_examples_pass(tmp_path, one_thread, text, kind, name):
    res = _run(tmp_path, text)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith(f"{kind} {name!r}")
    assert not any(line.startswith("FAIL") for line in lines)
    passed = {line.split()[1] for line in lines if line.startswith("PASS ")}
    if kind == "method":
        assert {"params.defaults", "modules.trainable", "loss.scalar", "step.gradients",
                "step.updates", "sample.shape", "log_prob.shape", "log_prob.label",
                "state.round_trip"} <= passed
    else:
        assert {"splits.dtype", "splits.finite", "splits.event_shape", "provenance"} <= passed


def test_readme_examples_pass(tmp_path, one_thread):
    blocks = _readme_blocks()
    assert set(blocks) == {"methods/diag_gaussian.py", "datasets/ring.py"}, set(blocks)
    for rel, code in blocks.items():
        res = _run(tmp_path, code)
        assert res.exit_code == 0, f"{rel}:\n{res.output}"


BROKEN = [
    # (file, replace, by, the FAIL line expected)
    (METHOD, "LogLikelihood(self._log_prob(x),", "LogLikelihood(self._log_prob(x)[:, None],",
     "FAIL log_prob.shape: diag_gaussian.log_prob(x) returned values of shape (n, 1) for a "
     "batch of n rows; expected (n,)"),
    (METHOD, 'return {"net": self.net}', "return {}",
     "FAIL modules.trainable: diag_gaussian has no trainable parameters: modules() is empty"),
    (METHOD, "batch_size: int = 256", 'batch_size: int = "256"',
     "FAIL params.defaults: parameter 'batch_size' is declared int but its default is "
     "'256' (str)"),
    (METHOD, "def loss(self, batch, step):", "def _no_loss(self, batch, step):",
     "FAIL import: abstract methods not implemented: loss"),
    (METHOD, "return -self._log_prob(batch).mean()", "return -self._log_prob(batch)",
     "FAIL loss.scalar: diag_gaussian.loss(batch, step) has shape (n,) for a batch of n rows; "
     "expected a scalar (shape ())"),
    (DATASET, "x = self.sample(n, g)", "x = self.sample(n, g).double()",
     "FAIL splits.dtype: the train split is float64; Dataset.load must return float32"),
    (DATASET, "a, b = int(0.8 * n), int(0.9 * n)",
     "a, b = int(0.8 * n), int(0.9 * n)\n        x[a + 1:a + 4, 0] = float('nan')",
     "FAIL splits.finite: 3 rows of the val split are not finite (NaN or inf)"),
]


@pytest.mark.parametrize("text, old, new, line", BROKEN,
                         ids=["log_prob_shape", "no_modules", "default_type", "abstract",
                              "loss_shape", "float64", "nan_rows"])
def test_broken_plugin_names_the_failed_property(tmp_path, one_thread, text, old, new, line):
    assert old in text
    res = _run(tmp_path, text.replace(old, new))
    assert res.exit_code == 1, res.output
    assert line in res.output.splitlines(), res.output
    assert "checks passed" in res.output.splitlines()[-1]


def test_json_and_registered_name(tmp_path, one_thread):
    res = _run(tmp_path, METHOD.replace("return {\"net\": self.net}", "return {}"), "--json")
    assert res.exit_code == 1
    (rep,) = json.loads(res.output)
    assert rep["name"] == "diag_gaussian" and rep["kind"] == "method" and not rep["ok"]
    failed = [c["name"] for c in rep["checks"] if not c["ok"]]
    assert failed == ["modules.trainable"]
    assert len(rep["version"]) == 12
    res = CliRunner().invoke(check, ["checkerboard"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "PASS log_prob.finite" in res.output


def test_file_without_plugins_fails(tmp_path):
    res = _run(tmp_path, "x = 1\n")
    assert res.exit_code == 1
    assert "FAIL import: no Method or Dataset subclass with a `name` in plugin.py" in res.output


def test_unknown_name_is_a_usage_error():
    from bench.api import ConfigError

    with pytest.raises(ConfigError, match=r"'interflw' \(did you mean 'interflow'\?\)"):
        CliRunner().invoke(check, ["interflw"], catch_exceptions=False)
