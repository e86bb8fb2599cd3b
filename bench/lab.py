"""The Python API for notebooks: run a job and get its record; load a finished run as a
model.

    from bench import lab
    rec = lab.run("interflow", "8gaussians", steps=500, hidden=(64, 64))
    rec.metrics["test_nll"]
    model = lab.load(rec)                 # or a run id, or a checkpoint.pt path
    x = model.sample(1000)
    model.log_prob(x, t=0.5).values       # log-density of the flow at time t

(`run` and `load` carry examples that run as doctests, tests/test_docs.py.)

Like the CLI, this module may import every layer of bench.
"""

from __future__ import annotations

import functools
import inspect
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.api import ConfigError, FlowMethod, Job, LogLikelihood, Method, RunRecord, Sink

if TYPE_CHECKING:
    from torch import Tensor

    from bench.api import SolverConfig
    from bench.harness.planning.registry import Registry

__all__ = ["run", "plan", "load", "Model"]

CHECKPOINT = "checkpoint.pt"
_GRID = ("registry", "methods", "datasets", "seeds", "sets")


@functools.lru_cache(maxsize=1)
def _default_registry() -> Registry:
    from bench.harness.planning.registry import Registry

    return Registry()


def _text(value: Any) -> str:
    """A setting as the selection grammar writes it: (16, 16) -> "(16,16)"."""
    if isinstance(value, tuple | list):
        return "(" + ",".join(str(v) for v in value) + ")"
    return str(value)


def plan(method: str, dataset: str, *, seed: int = 0, steps: int | None = None,
         max_seconds: float | None = None, data_dir: str | Path | None = None,
         device: str = "cpu", registry: Registry | None = None, **settings: Any) -> Job:
    """The validated `Job` `run` would run (arguments as for `run`): the job ``bench run``
    plans for the same selection (both read `bench.harness.planning.defaults.DEFAULTS`; the same
    ``bench.harness.training.runfolder.job_key``), without a run folder.

    Raises:
        ConfigError: a bad selection or setting (one line).
    """
    from bench.harness.planning.plan import plan_jobs

    registry = registry if registry is not None else _default_registry()
    known = set(inspect.signature(plan_jobs).parameters) - set(_GRID)
    plan_kw = {k: v for k, v in settings.items() if k in known}
    sets = [(k.replace("__", ".", 1), _text(v)) for k, v in settings.items() if k not in known]
    jobs = plan_jobs(registry, [method], [dataset], [seed], sets, steps=steps,
                     max_seconds=max_seconds, device=device,
                     data_dir=Path(data_dir) if data_dir is not None else None, **plan_kw)
    if len(jobs) != 1:
        raise ConfigError(f"expected one job for {method} on {dataset}, planned {len(jobs)}")
    return jobs[0]


def run(method: str, dataset: str, *, seed: int = 0, steps: int | None = None,
        max_seconds: float | None = None, sink: Sink | None = None,
        data_dir: str | Path | None = None, device: str = "cpu",
        registry: Registry | None = None, **settings: Any) -> RunRecord:
    """Plan, train and evaluate one (method, dataset, seed) and return its record.

    Every setting not given takes the command line's default (`plan`): ``lab.run`` and
    ``bench run`` behave the same.

    Args:
        method, dataset: selections as on the command line, e.g. ``"interflow[hidden=(64,64)]"``
            and ``"8gaussians[n_train=500]"``.
        seed: the run's seed. steps, max_seconds: the budget (default: the dataset's).
        sink: where the record also goes, e.g. ``MlflowSink(uri)``; default a `MemorySink`
            whose artifacts (checkpoint, samples) are copied to a fresh temporary folder.
        data_dir: data root (default ``BENCH_DATA_DIR`` or the user cache).
        device: torch device.
        registry: the plug-ins (default: the built-in ones and installed entry points).
        **settings: settings of the plan (``eval_every``, ``patience``, ``solver``,
            ``evaluate_test``, ``n_samples``, ...) and parameter overrides of the method,
            the dataset or the shared optimisation (like ``--set key=value``; prefix
            ``dataset__`` / ``method__`` to target one side, e.g. ``dataset__n_train=500``).

    Returns:
        The run's `RunRecord` (status FINISHED, or FAILED with ``record.failure``, also
        when the job could not start).

    Example (a closed-form fit on a small synthetic dataset, a few seconds):

    >>> from bench import lab
    >>> rec = lab.run("gaussian_mle", "gaussian[dim=2,n_train=500,n_val=100,n_test=100]",
    ...               n_samples=64)
    >>> rec.status, rec.tags["test_nll.kind"]
    ('FINISHED', 'exact')
    >>> sorted(k for k in rec.metrics if k.startswith("test_nll"))
    ['test_nll', 'test_nll_gap', 'test_nll_gap_se', 'test_nll_nfe', 'test_nll_se']
    """
    from bench.launch.local import LocalLauncher
    from bench.launch.specs import specs_of
    from bench.record.memory import MemorySink

    registry = registry if registry is not None else _default_registry()
    job = plan(method, dataset, seed=seed, steps=steps, max_seconds=max_seconds,
               data_dir=data_dir, device=device, registry=registry, **settings)
    if sink is None:
        sink = MemorySink(artifact_dir=tempfile.mkdtemp(prefix="bench-run-"))
    # the path of `bench run`: the job as a spec, run by the local launcher
    (record,) = LocalLauncher(lambda: sink, registry=registry).submit(specs_of([job]))
    return record


