"""What the viewer draws, in plain numpy: world transforms, the superpatch grid, heatmaps, presets.

No napari and no Qt here, so every number a layer shows can be tested without a display.

**The world frame.** napari's world coordinates are DICOM patient coordinates, **LPS+ millimetres
in (z, y, x) order**: ``z`` toward Superior, ``y`` toward Posterior, ``x`` toward the patient's
Left. The canonical arrays of :mod:`napari_nemesis.data` are LPS+ voxel grids, so an axis-aligned
scan gets a positive diagonal transform (scale = spacing, translate = origin) and an axial slice
shows anterior at the top and the patient's right on the screen's left. The core's affines map
(z, y, x) indices to NIfTI RAS+ (x, y, z) mm; :func:`world_affine` converts.

**The grid.** Overlays hold one voxel per superpatch (or per patch), never a copy of the scan:
the grid is a Labels layer of superpatch ids of shape ``grid_shape`` whose transform stretches
each voxel over its superpatch's world box; heatmaps are Image layers of the same shape; the
lines are a Vectors layer of the lattice edges (a few dozen vectors), which napari draws in 2D
within half a grid cell of their start and in 3D as a wireframe.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "AXIS_LABELS",
    "UNITS",
    "WINDOW_PRESETS",
    "DEFAULT_WINDOW",
    "ORGAN_COLORS",
    "window_limits",
    "world_affine",
    "ras_affine",
    "transform_kwargs",
    "preprocessed_world_affine",
    "grid_world_affine",
    "box_world_affine",
    "patch_world_affine",
    "grid_ids",
    "grid_lattice_vectors",
    "box_outline_vectors",
    "block_image",
    "block_cells",
    "block_image_clipped",
    "patch_block_image",
    "patch_block_image_clipped",
    "clip_vectors",
    "scan_extent_cells",
    "superpatch_at",
    "superpatch_on_ray",
    "token_at",
    "grid_world_extent",
    "neighbour",
    "grid_features",
    "heatmap_colors",
]

#: Axis names of the world frame, (z, y, x), each pointing the way its coordinate increases.
AXIS_LABELS: tuple[str, str, str] = ("z (S)", "y (P)", "x (L)")
UNITS: tuple[str, str, str] = ("mm", "mm", "mm")

#: CT window presets as (level, width) in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "liver": (30.0, 150.0),
    "soft tissue": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}
DEFAULT_WINDOW = "abdomen"

#: One colour per organ of ``data.ORGANS`` (heatmaps, bars), RGB in [0, 1].
ORGAN_COLORS: dict[str, tuple[float, float, float]] = {
    "aorta": (0.90, 0.10, 0.10),
    "gallbladder": (0.20, 0.75, 0.20),
    "spleen": (0.60, 0.25, 0.85),
    "left_kidney": (1.00, 0.55, 0.00),
    "right_kidney": (1.00, 0.80, 0.10),
    "liver": (0.10, 0.55, 1.00),
    "stomach": (1.00, 0.40, 0.70),
    "pancreas": (0.10, 0.85, 0.85),
}

# RAS+ (x, y, z) -> LPS+ (x, y, z): flip x and y. (z, y, x) <-> (x, y, z): reverse. Both are
# their own inverse.
_FLIP_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_REVERSE_XYZ = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def window_limits(level: float, width: float) -> tuple[float, float]:
    """Contrast limits (low, high) in HU of a window given as level and width."""
    return float(level) - float(width) / 2.0, float(level) + float(width) / 2.0


# ---- world transforms ------------------------------------------------------------------------
def world_affine(ras_affine_zyx: np.ndarray) -> np.ndarray:
    """(z, y, x) index -> world LPS (z, y, x) mm, from a (z, y, x) index -> RAS (x, y, z) matrix.

    ``ras_affine_zyx`` is e.g. ``Volume.canonical_affine`` or ``Preprocessed.affine``.
    """
    return _REVERSE_XYZ @ _FLIP_RAS_LPS @ np.asarray(ras_affine_zyx, dtype=np.float64)


def ras_affine(world: np.ndarray) -> np.ndarray:
    """Inverse of :func:`world_affine`: (z, y, x) index -> RAS (x, y, z) mm."""
    return _FLIP_RAS_LPS @ _REVERSE_XYZ @ np.asarray(world, dtype=np.float64)


def transform_kwargs(world: np.ndarray, atol: float = 1e-9) -> dict[str, Any]:
    """napari layer keywords for a 4x4 data -> world matrix.

    An axis-aligned matrix becomes ``scale`` and ``translate`` (what napari shows as the layer's
    voxel size and origin); an oblique one goes whole into ``affine``.
    """
    m = np.asarray(world, dtype=np.float64)
    lin = m[:3, :3]
    off_diagonal = lin - np.diag(np.diag(lin))
    if np.all(np.abs(off_diagonal) <= atol * max(1.0, float(np.abs(lin).max()))):
        return {"scale": tuple(float(v) for v in np.diag(lin)),
                "translate": tuple(float(v) for v in m[:3, 3])}
    return {"affine": m}


def preprocessed_world_affine(pre) -> np.ndarray:
    """World matrix of the preprocessed volume (the model's spacing), from a ``Preprocessed``."""
    return world_affine(pre.affine)


def _scale_translate(scale, translate) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.diag(np.asarray(scale, dtype=np.float64))
    m[:3, 3] = np.asarray(translate, dtype=np.float64)
    return m


def grid_world_affine(grid) -> np.ndarray:
    """World matrix of a ``grid_shape`` array holding one voxel per superpatch.

    Grid voxel ``c`` spans preprocessed voxels ``[c S, (c + 1) S)``, whose centres are at
    preprocessed index ``(c + 1/2) S - 1/2``; its edges are the superpatch's box (``box_world``).
    """
    s = float(grid.superpatch)
    return preprocessed_world_affine(grid.mapping) @ _scale_translate([s] * 3, [s / 2 - 0.5] * 3)


def box_world_affine(grid, start_zyx) -> np.ndarray:
    """World matrix of an array at the model's spacing whose voxel (0, 0, 0) is ``start_zyx``."""
    return preprocessed_world_affine(grid.mapping) @ _scale_translate([1, 1, 1], start_zyx)


def patch_world_affine(grid, index: int, patch: int) -> np.ndarray:
    """World matrix of a ``(g, g, g)`` array holding one voxel per patch of superpatch ``index``."""
    start = np.asarray(grid.box(index).start, dtype=np.float64)
    p = float(patch)
    return preprocessed_world_affine(grid.mapping) @ _scale_translate([p] * 3, start + p / 2 - 0.5)


# ---- the grid as data --------------------------------------------------------------------------
def grid_ids(grid_shape) -> np.ndarray:
    """Label image of the grid: superpatch ``i`` holds label ``i + 1`` (0 stays background)."""
    n = int(np.prod(grid_shape))
    dtype = np.uint8 if n < 255 else (np.uint16 if n < 65535 else np.uint32)
    return (np.arange(n, dtype=np.int64) + 1).astype(dtype).reshape(tuple(int(g) for g in grid_shape))


def grid_lattice_vectors(grid_shape) -> np.ndarray:
    """Every edge of the grid's lattice as napari vectors ``(N, 2, 3)`` in grid data coordinates.

    Cell ``c`` spans ``[c - 1/2, c + 1/2]``, so lattice lines sit on half-integers. Each vector is
    one cell edge: ``[start, direction]``. napari shows a vector in a 2D slice when its start lies
    within half a data unit of the slice, i.e. within the grid cell the slice cuts: the edges lying
    in the nearest lattice plane are the grid lines of that slice, and the edges across the plane
    project to points. In 3D every edge shows: the wireframe of the boxes.
    """
    shape = tuple(int(g) for g in grid_shape)
    vectors = []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        ranges = [np.arange(shape[a] + 1) - 0.5 for a in others]
        steps = np.arange(shape[axis]) - 0.5
        for u in ranges[0]:
            for v in ranges[1]:
                for t in steps:
                    start = np.zeros(3)
                    start[axis] = t
                    start[others[0]] = u
                    start[others[1]] = v
                    direction = np.zeros(3)
                    direction[axis] = 1.0
                    vectors.append((start, direction))
    return np.asarray(vectors, dtype=np.float32).reshape(-1, 2, 3)


def box_outline_vectors(cell_zyx, hidden_axis: int | None = None) -> np.ndarray:
    """The edges of one grid cell as napari vectors (grid data coordinates).

    ``hidden_axis`` (2D views: the axis the slice cuts) gives the 4 edges around the displayed
    plane, placed at the cell's centre along that axis, so napari draws them exactly in the slices
    within the cell. ``None`` (3D) gives all 12 edges.
    """
    c = np.asarray(cell_zyx, dtype=np.float64)
    vectors = []
    if hidden_axis is None:
        for axis in range(3):
            u, v = [a for a in range(3) if a != axis]
            for du in (-0.5, 0.5):
                for dv in (-0.5, 0.5):
                    start = c.copy()
                    start[axis] -= 0.5
                    start[u] += du
                    start[v] += dv
                    direction = np.zeros(3)
                    direction[axis] = 1.0
                    vectors.append((start, direction))
    else:
        u, v = [a for a in range(3) if a != int(hidden_axis)]
        for along, across in ((u, v), (v, u)):
            for d in (-0.5, 0.5):
                start = c.copy()
                start[along] -= 0.5
                start[across] += d
                direction = np.zeros(3)
                direction[along] = 1.0
                vectors.append((start, direction))
    return np.asarray(vectors, dtype=np.float32).reshape(-1, 2, 3)


def block_image(values, grid_shape, fill: float = np.nan) -> np.ndarray:
    """Per-superpatch values ``(n,)`` (NaN or missing = unknown) as a ``grid_shape`` float32 array."""
    shape = tuple(int(g) for g in grid_shape)
    n = int(np.prod(shape))
    out = np.full(n, fill, dtype=np.float32)
    vals = np.asarray(values, dtype=np.float32).ravel()
    out[: min(n, vals.size)] = vals[:n]
    return out.reshape(shape)


def block_cells(grid, max_cell: int | None = None, unit: int | None = None) -> tuple[int, int, int]:
    """Per axis, the cell size (model voxels, a divisor of ``unit``, default the superpatch, at most
    ``max_cell``) of a block image that ends at the scan's edge (within 2 % of the scan, at least one
    voxel), not at the padded grid's: the slider and the view then cover the scan, not the padding
    beyond it."""
    s = int(grid.superpatch if unit is None else unit)
    divisors = [d for d in range(s, 0, -1) if s % d == 0 and (max_cell is None or d <= max_cell)]
    cells = []
    for n in grid.shape:
        tolerance = max(1, int(round(0.02 * n)))
        cells.append(next(d for d in divisors if -(-n // d) * d - n <= tolerance))
    return tuple(cells)  # type: ignore[return-value]


def block_image_clipped(values, grid, dtype=np.float32, fill=np.nan,
                        max_cell: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-superpatch values ``(n,)`` as a block image clipped to the scan, and its world matrix:
    cell ``c`` of axis ``a`` spans model voxels ``[c d_a, (c + 1) d_a)`` (``d`` = :func:`block_cells`)."""
    cells = block_cells(grid, max_cell)
    s = int(grid.superpatch)
    blocks = block_image(values, grid.grid_shape, fill=fill).astype(dtype, copy=False)
    for axis, d in enumerate(cells):
        blocks = np.repeat(blocks, s // d, axis=axis)
    keep = tuple(slice(0, -(-n // d)) for n, d in zip(grid.shape, cells))
    image = np.ascontiguousarray(blocks[keep])
    world = preprocessed_world_affine(grid.mapping) @ _scale_translate(
        [float(d) for d in cells], [d / 2 - 0.5 for d in cells])
    return image, world


def patch_block_image(values, grid_shape, tokens_per_axis: int) -> np.ndarray:
    """Per-patch values ``(n, g^3)`` (superpatch ``i``'s tokens in raster z, y, x order, ``g`` =
    ``tokens_per_axis``) as one array of shape ``grid_shape * g``: one voxel per patch, superpatch
    ``i`` at grid cell ``c`` filling ``[c g, (c + 1) g)`` per axis."""
    shape = tuple(int(v) for v in grid_shape)
    g = int(tokens_per_axis)
    vals = np.asarray(values, dtype=np.float32).reshape(shape + (g, g, g))
    return np.ascontiguousarray(vals.transpose(0, 3, 1, 4, 2, 5)).reshape(tuple(v * g for v in shape))


def patch_block_image_clipped(values, grid, patch: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch values ``(n, (S / patch)^3)`` as a block image clipped to the scan, and its world
    matrix: :func:`block_image_clipped` one level down, each patch a ``patch^3`` block of model voxels
    (cells :func:`block_cells` with ``unit=patch``: the same world extent as the superpatch image)."""
    p = int(patch)
    g = int(grid.superpatch) // p
    cells = block_cells(grid, max_cell=p, unit=p)
    blocks = patch_block_image(values, grid.grid_shape, g).astype(dtype, copy=False)
    for axis, d in enumerate(cells):
        blocks = np.repeat(blocks, p // d, axis=axis)
    keep = tuple(slice(0, -(-n // d)) for n, d in zip(grid.shape, cells))
    image = np.ascontiguousarray(blocks[keep])
    world = preprocessed_world_affine(grid.mapping) @ _scale_translate(
        [float(d) for d in cells], [d / 2 - 0.5 for d in cells])
    return image, world


def scan_extent_cells(grid) -> np.ndarray:
    """Where the scan ends along each axis, in grid cell coordinates (cell ``c`` spans
    ``[c - 1/2, c + 1/2]``): the upper limit lattice lines and outlines are clipped to."""
    return np.asarray(grid.shape, dtype=np.float64) / float(grid.superpatch) - 0.5


def clip_vectors(vectors: np.ndarray, upper_zyx) -> np.ndarray:
    """Vectors ``(N, 2, 3)`` (start, direction) cut to the box ``[-1/2, upper]`` per axis; vectors
    left without length are dropped, duplicates (edges of planes beyond the box, moved onto its
    face) kept once."""
    upper = np.asarray(upper_zyx, dtype=np.float64)
    start = np.minimum(vectors[:, 0].astype(np.float64), upper)
    end = np.minimum((vectors[:, 0] + vectors[:, 1]).astype(np.float64), upper)
    keep = np.linalg.norm(end - start, axis=1) > 1e-9
    out = np.stack([start[keep], (end - start)[keep]], axis=1).astype(np.float32)
    if len(out) == 0:
        return out.reshape(0, 2, 3)
    return np.unique(out.round(6), axis=0).astype(np.float32)


def superpatch_at(grid_world: np.ndarray, grid_shape, world_zyx) -> int | None:
    """Index of the superpatch holding world point ``world_zyx`` (LPS mm, z y x), or None."""
    inv = np.linalg.inv(np.asarray(grid_world, dtype=np.float64))
    p = np.asarray(world_zyx, dtype=np.float64)
    c = inv[:3, :3] @ p + inv[:3, 3]
    idx = np.floor(c + 0.5).astype(int)
    shape = tuple(int(g) for g in grid_shape)
    if any(i < 0 or i >= g for i, g in zip(idx, shape)):
        return None
    return int(np.ravel_multi_index(tuple(idx), shape))


def superpatch_on_ray(grid_world: np.ndarray, grid_shape, point_zyx, direction_zyx) -> int | None:
    """The first superpatch a viewing ray through ``point_zyx`` along ``direction_zyx`` enters (3D
    clicks: the front face under the cursor), or None if the ray misses the grid."""
    inv = np.linalg.inv(np.asarray(grid_world, dtype=np.float64))
    p = inv[:3, :3] @ np.asarray(point_zyx, dtype=np.float64) + inv[:3, 3]
    d = inv[:3, :3] @ np.asarray(direction_zyx, dtype=np.float64)
    shape = np.asarray([int(g) for g in grid_shape], dtype=np.float64)
    lo, hi = np.full(3, -0.5), shape - 0.5
    t_near, t_far = -np.inf, np.inf
    for a in range(3):  # slab intersection of the line with the grid's box
        if abs(d[a]) < 1e-12:
            if not lo[a] <= p[a] <= hi[a]:
                return None
            continue
        t0, t1 = sorted(((lo[a] - p[a]) / d[a], (hi[a] - p[a]) / d[a]))
        t_near, t_far = max(t_near, t0), min(t_far, t1)
    if t_near > t_far:
        return None
    # the entry point on the camera's side (t may be negative: the line, not only the half-ray,
    # because napari puts the 3D cursor on a plane through the scene), nudged inside
    inside = p + t_near * d + 1e-6 * d / max(float(np.linalg.norm(d)), 1e-12)
    idx = np.clip(np.floor(inside + 0.5).astype(int), 0, shape.astype(int) - 1)
    return int(np.ravel_multi_index(tuple(idx), tuple(shape.astype(int))))


def token_at(patch_world: np.ndarray, grid_size: int, world_zyx) -> tuple[int, int, int] | None:
    """(z, y, x) token (patch) of a superpatch under ``world_zyx``, given the superpatch's
    :func:`patch_world_affine`; None outside it."""
    inv = np.linalg.inv(np.asarray(patch_world, dtype=np.float64))
    c = inv[:3, :3] @ np.asarray(world_zyx, dtype=np.float64) + inv[:3, 3]
    idx = np.floor(c + 0.5).astype(int)
    if any(i < 0 or i >= int(grid_size) for i in idx):
        return None
    return tuple(int(i) for i in idx)  # type: ignore[return-value]


def grid_world_extent(grid_world: np.ndarray, grid_shape) -> np.ndarray:
    """World corners ``(8, 3)`` (z, y, x) of the whole grid's box (voxel edges)."""
    shape = np.asarray(grid_shape, dtype=np.float64)
    lo, hi = -0.5 * np.ones(3), shape - 0.5
    corners = np.array([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]]
                        for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    m = np.asarray(grid_world, dtype=np.float64)
    return corners @ m[:3, :3].T + m[:3, 3]


def neighbour(grid_shape, index: int, axis: int, step: int) -> int:
    """The superpatch ``step`` cells from ``index`` along ``axis`` (0 z, 1 y, 2 x), kept in the grid."""
    shape = tuple(int(g) for g in grid_shape)
    pos = list(np.unravel_index(int(index), shape))
    pos[axis] = int(np.clip(pos[axis] + int(step), 0, shape[axis] - 1))
    return int(np.ravel_multi_index(tuple(pos), shape))


def grid_features(grid_shape, columns: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The grid layer's ``features``: one row per label value (0 = none, then superpatch + 1).

    Always ``index`` (the label value napari looks up), ``superpatch`` and ``grid_zyx``; then each
    entry of ``columns`` as an ``(n,)`` array per superpatch (organ probabilities, reconstruction
    error, later label states). Row 0 (background) holds NaN / empty values.
    """
    shape = tuple(int(g) for g in grid_shape)
    n = int(np.prod(shape))
    pos = np.stack(np.unravel_index(np.arange(n), shape), axis=1)
    out: dict[str, np.ndarray] = {
        "index": np.arange(n + 1),
        "superpatch": np.concatenate([[-1], np.arange(n)]),
        "grid_zyx": np.array([""] + [f"{z},{y},{x}" for z, y, x in pos], dtype=object),
    }
    for name, values in (columns or {}).items():
        vals = np.asarray(values)
        if vals.shape[0] != n:
            raise ValueError(f"grid_features: column {name!r} has {vals.shape[0]} values, the grid {n}")
        if vals.dtype.kind in "fiub":
            out[name] = np.concatenate([[np.nan], vals.astype(np.float64)])
        else:
            out[name] = np.concatenate([np.array([""], dtype=object), vals.astype(object)])
    return out


def heatmap_colors(rgb, steps: int = 5, max_alpha: float = 0.9) -> np.ndarray:
    """RGBA control points from transparent (value 0) to ``rgb`` (value 1): a heatmap over CT."""
    t = np.linspace(0.0, 1.0, steps)
    rgb = np.asarray(rgb, dtype=np.float64)[:3]
    return np.column_stack([np.outer(np.ones(steps), rgb), max_alpha * t]).astype(np.float32)


def box_plane_edges(grid, index: int, hidden: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Superpatch ``index``'s four edges in a plane across axis ``hidden`` (grid-cell vectors, cut at
    the scan's edge), its cell, and the cell range along ``hidden`` that lies inside the scan."""
    upper = scan_extent_cells(grid)
    cell = np.asarray(grid.grid_index(index), dtype=np.float64)
    edges = clip_vectors(box_outline_vectors(cell, hidden), np.where(np.arange(3) == hidden, np.inf, upper))
    return edges, cell, (cell[hidden] - 0.5, min(cell[hidden] + 0.5, upper[hidden]))


def selection_outline(grid, index: int, hidden: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The outline of superpatch ``index`` for a view, as napari vectors and their world affine:
    in 3D (``hidden`` None) its twelve edges; in a 2D view whose hidden axis is ``hidden`` the four
    edges in the displayed plane, shown in exactly the slices that cut the box. Cut at the scan's edge."""
    world = grid_world_affine(grid)
    if hidden is None:
        cell = np.asarray(grid.grid_index(index), dtype=np.float64)
        return clip_vectors(box_outline_vectors(cell, None), scan_extent_cells(grid)), world
    # napari shows a vector within half a data unit of its start along the hidden axis; that axis is
    # stretched so half a unit either side is the part of the box inside the scan
    vectors, cell, (low, high) = box_plane_edges(grid, index, hidden)
    stretch = np.eye(4)
    stretch[hidden, hidden] = high - low
    stretch[hidden, 3] = (low + high) / 2.0 - cell[hidden] * (high - low)
    return vectors, world @ stretch


def box_centre_world(prepared, index: int) -> np.ndarray:
    """World (LPS z y x mm) centre of the part of superpatch ``index`` of a prepared scan that lies
    inside the scan (a box may reach into the padding beyond the scan's last slice)."""
    box = prepared.grid.box(index, clip=True)
    centre = (np.asarray(box.start, dtype=np.float64) + np.asarray(box.stop)) / 2.0 - 0.5
    world = preprocessed_world_affine(prepared.pre)
    return world[:3, :3] @ centre + world[:3, 3]
