"""Suites from their TOML files: read, validate, plan.

A suite file ``suites/<name>.toml`` holds a ``[suite]`` table (name, description,
device_class, runnable, and the tables ``[suite.budget]``, ``[suite.protocol]``, optionally
``[suite.study]``) and the grid in the grammar of ``bench run --config``: ``[[method]]``
tables or selection strings (a table may name its ``label``), ``dataset``, ``seeds`` and
``set``. `load_suite` reads it into a `bench.api.suites.Suite` (an unknown key or a bad value
is one `ConfigError` line naming the file), and `plan_suite` plans every job with
`bench.harness.planning.plan.plan_jobs`, exactly as ``bench run`` would: a suite is
validated like a ``--dry-run``, before any data is read.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from pathlib import Path
from typing import Any

from bench.api import ConfigError, Execution, Job, SampleEval
from bench.api.suites import Suite, SuiteBudget, SuiteProtocol, SuiteStudy
from bench.harness.planning.defaults import DEFAULTS
from bench.harness.planning.plan import parse_seeds, plan_jobs
from bench.harness.planning.selection import closest, parse_selection

__all__ = ["SUITES_DIR", "suite_path", "load_suite", "parse_suite", "plan_suite",
           "suite_names", "eval_times", "skipped", "runnable_part", "entry_labels", "device_of",
           "selection_text", "value_text"]

#: where suite files live, relative to the project root
SUITES_DIR = Path("suites")

_TOP = ("suite", "method", "dataset", "seeds", "set")
_SUITE = ("name", "description", "device_class", "runnable", "budget", "protocol", "study")


def value_text(value: Any) -> str:
    """A setting as the selection grammar writes it: [16, 16] -> "(16,16)"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "(" + ",".join(value_text(v) for v in value) + ")"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and "," in value:
        return f'"{value}"'
    return str(value)


def selection_text(entry: Any, where: str, skip: tuple[str, ...] = ()) -> str:
    """A selection from a string, or from a table ``{name = ..., param = value, ...}``
    (the keys in ``skip`` are not parameters)."""
    if isinstance(entry, str):
        return entry
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ConfigError(f"{where}: a selection is a string or a table with a name, got "
                          f"{entry!r}")
    params = [f"{k}={value_text(v)}" for k, v in entry.items() if k not in ("name", *skip)]
    return entry["name"] + (f"[{','.join(params)}]" if params else "")


def _folders(root: Path) -> list[Path]:
    """Where suites are looked for: ``root/suites``, then the source checkout's."""
    from bench.harness.planning.registry import checkout_root

    checkout = checkout_root()
    out = [Path(root) / SUITES_DIR]
    if checkout is not None and (checkout / SUITES_DIR).resolve() != out[0].resolve():
        out.append(checkout / SUITES_DIR)
    return out


def suite_names(root: Path = Path(".")) -> list[str]:
    """The names of the suites in ``root/suites`` and the checkout's ``suites/`` (sorted)."""
    return sorted({p.stem for folder in _folders(root) for p in folder.glob("*.toml")})


def suite_path(name: str, root: Path = Path(".")) -> Path:
    """The file of suite ``name``: ``root/suites/<name>.toml``, else the checkout's (or
    ``name`` itself when it is a path to a .toml file)."""
    if name.endswith(".toml"):
        return Path(name)
    for folder in _folders(root):
        if (folder / f"{name}.toml").is_file():
            return folder / f"{name}.toml"
    names = suite_names(root)
    raise ConfigError(f"no suite {name!r} in {' or '.join(map(str, _folders(root)))}"
                      f"{closest(name, names)}; suites: " + (", ".join(names) or "none"))


def load_suite(name: str, root: Path = Path(".")) -> Suite:
    """The validated suite of ``suites/<name>.toml`` (or of a path to a TOML file)."""
    path = suite_path(name, root)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"suite {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"suite {path}: not TOML: {exc}") from None
    return parse_suite(data, path)


def _check_keys(table: Any, valid: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {table!r}")
    for key in table:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {key!r}{closest(key, list(valid))}; "
                              f"valid: {', '.join(valid)}")
    return table


