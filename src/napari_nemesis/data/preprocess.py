"""Preprocessing: HU window and resampling to the spacing the model sees.

Spacings in the Python API are ``(z, y, x)`` in mm. The default :data:`DEFAULT_SPACING_ZYX` is
``(2.0, 1.5, 1.5)``, i.e. 1.5 x 1.5 mm in-plane and 2.0 mm slices. The CLI's ``--spacing`` takes
the same numbers in x y z order (``--spacing 1.5 1.5 2.0``).

A target spacing is a :class:`~.spacing.Spacing` (data/spacing.py): three positive numbers
(z, y, x) in mm, or ``"native"`` to keep each scan's own spacing; :func:`as_spacing` is
re-exported here for older imports.

Resampling keeps the field of view: output voxel ``o`` along an axis has its centre at the
original continuous index ``p = (o + 0.5) * t / s - 0.5`` (``s`` original, ``t`` target spacing),
so the outer edges of the first voxel line up; the output length is ``round(n * s / t)``. Linear
interpolation (images) is separable trilinear with edge values repeated beyond the border;
nearest (labels) rounds ``p`` to the closest index with exact ties going to the lower index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import NemesisInputError
from .io import Volume, check_voxels
from .spacing import DEFAULT_SPACING_ZYX, NATIVE_SPACING, as_spacing  # noqa: F401  (re-exported)

__all__ = [
    "NATIVE_SPACING",
    "as_spacing",
    "DEFAULT_SPACING_ZYX",
    "HU_WINDOW",
    "Preprocessed",
    "window_hu",
    "resample",
    "resample_positions",
    "resampled_shape",
    "preprocess",
    "preprocess_labels",
]

#: The HU window mapped to [0, 1].
HU_WINDOW: tuple[float, float] = (-175.0, 250.0)

_TIE_EPS = 1e-6


def window_hu(array: np.ndarray, lo: float = HU_WINDOW[0], hi: float = HU_WINDOW[1]) -> np.ndarray:
    """Clip HU to ``[lo, hi]`` and scale to ``[0, 1]`` (float32); ``hi`` maps to exactly 1."""
    if not hi > lo:
        raise ValueError(f"window_hu: hi ({hi}) must be greater than lo ({lo})")
    values = np.asarray(array, dtype=np.float32)
    out = np.empty(values.shape, dtype=np.float32)
    np.subtract(values, np.float32(lo), out=out)
    # divide (correctly rounded: (hi - lo) / (hi - lo) == 1) rather than multiply by a rounded 1 / width
    np.divide(out, np.float32(hi - lo), out=out)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def resample_positions(n: int, spacing: float, target: float) -> np.ndarray:
    """Continuous source indices (float64) sampled by an axis of ``n`` voxels resampled to ``target``."""
    m = max(1, int(round(n * spacing / target)))
    ratio = target / spacing
    return (np.arange(m, dtype=np.float64) + 0.5) * ratio - 0.5


def resampled_shape(shape, spacing_zyx, target_spacing_zyx) -> tuple[int, int, int]:
    """The (z, y, x) shape :func:`resample` gives, computed without touching a voxel."""
    out = []
    for n, s, t in zip(shape, spacing_zyx, target_spacing_zyx):
        n, s, t = int(n), float(s), float(t)
        out.append(n if abs(s - t) <= 1e-9 * t else max(1, int(round(n * s / t))))
    return tuple(out)  # type: ignore[return-value]


def _spacing_text(spacing) -> str:
    return " x ".join(f"{float(v):g}" for v in spacing)


def _interp_axis(array: np.ndarray, positions: np.ndarray, axis: int, order: int) -> np.ndarray:
    n = array.shape[axis]
    if order == 0:
        idx = np.floor(positions + 0.5 - _TIE_EPS).astype(np.intp)
        np.clip(idx, 0, n - 1, out=idx)
        return np.take(array, idx, axis=axis)
    if order != 1:
        raise ValueError(f"resample: order must be 0 (nearest) or 1 (linear), not {order}")
    p = np.clip(positions, 0.0, n - 1)
    i0 = np.floor(p).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (p - i0).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = len(positions)
    w = w.reshape(shape)
    a0 = np.take(array, i0, axis=axis).astype(np.float32, copy=False)
    a1 = np.take(array, i1, axis=axis).astype(np.float32, copy=False)
    a1 -= a0
    a1 *= w
    a0 += a1
    return a0


def resample(
    array: np.ndarray,
    spacing_zyx,
    target_spacing_zyx,
    order: int = 1,
) -> np.ndarray:
    """Resample a (z, y, x) array from ``spacing_zyx`` to ``target_spacing_zyx`` (mm).

    ``order=1`` (images): trilinear, float32 out. ``order=0`` (labels): nearest, dtype kept.
    ``target_spacing_zyx="native"`` returns the array unchanged; an axis whose spacing already
    matches is not touched.
    """
    target_spacing_zyx = as_spacing(target_spacing_zyx, "resample: target spacing")
    if target_spacing_zyx == NATIVE_SPACING:
        return array if order == 0 else np.asarray(array, dtype=np.float32)
    spacing = [float(s) for s in spacing_zyx]
    target = list(target_spacing_zyx)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"resample: bad spacing {spacing_zyx} -> {target_spacing_zyx}")
    out = np.asarray(array)
    # known before any allocation: the output (passes shrink first, so no intermediate is larger
    # than the input or the output)
    check_voxels(f"resampling {' x '.join(map(str, out.shape))} voxels from {_spacing_text(spacing)} mm to "
                 f"{_spacing_text(target)} mm (z, y, x) gives an array",
                 resampled_shape(out.shape, spacing, target), 4, "float32")
    # shrink the most first: later passes then work on smaller arrays
    axes = sorted(range(3), key=lambda a: spacing[a] / target[a])
    for axis in axes:
        if abs(spacing[axis] - target[axis]) <= 1e-9 * target[axis]:
            continue
        out = _interp_axis(out, resample_positions(out.shape[axis], spacing[axis], target[axis]),
                           axis, order)
    if order == 1:
        out = np.asarray(out, dtype=np.float32)
    return out


@dataclass
class Preprocessed:
    """A windowed scan at the model's spacing, and how it maps back to the original scan.

    Attributes:
        array: float32 in [0, 1], (z, y, x), at ``spacing_zyx``.
        spacing_zyx: the spacing of ``array`` in mm.
        source_shape_zyx: the canonical shape of the original :class:`Volume`.
        source_spacing_zyx: the original spacing.
        scale_zyx: original voxels per preprocessed voxel (``target / source`` spacing).
        source_canonical_affine: the original volume's canonical (z, y, x) -> world RAS mm matrix.

    Preprocessed voxel ``o`` has its centre at original canonical index ``o * scale + offset``
    with ``offset = scale / 2 - 1/2`` (per axis); :attr:`affine` gives world mm directly.
    """

    array: np.ndarray
    spacing_zyx: tuple[float, float, float]
    source_shape_zyx: tuple[int, int, int]
    source_spacing_zyx: tuple[float, float, float]
    scale_zyx: tuple[float, float, float]
    source_canonical_affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def offset_zyx(self) -> tuple[float, float, float]:
        return tuple(0.5 * s - 0.5 for s in self.scale_zyx)  # type: ignore[return-value]

    @property
    def to_source(self) -> np.ndarray:
        """4x4 matrix: preprocessed (z, y, x) index -> original canonical (z, y, x) index."""
        m = np.eye(4)
        m[:3, :3] = np.diag(self.scale_zyx)
        m[:3, 3] = self.offset_zyx
        return m

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix: preprocessed (z, y, x) index -> world RAS+ mm."""
        return self.source_canonical_affine @ self.to_source

    def edges_to_source(self, edges_zyx) -> np.ndarray:
        """Map voxel *edge* coordinates (voxel ``o`` spans ``[o, o+1)``) to original edges."""
        return np.asarray(edges_zyx, dtype=np.float64) * np.asarray(self.scale_zyx)

    def to_original(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        """Resample a (z, y, x) array on the preprocessed grid back onto the original grid.

        Use ``order=1`` for images and probability maps, ``order=0`` for labels. The result has
        the original canonical shape and can go straight to :func:`~.io.write_volume`.
        """
        if tuple(array.shape) != self.shape:
            raise ValueError(f"to_original: shape {array.shape} is not the preprocessed {self.shape}")
        out = np.asarray(array)
        for axis in range(3):
            n_src = self.source_shape_zyx[axis]
            if self.shape[axis] == n_src and abs(self.scale_zyx[axis] - 1.0) < 1e-9:
                continue
            # original voxel v sits at preprocessed continuous index (v - offset) / scale
            pos = (np.arange(n_src, dtype=np.float64) - self.offset_zyx[axis]) / self.scale_zyx[axis]
            out = _interp_axis(out, pos, axis, order)
        return out if order == 0 else np.asarray(out, dtype=np.float32)


def preprocess(
    volume: Volume,
    spacing_zyx=DEFAULT_SPACING_ZYX,
    window: tuple[float, float] = HU_WINDOW,
    spacing_source: str | None = None,
) -> Preprocessed:
    """Resample ``volume`` to ``spacing_zyx`` (linear; ``"native"`` keeps its own) and window HU to [0, 1].

    The resampled size is checked against the voxel limit (``data.max_voxels``) before anything is
    allocated; ``spacing_source`` (e.g. ``"recorded in ckpt.safetensors"``) says in that message
    where the spacing came from."""
    src = tuple(float(s) for s in volume.spacing)
    spacing_zyx = as_spacing(spacing_zyx)
    target = src if spacing_zyx == NATIVE_SPACING else spacing_zyx
    name = volume.source if volume.source is not None else "scan"
    origin = f"; spacing {spacing_source}" if spacing_source else ""
    check_voxels(f"{name}: resampled from {_spacing_text(src)} to {_spacing_text(target)} mm (z, y, x{origin}), "
                 f"the scan", resampled_shape(volume.shape, src, target), 4, "float32")
    hu = resample(volume.array, src, target, order=1)
    array = window_hu(hu, *window)
    del hu
    # the actual scale: target / source, the grid mapping resample used
    scale = tuple(t / s for t, s in zip(target, src))
    return Preprocessed(
        array=array,
        spacing_zyx=target,  # type: ignore[arg-type]
        source_shape_zyx=volume.shape,
        source_spacing_zyx=src,  # type: ignore[arg-type]
        scale_zyx=scale,  # type: ignore[arg-type]
        source_canonical_affine=volume.canonical_affine,
    )


def preprocess_labels(labels: np.ndarray, volume: Volume, spacing_zyx=DEFAULT_SPACING_ZYX) -> np.ndarray:
    """Resample a canonical label map of ``volume`` to ``spacing_zyx`` with nearest neighbour."""
    if tuple(labels.shape) != volume.shape:
        raise ValueError(f"preprocess_labels: labels {labels.shape} do not match volume {volume.shape}")
    return resample(labels, volume.spacing, spacing_zyx, order=0)
