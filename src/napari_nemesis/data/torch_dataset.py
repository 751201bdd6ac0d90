"""PyTorch ``Dataset`` wrappers over a :class:`~.datasets.SuperpatchCache` (torch imported lazily).

``RandomSuperpatchDataset``: item ``i`` is a random pretraining superpatch drawn with the
generator ``default_rng([seed, epoch, i])`` -- reproducible, and independent of how items are
spread over DataLoader workers. ``GridSuperpatchDataset``: every grid superpatch of some cases
with its organ presence labels (probing). Both return ``(1, S, S, S)`` float32 tensors.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .datasets import SuperpatchCache

__all__ = ["RandomSuperpatchDataset", "GridSuperpatchDataset"]


def _cache(c) -> SuperpatchCache:
    return c if isinstance(c, SuperpatchCache) else SuperpatchCache(c)


class RandomSuperpatchDataset:
    """``length`` random superpatches per epoch (call :meth:`set_epoch` to vary them)."""

    def __init__(self, cache: SuperpatchCache | str | os.PathLike, length: int, seed: int = 0,
                 case_ids: Sequence[str] | None = None):
        self.cache = _cache(cache)
        self.length = int(length)
        self.seed = int(seed)
        self.epoch = 0
        self.case_ids = list(case_ids) if case_ids is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        import torch

        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        patch = self.cache.sample(rng, self.case_ids)
        return torch.from_numpy(patch[None])


class GridSuperpatchDataset:
    """All grid superpatches of ``case_ids``: ``(patch (1,S,S,S), labels (8,) float32)``."""

    def __init__(self, cache: SuperpatchCache | str | os.PathLike, case_ids: Sequence[str] | None = None,
                 superpatch: int | None = None):
        self.cache = _cache(cache)
        if superpatch and superpatch != self.cache.superpatch:
            self.cache = SuperpatchCache(self.cache.path, superpatch)
        ids = list(case_ids) if case_ids is not None else self.cache.labelled_ids
        self.items = [(cid, i) for cid in ids for i in range(self.cache.grid(cid).n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        import torch

        cid, i = self.items[k]
        grid = self.cache.grid(cid)
        patch = grid.superpatch_of(self.cache.image(cid), i).astype(np.float32)
        pres = self.cache.presence(cid)
        labels = pres[i] if pres is not None else np.zeros(8, np.uint8)
        return torch.from_numpy(patch[None]), torch.from_numpy(labels.astype(np.float32))