def _build(cls: type, table: Any, where: str) -> Any:
    """An instance of the dataclass ``cls`` from a TOML table, each value of its type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    _check_keys(table, tuple(fields), where)
    for key, value in table.items():
        if not _is_a(value, hints[key]):
            raise ConfigError(f"{where}: {key} = {value!r} is not a "
                              f"{_type_name(hints[key])}")
    def typed(key: str, v: Any) -> Any:
        if hints[key] in (float, float | None) and isinstance(v, int):
            return float(v)
        return tuple(v) if isinstance(v, list) else v

    try:
        return cls(**{k: typed(k, v) for k, v in table.items()})
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _is_a(value: Any, tp: Any) -> bool:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Literal:
        return value in args
    if typing.get_origin(tp) is tuple:
        return isinstance(value, list) and all(_is_a(v, args[0]) for v in value)
    if args and typing.get_origin(tp) is not dict:
        return any(_is_a(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool) \
            and math.isfinite(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typing.get_origin(tp) is dict:
        return isinstance(value, dict)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return " or ".join(getattr(a, "__name__", str(a)) for a in (args or [tp]))


def _methods(entries: Any, shared: dict[str, str],
             where: str) -> tuple[list[str], list[str], list[str]]:
    """Selections, labels and optional labels of the method entries, the study's shared
    settings added (a table may say ``label = "..."`` and ``optional = true``)."""
    items = entries if isinstance(entries, list) else [entries]
    selections, labels, optional = [], [], []
    for i, entry in enumerate(items):
        table = entry if isinstance(entry, dict) else {}
        label, opt = table.get("label"), table.get("optional", False)
        if label is not None and not isinstance(label, str):
            raise ConfigError(f"{where}: method {i + 1}: label must be a string")
        if not isinstance(opt, bool):
            raise ConfigError(f"{where}: method {i + 1}: optional must be true or false")
        text = selection_text(entry, f"{where}: method {i + 1}", skip=("label", "optional"))
        name, own = parse_selection(text)
        over = {**shared, **own}
        selections.append(name + (f"[{','.join(f'{k}={v}' for k, v in over.items())}]"
                                  if over else ""))
        labels.append(label or text)
        if opt:
            optional.append(labels[-1])
    return selections, labels, optional


def parse_suite(data: dict[str, Any], path: Path) -> Suite:
    """The `Suite` of a parsed TOML document (``path`` names it in messages)."""
    where = f"suite {path}"
    _check_keys(data, _TOP, where)
    table = _check_keys(data.get("suite"), _SUITE, f"{where}: [suite]")
    name = table.get("name")
    if name != path.stem:
        raise ConfigError(f"{where}: [suite] name must be {path.stem!r} (the file's name), "
                          f"got {name!r}")
    for key in ("description", "device_class"):
        if not isinstance(table.get(key), str) or not table[key].strip():
            raise ConfigError(f"{where}: [suite] {key} must be a non-empty string")
    if not isinstance(table.get("runnable", True), bool):
        raise ConfigError(f"{where}: [suite] runnable must be true or false")
    budget = _build(SuiteBudget, table.get("budget", {}), f"{where}: [suite.budget]")
    protocol = _build(SuiteProtocol, table.get("protocol", {}), f"{where}: [suite.protocol]")
    study = None
    if "study" in table:
        raw = dict(_check_keys(table["study"], ("reference", "shared", "target"),
                               f"{where}: [suite.study]"))
        raw["shared"] = {k: value_text(v) for k, v in raw.get("shared", {}).items()}
        study = _build(SuiteStudy, raw, f"{where}: [suite.study]")
    if "method" not in data or "dataset" not in data:
        raise ConfigError(f"{where}: give the grid: [[method]] entries and dataset = [...]")
    methods, labels, optional = _methods(data["method"], study.shared if study else {}, where)
    datasets = data["dataset"] if isinstance(data["dataset"], list) else [data["dataset"]]
    seeds = data.get("seeds", [0])
    seeds_text = ",".join(map(str, seeds)) if isinstance(seeds, list) else str(seeds)
    sets = data.get("set", {})
    if not isinstance(sets, dict):
        raise ConfigError(f"{where}: set must be a table {{key = value, ...}}")
    try:
        suite = Suite(
            name=name, description=" ".join(table["description"].split()),
            device_class=table["device_class"], budget=budget, protocol=protocol,
            methods=tuple(methods), labels=tuple(labels),
            datasets=tuple(selection_text(d, f"{where}: dataset") for d in datasets),
            seeds=tuple(parse_seeds(seeds_text)),
            sets=tuple((k, value_text(v)) for k, v in sets.items()), study=study,
            optional=tuple(optional), runnable=table.get("runnable", True), path=path)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if study is not None and study.reference not in suite.labels:
        raise ConfigError(f"{where}: [suite.study] reference {study.reference!r} is no "
                          f"method label; labels: {', '.join(suite.labels)}")
    return suite


def device_of(device_class: str) -> str:
    """The torch device of a device class: "gpu-..." -> "cuda", anything else "cpu"."""
    return "cuda" if device_class.startswith("gpu") else "cpu"


def eval_times(budget: SuiteBudget) -> tuple[float, ...]:
    """Training times of the validations: after the first step (0), then ``evals`` times
    geometric from ``first_eval`` to ``seconds_per_job`` (`bench speedup`'s grid); () when
    the suite validates every ``eval_every`` steps."""
    if not budget.evals:
        return ()
    end = float(budget.seconds_per_job or 0.0)
    if not 0 < budget.first_eval < end:
        raise ConfigError(f"budget first_eval must be in (0, seconds_per_job = {end:g})")
    if budget.evals == 1:
        return (0.0, end)
    ratio = (end / budget.first_eval) ** (1 / (budget.evals - 1))
    return (0.0, *(budget.first_eval * ratio**k for k in range(budget.evals - 1)), end)


def skipped(registry, suite: Suite) -> dict[str, str]:
    """Label -> reason of the optional method entries whose plug-in is unavailable here."""
    out = {}
    for sel, label in zip(suite.methods, suite.labels, strict=True):
        plugin = registry.plugins["method"].get(parse_selection(sel)[0])
        if label in suite.optional and plugin is not None and not plugin.available:
            out[label] = str(plugin.error)
    return out


def runnable_part(registry, suite: Suite) -> Suite:
    """The suite without its optional method entries that are unavailable here."""
    gone = skipped(registry, suite)
    keep = [i for i, label in enumerate(suite.labels) if label not in gone]
    return dataclasses.replace(suite, methods=tuple(suite.methods[i] for i in keep),
                               labels=tuple(suite.labels[i] for i in keep))


def plan_suite(registry, suite: Suite, *, data_dir: Path | None = None,
               device: str | None = None) -> list[Job]:
    """Every job of the suite, planned as ``bench run`` plans it (ConfigError, one line, on
    the first problem; no data read), without the optional entries unavailable here
    (`skipped`). Each job's label starts with its method's label."""
    suite = runnable_part(registry, suite)
    b, p = suite.budget, suite.protocol
    solver = DEFAULTS.solver_config(method=p.solver, rtol=p.rtol, atol=p.atol)
    sample_eval = SampleEval(samples=p.fid_samples if p.sample_metrics else 0)
    jobs = []
    for precision in p.precisions:
        try:
            jobs += plan_jobs(
                registry, suite.methods, suite.datasets, suite.seeds, suite.sets,
                steps=b.steps, max_seconds=b.seconds_per_job, eval_every=b.eval_every,
                patience=b.patience, eval_at_seconds=eval_times(b), val_rows=p.val_rows,
                solver=solver, device=device or device_of(suite.device_class),
                data_dir=data_dir, n_samples=p.n_samples if p.sample_metrics else 0,
                test_rows=p.test_rows, sample_eval=sample_eval,
                execution=Execution(precision=typing.cast(Any, precision)))
        except ConfigError as exc:
            raise ConfigError(f"suite {suite.name}: {exc}") from None
    labels = entry_labels(suite, len(jobs))
    return [dataclasses.replace(j, label=f"{label}: {j.label}")
            for j, label in zip(jobs, labels, strict=True)]


def entry_labels(suite: Suite, n_jobs: int) -> list[str]:
    """The method label of each job of `plan_suite` (of the suite without its skipped
    entries), in order: precisions, then methods, datasets, seeds."""
    per_method = len(suite.datasets) * len(suite.seeds)
    return [suite.labels[(i // per_method) % len(suite.labels)] for i in range(n_jobs)]
