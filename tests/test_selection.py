from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from bench.api.errors import ConfigError
from bench.harness.selection import build_params, parse_selection, split_top


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
