"""The three anatomical planes of a (z, y, x) LPS scan and what a 2D view of each needs (no Qt)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Plane(NamedTuple):
    name: str
    displayed: tuple[int, int]  # (vertical, horizontal) scan axes on screen
    hidden: int  # the axis the view slices along


PLANES: dict[str, Plane] = {
    "axial": Plane("axial", (1, 2), 0),
    "coronal": Plane("coronal", (0, 2), 1),
    "sagittal": Plane("sagittal", (0, 1), 2),
}


def side_planes(main_displayed: tuple[int, ...], ndisplay: int) -> tuple[Plane, Plane]:
    """The two planes the side views show: those the main canvas does not (coronal and sagittal
    beside an axial or a 3D main view)."""
    if ndisplay == 2 and len(main_displayed) == 2:
        shown = tuple(int(a) for a in main_displayed)
        others = [p for p in PLANES.values() if set(p.displayed) != set(shown)]
        if len(others) == 2:
            return others[0], others[1]
    return PLANES["coronal"], PLANES["sagittal"]


def dims_order(plane: Plane) -> tuple[int, int, int]:
    """napari's ``dims.order`` for a 3D layer set showing ``plane`` (the hidden axis first)."""
    return (plane.hidden, *plane.displayed)


def crosshair_vectors(point_zyx, lo_zyx, hi_zyx, plane: Plane) -> np.ndarray:
    """Two lines through ``point_zyx`` across the scan's extent along the plane's two displayed
    axes, as napari vectors (world mm), lying in the slice through the point."""
    point = np.asarray(point_zyx, dtype=np.float64)
    lo, hi = np.asarray(lo_zyx, dtype=np.float64), np.asarray(hi_zyx, dtype=np.float64)
    vectors = []
    for axis in plane.displayed:
        start = point.copy()
        start[axis] = lo[axis]
        direction = np.zeros(3)
        direction[axis] = hi[axis] - lo[axis]
        vectors.append((start, direction))
    return np.asarray(vectors, dtype=np.float32)
