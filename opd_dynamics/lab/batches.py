"""The stream of training prompts: epochs of a seeded permutation, cut into batches.

Every trainer of a comparison draws from a ``Batches`` with the same items, size and seed, so OPD,
RL and SFT see the same prompts at the same step.

>>> b = Batches(list("abcdef"), batch_size=4, seed=0)
>>> len(b.next()), len(b.next())
(4, 4)
"""

from __future__ import annotations

import torch


class Batches:
    def __init__(self, items: list, batch_size: int, seed: int):
        if not items:
            raise ValueError("no training items")
        self.items, self.batch_size = items, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._order: list[int] = []

    def next(self) -> list:
        while len(self._order) < self.batch_size:
            self._order += torch.randperm(len(self.items), generator=self.generator).tolist()
        take, self._order = self._order[:self.batch_size], self._order[self.batch_size:]
        return [self.items[i] for i in take]
