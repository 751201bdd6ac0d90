"""The superpatch grid: padding, boxes, split/stitch, streaming, random sampling.

A preprocessed volume of shape ``(Z, Y, X)`` is padded *at the end* of each axis to a multiple
of the superpatch size ``S`` (pad value 0 = air after windowing) and cut into non-overlapping
``S^3`` superpatches numbered in C order over the grid ``(gz, gy, gx)``.

Boxes are :class:`Box` ``(start, stop)`` pairs of (z, y, x) tuples, ``stop`` exclusive. In the
preprocessed volume a box may reach into the padding; :meth:`SuperpatchGrid.box_original` gives
the voxels of the original scan (canonical (z, y, x) indices) whose centres fall inside the
superpatch, which partition the scan exactly, and :meth:`SuperpatchGrid.box_world` its 8
corners in world RAS+ mm (what the viewer draws).
"""

from __future__ import annotations

import itertools
from typing import Iterator, NamedTuple

import numpy as np

from ..errors import NemesisLimitError
from .io import check_voxels
from .preprocess import Preprocessed

__all__ = [
    "Box",
    "SuperpatchGrid",
    "MIN_MEAN",
    "MAX_SUPERPATCHES",
    "sample_superpatch_origin",
    "sample_superpatch",
    "crop_superpatch",
    "inside_fraction",
]

#: Random pretraining crops whose mean (after windowing) is below this are mostly air: skipped.
MIN_MEAN = 0.05
#: Most superpatches a per-superpatch listing (``nemesis info``, a cache's presence labels) goes through.
MAX_SUPERPATCHES = 100_000


