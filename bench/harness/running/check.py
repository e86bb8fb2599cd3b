"""The plug-in contract as code: one `Check` per property of a method or dataset class (used
by ``bench check`` and the registry-wide contract test), plus the cheap run-time checks of
`bench.harness.planning.preflight` (re-exported here) that ``bench run`` makes before training.

Method properties: typed ``Params`` defaults; instantiation with ``test_params`` on small
synthetic data it ``supports()``; trainable parameters; a finite scalar loss; one harness
step (`bench.harness.training.optim.Trainer`) gives every parameter a finite gradient and changes
them; ``sample(n)`` is (n, *event_shape) and finite; ``log_prob`` is (n,), finite and
labelled; the checkpoint layout round trip (``weights_only=True``, fresh instance, other
seed) gives identical log-likelihoods. Dataset properties: ``kind``, splits float32, finite,
non-empty, of the declared event shape, provenance, closed-form ``log_prob`` shape.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.api import ContractError, FlowMethod, Method, OptimConfig, SolverConfig, Splits
from bench.api.types import KINDS, LIKELIHOOD_KINDS
from bench.harness.planning.plan import resolve_refs
from bench.harness.planning.preflight import (
    check_dataset_instance,
    check_method_instance,
    check_splits,
    split_dtype_problem,
    split_empty_problem,
    split_finite_problem,
    split_shape_problem,
)
from bench.harness.planning.properties import (
    RUN_ROWS,
    base_log_prob_problem,
    base_log_prob_rows_problem,
    batch_size_problem,
    call,
    dataset_log_prob_problem,
    likelihood_problem,
    log_prob_problem,
    log_prob_rows_problem,
    loss_problem,
    name_of,
    sample_problem,
    trainable_parameters,
    trainable_problem,
)
from bench.harness.planning.selection import (
    build_params,
    check_param_defaults,
    param_default_problems,
)
from bench.harness.running.context import make_context
from bench.harness.training.checkpoint import restore, snapshot
from bench.harness.training.optim import Trainer

__all__ = ["Check", "check_method", "check_dataset", "synthetic_splits", "check_splits",
           "check_method_instance", "check_dataset_instance", "check_param_defaults",
           "param_default_problems"]

DEQUANTIZATIONS = ("none", "uniform-8bit")
#: synthetic data a method is checked on: the first (kind, event shape) it supports
CANDIDATES = (("toy2d", (2,)), ("tabular", (6,)), ("image", (1, 8, 8)), ("image", (3, 32, 32)))


@dataclass(frozen=True)
class Check:
    """One property of the contract: its name, whether it holds, and (on failure) why."""

    name: str
    ok: bool
    detail: str = ""


# -- the full checks ------------------------------------------------------------------------
def synthetic_splits(kind: str, shape: tuple[int, ...], n: tuple[int, int, int] = (400, 100,
                     100), seed: int = 0) -> Splits:
    """Small float32 splits: a correlated Gaussian (vectors) or 8-bit noise in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    total = sum(n)
    if kind == "image":
        x = torch.randint(0, 256, (total, *shape), generator=g).float() / 127.5 - 1.0
        deq = "uniform-8bit"
    else:
        d = shape[0]
        mix = torch.eye(d) + 0.3 * torch.randn(d, d, generator=g)
        x = torch.randn(total, d, generator=g) @ mix + 0.5
        deq = "none"
    a, b = n[0], n[0] + n[1]
    return Splits(x[:a], x[a:b], x[b:], tuple(shape), f"synthetic {kind} {tuple(shape)} "
                  f"{n[0]}/{n[1]}/{n[2]} rows (seed {seed})", dequantization=deq)


