"""The properties of the method contract as code, shared by ``bench check``
(`bench.harness.running.check`, one ``PASS``/``FAIL`` line each) and ``bench run`` (the checks
of `bench.harness.planning.preflight` before training, the loss check of the first training step in
`bench.harness.training.optim`, the shape checks of the evaluation): one function per property, one
sentence per failure, the same sentence in both places.

Each property returns None when it holds, else its sentence, which names the method and
the call (``rectflow.base_log_prob(x_0) returned shape () for a batch of n rows; expected
(n,)``) and does not depend on the rows it was evaluated on, so a run's ``failure.reason``
reads like the check's line. An exception the plug-in raises inside a property becomes
`PluginRaised`, a `ContractError` whose sentence names the call (``diag_gaussian.log_prob(x)
raised RuntimeError: ...``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from bench.api import ContractError, LogLikelihood, Method, per_row_problem
from bench.api.types import LIKELIHOOD_KINDS, shape_text

__all__ = ["PluginRaised", "call", "name_of", "trainable_parameters", "trainable_problem",
           "batch_size_problem", "loss_problem", "sample_problem", "likelihood_problem",
           "log_prob_problem", "log_prob_rows_problem", "base_log_prob_problem",
           "base_log_prob_rows_problem", "dataset_log_prob_problem", "rows_problem",
           "row_wise", "run_properties", "ROW_TOLERANCE", "RUN_ROWS", "RUN_SAMPLES"]

#: a row's value evaluated alone, in its batch and in the permuted batch may differ by
#: float32 (the values' dtype) rounding alone: the same operations in another order
#: (batched and single-row kernels, other reduction orders) change a result by about
#: sqrt(N) unit roundoffs for N operations (a random walk of rounding errors). This factor
#: allows sqrt(N) up to 2^10, i.e. a million operations per row's value, relative to
#: 1 + |value|: 6e-5 in float32 (unit roundoff 2^-24). A coupling of rows (a batch mean,
#: batch statistics) moves a row by the spread of the rows' values, nats: far more.
ROW_TOLERANCE = 2.0 ** 10


class PluginRaised(ContractError):
    """A plug-in raised inside a property; the message names the method and the call."""


def name_of(obj: Any) -> str:
    return str(getattr(obj, "name", None) or type(obj).__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def call(obj: Any, what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; an exception other than bench's own becomes `PluginRaised`
    ("``name.what raised Type: first line``")."""
    from bench.api import BenchError

    try:
        return fn(*args)
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the plug-in's code
        raise PluginRaised(f"{name_of(obj)}.{what} raised {_first_line(exc)}") from exc


# -- parameters and sizes -------------------------------------------------------------------
def trainable_parameters(method: Method) -> list[tuple[str, torch.nn.Parameter]]:
    """(``module.param`` name, parameter) of every parameter of ``modules()`` that
    requires gradients."""
    return [(f"{key}.{pname}", p) for key, m in method.modules().items()
            for pname, p in m.named_parameters() if p.requires_grad]


def trainable_problem(method: Method) -> str | None:
    """Trainable parameters exist (unless ``trainable = False``)."""
    if not getattr(method, "trainable", True) or trainable_parameters(method):
        return None
    why = ("modules() is empty" if not method.modules()
           else "no parameter of modules() requires gradients")
    return f"{name_of(method)} has no trainable parameters: {why}"


def batch_size_problem(method: Method) -> str | None:
    """``batch_size()`` is an integer >= 1 (the harness never clamps it)."""
    bs = call(method, "batch_size()", method.batch_size)
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        return (f"{name_of(method)}.batch_size() returned {bs!r}; expected an integer >= 1 "
                "(declare the parameter's domain: field(metadata=at_least(1)))")
    return None


# -- loss -----------------------------------------------------------------------------------
def loss_problem(method: Method, res: Any, n: int, graph: bool = True) -> str | None:
    """What ``loss(batch, step)`` of a batch of n rows returned is a finite scalar tensor
    (with a graph, when ``graph``), or an ``(objective, metrics)`` pair whose objective
    is."""
    what = f"{name_of(method)}.loss(batch, step)"
    loss = res[0] if isinstance(res, tuple) else res
    if not isinstance(loss, torch.Tensor):
        return f"{what} returned a {type(loss).__name__}, not a tensor"
    if loss.dim() != 0:
        return (f"{what} has shape {shape_text(tuple(loss.shape), n)} for a batch of n rows; "
                "expected a scalar (shape ())")
    value = float(loss.detach())
    if not math.isfinite(value):
        return f"{what} is not finite ({value})"
    if graph and not loss.requires_grad:
        return f"{what} has no graph: it does not depend on trainable parameters"
    return None