@dataclass
class Model:
    """A trained method loaded from its checkpoint (evaluation weights: the EMA average
    when the run kept one), scored by the harness's engine with the given solver.

    Attributes:
        method: the `bench.api.Method` instance.
        checkpoint: the checkpoint dictionary it was loaded from.
        path: the checkpoint file.
    """

    method: Method
    checkpoint: dict[str, Any]
    path: Path | None = None

    def __post_init__(self) -> None:
        for module in self.method.modules().values():
            module.eval()

    @property
    def device(self) -> str:
        return self.method.ctx.device

    def log_prob(self, x: Tensor, t: float = 1.0) -> LogLikelihood:
        """Per-example log-likelihood (n,) of x (n, *event_shape), labelled exact or bound.

        For a flow, ``t`` selects the time of the density (1: the data, 0: the base).
        On 8-bit image data this is the method's continuous density of dequantized points
        (the harness adds the change of variables when it reports a test NLL).
        """
        x = x.to(self.device)
        if isinstance(self.method, FlowMethod):
            return self.method.log_prob(x, t=t)
        if t != 1.0:
            raise ConfigError(f"method {self.method.name!r} is not a flow: log_prob has no "
                              f"time t (got t={t})")
        return self.method.log_prob(x)

    def sample(self, n: int) -> Tensor:
        """n samples of shape (n, *event_shape)."""
        import torch

        with torch.no_grad():
            return self.method.sample(n)


def _local_checkpoint(source: Any, tracking_uri: str | None) -> Path:
    from bench.record.stores import open_source, store_uri

    if isinstance(source, RunRecord):
        where = source.artifacts.get(CHECKPOINT, "")
        if where and Path(where).is_file():
            return Path(where)
        if where.startswith("file://"):
            from urllib.parse import unquote, urlparse

            if Path(unquote(urlparse(where).path)).is_file():
                return Path(unquote(urlparse(where).path))
        if source.run_id is None:
            raise ConfigError(f"run {source.name} kept no {CHECKPOINT}")
        source = source.run_id
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir() and (path / CHECKPOINT).is_file():
        return path / CHECKPOINT
    if path.suffix == ".pt" or "/" in str(source):
        raise ConfigError(f"no checkpoint file {source}")
    if tracking_uri is None and not os.environ.get("MLFLOW_TRACKING_URI"):
        if not Path("results/mlflow.db").is_file():
            raise ConfigError(f"no checkpoint file or tracking store for run {source!r}: "
                              "give tracking_uri= (default store results/mlflow.db is absent)")
    return open_source(store_uri(tracking_uri, Path("results"))).checkpoint(str(source))


def load(run_id_or_checkpoint_path: str | Path | RunRecord, *,
         tracking_uri: str | None = None, device: str = "cpu",
         solver: SolverConfig | None = None, data_dir: str | Path | None = None,
         registry: Registry | None = None) -> Model:
    """Load a finished run as a `Model`.

    Args:
        run_id_or_checkpoint_path: an MLflow run id (looked up in ``tracking_uri``), a
            ``checkpoint.pt`` file (or the folder holding one), or a `RunRecord`.
        tracking_uri: the store of a run id (default ``MLFLOW_TRACKING_URI`` or
            ``results/mlflow.db``).
        device: where the model goes. solver: the evaluation solver of ``log_prob`` and
            ``sample`` (default `SolverConfig()`; use the run's to reproduce its numbers).
        data_dir: data root (the method is rebuilt on its dataset's training split).
        registry: the plug-ins (default: the built-in ones and installed entry points).

    Example:

    >>> from bench import lab
    >>> rec = lab.run("gaussian_mle", "gaussian[dim=2,n_train=500,n_val=100,n_test=100]",
    ...               n_samples=64)
    >>> model = lab.load(rec)       # or rec.artifacts["checkpoint.pt"], or an MLflow run id
    >>> x = model.sample(5)
    >>> x.shape, model.log_prob(x).values.shape, model.log_prob(x).kind
    (torch.Size([5, 2]), torch.Size([5]), 'exact')
    """
    from bench.harness.running.run import load_model
    from bench.harness.training.checkpoint import load_checkpoint

    path = _local_checkpoint(run_id_or_checkpoint_path, tracking_uri)
    ckpt = load_checkpoint(path)  # weights_only=True: tensors and plain values only
    registry = registry if registry is not None else _default_registry()
    method = load_model(ckpt, registry, data_dir=Path(data_dir) if data_dir else None,
                        device=device, solver=solver)
    return Model(method, ckpt, path)
