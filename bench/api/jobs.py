"""Jobs: what the plan makes and the harness runs. A `Job` (method and dataset with typed
parameters, seed, `Budget`, `OptimConfig`, `SolverConfig`, `SampleEval`, `Execution`) is
plain data, validated at construction; nothing here imports the rest of bench.

selection strings -> plan (`Job`s, validated) -> ``run_job(job, sink)`` -> `RunRecord`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.api.errors import ConfigError
from bench.api.types import SolverConfig

__all__ = ["OptimConfig", "Budget", "SampleEval", "Execution", "Job", "JobSpec"]


@dataclass(frozen=True)
class OptimConfig:
    """The optimisation settings every method shares; the harness builds from them the
    optimiser, learning-rate schedule, gradient clipping and EMA of the weights.

    Attributes:
        optimizer: "adam" or "adamw" (decoupled weight decay).
        lr: learning rate. weight_decay: L2 (adam) or decoupled (adamw) decay.
        schedule: "constant", "cosine" or "linear" decay to 0 over the step budget (constant
            when the budget is only in seconds), after ``warmup`` linear warm-up steps.
        grad_clip: maximum gradient norm (0: off).
        ema: decay of the exponential moving average of the weights (0: off); evaluation,
            sampling and checkpoints' "ema" entry use the average.
        ema_warmup: use decay min(ema, (1 + n) / (10 + n)) after n updates (DDPM's).
    """

    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup: int = 0
    grad_clip: float = 0.0
    ema: float = 0.0
    ema_warmup: bool = False

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
        if self.weight_decay < 0 or self.warmup < 0 or self.grad_clip < 0:
            raise ConfigError("weight_decay, warmup and grad_clip must be >= 0")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema decay must be in [0, 1), got {self.ema}")


@dataclass(frozen=True)
class Budget:
    """How long a run trains and how it is validated.

    Attributes:
        steps: maximum training steps (None: only the time budget).
        max_seconds: maximum training seconds (evaluation not counted).
        eval_every: validation every N steps (unless ``eval_at_seconds``).
        eval_at_seconds: validate once each of these training times is passed.
        patience: early stop after N validations without improvement.
        val_rows: use only the first N validation rows (None: all).
        test_rows: score only the first N test rows (None: all; the test split's tag says
            so when a subset was scored).
        explosion_factor: stop as diverged once a step's |loss| exceeds this factor times
            max(1, the largest |loss| of the first ``explosion_steps`` steps) (0: only a
            non-finite loss stops the run).
        explosion_steps: the early steps whose |loss| sets that reference.
    """

    steps: int | None = 5000
    max_seconds: float | None = None
    eval_every: int = 250
    eval_at_seconds: tuple[float, ...] = ()
    patience: int = 4
    val_rows: int | None = None
    test_rows: int | None = None
    explosion_factor: float = 1e6
    explosion_steps: int = 1

    def __post_init__(self) -> None:
        if self.steps is None and self.max_seconds is None:
            raise ConfigError("give a budget: --steps and/or --max-seconds")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.steps}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ConfigError(f"--max-seconds must be > 0, got {self.max_seconds}")
        if self.eval_every < 1:
            raise ConfigError(f"--eval-every must be >= 1, got {self.eval_every}")
        if self.patience < 1:
            raise ConfigError(f"--patience must be >= 1, got {self.patience}")
        for name, rows in (("--val-rows", self.val_rows), ("--test-rows", self.test_rows)):
            if rows is not None and rows < 2:
                raise ConfigError(f"{name} must be >= 2, got {rows}")
        if not (self.explosion_factor == 0 or self.explosion_factor > 1):
            raise ConfigError("--explosion-factor must be 0 (off) or a number > 1, got "
                              f"{self.explosion_factor}")
        if self.explosion_steps < 1:
            raise ConfigError(f"explosion_steps must be >= 1, got {self.explosion_steps}")


@dataclass(frozen=True)
class SampleEval:
    """Sample-based scoring of image runs: FID and KID of generated samples against the
    Inception features of a named split (`bench.science.fid`), and the samples grid.

    Attributes:
        samples: generated images scored (0: no FID/KID); None: 1000 on image data, 0 else.
        reference: the split whose features are the reference ("train", "val" or "test";
            recorded with every FID: train and test differ by about 2 FID points for DDPM
            on CIFAR-10).
        reference_rows: use only the first N images of the reference split (None: all).
        kid_subsets, kid_subset_size: KID's subsets (size clipped to the smaller set).
        grid: images in the samples grid PNG (0: none).
        resize: the resize to the Inception input, "tf1" (TF1 bilinear, the published FIDs)
            or "clean" (clean-fid's PIL bicubic); tagged ``fid.resize`` on every run.
        train_rows: the first N training images whose features the memorisation check
            compares samples with (0: no memorisation check); None: min(5000, the
            reference images), so a run with few reference images stays cheap.
    """

    samples: int | None = None
    reference: Literal["train", "val", "test"] = "test"
    reference_rows: int | None = None
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    grid: int = 64
    resize: Literal["tf1", "clean"] = "tf1"
    train_rows: int | None = None

    def __post_init__(self) -> None:
        if self.samples is not None and self.samples < 0:
            raise ConfigError(f"--fid-samples must be >= 0, got {self.samples}")
        if self.samples == 1:
            raise ConfigError("--fid-samples must be 0 (off) or >= 2")
        if self.reference not in ("train", "val", "test"):
            raise ConfigError(f"--fid-ref must be train, val or test, got {self.reference!r}")
        if self.reference_rows is not None and self.reference_rows < 2:
            raise ConfigError(f"--fid-ref-rows must be >= 2, got {self.reference_rows}")
        if self.kid_subsets < 1 or self.kid_subset_size < 2 or self.grid < 0:
            raise ConfigError("kid_subsets must be >= 1, kid_subset_size >= 2, grid >= 0")
        if self.resize not in ("tf1", "clean"):
            raise ConfigError(f"--fid-resize must be tf1 or clean, got {self.resize!r}")
        if self.train_rows is not None and self.train_rows < 0:
            raise ConfigError(f"--fid-train-rows must be >= 0, got {self.train_rows}")

    def n_samples(self, kind: str) -> int:
        """Generated images to score on data of this kind."""
        if self.samples is not None:
            return self.samples
        return 1000 if kind == "image" else 0


@dataclass(frozen=True)
class Execution:
    """How training executes on the device (never what it computes in exact arithmetic).

    Attributes:
        precision: "fp32", or "bf16" autocast of the training forward passes (CUDA, or CPU
            for tests); evaluation, sampling and likelihoods always run in fp32.
        channels_last: NHWC memory format for image networks and batches (GPU speed).
        compile: ``torch.compile`` the method's modules for training.
    """

    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"--precision must be fp32 or bf16, got {self.precision!r}")


@dataclass(frozen=True)
class Job:
    """One (method, dataset, seed) run, fully resolved and validated by the plan.

    Attributes:
        method, dataset: plug-in names; method_cls, dataset_cls: their classes.
        method_params, dataset_params: instances of their ``Params``.
        refs: datasets named by ``DatasetRef`` parameters: field -> (class, params).
        optim, budget, solver: the shared settings of this run.
        sample_eval: FID/KID and the samples grid (image data). execution: precision,
            memory format and compilation of training.
        sources: plug-in name -> "path (version)" of the file or entry point.
        label: the selection as the user wrote it (with its overrides).
        work_dir: the run's own folder (checkpoints, lock, outputs; see
            `bench.harness.training.runfolder`); None: a temporary folder and no resuming.
        checkpoint_every: write the resumable checkpoint every N steps (None: at every
            validation). checkpoint_minutes: and every M minutes of wall-clock (0: off).
        resume: with a ``work_dir``: "auto" continues a run of this job left KILLED or
            RUNNING from its checkpoint, "require" insists on one, "never" starts afresh.
        scorers: the plug-in scorer classes (`bench.api.Scorer`) found by the registry;
            the harness runs its built-in ones first, then these.
    """

    method: str
    method_cls: type
    method_params: Any
    dataset: str
    dataset_cls: type
    dataset_params: Any
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    budget: Budget = field(default_factory=Budget)
    solver: SolverConfig = field(default_factory=SolverConfig)
    device: str = "cpu"
    data_dir: Path | None = None
    evaluate_test: bool = True
    n_samples: int = 20_000
    sample_eval: SampleEval = field(default_factory=SampleEval)
    execution: Execution = field(default_factory=Execution)
    refs: dict[str, tuple[type, Any]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    label: str = ""
    work_dir: Path | None = None
    checkpoint_every: int | None = None
    checkpoint_minutes: float = 10.0
    resume: Literal["auto", "require", "never"] = "auto"
    scorers: tuple[type, ...] = ()

    def __post_init__(self) -> None:
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ConfigError(f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        if not (self.checkpoint_minutes >= 0 and math.isfinite(self.checkpoint_minutes)):
            raise ConfigError("--checkpoint-minutes must be >= 0 (0: off), got "
                              f"{self.checkpoint_minutes}")
        if self.resume not in ("auto", "require", "never"):
            raise ConfigError(f"resume must be auto, require or never, got {self.resume!r}")

    @property
    def name(self) -> str:
        return f"{self.method}-{self.dataset}-s{self.seed}"


@dataclass(frozen=True)
class JobSpec:
    """One job as plain data that crosses a process or a machine: what a `Launcher`
    receives. Plug-ins are named (found again through the registry of ``plugin_dirs``),
    their typed parameters and the shared settings are JSON-able dicts (tuples as lists).
    `bench.harness.planning.jobspec` turns a `Job` into a spec and back (``to_spec``,
    ``from_spec``); the round trip gives an equal `Job` with the same job key.

    Attributes:
        method, dataset: plug-in names. method_params, dataset_params: their ``Params`` as
            field -> value. refs: ``DatasetRef`` fields -> {"dataset": name, "params": {}}.
        seed, device, data_dir, evaluate_test, n_samples: as in `Job`.
        optim, budget, solver, sample_eval, execution: the shared settings as dicts.
        plugin_dirs: extra plug-in folders of the planner's registry (absolute paths).
        label, sources, work_dir, checkpoint_every, checkpoint_minutes, resume: as in `Job`.
        scorers: the names of the job's plug-in scorers (found again in the registry).
        key: the planner's job key (`bench.harness.training.runfolder.job_key`); "" when
            unknown. A launcher refuses a spec whose rebuilt job has another key (a plug-in
            file that differs on the worker).
    """

    method: str
    dataset: str
    method_params: dict[str, Any] = field(default_factory=dict)
    dataset_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    optim: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    solver: dict[str, Any] = field(default_factory=dict)
    sample_eval: dict[str, Any] = field(default_factory=dict)
    execution: dict[str, Any] = field(default_factory=dict)
    refs: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "cpu"
    data_dir: str | None = None
    evaluate_test: bool = True
    n_samples: int = 20_000
    plugin_dirs: tuple[str, ...] = ()
    label: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    work_dir: str | None = None
    checkpoint_every: int | None = None
    checkpoint_minutes: float = 10.0
    resume: str = "auto"
    scorers: tuple[str, ...] = ()
    key: str = ""

    def to_json(self) -> str:
        """The spec as one JSON document (non-finite floats as NaN/Infinity)."""
        import dataclasses
        import json

        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        """The spec of `to_json`'s text; ConfigError (one line) for anything else."""
        import dataclasses
        import json

        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"a job spec must be JSON: {exc}") from None
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or not {"method", "dataset"} <= set(data):
            raise ConfigError("a job spec is a JSON object with a method and a dataset")
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown job spec field {unknown[0]!r}")
        for name in ("plugin_dirs", "scorers"):
            data[name] = tuple(data.get(name) or ())
        return cls(**data)
