"""Learning-free fills of masked patches: what a reconstruction must beat to show it knows anatomy.

Both fills see exactly what the model sees (the visible patches of one superpatch, inside the scan) and
predict every masked voxel:

* :func:`mean_fill`: every masked voxel = the mean of all visible voxels (``"more of the same"``).
* :func:`local_fill`: every masked patch = the mean of its nearest visible patches (patch-grid distance,
  all patches at the smallest distance averaged): interpolation from the neighbourhood, no anatomy.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

__all__ = ["mean_fill", "local_fill", "FILLS"]


def _inside(shape, valid) -> np.ndarray:
    inside = np.zeros(shape, dtype=bool)
    inside[valid] = True
    return inside


def mean_fill(clean: np.ndarray, masked: np.ndarray, valid: tuple[slice, ...], patch: int) -> np.ndarray:
    """``clean`` with its masked voxels replaced by the mean of the visible voxels inside ``valid``."""
    inside = _inside(clean.shape, valid)
    visible = inside & ~masked
    fill = float(clean[visible].mean()) if visible.any() else 0.0
    return np.where(masked, fill, clean).astype(np.float32)


def local_fill(clean: np.ndarray, masked: np.ndarray, valid: tuple[slice, ...], patch: int) -> np.ndarray:
    """``clean`` with each masked patch replaced by the mean of its nearest visible patches.

    A patch is visible when it is unmasked and holds at least one voxel inside ``valid``; its value is the
    mean of those voxels. ``masked`` is voxel-wise and constant on each ``patch``^3 cube.
    """
    g = clean.shape[0] // patch
    blocks = lambda a: a.reshape(g, patch, g, patch, g, patch).transpose(0, 2, 4, 1, 3, 5).reshape(g ** 3, -1)  # noqa: E731
    values, inside = blocks(clean.astype(np.float64)), blocks(_inside(clean.shape, valid))
    patch_masked = blocks(masked)[:, 0]
    counts = inside.sum(1)
    visible = ~patch_masked & (counts > 0)
    out = clean.astype(np.float32).copy()
    if not visible.any():
        return mean_fill(clean, masked, valid, patch)
    means = (values * inside).sum(1)[visible] / counts[visible]
    coords = np.stack(np.unravel_index(np.arange(g ** 3), (g, g, g)), 1)
    dist = cdist(coords[patch_masked], coords[visible])
    nearest = np.isclose(dist, dist.min(1, keepdims=True))
    fills = (nearest * means).sum(1) / nearest.sum(1)
    grid = np.zeros(g ** 3, np.float32)
    grid[patch_masked] = fills
    filled = grid.reshape(g, g, g).repeat(patch, 0).repeat(patch, 1).repeat(patch, 2)
    out[masked] = filled[masked]
    return out


#: The baselines every reconstruction score is reported beside, by name.
FILLS = {"mean_fill": mean_fill, "local_fill": local_fill}