class Box(NamedTuple):
    """A voxel box: ``start`` inclusive, ``stop`` exclusive, both (z, y, x)."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))  # type: ignore[return-value]


class SuperpatchGrid:
    """Superpatch tiling of a (preprocessed) volume of shape ``shape_zyx``.

    ``mapping`` (a :class:`~.preprocess.Preprocessed`, or use :meth:`for_preprocessed`) links the
    grid to the original scan for :meth:`box_original` and :meth:`box_world`.
    """

    def __init__(self, shape_zyx, superpatch: int = 128, mapping: Preprocessed | None = None):
        shape = tuple(int(s) for s in shape_zyx)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"SuperpatchGrid: bad volume shape {shape_zyx}")
        if int(superpatch) < 1:
            raise ValueError(f"SuperpatchGrid: bad superpatch size {superpatch}")
        s = int(superpatch)
        check_voxels(f"a {s}^3 superpatch", (s, s, s), 4, "float32")  # one is allocated at a time
        self.shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self.superpatch = int(superpatch)
        s = self.superpatch
        self.grid_shape: tuple[int, int, int] = tuple(-(-d // s) for d in shape)  # type: ignore
        self.padded_shape: tuple[int, int, int] = tuple(g * s for g in self.grid_shape)  # type: ignore
        self.mapping = mapping

    def check_count(self, what: str = "the scan", limit: int = MAX_SUPERPATCHES) -> "SuperpatchGrid":
        """Refuse (one line) a grid of more than ``limit`` superpatches, before a loop over them."""
        if self.n > limit:
            raise NemesisLimitError(
                f"{what}: {self.superpatch}^3 superpatches cut it into {self.n} superpatches (grid "
                f"{' x '.join(map(str, self.grid_shape))} z y x), more than the {limit} one listing goes through; "
                "use a larger superpatch size")
        return self

    @classmethod
    def for_preprocessed(cls, pre: Preprocessed, superpatch: int = 128) -> "SuperpatchGrid":
        return cls(pre.shape, superpatch, mapping=pre)

    def __repr__(self) -> str:
        return (f"SuperpatchGrid(shape={self.shape}, superpatch={self.superpatch}, "
                f"grid={self.grid_shape}, n={self.n})")

    def __len__(self) -> int:
        return self.n

    @property
    def n(self) -> int:
        """Number of superpatches."""
        return int(np.prod(self.grid_shape))

    @property
    def pad_width(self) -> tuple[tuple[int, int], ...]:
        return tuple((0, p - d) for p, d in zip(self.padded_shape, self.shape))

    def grid_index(self, i: int) -> tuple[int, int, int]:
        """(gz, gy, gx) of superpatch ``i``."""
        if not 0 <= int(i) < self.n:
            raise IndexError(f"superpatch {i} out of range 0..{self.n - 1}")
        return tuple(int(v) for v in np.unravel_index(int(i), self.grid_shape))  # type: ignore

    # ---- boxes --------------------------------------------------------------------------
    def box(self, i: int, clip: bool = False) -> Box:
        """Box of superpatch ``i`` in preprocessed voxels (``clip=True``: cut at the volume)."""
        g = self.grid_index(i)
        s = self.superpatch
        start = tuple(v * s for v in g)
        stop = tuple(v * s + s for v in g)
        if clip:
            stop = tuple(min(b, d) for b, d in zip(stop, self.shape))
        return Box(start, stop)  # type: ignore[arg-type]

    def boxes(self, clip: bool = False) -> list[Box]:
        return [self.box(i, clip) for i in range(self.n)]

    def _need_mapping(self) -> Preprocessed:
        if self.mapping is None:
            raise ValueError("this SuperpatchGrid has no mapping to the original scan; build it "
                             "with SuperpatchGrid.for_preprocessed(preprocessed, superpatch)")
        return self.mapping

    def box_original(self, i: int) -> Box:
        """Original-scan voxels (canonical (z, y, x)) whose centres lie in superpatch ``i``.

        Clipped to the scan; the boxes of all superpatches partition the scan (a box in the
        padding only is empty, ``start == stop`` on some axis).
        """
        m = self._need_mapping()
        b = self.box(i)
        lo = m.edges_to_source(b.start)
        hi = m.edges_to_source(b.stop)
        n = m.source_shape_zyx
        start = tuple(int(min(max(np.ceil(v - 0.5 - 1e-9), 0), d)) for v, d in zip(lo, n))
        stop = tuple(int(min(max(np.ceil(v - 0.5 - 1e-9), 0), d)) for v, d in zip(hi, n))
        return Box(start, stop)  # type: ignore[arg-type]

    def boxes_original(self) -> list[Box]:
        return [self.box_original(i) for i in range(self.n)]

    def box_world(self, i: int, clip: bool = False) -> np.ndarray:
        """The 8 corners (8, 3) of superpatch ``i`` in world RAS+ mm (x, y, z).

        Corners are voxel *edges*, so adjacent superpatches share faces. ``clip=True`` cuts the
        box at the scan (no padding, and never beyond the original scan's outer voxel edges).
        """
        m = self._need_mapping()
        b = self.box(i, clip=clip)
        lo, hi = m.edges_to_source(b.start), m.edges_to_source(b.stop)
        if clip:
            extent = np.asarray(m.source_shape_zyx, dtype=np.float64)
            lo, hi = np.clip(lo, 0.0, extent), np.clip(hi, 0.0, extent)
        lo, hi = lo - 0.5, hi - 0.5  # original voxel-centre index of the edges
        corners = np.array([[(lo, hi)[cz][0], (lo, hi)[cy][1], (lo, hi)[cx][2]]
                            for cz, cy, cx in itertools.product((0, 1), repeat=3)])
        a = m.source_canonical_affine
        return corners @ a[:3, :3].T + a[:3, 3]

    def boxes_world(self, clip: bool = False) -> np.ndarray:
        """(n, 8, 3) corners in world RAS+ mm."""
        return np.stack([self.box_world(i, clip) for i in range(self.n)]) if self.n else \
            np.zeros((0, 8, 3))

    # ---- split / stitch -----------------------------------------------------------------
    def _check_volume(self, volume: np.ndarray) -> None:
        if tuple(volume.shape) not in (self.shape, self.padded_shape):
            raise ValueError(f"volume shape {tuple(volume.shape)} is neither the grid's "
                             f"{self.shape} nor its padded {self.padded_shape}")

    def pad(self, volume: np.ndarray, value: float = 0) -> np.ndarray:
        """The volume padded at the end of each axis to :attr:`padded_shape`."""
        self._check_volume(volume)
        if tuple(volume.shape) == self.padded_shape:
            return np.asarray(volume)
        out = np.full(self.padded_shape, value, dtype=volume.dtype)
        out[tuple(slice(0, d) for d in self.shape)] = volume
        return out

    def split(self, volume: np.ndarray, value: float = 0) -> np.ndarray:
        """``(n, S, S, S)`` superpatches of ``volume`` (shape :attr:`shape` or padded), dtype kept."""
        padded = self.pad(volume, value)
        gz, gy, gx = self.grid_shape
        s = self.superpatch
        blocks = padded.reshape(gz, s, gy, s, gx, s).transpose(0, 2, 4, 1, 3, 5)
        return np.ascontiguousarray(blocks).reshape(self.n, s, s, s)

    def stitch(self, patches: np.ndarray, crop: bool = True) -> np.ndarray:
        """Inverse of :meth:`split`: ``(n, S, S, S)`` (or ``(n, S, S, S, ...)``) -> volume, cropped."""
        patches = np.asarray(patches)
        s = self.superpatch
        if patches.shape[:4] != (self.n, s, s, s):
            raise ValueError(f"stitch: expected ({self.n}, {s}, {s}, {s}, ...), got {patches.shape}")
        gz, gy, gx = self.grid_shape
        rest = patches.shape[4:]
        blocks = patches.reshape((gz, gy, gx, s, s, s) + rest)
        order = (0, 3, 1, 4, 2, 5) + tuple(range(6, 6 + len(rest)))
        volume = blocks.transpose(order).reshape(self.padded_shape + rest)
        if crop:
            volume = volume[tuple(slice(0, d) for d in self.shape)]
        return np.ascontiguousarray(volume)

    def superpatch_of(self, volume: np.ndarray, i: int, value: float = 0) -> np.ndarray:
        """One superpatch (S, S, S) read from ``volume`` (e.g. a memory map), padded, a copy."""
        self._check_volume(volume)
        b = self.box(i, clip=True)
        s = self.superpatch
        out = np.full((s, s, s), value, dtype=volume.dtype)
        region = volume[b.slices]
        out[tuple(slice(0, d) for d in region.shape)] = region
        return out

    def iter_superpatches(self, volume: np.ndarray, value: float = 0,
                          indices=None) -> Iterator[tuple[int, Box, np.ndarray]]:
        """Yield ``(index, box, patch)`` one superpatch at a time (never more than one copy)."""
        self._check_volume(volume)
        for i in (range(self.n) if indices is None else indices):
            yield int(i), self.box(int(i)), self.superpatch_of(volume, int(i), value)


# ------------------------------------------------------------------------------------------
# Random sampling for pretraining
# ------------------------------------------------------------------------------------------


def sample_superpatch_origin(shape_zyx, superpatch: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """A uniform random (z, y, x) origin whose crop leaves the scan only where it must.

    Along an axis at least ``superpatch`` long the crop lies wholly inside the scan (origin uniform
    in ``[0, d - S]``); along a shorter axis the origin is 0, so the crop holds the whole axis and
    the padding comes after it, as in the inference grid. Drawing over the padded volume instead
    would make about a third of a BTCV-sized scan's crops padding the model learns to paint.
    """
    s = int(superpatch)
    hi = [max(0, int(d) - s) for d in shape_zyx]
    return tuple(int(rng.integers(0, h + 1)) for h in hi)  # type: ignore[return-value]


def inside_fraction(shape_zyx, origin_zyx, superpatch: int) -> float:
    """Fraction of the ``S^3`` crop at ``origin_zyx`` that lies inside a volume of ``shape_zyx``."""
    s = int(superpatch)
    frac = 1.0
    for o, d in zip(origin_zyx, shape_zyx):
        frac *= max(0, min(int(o) + s, int(d)) - max(int(o), 0)) / s
    return float(frac)


def crop_box(volume: np.ndarray, start_zyx, size_zyx, value: float = 0, dtype=np.float32) -> np.ndarray:
    """The box of ``size_zyx`` voxels at ``start_zyx``, which may lie partly (or wholly) outside the
    volume: voxels beyond it get ``value``."""
    out = np.full(tuple(int(n) for n in size_zyx), value, dtype=dtype)
    src, dst = [], []
    for a, n, d in zip(start_zyx, size_zyx, volume.shape):
        lo, hi = max(0, int(a)), min(int(d), int(a) + int(n))
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(a), hi - int(a)))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def crop_superpatch(volume: np.ndarray, origin_zyx, superpatch: int, value: float = 0,
                    dtype=np.float32) -> np.ndarray:
    """The (S, S, S) crop at ``origin_zyx``; voxels beyond the volume get ``value``."""
    s = int(superpatch)
    return crop_box(volume, origin_zyx, (s, s, s), value, dtype)


def sample_superpatch(
    volume: np.ndarray,
    superpatch: int,
    rng: np.random.Generator,
    min_mean: float = MIN_MEAN,
    max_tries: int = 20,
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A random (S, S, S) float32 crop of a windowed volume and its origin.

    Origins are drawn by :func:`sample_superpatch_origin` (inside the scan along every axis that is
    long enough); a crop whose mean is below ``min_mean`` is drawn again, at most ``max_tries``
    times in all, after which the crop with the highest mean seen is returned (so this always ends).
    """
    best = None
    for _ in range(max(1, int(max_tries))):
        origin = sample_superpatch_origin(volume.shape, superpatch, rng)
        patch = crop_superpatch(volume, origin, superpatch)
        mean = float(patch.mean(dtype=np.float64))
        if mean >= min_mean:
            return patch, origin
        if best is None or mean > best[0]:
            best = (mean, patch, origin)
    assert best is not None
    return best[1], best[2]
