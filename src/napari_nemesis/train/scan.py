"""A scan prepared once and reconstructed superpatch by superpatch: what the viewer and the CLI share.

``prepare_scan`` reads, resamples and windows a scan once; the viewer keeps the result and runs
many reconstructions on it. ``iter_reconstruction`` streams one :class:`SuperpatchReconstruction`
per superpatch (all of them, or the ones asked for), each cropped to the scan and scored on its
own; superpatch i's noise and mask come from ``(seed, i)`` (``reconstruct_superpatches``), so a
superpatch reconstructed alone equals the same superpatch inside a whole-scan run.
``ScanReconstruction`` assembles a stream into whole-scan arrays, the scan's PSNR/SSIM and the
per-superpatch masked-patch error (the error map); ``reconstruct_scan`` runs the whole thing for a
scan or chosen superpatches (``nemesis reconstruct [--superpatch I]``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import DEFAULT_SPACING_ZYX, HU_WINDOW, Box, Preprocessed, SuperpatchGrid, Volume
from ..errors import NemesisInputError
from ..model import NemesisMAE
from ..model.masking import check_strategy
from .events import CancelFn, ProgressFn, emit
from .inference import ReconMetrics, check_output, output_reason, reconstruct_superpatches, scan_stem, to_hu
from .runtime import resolve_device

#: Arrays a :class:`ScanReconstruction` assembles by default (window units, model spacing).
SCAN_ARRAYS = ("noisy", "masked", "recon", "error")


@dataclass
class PreparedScan:
    """A scan read and preprocessed once: the volume, its windowed resampled array and the grid."""

    volume: Volume
    pre: Preprocessed
    grid: SuperpatchGrid  # mapped to the scan (box_original, box_world work)
    spacing_source: str = "given"  # or where prepare_for_model found it: probe, checkpoint, default

    @property
    def name(self) -> str:
        """The scan's file name for messages (``scan`` for an array made in memory)."""
        return Path(str(self.volume.source)).name if self.volume.source else "scan"

    def check_index(self, index) -> int:
        """A superpatch index of this scan, or a one-line error naming the scan."""
        n = self.grid.n
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise NemesisInputError(f"{self.name}: superpatch {index!r} is not an integer") from None
        if not 0 <= i < n:
            grid = "x".join(map(str, self.grid.grid_shape))
            raise NemesisInputError(f"{self.name}: superpatch {i} is out of range 0..{n - 1} (grid {grid} z y x)")
        return i

    def superpatch(self, index) -> np.ndarray:
        """Superpatch ``index`` (S, S, S) in window units, padded with air beyond the scan."""
        return self.grid.superpatch_of(self.pre.array, self.check_index(index))


def prepare_scan(scan, spacing_zyx=DEFAULT_SPACING_ZYX, superpatch: int = 128,
                 spacing_source: str | None = None) -> PreparedScan:
    """Read (``scan``: a path or a ``data.Volume``), resample to ``spacing_zyx`` (z, y, x mm, as
    ``data.preprocess`` takes it) and window once; cut into ``superpatch``-sized superpatches.
    To follow a model's checkpoint (its pretraining spacing and superpatch) use
    :func:`prepare_for_model`."""
    from ..data import check_ct, preprocess, read_volume

    if int(superpatch) < 1:
        raise NemesisInputError(f"superpatch size {superpatch} must be positive")
    vol = check_ct(scan if isinstance(scan, Volume) else read_volume(scan))
    pre = preprocess(vol, spacing_zyx, spacing_source=spacing_source)
    return PreparedScan(vol, pre, SuperpatchGrid.for_preprocessed(pre, int(superpatch)))


def prepare_for_model(scan, model: NemesisMAE, spacing_zyx=None) -> PreparedScan:
    """:func:`prepare_scan` for ``model``: its superpatch size, and ``spacing_zyx`` or, when None,
    the spacing its checkpoint was pretrained at, else the default (the rule ``reconstruct_scan``
    follows: ``data.spacing.recorded_spacing``). ``spacing_source`` says which."""
    from ..data.spacing import recorded_spacing
    from .inference import spacing_origin

    spacing, source = recorded_spacing(model) if spacing_zyx is None else (spacing_zyx, "given")
    prepared = prepare_scan(scan, spacing, model.cfg.superpatch, spacing_source=spacing_origin(source, model))
    prepared.spacing_source = source
    return prepared


