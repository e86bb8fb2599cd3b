"""Data passed between the harness and plug-ins: splits, labelled likelihoods, solver
settings, the run context. Plain data classes; nothing here imports the rest of bench.

Time convention of the whole harness: t=0 is the base density, t=1 the data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NewType, Protocol

from bench.api.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = [
    "Splits", "LogLikelihood", "SolverConfig", "RunContext", "FlowEngine", "NoParams",
    "DatasetRef", "default_data_dir", "ADAPTIVE_SOLVERS", "DIVERGENCES", "PROBES", "KINDS",
    "LIKELIHOOD_KINDS", "per_row_problem", "shape_text",
]

KINDS = ("toy2d", "tabular", "image")
LIKELIHOOD_KINDS = ("exact", "estimate", "bound")
DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")

#: A ``Params`` field typed ``DatasetRef`` names a dataset selection (e.g. InterFlow's
#: ``base=8gaussians``): the plan checks the name, the harness loads it and hands the
#: instance to the method as ``ctx.datasets[field_name]``.
DatasetRef = NewType("DatasetRef", str)


@dataclass
class NoParams:
    """Parameters of a plug-in that has none."""


def default_data_dir() -> Path:
    """`BENCH_DATA_DIR`, else the user cache folder (``~/.cache/bench/data``)."""
    env = os.environ.get("BENCH_DATA_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "bench" / "data"


@dataclass
class Splits:
    """Train/validation/test data of one dataset.

    Attributes:
        train, val, test: float32 tensors of shape (n, *event_shape).
        event_shape: shape of one example, e.g. (43,) or (3, 32, 32).
        provenance: where the rows come from and how they were preprocessed; recorded
            with every run (e.g. "MAF MINIBOONE, reduced pre-split folder ...").
        split_names: a label per split, e.g. {"test": "MAF test split (3648 rows)"}.
        dequantization: how discrete data is made continuous: "none" for real-valued data;
            "uniform-8bit" for 8-bit data scaled to [-1, 1] (the harness adds the uniform
            noise and the change of variables, see `bench.science.metrics`).

    Example:

    >>> import torch
    >>> x = torch.randn(10, 2, 3)
    >>> s = Splits(x[:8], x[8:9], x[9:], (2, 3), "10 Gaussian draws")
    >>> s.dim, s.train.shape
    (6, torch.Size([8, 2, 3]))
    """

    train: Tensor
    val: Tensor
    test: Tensor
    event_shape: tuple[int, ...]
    provenance: str
    split_names: dict[str, str] = field(default_factory=dict)
    dequantization: str = "none"

    @property
    def dim(self) -> int:
        n = 1
        for s in self.event_shape:
            n *= s
        return n


@dataclass
class LogLikelihood:
    """Per-example log-likelihood (nats) with the label every reported number needs.

    Attributes:
        values: (n,) log p(x) in nats (a lower bound of it when ``kind == "bound"``).
        kind: "exact" (up to ODE-solver error), "estimate" (an unbiased stochastic estimate
            of log p, e.g. Hutchinson's trace estimator along the exact ODE path) or "bound"
            (variational, ELBO).
        estimator: how it was obtained, e.g. "ode dopri5 rtol=1e-05 atol=1e-05 div=exact".
        nfe: function evaluations of ONE solve (per chunk of rows; the same for every chunk
            of a fixed-step method, the largest chunk's for an adaptive one).

    Example (a method's ``log_prob`` returns one; the harness records the labels):

    >>> import torch
    >>> ll = LogLikelihood(torch.zeros(3), kind="bound", estimator="negative ELBO")
    >>> ll.values.shape, ll.kind
    (torch.Size([3]), 'bound')
    """

    values: Tensor
    kind: Literal["exact", "estimate", "bound"] = "exact"
    estimator: str = ""
    nfe: int = 0


def shape_text(shape: tuple[int, ...], n: int) -> str:
    """A shape with its leading (batch) dimension written ``n`` when it equals n: the
    contract's messages then read the same whatever the number of rows checked."""
    dims = [str(d) for d in shape]
    if dims and shape[0] == n:
        dims[0] = "n"
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def per_row_problem(values: Any, n: int, what: str, noun: str = "") -> str | None:
    """None when ``values`` is a tensor of shape (n,): one value per row of a batch of n
    rows. Else one sentence, e.g. ``rectflow.base_log_prob(x_0) returned shape () for a
    batch of n rows; expected (n,)``; ``noun`` (e.g. "values of ") goes before "shape".
    Shared by the contract checks and the evaluation path (`bench.science.ode`)."""
    shape = getattr(values, "shape", None)
    if shape is None or not hasattr(values, "dim"):
        return f"{what} returned a {type(values).__name__}, not a tensor"
    if tuple(shape) == (n,):
        return None
    return (f"{what} returned {noun}shape {shape_text(tuple(shape), n)} for a batch of n "
            "rows; expected (n,)")


def check_divergence(divergence: str, probe: str, n_probes: int) -> None:
    """ConfigError unless the divergence settings are valid (shared by every engine)."""
    if divergence not in DIVERGENCES:
        raise ConfigError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if probe not in PROBES:
        raise ConfigError(f"probe must be one of {PROBES}, got {probe!r}")
    if n_probes < 1:
        raise ConfigError("n_probes must be >= 1")


@dataclass(frozen=True)
class SolverConfig:
    """Evaluation solver settings owned by the harness (the same for every method).

    ``divergence="auto"`` (the default) is resolved per input by the engine
    (`divergence_for`): the exact trace for events of at most ``AUTO_EXACT_MAX_DIM``
    dimensions (2-D and tabular data), Hutchinson's estimator above (images), whose
    log-likelihood is then labelled kind "estimate".

    ``val_tol``: rtol = atol of the validation solves (the early-stopping signal, see
    `bench.science.ode.ODEEngine.validating`); None: the test tolerances.
    """

    AUTO_EXACT_MAX_DIM: ClassVar[int] = 128

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    divergence: Literal["auto", "exact", "hutchinson"] = "auto"
    n_probes: int = 1
    probe: Literal["rademacher", "gaussian"] = "rademacher"
    chunk: int | None = None
    val_tol: float | None = None

    def __post_init__(self) -> None:
        if self.method not in ADAPTIVE_SOLVERS:  # checked in the plan, not after training
            raise ConfigError(f"unknown evaluation solver {self.method!r}; valid (adaptive): "
                              f"{', '.join(ADAPTIVE_SOLVERS)}")
        if not (self.rtol > 0 and self.atol > 0):
            raise ConfigError("solver tolerances rtol and atol must be > 0")
        if self.chunk is not None and self.chunk < 1:
            raise ConfigError("solver chunk must be >= 1")
        if self.val_tol is not None and not self.val_tol > 0:
            raise ConfigError(f"--val-tol must be > 0, got {self.val_tol}")
        check_divergence("exact" if self.divergence == "auto" else self.divergence,
                         self.probe, self.n_probes)

    #: rows per evaluation solve when ``chunk`` is None, by device type: fitted on the 2-core
    #: CPU (exact likelihood of the default MINIBOONE model, one function evaluation:
    #: 1024-row chunks 1.44-1.86 s per 3648 rows, one 3648-row chunk 1.87-2.10 s; the test
    #: NLL moved by 3e-5 nats, the NFE not at all); on a GPU bigger batches fill the device
    AUTO_CHUNK: ClassVar[dict[str, int]] = {"cpu": 1024, "cuda": 16384}

    def chunk_for(self, device: Any) -> int:
        """Rows per solve: ``chunk``, or `AUTO_CHUNK` of the device's type (4096 else)."""
        if self.chunk is not None:
            return self.chunk
        return self.AUTO_CHUNK.get(getattr(device, "type", str(device).split(":")[0]), 4096)

    def divergence_for(self, dim: int) -> str:
        """The divergence used for events of ``dim`` dimensions: "auto" is exact up to
        ``AUTO_EXACT_MAX_DIM`` dimensions and Hutchinson's estimator above."""
        if self.divergence != "auto":
            return self.divergence
        return "exact" if dim <= self.AUTO_EXACT_MAX_DIM else "hutchinson"

    def label(self, dim: int | None = None) -> str:
        """The estimator label; with ``dim``, of the divergence actually used for events of
        that dimension ("auto" resolved)."""
        div = self.divergence if dim is None else self.divergence_for(dim)
        if div == "hutchinson":
            div = f"hutchinson({self.probe},k={self.n_probes})"
        return f"ode {self.method} rtol={self.rtol:g} atol={self.atol:g} div={div}"


class FlowEngine(Protocol):
    """What a flow method asks of the harness's ODE engine (`bench.science.ode.ODEEngine`)."""

    def integrate(self, field: Callable[[Tensor, Tensor], Tensor], x: Tensor, t0: float,
                  t1: float) -> Tensor:
        """x(t1) of dx/dt = field(t, x) started at x(t0) = x."""

    def log_likelihood(self, field: Callable[[Tensor, Tensor], Tensor], x: Tensor,
                       base_log_prob: Callable[[Tensor], Tensor],
                       t: float = 1.0) -> LogLikelihood:
        """log rho_t(x) of the flow started at rho_0 = base."""


@dataclass
class RunContext:
    """What the harness hands to a method: device, seed, solver, engine, side datasets.

    Plug-ins never import mlflow or the harness; they report through ``log_metrics``.

    Attributes:
        device, seed: where and with which seed the run happens.
        solver: the evaluation solver settings (also used by methods with their own ODEs).
        engine: the ODE engine configured with ``solver`` (flow methods sample and score
            through it).
        max_steps: the step budget, if any (for methods whose science needs it).
        datasets: the datasets named by ``DatasetRef`` parameters, by field name.
        log_metrics: metrics callback ``(metrics, step)``.
        work_dir: a scratch folder of the run.
    """

    device: str = "cpu"
    seed: int = 0
    solver: SolverConfig = field(default_factory=SolverConfig)
    engine: FlowEngine | None = None
    max_steps: int | None = None
    datasets: dict[str, Any] = field(default_factory=dict)
    log_metrics: Callable[[dict[str, float], int | None], None] = lambda m, step=None: None
    work_dir: Path = field(default_factory=lambda: Path("."))
    generator: torch.Generator | None = None
