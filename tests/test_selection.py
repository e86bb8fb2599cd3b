from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Literal

import pytest

from bench.api import at_least, in_range, non_negative, positive, probability
from bench.api.errors import ConfigError
from bench.harness.planning.selection import (
    build_params,
    domains,
    param_default_problems,
    parse_selection,
    split_top,
)


@dataclass
class P:
    lr: float = 1e-3
    steps: int = 10
    hidden: tuple[int, ...] = (4, 4)
    kind: Literal["a", "b"] = "a"
    flag: bool = False
    base: str = "gaussian"
    maybe: float | None = None


def test_parse_plain_and_bracketed():
    assert parse_selection("interflow") == ("interflow", {})
    name, over = parse_selection("interflow[lr=3e-4, interpolant=linear]")
    assert name == "interflow" and over == {"lr": "3e-4", "interpolant": "linear"}
    assert parse_selection("m[hidden=(8,8),base=8gaussians[n_train=10]]")[1] == {
        "hidden": "(8,8)", "base": "8gaussians[n_train=10]"}


@pytest.mark.parametrize("bad", ["m[lr=1", "m]", "m[lr]", ""])
def test_parse_malformed(bad):
    with pytest.raises(ConfigError):
        parse_selection(bad)


def test_split_top_respects_brackets():
    assert split_top("a=1,b=(1,2),c=[x,y]") == ["a=1", "b=(1,2)", "c=[x,y]"]


def test_build_params_coerces_types():
    p = build_params(P, {"lr": "3e-4", "steps": "1e3", "hidden": "(8,16,32)", "kind": "b",
                         "flag": "true", "maybe": "0.5"}, "m")
    assert p == P(3e-4, 1000, (8, 16, 32), "b", True, "gaussian", 0.5)
    assert build_params(P, {"hidden": "64x64", "maybe": "none"}, "m").hidden == (64, 64)


@pytest.mark.parametrize("over, words", [
    ({"lrr": "1"}, ["unknown parameter 'lrr'", "did you mean 'lr'", "valid:"]),
    ({"steps": "1.5"}, ["bad value '1.5'", "'steps'"]),
    ({"lr": "fast"}, ["bad value 'fast'"]),
    ({"kind": "c"}, ["one of"]),
    ({"flag": "maybe"}, ["true or false"]),
])
def test_build_params_errors_name_the_problem(over, words):
    with pytest.raises(ConfigError) as e:
        build_params(P, over, "method 'm'")
    for w in words:
        assert w in str(e.value)


# -- parameter domains (declared once on the field, `bench.api.domains`) --------------------
@dataclass
class D:
    batch_size: int = field(default=8, metadata=at_least(1))
    lr: float = field(default=1e-3, metadata=positive())
    p: float = field(default=0.5, metadata=in_range(0, 1, hi_open=True))
    hidden: tuple[int, ...] | None = field(default=(4,), metadata=at_least(1))
    weight: float = field(default=0.0, metadata=non_negative())
    q: float = field(default=1.0, metadata=probability())
    free: float = 2.0


@pytest.mark.parametrize("over, line", [
    ({"batch_size": "0"}, "batch_size=0 is out of its domain (an integer >= 1)"),
    ({"batch_size": 0}, "batch_size=0 is out of its domain (an integer >= 1)"),  # typed
    ({"lr": "0"}, "lr=0 is out of its domain (a number > 0)"),
    ({"lr": "inf"}, "lr=inf is out of its domain (a number > 0)"),
    ({"lr": "nan"}, "lr=nan is out of its domain (a number > 0)"),
    ({"p": "1"}, "p=1 is out of its domain (a number in [0, 1))"),
    ({"q": "1.5"}, "q=1.5 is out of its domain (a number in [0, 1])"),
    ({"weight": "-1e-3"}, "weight=-0.001 is out of its domain (a number >= 0)"),
    ({"hidden": "(8,0)"}, "hidden=(8, 0) is out of its domain (each an integer >= 1)"),
])
def test_out_of_domain_is_one_config_error(over, line):
    with pytest.raises(ConfigError) as e:
        build_params(D, over, "method 'm'")
    assert str(e.value) == f"method 'm': {line}"


def test_in_domain_values_and_none_pass():
    p = build_params(D, {"batch_size": "1", "p": "0", "q": "1", "hidden": "none",
                         "weight": "0", "free": "-inf"}, "m")
    assert (p.batch_size, p.p, p.q, p.hidden, p.weight) == (1, 0.0, 1.0, None, 0.0)
    with pytest.raises(ConfigError, match="must be a finite integer"):
        build_params(D, {"batch_size": "-inf"}, "m")


def test_defaults_outside_their_domain_break_the_contract():
    bad = make_dataclass("Params", [("n", int, field(default=0, metadata=at_least(1)))])
    assert param_default_problems(type("M", (), {"Params": bad})) == [
        "the default n=0 is out of its domain (an integer >= 1)"]
    assert param_default_problems(type("M", (), {"Params": D})) == []
    assert domains(D, short=True) == {"batch_size": ">= 1", "lr": "> 0", "p": "in [0, 1)",
                                      "hidden": "each >= 1", "weight": ">= 0",
                                      "q": "in [0, 1]"}
    with pytest.raises(ValueError):
        in_range(1, 0)
