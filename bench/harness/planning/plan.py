"""The plan phase: selection strings -> typed, validated `Job`s, before any data is read.

Every selection of a grid is resolved and checked here (plug-in names, parameter names and
types, ``Literal`` enumerations, parameter defaults of the declared types, shared
optimisation settings, each method's declared support for the dataset's kind, budgets and
solver settings), so that a bad grid fails in well under a second, with one line, before a
single dataset is loaded or a tracking run is opened.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.api import (
    Budget,
    ConfigError,
    DatasetRef,
    Execution,
    Job,
    OptimConfig,
    SampleEval,
    SolverConfig,
)
from bench.harness.planning.defaults import DEFAULTS
from bench.harness.planning.selection import (
    build_params,
    check_param_defaults,
    closest,
    param_fields,
    parse_selection,
)

__all__ = ["plan_jobs", "parse_sets", "parse_seeds", "resolve_dataset", "OPTIM_FIELDS",
           "plan_table", "is_dataset_ref",
           "resolve_refs"]

OPTIM_FIELDS = tuple(f.name for f in dataclasses.fields(OptimConfig))


def parse_sets(items: Sequence[str]) -> list[tuple[str, str]]:
    """``("lr=3e-4", "dataset.n_train=100")`` -> [("lr", "3e-4"), ...]."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out.append((k.strip(), v.strip()))
    return out


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds is empty")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ConfigError(f"--seeds repeats {', '.join(map(str, twice))}: each seed once")
    return seeds


#: devices `bench run` accepts (checked torch-free in the plan phase): type and optional index
_DEVICE = re.compile(r"^(cpu|cuda|mps|xpu|hpu|meta)(:\d+)?$")


def check_device(device: str) -> None:
    """ConfigError (one line) unless ``device`` is a torch device string such as cpu, cuda:1."""
    if not _DEVICE.match(device):
        raise ConfigError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or mps")


def is_dataset_ref(tp: Any) -> bool:
    if tp is DatasetRef:
        return True
    return any(a is DatasetRef for a in typing.get_args(tp))


def resolve_dataset(registry, selection: str, extra: dict[str, str] | None = None):
    """(class, params) of a dataset selection, validated (no data read)."""
    name, over = parse_selection(selection)
    cls = registry.get("dataset", name)
    check_param_defaults(cls, f"dataset {name!r}")
    return cls, build_params(cls.Params, {**(extra or {}), **over}, f"dataset {name!r}")


def _route(registry, methods: list[str], datasets: list[str], sets: list[tuple[str, str]]):
    """Send each ``--set key=value`` to every selected method (its Params or the shared
    optimisation settings) and dataset that has ``key``; ``method.``/``dataset.`` restrict."""
    m_keys = [set(param_fields(registry.get("method", parse_selection(s)[0]).Params))
              | set(OPTIM_FIELDS) for s in methods]
    d_keys = [set(param_fields(registry.get("dataset", parse_selection(s)[0]).Params))
              for s in datasets]
    per_m: list[dict[str, str]] = [{} for _ in methods]
    per_d: list[dict[str, str]] = [{} for _ in datasets]
    for key, val in sets:
        target, name = (key.split(".", 1) if "." in key else (None, key))
        if target not in (None, "method", "dataset"):
            raise ConfigError(f"--set {key}: prefix must be 'method.' or 'dataset.'")
        hit = False
        for keys, out, kind in [(k, o, "method") for k, o in zip(m_keys, per_m, strict=True)] + \
                [(k, o, "dataset") for k, o in zip(d_keys, per_d, strict=True)]:
            if target in (None, kind) and name in keys:
                out[name], hit = val, True
        if not hit:
            valid = sorted(set().union(*m_keys, *d_keys))
            raise ConfigError(f"--set {key}: no selected method or dataset has parameter "
                              f"{name!r}{closest(name, valid)}; valid: {', '.join(valid)}")
    return per_m, per_d


def _method(registry, selection: str, extra: dict[str, str], kind: str):
    """(class, params, optim, refs) of a method selection for data of ``kind``."""
    name, over = parse_selection(selection)
    cls = registry.get("method", name)
    owner = f"method {name!r}"
    check_param_defaults(cls, owner)
    merged = {**extra, **over}
    fields = param_fields(cls.Params)
    clash = sorted(set(fields) & set(OPTIM_FIELDS))
    if clash:
        raise ConfigError(f"{owner}: Params field {clash[0]!r} shadows a shared optimisation "
                          "setting; remove it (the harness owns the optimiser)")
    optim_over = {k: v for k, v in merged.items() if k in OPTIM_FIELDS}
    own = {k: v for k, v in merged.items() if k not in OPTIM_FIELDS}
    unknown = [k for k in own if k not in fields]
    if unknown:
        valid = sorted(set(fields) | set(OPTIM_FIELDS))
        raise ConfigError(f"unknown parameter {unknown[0]!r} for {owner}"
                          f"{closest(unknown[0], valid)}; valid: {', '.join(valid)}")
    params = build_params(cls.Params, own, owner)
    optim = build_params(OptimConfig, {**cls.default_optim(kind), **optim_over},
                         f"{owner} (optimisation)")
    return cls, params, optim, resolve_refs(registry, params)


