"""The plug-in contract (`bench.harness.running.check`), checked for every method and dataset the
registry finds (built-in, BENCH_PLUGINS, entry points), and the run-time checks `bench run`
makes before training."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, make_dataclass
from typing import Literal

import pytest
import torch

from bench.api import ContractError, DataError, DatasetRef, LogLikelihood, Method, Splits
from bench.harness import make_context
from bench.harness.planning.registry import Registry
from bench.harness.running.check import (
    check_dataset,
    check_dataset_instance,
    check_method,
    check_method_instance,
    check_param_defaults,
    check_splits,
    param_default_problems,
)

_REG = Registry()
PLUGINS = [(kind, name) for kind in ("method", "dataset") for name in _REG.names(kind)]


def _failures(checks) -> str:
    return "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.ok)


@pytest.mark.parametrize("kind, name", PLUGINS, ids=[f"{k}-{n}" for k, n in PLUGINS])
def test_plugin_contract(kind, name, data_dir, one_thread):
    plugin = _REG.plugins[kind][name]
    if not plugin.available:
        if plugin.error.startswith(("ImportError", "ModuleNotFoundError")):
            pytest.skip(f"{kind} {name} needs what is not installed here: {plugin.error}")
        pytest.fail(f"{kind} {name} is unavailable: {plugin.error}")
    if kind == "method":
        checks = check_method(plugin.cls, registry=_REG)
    else:
        checks = check_dataset(plugin.cls, data_dir=data_dir)
        load = next(c for c in checks if c.name == "load")
        if not load.ok and load.detail.startswith("DataError"):
            pytest.skip(f"no local data for {name}: {load.detail}")
    names = [c.name for c in checks]
    assert len(names) == len(set(names)) and "params.defaults" in names
    assert all(c.ok for c in checks), _failures(checks)


# -- parameter defaults ---------------------------------------------------------------------
@dataclass
class GoodParams:
    lr: float = 1  # an int is a float
    hidden: tuple[int, ...] = (8, 8)
    pair: tuple[int, str] = (1, "a")
    kind: Literal["a", "b"] = "b"
    maybe: float | None = None
    base: DatasetRef = "gaussian"
    flag: bool = False
    names: list[str] = field(default_factory=lambda: ["x"])


@pytest.mark.parametrize("decl, default, words", [
    (float, "1e-3", "parameter 'p' is declared float but its default is '1e-3' (str)"),
    (int, True, "declared int but its default is True (bool)"),
    (tuple[int, ...], (8, 8.5), "declared tuple[int, ...] but its default is (8, 8.5)"),
    (Literal["linear", "trig"], "zigzag", "but its default is 'zigzag' (str)"),
    (float | None, "x", "declared float | None"),
    (DatasetRef, 3, "declared DatasetRef but its default is 3 (int)"),
    (tuple[int, str], (1, 2), "declared tuple[int, str]"),
])
def test_param_defaults_of_the_wrong_type(decl, default, words):
    params = make_dataclass("Params", [("p", decl, field(default=default))])
    cls = type("M", (), {"Params": params})
    assert words in param_default_problems(cls)[0]
    with pytest.raises(ContractError, match=r"^method 'm': parameter 'p' is declared"):
        check_param_defaults(cls, "method 'm'")


def test_good_param_defaults_and_non_dataclass():
    assert param_default_problems(type("M", (), {"Params": GoodParams})) == []
    check_param_defaults(type("M", (), {"Params": GoodParams}), "method 'm'")
    assert "not a dataclass" in param_default_problems(type("M", (), {"Params": dict}))[0]


# -- run-time checks of splits --------------------------------------------------------------
def _splits(train=None, val=None, test=None, shape=(2,)):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, *shape, generator=g)
    return Splits(x[:10] if train is None else train, x[10:20] if val is None else val,
                  x[20:] if test is None else test, shape, "test rows")


def test_check_splits_names_the_problem():
    check_splits(_splits(), "x")
    with pytest.raises(ContractError) as e:
        check_splits(_splits(train=torch.randn(10, 2, dtype=torch.float64)), "x")
    assert str(e.value) == ("dataset 'x': the train split is float64; Dataset.load must "
                            "return float32")
    val = torch.randn(10, 2)
    val[[1, 4, 7], 0] = float("nan")
    val[4, 1] = float("inf")  # still one row
    with pytest.raises(DataError) as e:
        check_splits(_splits(val=val), "x")
    assert str(e.value) == "dataset 'x': 3 rows of the val split are not finite (NaN or inf)"
    test = torch.randn(5, 2)
    test[2, 1] = float("-inf")
    with pytest.raises(DataError, match="1 row of the test split is not finite"):
        check_splits(_splits(test=test), "x")
    with pytest.raises(DataError, match="^dataset 'x': the val split is empty$"):
        check_splits(_splits(val=torch.zeros(0, 2)), "x")
    with pytest.raises(ContractError, match=r"the test split has rows of shape \(3,\) but "
                                            r"event_shape is \(2,\)"):
        check_splits(_splits(test=torch.zeros(4, 3)), "x")


class _Tiny(Method):
    """N(mu, I); ``shape="column"`` makes log_prob return (n, 1)."""

    name = "tiny"

    def __init__(self, params, splits, ctx, shape="ok", modules=True):
        super().__init__(params, splits, ctx)
        self.net = torch.nn.ParameterDict({"mu": torch.nn.Parameter(torch.zeros(splits.dim))})
        self.shape, self.with_modules = shape, modules

    def modules(self):
        return {"net": self.net} if self.with_modules else {}

    def loss(self, batch, step):
        return ((batch - self.net["mu"]) ** 2).mean()

    def sample(self, n):
        return torch.randn(n, *self.event_shape) + self.net["mu"]

    def log_prob(self, x):
        lp = (-0.5 * ((x - self.net["mu"]) ** 2).sum(1)
              - x.shape[1] * 0.5 * math.log(2 * math.pi))
        return LogLikelihood(lp[:, None] if self.shape == "column" else lp, "exact", "closed")


def test_check_method_instance():
    splits = _splits()
    check_method_instance(_Tiny(None, splits, make_context()), splits)
    with pytest.raises(ContractError) as e:
        check_method_instance(_Tiny(None, splits, make_context(), modules=False), splits)
    assert str(e.value) == "tiny has no trainable parameters: modules() is empty"
    frozen = _Tiny(None, splits, make_context())
    frozen.net.requires_grad_(False)
    with pytest.raises(ContractError, match="no parameter of modules"):
        check_method_instance(frozen, splits)
    frozen.trainable = False  # a closed-form fit needs no trainable parameters
    check_method_instance(frozen, splits)
    with pytest.raises(ContractError) as e:
        check_method_instance(_Tiny(None, splits, make_context(), shape="column"), splits)
    assert str(e.value) == ("tiny.log_prob(x) returned values of shape (n, 1) for a batch of "
                            "n rows; expected (n,)")


def test_check_dataset_instance():
    class DS:
        name, has_log_prob = "d", True

        def log_prob(self, x):
            return torch.zeros(x.shape[0], 1)

    with pytest.raises(ContractError, match=r"^d\.log_prob\(x\) returned shape \(n, 1\) for a "
                                            r"batch of n rows; expected \(n,\)$"):
        check_dataset_instance(DS(), _splits())


def test_check_method_reports_each_property(one_thread):
    checks = check_method(_Tiny)
    assert all(c.ok for c in checks), _failures(checks)
    # a gradient that reaches no parameter of one module is named
    class Detached(_Tiny):
        def __init__(self, params, splits, ctx):
            super().__init__(params, splits, ctx)
            self.unused = torch.nn.Linear(2, 2)

        def modules(self):
            return {"net": self.net, "unused": self.unused}

    bad = {c.name: c.detail for c in check_method(Detached) if not c.ok}
    assert bad == {"step.gradients": "no gradient reaches unused.weight (and 1 more)"}
