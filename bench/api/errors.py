"""Exceptions of bench. Each carries a one-line message; the CLI alone maps them to exit codes
(`bench.cli.main`): a `ConfigError` is a usage error (exit 2), the others exit 1."""

from __future__ import annotations

__all__ = [
    "BenchError", "ConfigError", "PluginUnavailable", "DataError", "LossExploded",
    "ContractError",
]


class BenchError(Exception):
    """Any error bench reports as one line."""


class ConfigError(BenchError, ValueError):
    """A configuration that cannot work: unknown name, wrong parameter, bad budget."""


class PluginUnavailable(ConfigError):
    """An explicitly selected plug-in failed to import; the message says why."""


class DataError(BenchError):
    """Missing, corrupt or malformed data."""


class LossExploded(BenchError):
    """The training loss became non-finite (or exploded)."""


class ContractError(BenchError):
    """A plug-in broke the contract of `bench.api` (wrong shape, no parameters, ...)."""
