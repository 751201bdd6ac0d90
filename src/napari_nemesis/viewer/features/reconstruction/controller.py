"""Masked reconstruction of the selected superpatch or the whole active scan
(``train.iter_reconstruction``): the run, its scores and error map, its layers filling in superpatch
by superpatch, the hover column ``recon RMSE (HU)``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ....errors import NemesisInputError
from ....model.masking import check_strategy
from ... import _layers as L
from ..._jobs import resolved_device
from ..._models import ModelStore
from ..._runstate import CANCELLED, RUNNING
from .layers import ROLES, ReconstructionLayers, ReconstructionTargets

JOB = "reconstruction"
SCOPES = ("selected", "scan")
_REFRESH_S = 1.0  # redraw growing reconstruction layers at most this often (a frame is costly)


@dataclass
class ReconstructionPiece:
    """One reconstructed superpatch for the layers: HU arrays cropped to its box (model spacing)."""

    item: Any  # train.scan.SuperpatchReconstruction, its arrays dropped (scores and metrics kept)
    hu: dict[str, np.ndarray] = field(default_factory=dict)  # noisy, masked, reconstruction, abs_error


@dataclass
class ReconstructionRun:
    """A reconstruction in progress or done: its settings, scores so far and the error map."""

    strategy: str
    ratio: float
    noise: float
    seed: int
    scope: str
    indices: list[int] | None
    origin_zyx: tuple[int, int, int]  # where the layers' voxel (0, 0, 0) sits in the model-spacing volume
    assembler: Any  # train.scan.ScanReconstruction without arrays: scores and per-superpatch error
    total: int
    done: int = 0
    device: str = ""
    status: str = RUNNING
    received: set[int] = field(default_factory=set)

    def metrics(self) -> dict[str, float | None]:
        return self.assembler.metrics()

    def error_rmse_hu(self) -> np.ndarray:
        """Masked-patch RMSE per superpatch in HU (NaN where not reconstructed)."""
        from ....data import HU_WINDOW

        return np.sqrt(self.assembler.mse_masked) * (HU_WINDOW[1] - HU_WINDOW[0])


def reconstruction_job(prepared, store: ModelStore, checkpoint: str | None, strategy: str, ratio: float, noise: float,
                       seed: int, indices, device: str, batch: int, targets: ReconstructionTargets | None = None,
                       origin_zyx=(0, 0, 0), *, cancel, report):
    """Yield one :class:`ReconstructionPiece` per superpatch, in HU. With ``targets`` (the layers'
    arrays, whose voxel (0, 0, 0) is the model-spacing voxel ``origin_zyx``), the arrays are
    readied and each superpatch is written into them here, off the GUI thread, and the piece
    carries only its scores: the GUI thread then just redraws."""
    from ....data import HU_WINDOW
    from ....train.inference import to_hu
    from ....train.scan import iter_reconstruction

    model = store.model(checkpoint)
    used = resolved_device(device)
    report({"event": "stage", "name": "reconstruction", "device": used})
    arrays = targets.ready() if targets is not None else None
    stream = iter_reconstruction(prepared, model, strategy, float(ratio), float(noise), int(seed), indices=indices,
                                 batch=int(batch), device=used, cancel=cancel, progress=report)
    width = HU_WINDOW[1] - HU_WINDOW[0]
    for item in stream:
        if cancel():
            return
        hu = {"noisy": to_hu(item.noisy), "masked": to_hu(item.masked), "reconstruction": to_hu(item.recon),
              "abs_error": (item.error * np.float32(width)).astype(np.float32)}
        item.clean = item.noisy = item.masked = item.recon = item.error = item.masked_voxels = None
        if arrays is not None:
            start = np.asarray(item.box.start) - np.asarray(origin_zyx)
            slices = tuple(slice(int(a), int(a) + int(n)) for a, n in zip(start, item.box.shape))
            for role, array in hu.items():
                if role in arrays:
                    arrays[role][slices] = array
            targets.written.append((int(item.index), slices))
            hu = {}
        yield ReconstructionPiece(item, hu)


class ReconstructionController:
    def __init__(self, session) -> None:
        self.session = session
        self.layers = ReconstructionLayers(session.scene)
        self.run: ReconstructionRun | None = None
        self._last_refresh = 0.0
        session.scene.result_clearers.append(self.clear)
        session.events.scan.connect(self._on_scan)

    def _on_scan(self, ctx) -> None:
        if ctx is not None:
            self.layers.make_ahead(ctx.grid)

    def start(self, strategy: str = "dual", ratio: float = 0.75, noise: float = 0.0, seed: int = 0,
              scope: str = "selected", wait: bool = True):
        """Mask, noise and reconstruct the selected superpatch or the whole scan; layers fill in
        superpatch by superpatch."""
        from ....train.scan import ScanReconstruction

        session = self.session
        ctx = session.need_scan()
        if scope not in SCOPES:
            raise NemesisInputError(f"scope {scope!r}: choose 'selected' (the selected superpatch) or 'scan'")
        check_strategy(strategy)
        if not 0.0 < float(ratio) < 1.0:
            raise NemesisInputError(f"mask ratio {ratio}: must be between 0 and 1")
        if not np.isfinite(float(noise)) or float(noise) < 0:
            raise NemesisInputError(f"noise sigma {noise}: must be a finite number >= 0")
        if scope == "selected":
            if session.selected is None:
                raise NemesisInputError("no superpatch selected: click one, or choose the whole scan")
            indices = [session.selected]
            box = ctx.grid.box(session.selected, clip=True)
            shape, origin = box.shape, box.start
        else:
            indices = None
            shape, origin = ctx.prepared.pre.shape, (0, 0, 0)
        if session.running(JOB):
            raise NemesisInputError("reconstruction is already running; wait for it or press Cancel")
        run = ReconstructionRun(strategy, float(ratio), float(noise), int(seed), scope, indices, tuple(origin),
                                ScanReconstruction(ctx.prepared, keys=()), len(indices) if indices else ctx.n)
        session.scene.flush()  # what the last run still had to show, before its layers are reused
        self.run = run
        targets = self.layers.begin(shape, L.box_world_affine(ctx.grid, origin))
        self._show_later(ctx, run, refresh=False)
        self._last_refresh = time.monotonic()
        session.events.reconstruction.emit(run)
        return session.start(JOB, reconstruction_job, ctx.prepared, session.models, session.weights.checkpoint,
                             strategy, ratio, noise, seed, indices, session.settings.device, session.settings.batch,
                             targets, tuple(origin), wait=wait, progress_in_dock=True,
                             on_yield=lambda piece: self._piece(ctx, run, piece),
                             on_end=lambda state: self._end(ctx, run, state, targets),
                             description=f"reconstruction ({strategy})")

    def _current(self, ctx, run) -> bool:
        return self.session.scan is ctx and self.run is run and self.session.alive

    def _piece(self, ctx, run: ReconstructionRun, piece: ReconstructionPiece) -> None:
        if not self._current(ctx, run):
            return
        item = piece.item
        start = np.asarray(item.box.start) - np.asarray(run.origin_zyx)
        slices = tuple(slice(int(a), int(a) + int(n)) for a, n in zip(start, item.box.shape))
        for role, array in piece.hu.items():
            self.layers.paste(role, slices, array)
        run.assembler.add(item)
        run.received.add(int(item.index))
        run.done += 1
        run.device = item.device
        now = time.monotonic()
        if now - self._last_refresh >= _REFRESH_S or run.done == run.total:
            self._last_refresh = now
            self._show_later(ctx, run)
        self.session.events.reconstruction.emit(run)

    def _show_later(self, ctx, run: ReconstructionRun, refresh: bool = True, end: bool = False) -> None:
        """Redraw the layers and the error map on the next event-loop turn (one waiting redraw at
        most: the newest replaces it); ``end``: the run ended, the layers take its arrays first."""

        def show() -> None:
            if not self._current(ctx, run):
                return
            if end:
                self.layers.finish()
            if refresh or end:
                self.layers.refresh()
            self.layers.show_error_map(ctx.grid, run.error_rmse_hu())

        self.session.scene.later("reconstruction", show)

    def _end(self, ctx, run: ReconstructionRun, state, targets: ReconstructionTargets) -> None:
        run.status = state.status
        if state.status == CANCELLED:  # what the job wrote but never handed over goes too
            targets.erase(run.received)
        if not self._current(ctx, run):
            return
        self._show_later(ctx, run, end=True)
        if run.done:
            self.session.set_grid_column("recon RMSE (HU)", run.error_rmse_hu())
        self.session.events.reconstruction.emit(run)

    def set_error_map_visible(self, visible: bool) -> None:
        self.layers.set_error_map_visible(visible)

    def clear(self) -> None:
        self.session.cancel(JOB)
        self.run = None
        self.layers.clear()
        self.session.events.reconstruction.emit(None)


__all__ = ["ROLES", "ReconstructionController", "ReconstructionPiece", "ReconstructionRun", "ReconstructionTargets",
           "reconstruction_job"]
