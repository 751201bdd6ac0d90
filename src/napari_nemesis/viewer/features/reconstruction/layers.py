"""The reconstruction's roles on the scene: ``noisy``, ``masked``, ``reconstruction``,
``abs_error`` (images at the model's spacing over the selected superpatch's part inside the scan or
the whole scan) and ``error_map`` (the per-superpatch masked-patch RMSE in HU as a block heatmap).

The four images are made ahead of any run (hidden, one voxel each) and given a run's arrays when
the job readied them (:class:`ReconstructionTargets`: resetting or allocating four whole-scan
arrays is hundreds of MB of memory traffic, done by the job's thread, not the GUI's); the shown
ones at once, the hidden ones one per event-loop turn (each new array re-computes the viewer's
extents). The error map is never switched on by a run: it would hide the reconstruction under it;
the dock's "error map" box shows it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ....data import HU_WINDOW
from ... import _layers as L
from ..._scene import BLANK, fix_range, set_transform, show

ROLES = ("noisy", "masked", "reconstruction", "abs_error")
ERROR_MAP = "error_map"
NAMES = {"noisy": "noisy input", "masked": "masked input", "reconstruction": "reconstruction",
         "abs_error": "absolute error (HU)"}
#: Air in HU: what a reconstruction layer shows where nothing was reconstructed yet.
EMPTY_HU = -1024.0
#: The error map's contrast-limit range: a masked-patch RMSE (HU) lies within the model's HU window.
ERROR_RANGE = (0.0, float(HU_WINDOW[1] - HU_WINDOW[0]))


class ReconstructionTargets:
    """The arrays a reconstruction writes into, readied by the job's thread, not the GUI's: the
    layers' own where their shape fits (``reuse``, reset in place), else new ones (``fills``: the
    value of each role before a superpatch arrives). ``arrays`` is set once they are ready."""

    def __init__(self, shape, fills: dict[str, float], reuse: dict[str, np.ndarray] | None = None) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.fills = dict(fills)
        self.reuse = {role: a for role, a in (reuse or {}).items() if tuple(a.shape) == self.shape}
        self.arrays: dict[str, np.ndarray] | None = None
        #: (superpatch, slices) written into the arrays by the job, in order
        self.written: list[tuple[int, tuple[slice, ...]]] = []

    def erase(self, keep) -> int:
        """Reset the boxes written for superpatches not in ``keep`` (a cancelled run's last piece,
        written by the job's thread but never handed to the GUI); how many were erased."""
        if self.arrays is None:
            return 0
        erased = 0
        for index, slices in self.written:
            if index not in keep:
                for role, array in self.arrays.items():
                    array[slices] = self.fills[role]
                erased += 1
        return erased

    def ready(self) -> dict[str, np.ndarray]:
        if self.arrays is None:
            arrays = {}
            for role, fill in self.fills.items():
                array = self.reuse.get(role)
                if array is None:
                    array = np.full(self.shape, fill, dtype=np.float32)
                else:
                    array[...] = fill
                arrays[role] = array
            self.arrays = arrays
        return self.arrays


def placeholder(role: str) -> np.ndarray:
    """A reconstruction layer's data before any run: one voxel (air, or no error)."""
    return np.full((1, 1, 1), 0.0 if role == "abs_error" else EMPTY_HU, dtype=np.float32)


def error_limits(values: np.ndarray) -> tuple[float, float]:
    """From the least to the most surprising superpatch: the least one stays transparent."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return max(0.0, lo - 1.0), lo + 1.0
    return lo, hi


def inferno_over_ct():
    """inferno from transparent (0) to opaque yellow (max): low error leaves the anatomy visible."""
    from napari.utils.colormaps import Colormap

    stops = np.array([[0.0, 0.0, 0.0], [0.34, 0.06, 0.43], [0.73, 0.21, 0.33], [0.98, 0.55, 0.04],
                      [0.99, 1.0, 0.64]])
    alpha = np.array([0.0, 0.5, 0.7, 0.85, 0.95])
    return Colormap(np.column_stack([stops, alpha]).astype(np.float32), name="nemesis error")


class ReconstructionLayers:
    def __init__(self, scene) -> None:
        self.scene = scene
        for role in ("noisy", "masked", "reconstruction"):
            if role not in scene.contrast_roles:
                scene.contrast_roles.append(role)
        # the running reconstruction's arrays, where to place them and the roles that took theirs
        self._recon: tuple[ReconstructionTargets, np.ndarray, set[str]] | None = None
        self.running = False
        self.error_map_wanted = False  # the user's choice (the dock's box), never a run's

    # ---- made ahead ------------------------------------------------------------------------------
    def make_ahead(self, grid) -> None:
        box_world = L.box_world_affine(grid, (0, 0, 0))
        self._recon = None
        for role in ROLES:
            layer = self.scene.get(role)
            if layer is None:
                self.scene.make_ahead(role, lambda role=role: self._make(role, placeholder(role), box_world))
            else:
                self.scene.blank(layer, placeholder(role), box_world)
        zeros = np.zeros(grid.n, dtype=np.float32)
        if self.scene.get(ERROR_MAP) is None:
            self.scene.make_ahead(ERROR_MAP, lambda: self.show_error_map(grid, zeros, blank=True))
        else:
            self.show_error_map(grid, zeros, blank=True)

    def _make(self, role: str, data: np.ndarray, world: np.ndarray):
        if role == "abs_error":
            kwargs = {"colormap": "inferno", "contrast_limits": (0.0, 200.0)}
        else:
            scan = self.scene.get("scan")
            limits = tuple(scan.contrast_limits) if scan is not None else L.window_limits(
                *L.WINDOW_PRESETS[L.DEFAULT_WINDOW])
            kwargs = {"colormap": "gray", "contrast_limits": limits}
        layer = self.scene.put(role, "image", data, world, name=NAMES[role], visible=False, **kwargs)
        layer.metadata[BLANK] = True
        return layer

    # ---- a run -----------------------------------------------------------------------------------
    def begin(self, shape, world: np.ndarray) -> ReconstructionTargets:
        """The arrays a reconstruction of ``shape`` placed by ``world`` writes into (the layers take
        them, and the new placement, at their next redraw)."""
        self.scene.make_now(ROLES)
        for role in ROLES:  # removed by the user since: made again (the only time a run adds one)
            if self.scene.get(role) is None:
                self._make(role, placeholder(role), world)
        self.scene.link_contrast()
        self.scene.raise_overlays()
        reuse = {}
        for role in ROLES:
            layer = self.scene.get(role)
            if not layer.metadata.get(BLANK) and tuple(layer.data.shape) == tuple(shape):
                reuse[role] = layer.data
        targets = ReconstructionTargets(shape, {r: 0.0 if r == "abs_error" else EMPTY_HU for r in ROLES}, reuse)
        self._recon = (targets, np.asarray(world), set())
        self.running = True
        return targets

    def paste(self, role: str, slices, array: np.ndarray) -> None:
        layer = self.scene.get(role)
        if layer is not None:
            layer.data[slices] = array

    def refresh(self) -> None:
        """Redraw the layers (hidden ones cost nothing). While a run goes on, without thumbnails: a
        new thumbnail repaints the layer list, which shares the frame's stall."""
        self._adopt()
        for role in ROLES:
            layer = self.scene.get(role)
            if layer is not None:
                layer.refresh(thumbnail=not self.running, extent=False, highlight=False)

    def finish(self) -> None:
        """The run ended: the layers take its arrays if they have not yet."""
        self._adopt(everything=True)
        self._recon = None  # a job that failed before readying its arrays leaves the layers as they were
        self.running = False

    def _adopt(self, everything: bool = False) -> None:
        if self._recon is None or self._recon[0].arrays is None:
            return
        targets, world, adopted = self._recon
        for role, array in targets.arrays.items():
            layer = self.scene.get(role)
            if role in adopted or layer is None:
                continue
            shown = layer.visible or (role == "reconstruction" and layer.metadata.get(BLANK))
            if everything or shown:
                self._adopt_one(layer, role, array, world)
                adopted.add(role)
        self._adopt_later()

    def _adopt_later(self) -> None:
        recon = self._recon
        if recon is None:
            return
        targets, world, adopted = recon
        waiting = [r for r in targets.arrays if r not in adopted and self.scene.get(r) is not None]
        if not waiting:
            self._recon = None
            return

        def next_one() -> None:
            if self._recon is not recon:
                return
            role = next((r for r in targets.arrays if r not in adopted and self.scene.get(r) is not None), None)
            if role is not None:
                self._adopt_one(self.scene.get(role), role, targets.arrays[role], world)
                adopted.add(role)
            self._adopt_later()

        self.scene.turns.step("adopt:reconstruction", next_one)

    def _adopt_one(self, layer, role: str, array: np.ndarray, world: np.ndarray) -> None:
        if layer.data is not array:
            layer.data = array
        set_transform(layer, L.transform_kwargs(world))
        if layer.metadata.get(BLANK):
            layer.metadata[BLANK] = False
            if role == "reconstruction":
                self.scene.show_later(layer)  # showing slices it and rebuilds the scene: a turn of its own
            else:
                show(layer, False)

    # ---- the error map ---------------------------------------------------------------------------
    def show_error_map(self, grid, rmse_hu: np.ndarray, blank: bool = False) -> None:
        """The per-superpatch masked-patch RMSE (HU) as a block heatmap, updated in place; shown
        only while the user asks for it (``blank``: made or cleared ahead of values, hidden)."""
        values = np.asarray(rmse_hu, dtype=np.float32)
        limits = (0.0, 1.0) if blank else error_limits(values)
        has_values = not blank and bool(np.isfinite(values).any())
        shown = has_values and self.error_map_wanted
        existed = self.scene.get(ERROR_MAP) is not None
        layer = self.scene.block_map(ERROR_MAP, grid, values, inferno_over_ct(), "reconstruction error map (RMSE HU)",
                                     limits, shown, opacity=0.5)
        fix_range(layer, ERROR_RANGE)
        if tuple(layer.contrast_limits) != limits:
            layer.contrast_limits = limits
        if not existed:
            self.scene.colorbar_for(layer)
        layer.metadata[BLANK] = not has_values

    def set_error_map_visible(self, visible: bool) -> None:
        self.error_map_wanted = bool(visible)
        layer = self.scene.get(ERROR_MAP)
        if layer is not None:
            if visible and not layer.metadata.get(BLANK):
                self.scene.lift_under_overlays(layer)
            show(layer, visible and not layer.metadata.get(BLANK))

    # ---- stale results ----------------------------------------------------------------------------
    def clear(self) -> None:
        self._recon = None
        self.running = False
        self.scene.turns.drop("adopt:reconstruction")
        for role in ROLES:
            layer = self.scene.get(role)
            if layer is not None:
                self.scene.blank(layer, placeholder(role))
        layer = self.scene.get(ERROR_MAP)
        if layer is not None:
            layer.metadata[BLANK] = True
            show(layer, False)

