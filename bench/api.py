"""The plug-in contract: `Dataset` and `Method` base classes and the small data classes
passed between the harness and plug-ins.

A plug-in is one class in one file of `methods/` or `datasets/` (or a folder given with
``--plugins``, or an entry point in the groups ``bench.methods`` / ``bench.datasets``).
Its ``Params`` is a dataclass whose typed fields, with defaults, are what the user can set
with ``-m "name[key=value]"`` or ``--set key=value``.

Time convention of the whole harness: t=0 is the base density, t=1 the data.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from bench.dynamics import SolverConfig

__all__ = [
    "Dataset",
    "Method",
    "FlowMethod",
    "Splits",
    "LogLikelihood",
    "RunContext",
    "NoParams",
    "default_data_dir",
]


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
        dequantization: how discrete data was made continuous ("none" for real data).
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


class Dataset:
    """Base class of dataset plug-ins.

    Subclasses set ``name``, ``kind`` ("toy2d" | "tabular" | "image"), ``Params`` and
    implement ``load``. Synthetic datasets with a closed-form density set
    ``has_log_prob = True`` and implement ``log_prob`` (exact, in nats) and ``sample``.
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "tabular"
    Params: ClassVar[type] = NoParams
    test_params: ClassVar[dict[str, Any]] = {}
    has_log_prob: ClassVar[bool] = False
    synthetic: ClassVar[bool] = False
    #: the harness's default budget for this dataset (``--steps``/``--eval-every`` override)
    default_budget: ClassVar[dict[str, int]] = {"steps": 5000, "eval_every": 250}

    def __init__(self, params: Any | None = None, data_dir: Path | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self._splits: Splits | None = None

    def prepare(self) -> None:
        """Make the data available locally (idempotent: download + checksum if needed)."""

    def load(self) -> Splits:
        """Return the train/val/test splits (float32)."""
        raise NotImplementedError

    def splits(self) -> Splits:
        """`prepare()` then `load()`, cached on the instance."""
        if self._splits is None:
            self.prepare()
            self._splits = self.load()
        return self._splits

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density (nats) of rows x of shape (n, *event_shape) -> (n,)."""
        raise NotImplementedError(f"dataset {self.name!r} has no closed-form density")

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw n examples. Default: random rows of the training split."""
        import torch

        train = self.splits().train
        idx = torch.randint(0, train.shape[0], (n,), generator=generator)
        return train[idx]

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


@dataclass
class LogLikelihood:
    """Per-example log-likelihood (nats) with the label every reported number needs.

    Attributes:
        values: (n,) log p(x) in nats (a lower bound of it when ``kind == "bound"``).
        kind: "exact" (up to ODE-solver error) or "bound" (variational, ELBO).
        estimator: how it was obtained, e.g. "ode dopri5 rtol=1e-05 atol=1e-05 div=exact".
        nfe: number of function evaluations the solver used (0 if none).
    """

    values: Tensor
    kind: str = "exact"
    estimator: str = ""
    nfe: int = 0


@dataclass
class RunContext:
    """What the harness hands to a method: device, seed, solver settings, callbacks.

    Plug-ins never import mlflow; they report through ``log_metrics``.
    """

    device: str = "cpu"
    seed: int = 0
    work_dir: Path = field(default_factory=lambda: Path("."))
    solver: SolverConfig | None = None
    max_steps: int | None = None
    log_metrics: Callable[[dict[str, float], int | None], None] = lambda m, step=None: None
    load_dataset: Callable[[str], Dataset] | None = None
    generator: Any = None

    def solver_config(self) -> SolverConfig:
        from bench.dynamics import SolverConfig

        return self.solver if self.solver is not None else SolverConfig()


class Method:
    """Base class of method plug-ins.

    The harness owns the training loop (budget, batching, timing, evaluation, early
    stopping, checkpoints) so that every method is timed and scored by the same code.
    A method implements:

    - ``__init__(params, splits, ctx)``: build networks and optimizer (may read
      ``splits.train`` for statistics; never the test split);
    - ``train_step(batch, step) -> dict``: one optimisation step on a (b, *event_shape)
      batch of training data; returns at least ``{"loss": float}`` and may add
      ``nfe_forward`` / ``nfe_backward``;
    - ``sample(n) -> Tensor`` and ``log_prob(x) -> LogLikelihood``;
    - ``state_dict()`` / ``load_state_dict()`` (tensors and plain values only).
    """

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    test_params: ClassVar[dict[str, Any]] = {}
    likelihood: ClassVar[str] = "exact"  # "exact" | "bound" | "none"

    def __init__(self, params: Any, splits: Splits, ctx: RunContext) -> None:
        self.params = params
        self.event_shape = tuple(splits.event_shape)
        self.ctx = ctx

    def batch_size(self) -> int:
        return int(getattr(self.params, "batch_size", 256))

    def train_step(self, batch: Tensor, step: int) -> dict[str, float]:
        raise NotImplementedError

    def sample(self, n: int) -> Tensor:
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> LogLikelihood:
        raise NotImplementedError

    def validation_likelihood(self, x: Tensor) -> LogLikelihood:
        """What early stopping watches (recorded as ``val_nll`` with its kind). Default:
        ``log_prob``; a method whose likelihood is costly may use a cheaper estimate."""
        return self.log_prob(x)

    def extra_likelihoods(self, x: Tensor) -> dict[str, LogLikelihood]:
        """Further likelihoods of the same model, by short name (e.g. DDPM's ``{"elbo":
        <bound>}`` beside its probability-flow ODE ``log_prob``). Recorded as
        ``test_nll_<name>`` with their kind. Default: none."""
        return {}

    def modules(self) -> dict[str, torch.nn.Module]:
        """The trainable networks, by name (used by contract tests and parameter counts)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {k: m.state_dict() for k, m in self.modules().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state[k])

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


class FlowMethod(Method):
    """A method whose model is an ODE dX/dt = v_t(X) from a base density (t=0) to the data
    (t=1). Sampling and likelihood come from `bench.dynamics` with the harness's solver
    settings, so every flow is scored by the same code.

    Subclasses implement ``velocity_field() -> nn.Module`` (called as ``v(t, x)``),
    ``base_log_prob(x_0)`` and ``base_sample(n)``.
    """

    def velocity_field(self) -> torch.nn.Module:
        raise NotImplementedError

    def base_log_prob(self, x_0: Tensor) -> Tensor:
        """log rho_0(x_0), (n, *shape) -> (n,). Default: the standard Gaussian."""
        from bench.dynamics import standard_normal_log_prob

        return standard_normal_log_prob(x_0)

    def base_sample(self, n: int) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, t: float = 1.0) -> Tensor:
        """Push n base samples through the flow to time t (default 1: the data)."""
        from bench.dynamics import integrate

        x_0 = self.base_sample(n)
        return integrate(self.velocity_field(), x_0, 0.0, t, self.ctx.solver_config()).x

    def log_prob(self, x: Tensor, t: float = 1.0) -> LogLikelihood:
        """log rho_t(x) by integrating (x, log-density) back from time t to 0."""
        from bench.dynamics import log_likelihood

        return log_likelihood(
            self.velocity_field(), x, self.base_log_prob, self.ctx.solver_config(), t=t,
            seed=self.ctx.seed,
        )


def replace_params(params: Any, **changes: Any) -> Any:
    """`dataclasses.replace` for plug-in parameters."""
    return dataclasses.replace(params, **changes)
