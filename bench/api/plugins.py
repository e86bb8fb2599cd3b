"""The plug-in contract: abstract `Dataset`, `Method` and `FlowMethod`.

A plug-in is one class in one file of `methods/` or `datasets/` (or a folder given with
``--plugins``, or an entry point in the groups ``bench.methods`` / ``bench.datasets``).
Its ``Params`` is a dataclass whose typed fields, with defaults, are what the user can set
with ``-m "name[key=value]"`` or ``--set key=value`` (``Literal[...]`` for enumerations).

The harness owns the optimiser, schedule, clipping, EMA, checkpoints, the training loop and
evaluation; a method defines its networks, its loss on a batch, sampling and likelihood.
A class that leaves an abstract method unimplemented cannot be instantiated, and the
registry lists it as unavailable with the missing names.

Time convention of the whole harness: t=0 is the base density, t=1 the data.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from bench.api.domains import domain_violation
from bench.api.errors import ConfigError
from bench.api.types import LogLikelihood, NoParams, RunContext, Splits, default_data_dir

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = ["Dataset", "Method", "FlowMethod"]


class Dataset(ABC):
    """Base class of dataset plug-ins.

    Subclasses set ``name``, ``kind`` ("toy2d" | "tabular" | "image"), ``Params`` and
    implement ``load``. Datasets with a closed-form density set ``has_log_prob = True`` and
    override ``log_prob`` (exact, in nats); ``sample`` defaults to rows of the train split.

    Example (a plug-in is such a class in a file of ``datasets/``):

    >>> import torch
    >>> from bench.api import Dataset, Splits
    >>> class Line(Dataset):
    ...     '''Points on a line.'''
    ...     name, kind = "line", "toy2d"
    ...     def load(self):
    ...         x = torch.linspace(0, 1, 10).unsqueeze(1).repeat(1, 2)
    ...         return Splits(x[:8], x[8:9], x[9:], (2,), "10 points on y = x")
    >>> Line().splits().train.shape
    torch.Size([8, 2])
    >>> Line.describe()
    'Points on a line.'
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["toy2d", "tabular", "image"]] = "tabular"
    Params: ClassVar[type] = NoParams
    test_params: ClassVar[dict[str, Any]] = {}
    has_log_prob: ClassVar[bool] = False
    synthetic: ClassVar[bool] = False
    #: this dataset's own default budget ``{"steps": N, "eval_every": M}``; None: the
    #: default of its ``kind`` (`bench.harness.planning.defaults`); ``--steps``/``--eval-every``
    #: override
    default_budget: ClassVar[dict[str, int] | None] = None

    def __init__(self, params: Any | None = None, data_dir: Path | None = None) -> None:
        self.params = params if params is not None else self.Params()
        if problem := domain_violation(self.params):
            raise ConfigError(f"dataset {self.name!r}: {problem}")
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self._splits: Splits | None = None

    @classmethod
    def shape(cls, params: Any) -> tuple[int, ...] | None:
        """The event shape if known without reading data (the plan checks methods against
        it): the class attribute ``event_shape`` when set, else None (unknown)."""
        shape = getattr(cls, "event_shape", None)
        return tuple(shape) if shape else None

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Make the data available locally (idempotent: download + checksum if needed)."""

    @abstractmethod
    def load(self) -> Splits:
        """Return the train/val/test splits (float32)."""

    def splits(self) -> Splits:
        """`prepare()` then `load()`, cached on the instance."""
        if self._splits is None:
            self.prepare()
            self._splits = self.load()
        return self._splits

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density (nats) of rows x of shape (n, *event_shape) -> (n,)."""
        raise ConfigError(f"dataset {self.name!r} has no closed-form density")

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw n examples. Default: random rows of the training split."""
        import torch

        train = self.splits().train
        idx = torch.randint(0, train.shape[0], (n,), generator=generator)
        return train[idx]

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


class Method(ABC):
    """Base class of method plug-ins.

    A method implements:

    - ``__init__(params, splits, ctx)``: build its networks (may read ``splits.train``
      for statistics, never the test split); no optimiser: the harness builds it;
    - ``modules() -> {name: nn.Module}``: the networks (the harness optimises their
      parameters, averages them (EMA) and checkpoints them);
    - ``loss(batch, step)``: the scalar objective on a (b, *event_shape) batch of training
      data, or ``(objective, metrics)`` with extra floats to log (e.g. ``nfe_forward``);
    - ``sample(n) -> (n, *event_shape)`` and ``log_prob(x) -> LogLikelihood``.

    Optional hooks: ``after_backward()`` (metrics known only after the backward pass,
    e.g. the adjoint's ``nfe_backward``), ``validation_likelihood(x)`` (a cheaper signal for
    early stopping), ``extra_likelihoods(x)`` (e.g. a bound beside the exact likelihood),
    ``supports(kind, event_shape)`` (which data it can model), ``extra_state()`` /
    ``load_extra_state()`` (non-network state such as random generators).

    Class attributes: ``name``; ``Params`` (typed dataclass); ``test_params`` (small
    settings for the contract checks); ``likelihood`` ("exact" | "bound" | "none");
    ``optim`` (defaults of the shared optimisation settings, `bench.api.OptimConfig`);
    ``trainable`` (False for closed-form fits: no optimiser, no training steps).

    Example: what a subclass must implement (the README's ``methods/diag_gaussian.py`` is a
    complete one in 45 lines):

    >>> from bench.api import Method
    >>> sorted(Method.__abstractmethods__)
    ['log_prob', 'loss', 'modules', 'sample']
    """

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    test_params: ClassVar[dict[str, Any]] = {}
    likelihood: ClassVar[Literal["exact", "bound", "none"]] = "exact"
    optim: ClassVar[dict[str, Any]] = {}
    trainable: ClassVar[bool] = True

    def __init__(self, params: Any, splits: Splits, ctx: RunContext) -> None:
        self.params = params
        if problem := domain_violation(params):
            raise ConfigError(f"method {self.name!r}: {problem}")
        self.event_shape = tuple(splits.event_shape)
        self.ctx = ctx

    #: ranks of the event shapes the method can model, checked by the default `supports`:
    #: (1,) flat vectors (d,), (3,) images (C, H, W), (1, 3) both; None: anything.
    event_ranks: ClassVar[tuple[int, ...] | None] = None

    @classmethod
    def supports(cls, kind: str, event_shape: tuple[int, ...] | None) -> str | None:
        """None if the method can model data of this kind and shape, else one sentence
        saying why not (checked in the plan, before any data is read, where the shape may
        be unknown (None); and again with the loaded shape before training). Default: the
        rank of the event shape (of the kind when the shape is unknown) against
        ``event_ranks``."""
        if cls.event_ranks is None:
            return None
        rank = len(event_shape) if event_shape is not None else (3 if kind == "image" else 1)
        if rank in cls.event_ranks:
            return None
        names = {1: "flat vectors (d,)", 3: "images (C, H, W)"}
        models = " or ".join(names.get(r, f"rank-{r} data") for r in cls.event_ranks)
        shape = f" of shape {tuple(event_shape)}" if event_shape is not None else ""
        return f"{cls.name} models {models}; got {kind or 'the'} data{shape}"

    @classmethod
    def default_optim(cls, kind: str) -> dict[str, Any]:
        """Defaults of the shared optimisation settings for data of ``kind``."""
        return dict(cls.optim)

    def batch_size(self) -> int:
        return int(getattr(self.params, "batch_size", 256))

    @abstractmethod
    def modules(self) -> dict[str, torch.nn.Module]:
        """The networks, by name."""

    @abstractmethod
    def loss(self, batch: Tensor, step: int) -> Tensor | tuple[Tensor, dict[str, float]]:
        """The objective to minimise on a batch (a scalar with a graph), optionally with
        metrics to log."""

    def after_backward(self) -> dict[str, float]:
        """Metrics available only after ``backward()`` of the last loss. Default: none."""
        return {}

    @abstractmethod
    def sample(self, n: int) -> Tensor:
        """n samples of shape (n, *event_shape)."""

    @abstractmethod
    def log_prob(self, x: Tensor) -> LogLikelihood:
        """Per-example log-likelihood (n,) of x (n, *event_shape), labelled."""

    def validation_likelihood(self, x: Tensor) -> LogLikelihood:
        """What early stopping watches (recorded as ``val_nll`` with its kind). Default:
        ``log_prob``; a method whose likelihood is costly may use a cheaper estimate."""
        return self.log_prob(x)

    def extra_likelihoods(self, x: Tensor) -> dict[str, LogLikelihood]:
        """Further likelihoods of the same model, by short name (e.g. DDPM's ``{"elbo":
        <bound>}`` beside its probability-flow ODE ``log_prob``). Recorded as
        ``test_nll_<name>`` with their kind. On 8-bit data (``splits.dequantization ==
        "uniform-8bit"``) these receive the data on the grid and must be log-probabilities
        of the discrete data (e.g. a discretized decoder), while ``log_prob`` receives
        uniformly dequantized points and is a continuous density (the harness adds the
        change of variables). Default: none."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """State outside ``modules()`` to checkpoint (tensors and plain values only)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional
        """Restore what ``extra_state`` returned."""

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


