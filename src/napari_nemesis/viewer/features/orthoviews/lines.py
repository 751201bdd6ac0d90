"""Lines a side view draws straight on its canvas: the crosshair, the selected superpatch's outline
and the grid's lattice in the view's plane.

They are vispy visuals under the canvas's scene (world mm), not napari layers: napari slices a
Vectors layer again and rebuilds its shader on every slice change, a frame's worth of work per
view for lines that, in a plane, never depend on the slice (the lattice) or move only in the plane
(the crosshair). Segments are kept as napari-style vectors ``(N, 2, 3)``, start and direction in
world (z, y, x) mm, in :attr:`PlaneLines.data`.
"""

from __future__ import annotations

import numpy as np

from ... import _layers as L
from ..._napari_private import scene_of

#: Above every layer of the view (napari numbers its layers' nodes 0, 1, ...).
_ON_TOP = 10_000


class PlaneLines:
    """One set of line segments on a side view, in one colour."""

    def __init__(self, qt_viewer, color: str, width: float, opacity: float = 1.0, order: int = 0) -> None:
        from vispy.color import Color
        from vispy.scene.visuals import Line

        self.data = np.zeros((0, 2, 3), np.float32)
        self.key = None  # what the segments were made from (callers skip remaking them)
        self.span: tuple[float, float] = (-np.inf, np.inf)  # world range along the hidden axis where they show
        self.displayed: tuple[int, int] = (1, 2)
        rgba = Color(color, alpha=opacity).rgba
        self.node = Line(pos=np.zeros((2, 2), np.float32), color=rgba, width=width, connect="segments",
                         method="gl", antialias=False)
        self.node.set_gl_state("translucent", depth_test=False)
        self.node.order = _ON_TOP + order
        self.node.visible = False
        scene = scene_of(qt_viewer)
        if scene is not None:
            self.node.parent = scene

    @property
    def visible(self) -> bool:
        return bool(self.node.visible)

    @visible.setter
    def visible(self, value: bool) -> None:
        if bool(value) != bool(self.node.visible):
            self.node.visible = bool(value)

    def set(self, vectors, displayed: tuple[int, int], key=None) -> None:
        """Draw ``vectors`` (start, direction; world z y x mm) projected on the ``displayed``
        (vertical, horizontal) axes."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, 2, 3)
        self.data, self.key, self.displayed = vectors, key, tuple(int(a) for a in displayed)
        if len(vectors) == 0:
            self.visible = False
            return
        starts, ends = vectors[:, 0], vectors[:, 0] + vectors[:, 1]
        vertical, horizontal = self.displayed
        pos = np.empty((2 * len(vectors), 2), np.float32)  # vispy's (x, y): the horizontal axis first
        pos[0::2] = starts[:, [horizontal, vertical]]
        pos[1::2] = ends[:, [horizontal, vertical]]
        self.node.set_data(pos=pos)

    def close(self) -> None:
        self.node.parent = None


def to_world(vectors, affine) -> np.ndarray:
    """Vectors (start, direction) in data coordinates moved to world by a 4 x 4 affine."""
    vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, 2, 3)
    affine = np.asarray(affine, dtype=np.float64)
    starts = vectors[:, 0] @ affine[:3, :3].T + affine[:3, 3]
    directions = vectors[:, 1] @ affine[:3, :3].T
    return np.stack([starts, directions], axis=1).astype(np.float32)


def plane_lattice(grid, hidden: int) -> np.ndarray:
    """The grid's lattice lines in a plane across ``hidden`` (world vectors): the same in every slice
    that cuts the grid, cut at the scan's edge."""
    lines = L.clip_vectors(L.grid_lattice_vectors(grid.grid_shape), L.scan_extent_cells(grid))
    in_plane = np.isclose(lines[:, 1, hidden], 0.0) & np.isclose(lines[:, 0, hidden], -0.5)
    return to_world(lines[in_plane], L.grid_world_affine(grid))


def box_outline(grid, index: int, hidden: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Superpatch ``index``'s four edges in a plane across ``hidden`` (world vectors, cut at the
    scan's edge) and the world range along ``hidden`` of the slices that cut it."""
    edges, cell, span = L.box_plane_edges(grid, index, hidden)
    world = L.grid_world_affine(grid)
    ends = []
    for along in span:
        point = cell.copy()
        point[hidden] = along
        ends.append(float((world[:3, :3] @ point + world[:3, 3])[hidden]))
    return to_world(edges, world), (min(ends), max(ends))
