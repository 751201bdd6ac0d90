"""The 8 target organs of the BTCV organ-presence task and superpatch presence labels.

A superpatch is labelled 1 for an organ when it holds at least :data:`PRESENCE_THRESHOLD`
(100) voxels of it, **counted on the label map resampled (nearest neighbour) to the spacing the
model sees** (by default 1.5 x 1.5 x 2.0 mm), i.e. on the same voxels as the superpatch itself.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .grid import SuperpatchGrid

__all__ = [
    "Organ",
    "ORGANS",
    "ORGAN_NAMES",
    "ORGAN_IDS",
    "PRESENCE_THRESHOLD",
    "organ_voxel_counts",
    "presence_labels",
]


class Organ(NamedTuple):
    name: str
    btcv_id: int


#: The 8 target organs in the model's output order, with their BTCV label ids.
ORGANS: tuple[Organ, ...] = (
    Organ("aorta", 8),
    Organ("gallbladder", 4),
    Organ("spleen", 1),
    Organ("left_kidney", 3),
    Organ("right_kidney", 2),
    Organ("liver", 6),
    Organ("stomach", 7),
    Organ("pancreas", 11),
)
ORGAN_NAMES: tuple[str, ...] = tuple(o.name for o in ORGANS)
ORGAN_IDS: tuple[int, ...] = tuple(o.btcv_id for o in ORGANS)
#: Voxels of an organ a superpatch must hold (at the model's spacing) to be labelled present.
PRESENCE_THRESHOLD = 100

_IDS = np.asarray(ORGAN_IDS, dtype=np.intp)
_MAXLEN = int(_IDS.max()) + 1


def _counts_one(patch: np.ndarray) -> np.ndarray:
    flat = np.asarray(patch).ravel()
    if flat.dtype.kind != "u":
        flat = flat.astype(np.int64)
        flat = flat[flat >= 0]
    return np.bincount(flat, minlength=_MAXLEN)[_IDS].astype(np.int64)


def organ_voxel_counts(labels: np.ndarray, grid: SuperpatchGrid | None = None) -> np.ndarray:
    """Voxel counts ``(n, 8)`` int64 of the 8 organs (in :data:`ORGANS` order) per superpatch.

    ``labels`` is either ``(n, S, S, S)`` label superpatches, or a label volume at the model's
    spacing together with its ``grid`` (read one superpatch at a time, so a memory map works).
    """
    if grid is None:
        if labels.ndim != 4:
            raise ValueError("organ_voxel_counts: give (n, S, S, S) superpatches or a volume and grid")
        return np.stack([_counts_one(p) for p in labels]) if len(labels) else \
            np.zeros((0, len(ORGANS)), np.int64)
    out = np.zeros((grid.n, len(ORGANS)), dtype=np.int64)
    for i in range(grid.n):
        # padding is background, so counting the clipped box is enough
        out[i] = _counts_one(labels[grid.box(i, clip=True).slices])
    return out


def presence_labels(labels: np.ndarray, grid: SuperpatchGrid | None = None,
                    threshold: int = PRESENCE_THRESHOLD) -> np.ndarray:
    """Organ presence ``(n, 8)`` uint8: 1 where a superpatch holds ``>= threshold`` voxels."""
    return (organ_voxel_counts(labels, grid) >= int(threshold)).astype(np.uint8)
