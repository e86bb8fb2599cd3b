"""The order in which the training loop visits the data: shuffled epochs of index batches,
resumable mid-epoch, and sharded across data-parallel ranks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["BatchOrder", "batches"]


class BatchOrder:
    """Epochs of shuffled index batches, resumable: iterating yields (epoch, index tensor,
    end_of_epoch) forever; `state_dict` is the generator's state at the start of the
    current epoch with the epoch and the number of its batches already taken, so that
    `load_state_dict` continues with exactly the batches an uninterrupted run would take.

    Data parallel (``world`` > 1 ranks): every rank draws the same permutation from the same
    generator, pads it to a multiple of ``world`` with its first indices (as torch's
    DistributedSampler) and takes the ``rank``-th of ``world`` equal, disjoint, contiguous
    shares of each global batch of ``batch * world`` indices; an epoch is one pass over the
    global data. With ``world`` = 1 the batches are ``perm[s:s + batch]``.
    """

    def __init__(self, n: int, batch: int, gen: torch.Generator, rank: int = 0,
                 world: int = 1) -> None:
        self.n, self.batch, self.gen, self.rank, self.world = n, batch, gen, rank, world
        self.epoch, self.pos = 0, 0
        self.epoch_state = gen.get_state()

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.epoch_state.clone(), "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.epoch_state = state["gen"].clone()
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])

    def __iter__(self) -> Iterator[tuple[int, Any, bool]]:
        size, world, n = self.batch * self.world, self.world, self.n
        while True:
            self.epoch_state = self.gen.get_state()
            perm = torch.randperm(n, generator=self.gen)
            if n % world:
                perm = torch.cat([perm, perm[torch.arange(world - n % world) % n]])
            starts = list(range(0, perm.numel(), size))
            while self.pos < len(starts):
                i = self.pos
                share = perm[starts[i]:starts[i] + size]
                per_rank = share.numel() // world
                self.pos += 1
                yield (self.epoch, share[self.rank * per_rank:(self.rank + 1) * per_rank],
                       i == len(starts) - 1)
            self.epoch, self.pos = self.epoch + 1, 0


def batches(n: int, batch: int, gen: torch.Generator, rank: int = 0,
            world: int = 1) -> Iterator[tuple[int, Any, bool]]:
    """`BatchOrder`'s batches from a fresh start: yields (epoch, indices, end_of_epoch)."""
    return iter(BatchOrder(n, batch, gen, rank, world))