@dataclass
class SuperpatchReconstruction:
    """One superpatch's masked reconstruction, cropped to the scan (``box``), at model spacing.

    Arrays are (z, y, x) of ``box.shape`` in window units [0, 1] (``to_hu`` gives HU);
    ``masked`` has the masked patches blanked (0 = -175 HU), ``error`` = |recon - clean|.
    ``metrics``: ``psnr_masked``, ``ssim_masked``, ``psnr_all``, ``ssim_all`` (as
    ``reconstruct_scan`` defines them, for this superpatch) and ``mse_masked`` / ``mse_all``
    (window units squared; ``mse_masked`` is the error-map value). A value is None when the
    superpatch has no masked voxel inside the scan.
    """

    index: int
    box: Box  # clipped box in preprocessed voxels
    clean: np.ndarray
    noisy: np.ndarray
    masked: np.ndarray
    recon: np.ndarray
    error: np.ndarray
    masked_voxels: np.ndarray  # bool
    metrics: dict[str, float | None]
    device: str  # the device that ran the model
    scores: ReconMetrics = field(repr=False, default_factory=ReconMetrics)  # sums behind ``metrics``


def iter_reconstruction(
    prepared: PreparedScan,
    model: NemesisMAE,
    strategy: str = "dual",
    ratio: float = 0.75,
    noise: float = 0.0,
    seed: int = 0,
    indices: Iterable[int] | None = None,
    batch: int = 2,
    device: str = "auto",
    bf16: bool = False,
    cancel: CancelFn | None = None,
    progress: ProgressFn | None = None,
    ssim: bool = True,
) -> Iterator[SuperpatchReconstruction]:
    """Yield one :class:`SuperpatchReconstruction` per superpatch of ``indices`` (None: all), in order.

    Arguments are checked here, before the first superpatch; ``cancel`` is polled before each
    batch (raises ``NemesisCancelled``); ``progress`` gets ``start`` and one ``step`` per superpatch.
    Only ``batch`` superpatches are in memory at a time. ``ssim=False`` skips the SSIM (most of the
    scoring time on a CPU): ``metrics`` then hold ``ssim_masked`` / ``ssim_all`` None.
    """
    check_strategy(strategy)
    if not 0 < ratio < 1:
        raise NemesisInputError(f"mask ratio {ratio} must be in (0, 1)")
    if not (np.isfinite(noise) and noise >= 0):
        raise NemesisInputError(f"noise sigma {noise} must be a finite number >= 0")
    if int(batch) < 1:
        raise NemesisInputError(f"batch {batch} must be >= 1")
    if not 0 <= int(seed) < 2**63:
        raise NemesisInputError(f"seed {seed} must be in 0..2^63-1")
    if prepared.grid.superpatch != model.cfg.superpatch:
        raise NemesisInputError(
            f"{prepared.name}: prepared with {prepared.grid.superpatch}^3 superpatches but the model takes "
            f"{model.cfg.superpatch}^3; prepare the scan with superpatch={model.cfg.superpatch}"
        )
    order = list(range(prepared.grid.n)) if indices is None else [prepared.check_index(i) for i in indices]
    dev = resolve_device(device)
    return _stream(prepared, model, strategy, float(ratio), float(noise), int(seed), order, int(batch), dev, bf16,
                   cancel, progress, bool(ssim))


def _stream(prepared, model, strategy, ratio, noise, seed, order, batch, dev, bf16, cancel, progress, ssim=True):
    grid, pre = prepared.grid, prepared.pre
    items = ((i, patch) for i, _, patch in grid.iter_superpatches(pre.array, indices=order))
    emit(progress, "start", step=0, total=len(order))
    results = reconstruct_superpatches(model, items, strategy, ratio, noise, seed, dev, batch, bf16, cancel)
    for done, (i, clean, noisy, masked, recon, vox) in enumerate(results, start=1):
        check_output(recon, f"reconstructed voxels of superpatch {i}", model)
        box = grid.box(i, clip=True)
        inner = tuple(slice(0, d) for d in box.shape)
        scores = ReconMetrics()
        scores.add(clean, recon, vox, inner, ssim=ssim)  # SSIM over the whole superpatch, as reconstruct_scan scores it
        clean, noisy, masked, recon, vox = (np.ascontiguousarray(a[inner]) for a in (clean, noisy, masked, recon, vox))
        error = np.abs(recon - clean)
        metrics: dict[str, float | None] = dict(scores.result())
        metrics["mse_masked"] = float(np.mean(np.square(error[vox], dtype=np.float64))) if vox.any() else None
        metrics["mse_all"] = float(np.mean(np.square(error, dtype=np.float64)))
        emit(progress, "step", step=done, total=len(order), superpatch=i)
        yield SuperpatchReconstruction(i, box, clean, noisy, masked, recon, error, vox, metrics, str(dev), scores)


