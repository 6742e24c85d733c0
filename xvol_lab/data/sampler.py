"""The training order: a function of (run seed, epoch), split among processes, resumable mid-epoch.

`EpochSampler` draws epoch e's permutation from a generator seeded with the run seed and e, so an
epoch's order does not depend on what consumed torch's global random state before it (a resumed
run sees the orders an uninterrupted one sees). With several processes each takes every
``world``-th index of the permutation, cut to a multiple of ``world`` (equal batch counts, no
sample repeated). `ResumableLoader` reports how many batches of the current epoch it has
handed out (``state_dict``, which Lightning stores in its checkpoints) and, loaded from such a
state, skips them: a run preempted mid-epoch continues with exactly the batches it had not seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

EPOCH_STRIDE = 1_000_003  # seed * EPOCH_STRIDE + epoch: distinct generator seeds per (seed, epoch)


class EpochSampler(Sampler[int]):
    """Indices of a `size`-sample dataset for process `rank` of `world`, in epoch `epoch`'s order."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.epoch = 0
        self.skip = 0  # samples of this epoch already trained on (set by a resumed loader)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch; a new epoch starts at its first sample."""
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def order(self) -> list[int]:
        """This process's indices for the whole of the current epoch."""
        # modulo 2**63: an unseeded process's torch.initial_seed() is a random 64-bit number
        generator = torch.Generator().manual_seed((self.seed * EPOCH_STRIDE + self.epoch) % 2**63)
        permutation = torch.randperm(self.size, generator=generator)[: len(self) * self.world]
        return permutation[self.rank::self.world].tolist()

    def __iter__(self) -> Iterator[int]:
        start, self.skip = self.skip, 0
        return iter(self.order()[start:])

    def __len__(self) -> int:
        return self.size // self.world


class ResumableLoader(DataLoader):
    """A training DataLoader over an `EpochSampler` whose position in the epoch survives a checkpoint."""

    def __init__(self, dataset: Any, sampler: EpochSampler, **options: Any) -> None:
        super().__init__(dataset, sampler=sampler, **options)
        self.batches = 0  # batches of the current epoch handed out

    def __iter__(self) -> Iterator[Any]:
        self.batches = self.sampler.skip // self.batch_size
        for batch in super().__iter__():
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The epoch and how many of its batches were handed out (Lightning checkpoints this)."""
        return {"epoch": self.sampler.epoch, "batches": self.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue epoch ``state['epoch']`` after its first ``state['batches']`` batches."""
        self.sampler.epoch = state["epoch"]
        self.sampler.skip = state["batches"] * self.batch_size
        self.batches = state["batches"]
