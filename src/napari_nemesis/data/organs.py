"""The 8 target organs of the BTCV organ-presence task, superpatch presence and patch labels.

A superpatch is labelled 1 for an organ when it holds at least :data:`PRESENCE_THRESHOLD`
(100) voxels of it, **counted on the label map resampled (nearest neighbour) to the spacing the
model sees** (by default 1.5 x 1.5 x 2.0 mm), i.e. on the same voxels as the superpatch itself.

A patch (one encoder token: a ``p^3`` cube of a superpatch, 16^3 by default) is labelled the same
way, on the same resampled label map: 1 when it holds at least :data:`PATCH_THRESHOLD` (100)
voxels of the organ (:func:`patch_labels`). Both training paths of the patch level (``nemesis
probe --level patch`` and ``nemesis labels train --level patch``) call it.
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
    "PATCH_THRESHOLD",
    "organ_voxel_counts",
    "presence_labels",
    "patch_voxel_counts",
    "patch_labels",
    "patch_inside",
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
#: Voxels of an organ a patch (one token) must hold (at the model's spacing) to be labelled 1.
PATCH_THRESHOLD = 100

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


def _check_patch(shape, patch: int) -> int:
    p = int(patch)
    if p < 1 or any(int(d) % p for d in shape[-3:]):
        raise ValueError(f"patch size {patch} does not tile a superpatch of shape {tuple(shape[-3:])}")
    return p


def patch_voxel_counts(labels: np.ndarray, patch: int) -> np.ndarray:
    """Voxel counts of the 8 organs (in :data:`ORGANS` order) in every ``patch^3`` patch of label
    superpatches: ``(S, S, S)`` -> ``(N, 8)``, or ``(n, S, S, S)`` -> ``(n, N, 8)`` int64, with the
    N = (S / patch)^3 patches in the encoder's token order (raster z, y, x, as ``NemesisMAE.patchify``).

    ``labels`` hold BTCV ids at the model's spacing (``data.preprocess_labels``), padding as 0.
    """
    arr = np.asarray(labels)
    single = arr.ndim == 3
    if single:
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"patch_voxel_counts: give (S, S, S) or (n, S, S, S) label superpatches, got {arr.shape}")
    p = _check_patch(arr.shape, patch)
    n, sz, sy, sx = arr.shape
    gz, gy, gx = sz // p, sy // p, sx // p
    out = np.zeros((n, gz * gy * gx, len(ORGANS)), dtype=np.int64)
    for k, organ_id in enumerate(ORGAN_IDS):
        hit = (arr == organ_id).reshape(n, gz, p, gy, p, gx, p)
        out[:, :, k] = hit.sum(axis=(2, 4, 6), dtype=np.int64).reshape(n, -1)
    return out[0] if single else out


def patch_labels(labels: np.ndarray, patch: int, threshold: int = PATCH_THRESHOLD) -> np.ndarray:
    """Patch labels ``(N, 8)`` (or ``(n, N, 8)``) uint8: 1 where a patch holds ``>= threshold``
    voxels of the organ (:func:`patch_voxel_counts`)."""
    if int(threshold) < 1:
        raise ValueError(f"patch threshold {threshold}: must be at least 1 voxel")
    return (patch_voxel_counts(labels, patch) >= int(threshold)).astype(np.uint8)


def patch_inside(grid: SuperpatchGrid, i: int, patch: int) -> np.ndarray:
    """``(N,)`` bool: the patches of superpatch ``i`` that hold at least one voxel of the scan (the
    others lie wholly in the padding beyond it), in token order."""
    s = grid.superpatch
    p = _check_patch((s, s, s), patch)
    g = s // p
    box = grid.box(i, clip=True)
    per_axis = [np.arange(g) * p < d for d in box.shape]  # a patch starting inside the clipped box
    inside = per_axis[0][:, None, None] & per_axis[1][None, :, None] & per_axis[2][None, None, :]
    return inside.reshape(-1)