# -- sampling and likelihoods ----------------------------------------------------------------
def sample_problem(method: Method, n: int, box: dict[str, Any] | None = None) -> str | None:
    """``sample(n)`` is a tensor of shape (n, *event_shape) (kept in ``box["s"]``)."""
    with torch.no_grad():
        s = call(method, "sample(n)", method.sample, n)
    if box is not None:
        box["s"] = s
    what = f"{name_of(method)}.sample(n)"
    if not isinstance(s, torch.Tensor):
        return f"{what} returned a {type(s).__name__}, not a tensor"
    want = (n, *method.event_shape)
    if tuple(s.shape) != want:
        return (f"{what} returned shape {shape_text(tuple(s.shape), n)}; expected "
                f"{shape_text(want, n)}")
    return None


def likelihood_problem(ll: Any, n: int, what: str, full: bool = True) -> str | None:
    """A `LogLikelihood` of values (n,) with a valid kind (``full``: also an estimator
    label and finite values)? ``what`` names the call in the sentence."""
    if not isinstance(ll, LogLikelihood):
        return f"{what} returned a {type(ll).__name__}, not a bench.api.LogLikelihood"
    problem = per_row_problem(ll.values, n, what, "values of ")
    if problem:
        return problem
    if ll.kind not in LIKELIHOOD_KINDS:
        return f"{what} has kind {ll.kind!r}; expected one of {LIKELIHOOD_KINDS}"
    if full and not ll.estimator:
        return f"{what} has an empty estimator label"
    if full and not bool(torch.isfinite(ll.values).all()):
        bad = int((~torch.isfinite(ll.values)).sum())
        return f"{what}: {bad} of {n} values are not finite"
    return None


def log_prob_problem(method: Method, x: torch.Tensor, box: dict[str, Any] | None = None,
                     hook: str = "log_prob") -> str | None:
    """``log_prob(x)`` (or ``hook``, e.g. "validation_likelihood") of n rows is a
    `LogLikelihood` of values (n,) and a valid kind (kept in ``box["ll"]``)."""
    with torch.no_grad():
        ll = call(method, f"{hook}(x)", getattr(method, hook), x)
    if box is not None:
        box["ll"] = ll
    return likelihood_problem(ll, x.shape[0], f"{name_of(method)}.{hook}(x)", full=False)


@contextlib.contextmanager
def row_wise(method: Method) -> Iterator[None]:
    """Inside the block the method's ODE engine takes one fixed step per solve
    (`bench.science.ode.ODEEngine.one_step`): an adaptive solver's step sizes depend on
    every row of the batch, a single step does not, so the rows can be compared."""
    engine = getattr(getattr(method, "ctx", None), "engine", None)
    with engine.one_step() if hasattr(engine, "one_step") else contextlib.nullcontext():
        yield


def _values(out: Any) -> Any:
    return out.values if isinstance(out, LogLikelihood) else out


def rows_problem(method: Method, what: str, fn: Callable[[torch.Tensor], Any],
                 x: torch.Tensor) -> str | None:
    """A row's value of ``fn`` (values (n,), or a `LogLikelihood`) does not depend on the
    other rows of its batch: the batch, each row alone and the batch rotated by one row
    agree within `ROW_TOLERANCE` unit roundoffs (of the values' dtype) x (1 + |value|)."""
    label, n = f"{name_of(method)}.{what}", x.shape[0]
    with torch.no_grad():
        full = _values(call(method, what, fn, x))
        problem = per_row_problem(full, n, label)
        if problem:
            return problem
        alone = []
        for i in range(n):
            one = _values(call(method, what, fn, x[i:i + 1]))
            problem = per_row_problem(one, 1, label)
            if problem:
                return problem
            alone.append(one.reshape(1))
        perm = torch.roll(torch.arange(n), 1)
        moved = _values(call(method, what, fn, x[perm]))
        problem = per_row_problem(moved, n, label)
        if problem:
            return problem
    full = full.detach().cpu()
    unit = torch.finfo(full.dtype).eps / 2 if full.dtype.is_floating_point else 0.0
    for other, how in ((torch.cat(alone).detach().cpu(), "evaluated alone"),
                       (torch.empty_like(full).index_copy_(0, perm, moved.detach().cpu()),
                        "in the batch reordered")):
        tol = ROW_TOLERANCE * unit * (1 + torch.maximum(full.abs(), other.abs()))
        same = (full == other) | ((full - other).abs() <= tol)
        if not bool(same.all()):
            return (f"{label} depends on the other rows of its batch: a row {how} gets "
                    "another value than in the batch (beyond float rounding)")
    return None


