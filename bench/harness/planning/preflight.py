"""Cheap checks `bench run` makes before training each job, and the property tests they share
with the full contract checks of `bench.harness.running.check`.

Each raises one sentence: `ContractError` when the plug-in's code breaks the contract
(float64 data, wrong shapes, no trainable parameters, defaults of the wrong type; the
methods' properties are those of `bench.harness.planning.properties`, with ``bench check``'s
words), `DataError` when the data itself is bad (an empty split, non-finite rows). The check
of the parameter defaults lives in the torch-free `bench.harness.planning.selection` (the
plan runs it) and is re-exported here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from bench.api import ContractError, DataError, Method, Splits
from bench.harness.planning.properties import (
    RUN_ROWS,
    dataset_log_prob_problem,
    likelihood_problem,
    row_wise,
    run_properties,
    trainable_parameters,
)
from bench.harness.planning.selection import check_param_defaults, param_default_problems

__all__ = ["check_splits", "check_method_instance", "check_dataset_instance",
           "check_param_defaults", "param_default_problems", "trainable_parameters",
           "split_dtype_problem", "split_shape_problem", "split_empty_problem",
           "split_finite_problem", "likelihood_problem"]

PARTS = ("train", "val", "test")


# -- splits ---------------------------------------------------------------------------------
def split_dtype_problem(splits: Splits) -> str | None:
    """Every split a float32 tensor? Else which is not."""
    for part in PARTS:
        x = getattr(splits, part)
        if not isinstance(x, torch.Tensor):
            return f"the {part} split is a {type(x).__name__}, not a torch.Tensor"
        if x.dtype != torch.float32:
            return (f"the {part} split is {str(x.dtype).removeprefix('torch.')}; "
                    "Dataset.load must return float32")
    return None


def split_shape_problem(splits: Splits, declared: tuple[int, ...] | None = None) -> str | None:
    """Rows of every split of shape ``splits.event_shape`` (and ``declared``, if given)?"""
    shape = tuple(splits.event_shape)
    if declared is not None and tuple(declared) != shape:
        return f"event_shape is declared {tuple(declared)} but the splits have {shape}"
    for part in PARTS:
        rows = tuple(getattr(splits, part).shape[1:])
        if rows != shape:
            return f"the {part} split has rows of shape {rows} but event_shape is {shape}"
    return None


def split_empty_problem(splits: Splits) -> str | None:
    """Every split has rows?"""
    for part in PARTS:
        if getattr(splits, part).shape[0] == 0:
            return f"the {part} split is empty"
    return None


def split_finite_problem(splits: Splits) -> str | None:
    """Every row finite? Else the first bad split and its count of non-finite rows."""
    for part in PARTS:
        x = getattr(splits, part)
        bad = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).sum())
        if bad:
            rows = "1 row of the {} split is" if bad == 1 else f"{bad} rows of the {{}} split are"
            return rows.format(part) + " not finite (NaN or inf)"
    return None


def check_splits(splits: Splits, dataset_name: str) -> None:
    """Before training: float32 tensors of the declared event shape (else ContractError),
    non-empty and finite (else DataError, naming the split and its count of bad rows)."""
    for fn, err in ((split_dtype_problem, ContractError), (split_shape_problem, ContractError),
                    (split_empty_problem, DataError), (split_finite_problem, DataError)):
        problem = fn(splits)
        if problem:
            raise err(f"dataset {dataset_name!r}: {problem}")


# -- methods --------------------------------------------------------------------------------
@contextlib.contextmanager
def _leaves_no_trace(method: Method) -> Iterator[None]:
    """The block consumes no random number of the run: torch's generators (CPU and the
    method's device) and the method's own (``extra_state()``) are put back after it."""
    import copy

    device = torch.device(method.ctx.device) if getattr(method, "ctx", None) else None
    cuda = [device.index or 0] if device is not None and device.type == "cuda" else []
    state = copy.deepcopy(method.extra_state())
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            method.load_extra_state(state)



def check_method_instance(method: Method, splits: Splits) -> None:
    """Before training, cheaply, the properties of
    `bench.harness.planning.properties.run_properties` on a few validation rows (trainable
    parameters, an integer batch size >= 1, sample and
    likelihood shapes, ``base_log_prob`` of a `FlowMethod`, rows independent of their
    batch), with one fixed ODE step and no trace in the run's random streams.
    ContractError with the sentence ``bench check`` prints for the first that fails."""
    x = splits.val[:RUN_ROWS].to(method.ctx.device)
    with _leaves_no_trace(method), row_wise(method):
        for _, prop in run_properties(method, x):
            problem = prop()
            if problem:
                raise ContractError(problem)


def check_dataset_instance(dataset: Any, splits: Splits) -> None:
    """`check_splits`, and a closed-form ``log_prob`` of a few test rows has one value per
    row (the property ``log_prob.shape`` of ``bench check``)."""
    check_splits(splits, dataset.name)
    if dataset.has_log_prob:
        problem = dataset_log_prob_problem(dataset, splits.test[:RUN_ROWS])
        if problem:
            raise ContractError(problem)
