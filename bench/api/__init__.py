"""The contract between bench and its plug-ins, and the data that flows through the harness.

Imports nothing else of bench (enforced by import-linter, see pyproject.toml).
"""

from __future__ import annotations

from bench.api.domains import (
    Domain,
    at_least,
    greater_than,
    in_range,
    non_negative,
    positive,
    probability,
)
from bench.api.errors import (
    BenchError,
    ConfigError,
    ContractError,
    DataError,
    LossExploded,
    PluginUnavailable,
)
from bench.api.jobs import Budget, Execution, Job, JobSpec, OptimConfig, SampleEval
from bench.api.launchers import Launcher, failed_record
from bench.api.plugins import Dataset, FlowMethod, Method
from bench.api.records import RunRecord, Sink, Source
from bench.api.scoring import MetricSpec, ScoreContext, Scorer, Scores
from bench.api.types import (
    DatasetRef,
    FlowEngine,
    LogLikelihood,
    NoParams,
    RunContext,
    SolverConfig,
    Splits,
    default_data_dir,
    per_row_problem,
)

__all__ = [
    "BenchError", "ConfigError", "ContractError", "DataError", "PluginUnavailable",
    "LossExploded", "Dataset", "FlowMethod", "Method", "Budget", "Job", "OptimConfig",
    "SampleEval", "Execution", "JobSpec", "Launcher", "failed_record", "RunRecord", "Sink",
    "Source", "DatasetRef", "FlowEngine",
    "LogLikelihood", "NoParams", "RunContext", "SolverConfig", "Splits", "default_data_dir",
    "Domain", "at_least", "greater_than", "in_range", "non_negative", "positive",
    "probability", "per_row_problem", "MetricSpec", "Scorer", "Scores", "ScoreContext",
]
