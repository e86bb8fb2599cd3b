"""Couplings of a training batch's base draws x_0 and data x_1: independent (the product of
the marginals, InterFlow's and flow matching's default) or minibatch optimal transport
(OT-CFM: Tong et al. 2023, "Improving and generalizing flow-based generative models with
minibatch optimal transport"; Pooladian et al. 2023 "Multisample flow matching").

With ``ot``, the n base draws and the m data rows of a batch get the exact optimal transport
plan pi (n, m) between their empirical measures (uniform weights 1/n and 1/m) for the squared
Euclidean cost |x_0 - x_1|^2 of the flattened rows, by POT's network simplex (`ot.emd`, the
PyPI package ``POT``, imported on first use); then n pairs (i, j) are drawn from pi with
replacement, as torchcfm's ``OTPlanSampler.sample_plan`` does. On equal batch sizes the
exact plan is a vertex of the Birkhoff polytope: a permutation divided by n, so every drawn
pair is one of the n optimal pairs. The coupling changes what is learned (a straighter
field), not the interpolant's path between a given pair; a model's likelihood stays the
exact ODE likelihood of the field it learned.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

__all__ = ["COUPLINGS", "couple", "ot_plan", "pairing_cost", "sample_plan", "squared_costs"]

logger = logging.getLogger(__name__)

#: the couplings `couple` knows
COUPLINGS = ("independent", "ot")

#: network-simplex iterations before POT gives up; its default (1e5) is too few for the
#: batches of 1024 rows a run may use (it then returns a feasible, not optimal, plan)
MAX_ITER = 10_000_000


def squared_costs(x_0: Tensor, x_1: Tensor) -> Tensor:
    """(n, m) float64 matrix |x_0[i] - x_1[j]|^2 of the flattened rows of (n, *shape) and
    (m, *shape) (difference form, no cancellation of |a|^2 + |b|^2 - 2 a.b)."""
    a = x_0.detach().reshape(x_0.shape[0], -1).to("cpu", torch.float64)
    b = x_1.detach().reshape(x_1.shape[0], -1).to("cpu", torch.float64)
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist") ** 2


def ot_plan(x_0: Tensor, x_1: Tensor) -> Tensor:
    """The exact optimal transport plan between the uniform empirical measures of x_0 (n rows)
    and x_1 (m rows) for the squared Euclidean cost.

    Returns:
        (n, m) float64 CPU tensor pi >= 0 with rows summing to 1/n and columns to 1/m that
        minimises sum_ij pi_ij |x_0[i] - x_1[j]|^2 (POT's ``ot.emd``).
    Raises:
        RuntimeError: POT reports a failure other than hitting the iteration cap (which is
            logged, the feasible plan kept).
    """
    import ot  # POT: a run without coupling=ot never imports it

    n, m = x_0.shape[0], x_1.shape[0]
    cost = squared_costs(x_0, x_1).numpy()
    a = torch.full((n,), 1.0 / n, dtype=torch.float64).numpy()
    b = torch.full((m,), 1.0 / m, dtype=torch.float64).numpy()
    plan, log = ot.emd(a, b, cost, numItermax=MAX_ITER, log=True)
    code = int(log.get("result_code", 1))
    if code == 3:  # MAX_ITER_REACHED
        logger.warning("ot.emd stopped at %d iterations on a %dx%d batch: plan not optimal",
                       MAX_ITER, n, m)
    elif code != 1:  # 1 = OPTIMAL
        raise RuntimeError(f"ot.emd failed on a {n}x{m} batch: {log.get('warning')}")
    return torch.from_numpy(plan)


def sample_plan(plan: Tensor, k: int, generator: torch.Generator | None = None,
                replace: bool = True) -> tuple[Tensor, Tensor]:
    """k index pairs (i, j) drawn from the plan pi (n, m) with probability pi_ij / sum(pi).

    Args:
        plan: (n, m) non-negative CPU tensor.
        k: number of pairs.
        generator: CPU generator of the draw.
        replace: with replacement (torchcfm's default), else k distinct pairs.
    Returns:
        (i, j): two (k,) int64 tensors of row and column indices.
    """
    m = plan.shape[1]
    flat = plan.reshape(-1).clamp_min(0)
    idx = torch.multinomial(flat / flat.sum(), k, replacement=replace, generator=generator)
    return idx // m, idx % m


def couple(x_0: Tensor, x_1: Tensor, coupling: str,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The batch's pairs under ``coupling``: (x_0, x_1) unchanged for ``independent``; for
    ``ot``, x_0.shape[0] pairs (x_0[i], x_1[j]) drawn from `ot_plan` (shapes kept)."""
    if coupling == "independent":
        return x_0, x_1
    if coupling != "ot":
        raise ValueError(f"unknown coupling {coupling!r}; valid: {', '.join(COUPLINGS)}")
    i, j = sample_plan(ot_plan(x_0, x_1), x_0.shape[0], generator)
    return x_0[i.to(x_0.device)], x_1[j.to(x_1.device)]


def pairing_cost(x_0: Tensor, x_1: Tensor) -> Tensor:
    """E|x_1 - x_0|^2 of row-aligned pairs (n, *shape): the straight path's kinetic energy
    int_0^1 |dI/dt|^2 dt for the linear interpolant, a scalar."""
    d = (x_1 - x_0).reshape(x_0.shape[0], -1)
    return (d * d).sum(1).mean()