class ScanReconstruction:
    """Whole-scan arrays, metrics and error map assembled from a stream of superpatch reconstructions.

    ``arrays[key]`` (``keys`` from ``noisy``, ``masked``, ``recon``, ``error``, ``clean``,
    ``masked_voxels``) has the preprocessed shape; superpatches not (yet) added hold 0.
    ``mse_masked`` (n,) is NaN for superpatches not added (or without masked voxels in the scan).
    """

    def __init__(self, prepared: PreparedScan, keys: Iterable[str] = SCAN_ARRAYS + ("masked_voxels",)) -> None:
        allowed = SCAN_ARRAYS + ("clean", "masked_voxels")
        keys = tuple(keys)
        bad = [k for k in keys if k not in allowed]
        if bad:
            raise NemesisInputError(f"unknown reconstruction array(s) {', '.join(bad)}; choose from {', '.join(allowed)}")
        self.prepared = prepared
        shape = prepared.pre.shape
        self.arrays = {k: np.zeros(shape, dtype=bool if k == "masked_voxels" else np.float32) for k in keys}
        self.scores = ReconMetrics()
        self.mse_masked = np.full(prepared.grid.n, np.nan)
        self.per_superpatch: dict[int, dict[str, float | None]] = {}

    def add(self, item: SuperpatchReconstruction) -> None:
        """Paste one superpatch's arrays in place and add its scores (a repeated index replaces the
        arrays but would count twice in the metrics: add each superpatch once)."""
        sources = {"noisy": item.noisy, "masked": item.masked, "recon": item.recon, "error": item.error,
                   "clean": item.clean, "masked_voxels": item.masked_voxels}
        for key, arr in self.arrays.items():
            arr[item.box.slices] = sources[key]
        for total, part in ((self.scores.sq, item.scores.sq), (self.scores.ssim, item.scores.ssim),
                            (self.scores.n, item.scores.n), (self.scores.n_ssim, item.scores.n_ssim)):
            for k in total:
                total[k] += part[k]
        mse = item.metrics.get("mse_masked")
        self.mse_masked[item.index] = np.nan if mse is None else mse
        self.per_superpatch[item.index] = dict(item.metrics)

    def extend(self, items: Iterable[SuperpatchReconstruction]) -> "ScanReconstruction":
        for item in items:
            self.add(item)
        return self

    def metrics(self) -> dict[str, float | None]:
        """PSNR / SSIM over masked patches and over all voxels of the superpatches added so far."""
        return self.scores.result()

    def error_grid(self) -> np.ndarray:
        """``mse_masked`` on the superpatch grid (gz, gy, gx): the error map, one value per superpatch."""
        return self.mse_masked.reshape(self.prepared.grid.grid_shape)

    def error_map(self) -> np.ndarray:
        """The error map on the original scan's voxels: each superpatch's ``mse_masked`` over its voxels
        (0 where not reconstructed), ready for ``data.write_volume``."""
        out = np.zeros(self.prepared.volume.shape, dtype=np.float32)
        for i, v in enumerate(self.mse_masked):
            if np.isfinite(v):
                out[self.prepared.grid.box_original(i).slices] = v
        return out

    def write(self, out_dir: str | os.PathLike, stem: str | None = None, error_map: bool = False) -> dict[str, str]:
        """NIfTI on the scan's grid and affine, as ``reconstruct_scan`` writes them: ``noisy``,
        ``masked``, ``reconstruction`` (HU) and ``abs_error`` (|recon - clean| in HU); with
        ``error_map``, also ``error_map`` (per-superpatch ``mse_masked``, window units squared)."""
        try:
            return self._write(out_dir, stem, error_map)
        except OSError as exc:
            raise NemesisInputError(f"{out_dir}: cannot write the outputs ({output_reason(exc)})") from None

    def _visible_from_scan(self, recon_hu: np.ndarray) -> np.ndarray:
        """The written reconstruction: the model's output on masked voxels, the scan's own voxels on the
        visible ones of every reconstructed superpatch (not a resampled round trip of them)."""
        vol, pre = self.prepared.volume, self.prepared.pre
        hidden = pre.to_original(self.arrays["masked_voxels"].astype(np.float32), order=0) > 0.5
        done = np.zeros(vol.shape, dtype=bool)
        for i in self.per_superpatch:
            done[self.prepared.grid.box_original(i).slices] = True
        return np.where(done & ~hidden, vol.array, recon_hu)

    def _write(self, out_dir, stem, error_map) -> dict[str, str]:
        from ..data import write_volume

        need = [k for k in SCAN_ARRAYS + ("masked_voxels",) if k not in self.arrays]
        if need:
            raise NemesisInputError(f"cannot write the reconstruction: array(s) {', '.join(need)} were not assembled")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = stem or scan_stem(self.prepared.volume.source)
        vol, pre = self.prepared.volume, self.prepared.pre
        files = {}
        for key, name, hu in (("noisy", "noisy", True), ("masked", "masked", True), ("recon", "reconstruction", True),
                              ("error", "abs_error", False)):
            arr = self.arrays[key] if hu else self.arrays[key] * (HU_WINDOW[1] - HU_WINDOW[0])
            data = pre.to_original(arr, order=1)
            data = to_hu(data) if hu else data
            if key == "recon":
                data = self._visible_from_scan(data)
            path = out_dir / f"{stem}_{name}.nii.gz"
            write_volume(data.astype(np.float32), path, reference=vol)
            files[name] = str(path)
            del data, arr
        if error_map:
            path = out_dir / f"{stem}_error_map.nii.gz"
            write_volume(self.error_map(), path, reference=vol)
            files["error_map"] = str(path)
        return files


