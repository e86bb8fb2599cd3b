"""Exceptions with a one-line message; the CLI turns them into exit codes."""

from __future__ import annotations

__all__ = ["BenchError", "UsageError", "DataError", "TrainingDiverged", "PluginUnavailable"]


class BenchError(Exception):
    """Any error the harness reports as one line (exit code 1)."""

    exit_code = 1


class UsageError(BenchError):
    """Bad input from the user: unknown name, wrong parameter (exit code 2)."""

    exit_code = 2


class PluginUnavailable(UsageError):
    """An explicitly selected plug-in failed to import; the message says why."""


class DataError(BenchError):
    """Missing, corrupt or malformed data."""


class TrainingDiverged(BenchError):
    """The training loss became non-finite."""
