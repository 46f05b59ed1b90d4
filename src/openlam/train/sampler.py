"""Step-indexed batch sampler: the global batch of step s is a pure function of (seed, s), each
rank takes its slice. That makes resume exact (start at any step) and makes N ranks see exactly the
samples one process would see with the same global batch."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    def __init__(self, n: int, global_batch: int, steps: int, seed: int = 0, start_step: int = 0, rank: int = 0, world: int = 1):
        if global_batch % world:
            raise ValueError(f"batch_size {global_batch} is not divisible by the {world} DDP ranks")
        if n < global_batch:
            raise ValueError(f"only {n} training pairs for a global batch of {global_batch}")
        self.n, self.B, self.steps, self.seed = n, global_batch, steps, seed
        self.start, self.rank, self.world = start_step, rank, world
        self.per_epoch = n // global_batch
        self._perm: tuple[int, torch.Tensor] | None = None

    def batch(self, step: int) -> list[int]:
        """Virtual indices (epoch * n + i) of this rank's share of global batch `step`."""
        epoch, j = divmod(step, self.per_epoch)
        if self._perm is None or self._perm[0] != epoch:  # one permutation per epoch, not per step
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        perm = self._perm[1][j * self.B : (j + 1) * self.B]
        per = self.B // self.world
        mine = perm[self.rank * per : (self.rank + 1) * per]
        return (mine + epoch * self.n).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for s in range(self.start, self.steps):
            yield self.batch(s)

    def __len__(self) -> int:
        return self.steps - self.start