class FlowMethod(Method):
    """A method whose model is an ODE dX/dt = v_t(X) from a base density (t=0) to the data
    (t=1). Sampling and likelihood come from the harness's engine (``ctx.engine``, the
    one ODE engine of `bench.science.ode`, with the harness's solver settings), so every
    flow is scored by the same code.

    Subclasses implement ``velocity_field() -> nn.Module`` (called as ``v(t, x)``),
    ``base_sample(n)``, and ``base_log_prob(x_0)`` when the base is not N(0, I).

    Example: sampling and likelihood are inherited; the velocity field and the base are not

    >>> from bench.api import FlowMethod
    >>> sorted(FlowMethod.__abstractmethods__)
    ['base_sample', 'loss', 'modules', 'velocity_field']
    """

    @abstractmethod
    def velocity_field(self) -> torch.nn.Module:
        """The field to integrate (the EMA average is swapped in by the harness)."""

    @abstractmethod
    def base_sample(self, n: int) -> Tensor:
        """n draws (n, *event_shape) of the base density on the run's device."""

    def base_log_prob(self, x_0: Tensor) -> Tensor:
        """log rho_0(x_0), (n, *shape) -> (n,). Default: the standard Gaussian."""
        x = x_0.reshape(x_0.shape[0], -1)
        return -0.5 * (x * x).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)

    def _engine(self):
        if self.ctx.engine is None:
            raise ConfigError("this RunContext has no ODE engine: build it with "
                              "bench.harness.make_context")
        return self.ctx.engine

    def sample(self, n: int, t: float = 1.0) -> Tensor:
        """Push n base samples through the flow to time t (default 1: the data)."""
        return self._engine().integrate(self.velocity_field(), self.base_sample(n), 0.0, t)

    def log_prob(self, x: Tensor, t: float = 1.0) -> LogLikelihood:
        """log rho_t(x) by integrating (x, log-density) back from time t to 0."""
        return self._engine().log_likelihood(self.velocity_field(), x, self.base_log_prob, t)