def log_prob_rows_problem(method: Method, x: torch.Tensor) -> str | None:
    """``log_prob`` of a row does not depend on the other rows (with one fixed ODE step,
    `row_wise`). Not checked for a stochastic estimate (Hutchinson's probes are drawn per
    batch, so a row's estimate legitimately depends on its place)."""
    with row_wise(method):
        ll = call(method, "log_prob(x)", method.log_prob, x[:1])
        if isinstance(ll, LogLikelihood) and ll.kind == "estimate":
            return None
        return rows_problem(method, "log_prob(x)", method.log_prob, x)


def _base_rows(method: Any, n: int) -> torch.Tensor:
    with torch.no_grad():
        x_0 = call(method, "base_sample(n)", method.base_sample, n)
    want = (n, *method.event_shape)
    if not isinstance(x_0, torch.Tensor) or tuple(x_0.shape) != want:
        got = tuple(x_0.shape) if isinstance(x_0, torch.Tensor) else type(x_0).__name__
        raise ContractError(f"{name_of(method)}.base_sample(n) returned "
                            f"{shape_text(got, n) if isinstance(got, tuple) else got}; "
                            f"expected {shape_text(want, n)}")
    return x_0


def base_log_prob_problem(method: Any, n: int) -> str | None:
    """A `FlowMethod`'s ``base_log_prob`` of n base draws has shape (n,)."""
    x_0 = _base_rows(method, n)
    with torch.no_grad():
        lp = call(method, "base_log_prob(x_0)", method.base_log_prob, x_0)
    return per_row_problem(lp, n, f"{name_of(method)}.base_log_prob(x_0)")


def base_log_prob_rows_problem(method: Any, n: int) -> str | None:
    """A `FlowMethod`'s ``base_log_prob`` of a row does not depend on the other rows."""
    return rows_problem(method, "base_log_prob(x_0)", method.base_log_prob,
                        _base_rows(method, n))


def dataset_log_prob_problem(dataset: Any, x: torch.Tensor,
                             box: dict[str, Any] | None = None) -> str | None:
    """A dataset's closed-form ``log_prob`` of n rows has shape (n,) (kept in
    ``box["lp"]``)."""
    lp = call(dataset, "log_prob(x)", dataset.log_prob, x)
    if box is not None:
        box["lp"] = lp
    return per_row_problem(lp, x.shape[0], f"{name_of(dataset)}.log_prob(x)")


# -- the run-time selection ------------------------------------------------------------------
#: rows each run-time property evaluates (sampling: `RUN_SAMPLES`): cheap before training
RUN_ROWS = 4
RUN_SAMPLES = 2


def run_properties(method: Method, x: torch.Tensor) -> list[tuple[str, Callable[[], Any]]]:
    """(name, property) of every property ``bench run`` checks before training, on rows
    ``x`` (a few validation rows), with the names ``bench check`` prints. Sampling and
    likelihoods are evaluated with one fixed ODE step (`row_wise`): the checks are of
    shapes and of the rows' independence, not of accuracy."""
    from bench.api import FlowMethod

    n = x.shape[0]
    props: list[tuple[str, Callable[[], Any]]] = [
        ("modules.trainable", lambda: trainable_problem(method)),
        ("batch_size", lambda: batch_size_problem(method)),
        ("sample.shape", lambda: sample_problem(method, RUN_SAMPLES))]
    if isinstance(method, FlowMethod):
        props += [("base_log_prob.shape", lambda: base_log_prob_problem(method, n)),
                  ("base_log_prob.rows", lambda: base_log_prob_rows_problem(method, n))]
    if method.likelihood != "none":
        props += [("log_prob.shape", lambda: log_prob_problem(method, x)),
                  ("log_prob.rows", lambda: log_prob_rows_problem(method, x))]
        if type(method).validation_likelihood is not Method.validation_likelihood:
            props.append(("validation_likelihood", lambda: log_prob_problem(
                method, x, hook="validation_likelihood")))
    return props