def resolve_refs(registry, params: Any) -> dict[str, tuple[type, Any]]:
    """Field -> (dataset class, params) of every ``DatasetRef`` parameter that is set."""
    return {field: resolve_dataset(registry, str(getattr(params, field)))
            for field, tp in param_fields(type(params)).items()
            if is_dataset_ref(tp) and getattr(params, field)}


def _budget(dataset_cls: type, steps: int | None, max_seconds: float | None,
            eval_every: int | None, patience: int, eval_at_seconds: tuple[float, ...],
            val_rows: int | None, test_rows: int | None = None) -> Budget:
    default = DEFAULTS.budget_for(dataset_cls)
    if steps is None and max_seconds is None:
        steps = int(default["steps"])
    return Budget(steps=steps, max_seconds=max_seconds,
                  eval_every=int(default["eval_every"]) if eval_every is None else eval_every,
                  patience=patience, explosion_factor=DEFAULTS.explosion_factor,
                  eval_at_seconds=tuple(eval_at_seconds), val_rows=val_rows,
                  test_rows=test_rows)


def plan_jobs(registry, methods: Sequence[str], datasets: Sequence[str],
              seeds: Sequence[int] = (0,), sets: Sequence[tuple[str, str]] = (), *,
              steps: int | None = None, max_seconds: float | None = None,
              eval_every: int | None = None, patience: int = DEFAULTS.patience,
              eval_at_seconds: tuple[float, ...] = (), val_rows: int | None = None,
              solver: SolverConfig | None = None, device: str = "cpu",
              data_dir: Path | None = None, evaluate_test: bool = True,
              n_samples: int = DEFAULTS.n_samples, test_rows: int | None = None,
              sample_eval: SampleEval | None = None,
              execution: Execution | None = None) -> list[Job]:
    """Every (method, dataset, seed) of the grid as a validated `Job`; ConfigError (one
    line) on the first problem. Reads no data and opens no run. What is not given comes
    from `bench.harness.planning.defaults.DEFAULTS` (the command line's defaults too)."""
    methods, datasets = list(methods), list(datasets)
    if not methods or not datasets or not seeds:
        raise ConfigError("select at least one method (-m), one dataset (-d) and one seed")
    if n_samples < 0:
        raise ConfigError(f"--n-samples must be >= 0, got {n_samples}")
    check_device(device)
    solver = solver if solver is not None else DEFAULTS.solver_config()
    per_m, per_d = _route(registry, methods, datasets, list(sets))
    resolved_d = [resolve_dataset(registry, sel, extra)
                  for sel, extra in zip(datasets, per_d, strict=True)]
    scorers = tuple(registry.scorers()) if hasattr(registry, "scorers") else ()
    jobs = []
    for (m_sel, m_extra), (d_sel, (d_cls, d_params)), seed in itertools.product(
            zip(methods, per_m, strict=True), zip(datasets, resolved_d, strict=True), seeds):
        m_cls, m_params, optim, refs = _method(registry, m_sel, m_extra, d_cls.kind)
        reason = m_cls.supports(d_cls.kind, d_cls.shape(d_params))
        if reason:
            raise ConfigError(f"method {m_cls.name!r} cannot model dataset {d_cls.name!r}: "
                              f"{reason}")
        budget = _budget(d_cls, steps, max_seconds, eval_every, patience, eval_at_seconds,
                         val_rows, test_rows)
        sources = {m_cls.name: _source(registry, "method", m_cls.name),
                   d_cls.name: _source(registry, "dataset", d_cls.name)}
        sources.update({c.name: _source(registry, "scorer", c.name) for c in scorers})
        jobs.append(Job(
            method=m_cls.name, method_cls=m_cls, method_params=m_params,
            dataset=d_cls.name, dataset_cls=d_cls, dataset_params=d_params, seed=int(seed),
            optim=optim, budget=budget, solver=solver, device=device, data_dir=data_dir,
            evaluate_test=evaluate_test, n_samples=n_samples,
            sample_eval=sample_eval or SampleEval(), execution=execution or Execution(),
            refs=refs, sources=sources, scorers=scorers,
            label=f"{m_sel} on {d_sel} seed {seed}"))
    return jobs


def plan_table(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """One row per job for ``--dry-run``: what will run, with which settings."""
    rows = []
    for i, j in enumerate(jobs, 1):
        b = j.budget
        budget = " ".join(x for x in (f"{b.steps} steps" if b.steps else "",
                                      f"{b.max_seconds:g} s" if b.max_seconds else "") if x)
        rows.append({"#": i, "method": j.method, "params": _fmt(_non_default(j.method_params)),
                     "optim": _fmt({k: v for k, v in dataclasses.asdict(j.optim).items()
                                    if k in ("optimizer", "lr") or v}),
                     "dataset": j.dataset,
                     "dataset params": _fmt(_non_default(j.dataset_params)),
                     "seed": j.seed, "budget": budget, "eval every": b.eval_every,
                     "solver": j.solver.label(), "device": j.device})
    return rows


def _source(registry, kind: str, name: str) -> str:
    """Where a plug-in comes from, and its version, for the run's tags."""
    plugin = registry.plugins[kind][name]
    version = getattr(plugin, "version", None)
    return f"{plugin.source} ({version})" if version else str(plugin.source)


def _non_default(params: Any) -> dict[str, Any]:
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)
            if f.default is not dataclasses.MISSING and getattr(params, f.name) != f.default}


def _fmt(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())
