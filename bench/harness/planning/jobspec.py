"""A planned `Job` to a `JobSpec` (plain, JSON-able) and back.

``to_spec`` writes plug-in classes as their names and every typed setting as a dict;
``from_spec`` finds the classes again in a registry and rebuilds each setting from its
dict, converting every value to its declared type (lists to tuples, integers of float
fields to floats, ...), so that the rebuilt `Job` equals the planned one and has its job
key. What a spec holds is checked as the plan checks it: an unknown plug-in, field or
value is one ConfigError line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from bench.api import (
    Budget,
    ConfigError,
    Execution,
    Job,
    OptimConfig,
    SampleEval,
    SolverConfig,
)
from bench.api.jobs import JobSpec
from bench.harness.planning.selection import closest, construct, param_fields

__all__ = ["to_spec", "from_spec", "plain", "typed"]

_SHARED = {"optim": OptimConfig, "budget": Budget, "solver": SolverConfig,
           "sample_eval": SampleEval, "execution": Execution}


def plain(obj: Any) -> Any:
    """A parameter value as JSON holds it: tuples as lists, dataclasses as dicts."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def typed(value: Any, tp: Any) -> Any:
    """``value`` (as JSON holds it) as the declared type ``tp``; ValueError if it is not."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return typed(value, a)
            except (ValueError, TypeError):
                continue
        raise ValueError(f"{value!r} is none of {tp}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ValueError(f"{value!r} is not one of {list(args)}")
    if origin is tuple or tp is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{value!r} is not a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(typed(v, args[0]) for v in value)
        if args and len(args) != len(value):
            raise ValueError(f"{value!r} does not have {len(args)} items")
        return tuple(typed(v, a) for v, a in zip(value, args or [Any] * len(value),
                                                 strict=True))
    return _scalar(value, tp)


def _scalar(value: Any, tp: Any) -> Any:
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{value!r} is not true or false")
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(getattr(tp, "__supertype__", None), type):  # NewType, e.g. DatasetRef
        return tp(typed(value, tp.__supertype__))
    if tp is str and isinstance(value, str):
        return value
    if tp is dict and isinstance(value, dict):
        return value
    raise ValueError(f"{value!r} is not a {getattr(tp, '__name__', tp)}")


def _build(cls: type, data: dict[str, Any], owner: str) -> Any:
    """An instance of the dataclass ``cls`` from its plain dict, every value typed."""
    if not isinstance(data, dict):
        raise ConfigError(f"{owner} of a job spec must be an object, got {data!r}")
    fields = param_fields(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown field {key!r} for {owner}"
                              f"{closest(key, list(fields))}")
        try:
            kwargs[key] = typed(value, fields[key])
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"bad value for {owner} field {key!r}: {exc}") from None
    return construct(cls, kwargs, owner, f"invalid {owner}")


def to_spec(job: Job, plugin_dirs: tuple[str | Path, ...] = (), key: str = "") -> JobSpec:
    """The `JobSpec` of a planned job (paths made absolute, so it holds in another cwd).

    Args:
        plugin_dirs: the extra plug-in folders of the registry that planned the job.
        key: its job key (`bench.harness.training.runfolder.job_key`), checked on rebuild.
    """
    def path(p: Path | None) -> str | None:
        return None if p is None else str(Path(p).resolve())

    shared = {name: plain(getattr(job, name)) for name in _SHARED}
    return JobSpec(
        method=job.method, dataset=job.dataset, method_params=plain(job.method_params),
        dataset_params=plain(job.dataset_params), seed=job.seed, **shared,
        refs={f: {"dataset": cls.name, "params": plain(p)} for f, (cls, p) in job.refs.items()},
        device=job.device, data_dir=path(job.data_dir), evaluate_test=job.evaluate_test,
        n_samples=job.n_samples, plugin_dirs=tuple(str(Path(d).resolve()) for d in plugin_dirs),
        label=job.label, sources=dict(job.sources), work_dir=path(job.work_dir),
        checkpoint_every=job.checkpoint_every, checkpoint_minutes=job.checkpoint_minutes,
        resume=job.resume, scorers=tuple(cls.name for cls in job.scorers), key=key)


def from_spec(spec: JobSpec, registry) -> Job:
    """The `Job` of a spec, its plug-in classes looked up in ``registry`` (one made with the
    spec's ``plugin_dirs``); ConfigError (one line) when a name, field or value is bad."""
    m_cls = registry.get("method", spec.method)
    d_cls = registry.get("dataset", spec.dataset)
    refs = {}
    for name, ref in spec.refs.items():
        cls = registry.get("dataset", ref["dataset"])
        refs[name] = (cls, _build(cls.Params, ref["params"], f"dataset {cls.name!r}"))
    shared = {name: _build(cls, getattr(spec, name), name) for name, cls in _SHARED.items()}
    return Job(
        method=spec.method, method_cls=m_cls,
        method_params=_build(m_cls.Params, spec.method_params, f"method {spec.method!r}"),
        dataset=spec.dataset, dataset_cls=d_cls,
        dataset_params=_build(d_cls.Params, spec.dataset_params, f"dataset {spec.dataset!r}"),
        seed=int(spec.seed), **shared, device=spec.device,
        data_dir=None if spec.data_dir is None else Path(spec.data_dir),
        evaluate_test=bool(spec.evaluate_test), n_samples=int(spec.n_samples), refs=refs,
        sources=dict(spec.sources), label=spec.label,
        work_dir=None if spec.work_dir is None else Path(spec.work_dir),
        checkpoint_every=spec.checkpoint_every, checkpoint_minutes=spec.checkpoint_minutes,
        resume=typing.cast(Any, spec.resume),
        scorers=tuple(registry.get("scorer", name) for name in spec.scorers))