def reconstruct_scan(
    scan,
    model: NemesisMAE,
    strategy: str = "dual",
    ratio: float = 0.75,
    noise: float = 0.0,
    seed: int = 0,
    spacing_zyx=None,
    batch: int = 2,
    device: str = "auto",
    bf16: bool = False,
    out_dir: str | os.PathLike | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    indices: Iterable[int] | None = None,
) -> dict[str, Any]:
    """Mask, noise and reconstruct a scan superpatch by superpatch (``indices``: only those; None:
    all), score it and, with ``out_dir``, write noisy input, masked input, reconstruction (HU) and
    absolute error as NIfTI aligned with the scan. The written reconstruction holds the model's output
    (resampled to the scan's grid) on masked voxels and the scan's own voxels on visible ones. Voxels of
    superpatches not reconstructed hold 0 (-175 HU) and error 0. ``nemesis reconstruct [--superpatch I]`` and the viewer run this.

    ``scan``: a path, a ``data.Volume`` (prepared by :func:`prepare_for_model` with
    ``spacing_zyx``; None: the spacing the checkpoint was pretrained at, else the default) or a
    :class:`PreparedScan` (used as it is). Besides PSNR / SSIM the result holds ``indices``, the
    ``device`` that ran the model and ``per_superpatch`` (index, grid position and metrics of each).
    """
    emit(progress, "stage", name="preprocess")
    prepared = scan if isinstance(scan, PreparedScan) else prepare_for_model(scan, model, spacing_zyx)
    stream = iter_reconstruction(prepared, model, strategy, ratio, noise, seed, indices, batch, device, bf16, cancel,
                                 progress)
    assembled = ScanReconstruction(prepared).extend(stream)
    grid = prepared.grid
    result: dict[str, Any] = {
        "strategy": strategy, "ratio": ratio, "noise": noise, "seed": seed,
        "spacing_zyx": list(prepared.pre.spacing_zyx), "spacing_source": prepared.spacing_source, "superpatches": grid.n,
        "grid": list(grid.grid_shape), **assembled.metrics(), "psnr_data_range": 1.0,
        "ssim": "scikit-image structural_similarity, 7^3 window, per superpatch, averaged over voxels",
        "indices": sorted(assembled.per_superpatch), "device": str(resolve_device(device)),
        "per_superpatch": [{"superpatch": i, "grid_zyx": list(grid.grid_index(i)), **m}
                           for i, m in sorted(assembled.per_superpatch.items())],
    }
    if out_dir is not None:
        emit(progress, "stage", name="write")
        result["files"] = assembled.write(out_dir)
    return result


__all__ = ["PreparedScan", "prepare_scan", "prepare_for_model", "SuperpatchReconstruction", "iter_reconstruction",
           "ScanReconstruction", "reconstruct_scan", "SCAN_ARRAYS"]
