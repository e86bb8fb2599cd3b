"""Cheap checks `bench run` makes before training each job, and the property tests they share
with the full contract checks of `bench.harness.contract`.

Each raises one sentence: `ContractError` when the plug-in's code breaks the contract
(float64 data, wrong shapes, no trainable parameters, defaults of the wrong type),
`DataError` when the data itself is bad (an empty split, non-finite rows). The check of the
parameter defaults lives in the torch-free `bench.harness.selection` (the plan runs it) and
is re-exported here.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.api import ContractError, DataError, LogLikelihood, Method, Splits
from bench.api.types import LIKELIHOOD_KINDS
from bench.harness.selection import check_param_defaults, param_default_problems

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


# -- likelihoods ----------------------------------------------------------------------------
def likelihood_problem(ll: Any, n: int, what: str, full: bool = True) -> str | None:
    """A `LogLikelihood` of values (n,) with a valid kind (``full``: also an estimator
    label and finite values)? ``what`` names the call in the sentence."""
    if not isinstance(ll, LogLikelihood):
        return f"{what} returned a {type(ll).__name__}, not a bench.api.LogLikelihood"
    shape = tuple(ll.values.shape)
    if shape != (n,):
        return f"{what} of {n} rows returned values of shape {shape}; expected ({n},)"
    if ll.kind not in LIKELIHOOD_KINDS:
        return f"{what} has kind {ll.kind!r}; expected one of {LIKELIHOOD_KINDS}"
    if full and not ll.estimator:
        return f"{what} has an empty estimator label"
    if full and not bool(torch.isfinite(ll.values).all()):
        bad = int((~torch.isfinite(ll.values)).sum())
        return f"{what}: {bad} of {n} values are not finite"
    return None


def trainable_parameters(method: Method) -> list[tuple[str, torch.nn.Parameter]]:
    """(``module.param`` name, parameter) of every parameter of ``modules()`` that
    requires gradients."""
    return [(f"{key}.{pname}", p) for key, m in method.modules().items()
            for pname, p in m.named_parameters() if p.requires_grad]


def check_method_instance(method: Method, splits: Splits) -> None:
    """Before training, cheaply: trainable parameters exist (unless ``trainable = False``)
    and ``validation_likelihood`` (``log_prob`` unless overridden: a method overrides it
    when ``log_prob`` is costly) of 2 validation rows is a labelled (2,). ContractError if
    not."""
    name = getattr(method, "name", type(method).__name__)
    if getattr(method, "trainable", True) and not trainable_parameters(method):
        why = "modules() is empty" if not method.modules() else \
            "no parameter of modules() requires gradients"
        raise ContractError(f"method {name!r} has no trainable parameters: {why}")
    if method.likelihood == "none":
        return
    x = splits.val[:2].to(method.ctx.device)
    what = ("validation_likelihood(x)" if type(method).validation_likelihood
            is not Method.validation_likelihood else "log_prob(x)")
    with torch.no_grad():
        problem = likelihood_problem(method.validation_likelihood(x), 2, what, full=False)
    if problem:
        raise ContractError(f"method {name!r}: {problem}")


def check_dataset_instance(dataset: Any, splits: Splits) -> None:
    """`check_splits`, and a closed-form ``log_prob`` of 2 test rows has shape (2,)."""
    check_splits(splits, dataset.name)
    if dataset.has_log_prob:
        shape = tuple(dataset.log_prob(splits.test[:2]).shape)
        if shape != (2,):
            raise ContractError(f"dataset {dataset.name!r}: log_prob(x) of 2 rows returned "
                                f"shape {shape}; expected (2,)")