def _exc(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Checks(list):
    def run(self, name: str, fn: Callable[[], str | None]) -> bool:
        try:
            problem = fn()
        except ContractError as exc:  # the property's sentence (a plug-in's raise included)
            problem = str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure is the property's failure
            problem = _exc(exc)
        self.append(Check(name, problem is None, problem or ""))
        return problem is None


def _params_checks(out: _Checks, cls: type) -> bool:
    ok = out.run("params.dataclass", lambda: None if dataclasses.is_dataclass(
        getattr(cls, "Params", None)) else "Params is not a dataclass (decorate it)")
    return ok and out.run("params.defaults", lambda: (param_default_problems(cls) or [None])[0])


def _kind_of(splits: Splits) -> str:
    if len(splits.event_shape) == 3:
        return "image"
    return "toy2d" if tuple(splits.event_shape) == (2,) else "tabular"


def _instantiate(cls: type, splits: Splits, seed: int, registry: Any = None) -> Method:
    params = build_params(cls.Params, dict(cls.test_params), f"method {cls.name!r}")
    if registry is None:
        from bench.harness.planning.registry import Registry

        registry = Registry()
    refs = {field: ref_cls(ref_params)
            for field, (ref_cls, ref_params) in resolve_refs(registry, params).items()}
    ctx = make_context(seed=seed, solver=SolverConfig(rtol=1e-4, atol=1e-4), max_steps=10,
                       datasets=refs)
    torch.manual_seed(seed)
    method = cls(params, splits, ctx)
    for module in method.modules().values():
        module.eval()
    return method


def check_method(cls: type, splits: Splits | None = None, registry: Any = None,
                 n: int = 16) -> list[Check]:
    """The contract of a method class, one `Check` per property, on ``splits`` (default:
    small synthetic data of the first kind and shape its ``supports()`` accepts).

    Args:
        registry: resolves ``DatasetRef`` parameters (default: a fresh `Registry`).
        n: rows sampled and scored.
    """
    out = _Checks()
    with torch.random.fork_rng(devices=[]):
        _method_checks(out, cls, splits, registry, n)
    return list(out)


def _method_checks(out: _Checks, cls: type, splits: Splits | None, registry: Any,
                   n: int) -> None:
    _params_checks(out, cls)
    if splits is None:
        fits = [(k, s) for k, s in CANDIDATES if cls.supports(k, s) is None]
        if not out.run("supports", lambda: None if fits else
                       f"supports() rejects every synthetic data set {list(CANDIDATES)}"):
            return
        kind, splits = fits[0][0], synthetic_splits(*fits[0])
    else:
        kind = _kind_of(splits)
    box: dict[str, Any] = {}

    def make() -> None:
        box["m"] = _instantiate(cls, splits, 0, registry)

    if not out.run("instantiate", make):
        return
    method: Method = box["m"]
    if not out.run("batch_size", lambda: batch_size_problem(method)):
        return
    batch = splits.train[: method.batch_size()].to(method.ctx.device)
    if getattr(method, "trainable", True) and out.run(
            "modules.trainable", lambda: trainable_problem(method)):
        out.run("loss.scalar", lambda: loss_problem(method, call(
            method, "loss(batch, step)", method.loss, batch, 0), batch.shape[0]))
        box["updates"] = "not checked: the harness step failed"
        out.run("step.gradients", lambda: _step_problem(method, cls, kind, batch, box))
        out.run("step.updates", lambda: box["updates"])
    for module in method.modules().values():
        module.eval()
    x = splits.test[:n].to(method.ctx.device)
    _output_checks(out, method, x, box)
    out.run("state.round_trip", lambda: _round_trip(method, cls, splits, x, box, registry))


def _output_checks(out: _Checks, method: Method, x: Any, box: dict[str, Any]) -> None:
    """Sampling, the base density of a flow, the likelihoods and their rows' independence
    (on `RUN_ROWS` rows, as ``bench run``)."""
    n = x.shape[0]
    if out.run("sample.shape", lambda: sample_problem(method, n, box)):
        out.run("sample.finite", lambda: None if bool(torch.isfinite(box["s"]).all()) else
                f"{int((~torch.isfinite(box['s'])).sum())} sampled values are not finite")
    if isinstance(method, FlowMethod) and out.run(
            "base_log_prob.shape", lambda: base_log_prob_problem(method, n)):
        out.run("base_log_prob.rows", lambda: base_log_prob_rows_problem(method, RUN_ROWS))
    if method.likelihood == "none":
        return
    if out.run("log_prob.shape", lambda: log_prob_problem(method, x, box)):
        ll = box["ll"]
        out.run("log_prob.finite", lambda: None if bool(torch.isfinite(ll.values).all())
                else f"{int((~torch.isfinite(ll.values)).sum())} of {n} "
                "log-likelihoods are not finite")
        out.run("log_prob.label", lambda: _label_problem(method, ll))
        out.run("log_prob.rows", lambda: log_prob_rows_problem(method, x[:RUN_ROWS]))
    if type(method).validation_likelihood is not Method.validation_likelihood:
        val: dict[str, Any] = {}
        out.run("validation_likelihood", lambda: log_prob_problem(
            method, x, val, hook="validation_likelihood") or likelihood_problem(
            val["ll"], n, f"{name_of(method)}.validation_likelihood(x)"))


def _label_problem(method: Method, ll: Any) -> str | None:
    what = f"{name_of(method)}.log_prob(x)"
    if ll.kind not in LIKELIHOOD_KINDS:
        return f"{what} has kind {ll.kind!r}; expected one of {LIKELIHOOD_KINDS}"
    return None if ll.estimator else \
        f"{what} has an empty estimator: say how the value was obtained"


def _step_problem(method: Method, cls: type, kind: str, batch: torch.Tensor,
                  box: dict[str, Any]) -> str | None:
    named = trainable_parameters(method)
    before = [p.detach().clone() for _, p in named]
    box["trainer"] = trainer = Trainer(method, OptimConfig(**cls.default_optim(kind)), 10)
    metrics = trainer.step(batch, 0)
    changed = [not torch.equal(b, p.detach()) for b, (_, p) in zip(before, named, strict=True)]
    box["updates"] = None if any(changed) else "one harness step changed no parameter"
    loss = float(metrics.get("loss", 0.0))
    if not math.isfinite(loss):
        return f"the harness step reported loss {loss} (nothing was updated)"
    missing = [name for name, p in named if p.grad is None]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return f"no gradient reaches {missing[0]}{more}"
    bad = [name for name, p in named if not bool(torch.isfinite(p.grad).all())]
    return f"the gradient of {bad[0]} is not finite" if bad else None


def _round_trip(method: Method, cls: type, splits: Splits, x: torch.Tensor,
                box: dict[str, Any], registry: Any) -> str | None:
    """Checkpoint layout -> torch.save -> load(weights_only=True) -> a fresh instance with
    another seed (the same one for a stochastic estimate): the same log-likelihoods (or
    weights, for a method without one)."""
    trainer = box.get("trainer")
    if trainer is None and (trainable_parameters(method) or not method.trainable):
        trainer = Trainer(method, OptimConfig(), 10)
    state = snapshot(method, trainer) if trainer is not None else {  # no trainer possible
        "modules": {k: m.state_dict() for k, m in method.modules().items()},
        "extra": method.extra_state()}
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    # another seed, except for a stochastic estimate (Hutchinson's probes follow the run's
    # seed): then the same seed, so equal values still mean equal weights
    seed = 0 if "ll" in box and box["ll"].kind == "estimate" else 1
    other = _instantiate(cls, splits, seed, registry)
    restore(other, None, state)
    for module in other.modules().values():
        module.eval()
    if method.likelihood == "none" or "ll" not in box:
        for key, m in method.modules().items():
            for k, v in m.state_dict().items():
                if not torch.equal(v, other.modules()[key].state_dict()[k]):
                    return f"{key}.{k} differs after the round trip"
        return None
    with torch.no_grad():
        again = other.log_prob(x).values
    first = box["ll"].values
    if tuple(again.shape) != tuple(first.shape) or not torch.allclose(first, again, rtol=0,
                                                                      atol=1e-6):
        diff = (first - again).abs().max().item() if again.shape == first.shape else "n/a"
        return (f"a fresh instance (seed {seed}) loaded from the checkpoint gives other "
                f"log-likelihoods (max difference {diff})")
    return None


def check_dataset(cls: type, data_dir: Any = None, n: int = 200) -> list[Check]:
    """The contract of a dataset class with its ``test_params``, one `Check` per property.

    A ``load`` failure's detail starts with the exception's name (``DataError: ...`` when
    the data is not available locally).
    """
    out = _Checks()
    _params_checks(out, cls)
    out.run("kind", lambda: None if getattr(cls, "kind", None) in KINDS else
            f"kind is {getattr(cls, 'kind', None)!r}; expected one of {KINDS}")
    box: dict[str, Any] = {}

    def load() -> str | None:
        params = build_params(cls.Params, dict(cls.test_params), f"dataset {cls.name!r}")
        box["ds"] = ds = cls(params, data_dir=data_dir)
        box["splits"] = splits = ds.splits()
        return None if isinstance(splits, Splits) else \
            f"load() returned a {type(splits).__name__}, not a bench.api.Splits"

    if not out.run("load", load):
        return list(out)
    ds, splits = box["ds"], box["splits"]
    typed = out.run("splits.dtype", lambda: split_dtype_problem(splits))
    shaped = out.run("splits.event_shape", lambda: split_shape_problem(
        splits, getattr(cls, "event_shape", None)) or split_shape_problem(
        splits, getattr(ds, "event_shape", None)))
    out.run("splits.nonempty", lambda: split_empty_problem(splits))
    if typed:
        out.run("splits.finite", lambda: split_finite_problem(splits))
    out.run("provenance", lambda: None if isinstance(splits.provenance, str)
            and splits.provenance.strip() else "Splits.provenance is empty: say where the "
            "rows come from")
    out.run("dequantization", lambda: None if splits.dequantization in DEQUANTIZATIONS else
            f"dequantization is {splits.dequantization!r}; expected one of {DEQUANTIZATIONS}")
    if not (typed and shaped):
        return list(out)
    x = splits.test[:n]
    if cls.has_log_prob:
        if out.run("log_prob.shape", lambda: dataset_log_prob_problem(ds, x, box)):
            out.run("log_prob.finite", lambda: None if bool(torch.isfinite(box["lp"]).all())
                    else f"{int((~torch.isfinite(box['lp'])).sum())} of {x.shape[0]} "
                    "log-densities of test rows are not finite")

    def sample() -> str | None:
        s = ds.sample(8, generator=torch.Generator().manual_seed(0))
        want = (8, *splits.event_shape)
        return None if tuple(s.shape) == want else \
            f"sample(8) returned shape {tuple(s.shape)}; expected {want}"

    out.run("sample.shape", sample)
    return list(out)
