"""Suites: a benchmark in version control. A suite is a TOML file in ``suites/`` naming a
grid (methods, datasets, seeds, in the grammar of ``bench run --config``), the budget
policy, the evaluation protocol and the device class it is meant for;
`bench.harness.planning.suites` reads and validates it into a `Suite` (plain data, below)
and plans its jobs exactly as ``bench run`` would.

Every run of a suite carries the tags ``suite`` (its name), ``suite.method`` (the label of
its method entry: `Suite.labels`) and ``suite.device_class``, so a page or a table groups a
suite's records by the entries the suite declares. Nothing here imports the rest of bench.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench.api.errors import ConfigError

__all__ = ["Suite", "SuiteBudget", "SuiteProtocol", "SuiteStudy", "SUITE_TAGS"]

#: the tags every run of a suite carries: its name, its method entry's label, device class
SUITE_TAGS = ("suite", "suite.method", "suite.device_class")


@dataclass(frozen=True)
class SuiteBudget:
    """How long each job of a suite trains: the same for every job.

    Attributes:
        policy: "wall" (equal training wall-clock per job: ``seconds_per_job``), "steps"
            (equal steps: ``steps``) or "both" (each job stops at whichever comes first).
        seconds_per_job: training seconds of each job (evaluation not counted).
        steps: training steps of each job.
        eval_every: validation every N steps (None: the dataset kind's default).
        evals: with a time budget, validate instead at ``evals`` training times geometric
            from ``first_eval`` seconds to ``seconds_per_job`` (the anytime curves'
            points); 0: every ``eval_every`` steps.
        first_eval: training seconds of the first of those validations.
        patience: early stop after N validations without improvement.
    """

    policy: Literal["wall", "steps", "both"] = "wall"
    seconds_per_job: float | None = None
    steps: int | None = None
    eval_every: int | None = None
    evals: int = 0
    first_eval: float = 1.0
    patience: int = 4

    def __post_init__(self) -> None:
        if self.policy not in ("wall", "steps", "both"):
            raise ConfigError(f"budget policy must be wall, steps or both, got {self.policy!r}")
        need_s = self.policy in ("wall", "both")
        need_n = self.policy in ("steps", "both")
        if need_s != (self.seconds_per_job is not None):
            raise ConfigError(f"budget policy {self.policy!r} "
                              + ("needs" if need_s else "takes no") + " seconds_per_job")
        if need_n != (self.steps is not None):
            raise ConfigError(f"budget policy {self.policy!r} "
                              + ("needs" if need_n else "takes no") + " steps")
        if self.evals < 0 or (self.evals and self.seconds_per_job is None):
            raise ConfigError("budget evals must be >= 0, and needs seconds_per_job")
        if not self.first_eval > 0:
            raise ConfigError(f"budget first_eval must be > 0, got {self.first_eval}")


@dataclass(frozen=True)
class SuiteProtocol:
    """How every job of a suite is scored (the same for every method).

    Attributes:
        solver, rtol, atol: the test likelihood's ODE solver and tolerances.
        test_rows, val_rows: score / validate on the first N rows only (None: all).
        sample_metrics: whether FID/KID (images) and the 2-D sample plots are made; the
            sample metrics of vector data (MMD, energy, sliced W2, C2ST against the test
            rows) are computed for every run.
        n_samples: samples drawn for the 2-D sample plots.
        fid_samples: generated images scored by FID/KID (None: bench run's default).
        precisions: the training precisions ("fp32", "bf16"); each job is planned once
            per precision (evaluation is always fp32).
    """

    solver: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    test_rows: int | None = None
    val_rows: int | None = None
    sample_metrics: bool = True
    n_samples: int = 2000
    fid_samples: int | None = None
    precisions: tuple[str, ...] = ("fp32",)

    def __post_init__(self) -> None:
        bad = [p for p in self.precisions if p not in ("fp32", "bf16")]
        if bad or not self.precisions or len(set(self.precisions)) < len(self.precisions):
            raise ConfigError(f"precisions must be distinct values of fp32, bf16, got "
                              f"{list(self.precisions)}")


@dataclass(frozen=True)
class SuiteStudy:
    """The speed-up study a suite expresses (``bench speedup``'s settings): every method
    trained with the same network and batch, validated on the same geometric grid of
    training times, compared to ``reference`` (per-iteration cost ratio, and time to the
    slower method's best validation NLL).

    Attributes:
        reference: the label of the method entry the others are compared to.
        shared: parameter -> value every method takes (net, hidden, activation,
            batch_size), in the selection grammar.
        target: target validation NLL (None: the worst best validation NLL of the methods).
    """

    reference: str
    shared: dict[str, str] = field(default_factory=dict)
    target: float | None = None


@dataclass(frozen=True)
class Suite:
    """One suite, as read and validated from ``suites/<name>.toml``.

    Attributes:
        name: the suite's name (its file's stem). description: one paragraph.
        device_class: the hardware it is meant for, e.g. "cpu-2core", "gpu-1".
        budget, protocol: the equal budget and the evaluation protocol of every job.
        methods: the method selections (``bench run -m`` strings), the shared settings of
            the study already applied; labels: each one's display name (same order;
            ``suite.method`` tag of its runs).
        datasets: dataset selections. seeds: the seeds of every (method, dataset).
        sets: further ``--set`` overrides (key, value) for every job.
        study: the speed-up study (None: the suite is a plain grid).
        optional: labels of the method entries skipped (and said so) when their plug-in is
            unavailable here, e.g. FFJORD's own code without its checkout.
        runnable: False for a suite declared for other hardware, not run here.
        path: the TOML file it was read from.
    """

    name: str
    description: str
    device_class: str
    budget: SuiteBudget
    protocol: SuiteProtocol
    methods: tuple[str, ...]
    labels: tuple[str, ...]
    datasets: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    sets: tuple[tuple[str, str], ...] = ()
    study: SuiteStudy | None = None
    optional: tuple[str, ...] = ()
    runnable: bool = True
    path: Path | None = None

    def __post_init__(self) -> None:
        if len(self.methods) != len(self.labels):
            raise ConfigError(f"suite {self.name!r}: one label per method entry")
        twice = sorted({x for x in self.labels if self.labels.count(x) > 1})
        if twice:
            raise ConfigError(f"suite {self.name!r}: method label {twice[0]!r} is used twice")

    @property
    def n_jobs(self) -> int:
        """Jobs in the grid: methods x datasets x seeds x precisions."""
        return (len(self.methods) * len(self.datasets) * len(self.seeds)
                * len(self.protocol.precisions))

    def label_of(self, selection: str) -> str:
        """The label of a method entry given its selection string."""
        return self.labels[self.methods.index(selection)]
