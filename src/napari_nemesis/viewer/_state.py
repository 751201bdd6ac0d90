"""One NEMESIS session per napari viewer: the scan, its grid, the shared selection and the runs.

The widgets, :func:`napari_nemesis.viewer.launch`, the demo and the tests all drive this one
object, so a button and a script run the same code. State changes happen on the GUI thread and
are announced through ``session.events`` (psygnal); widgets observe them and never hold state of
their own. The session lives on its viewer (no module-level singleton): two viewers, two sessions.

Later widgets build on it: a Labelling widget follows ``events.selection`` and colours the grid
through :meth:`NemesisSession.set_grid_column`; a Training widget hands a new probe head over
with :meth:`NemesisSession.set_weights` and calls :meth:`NemesisSession.run_probabilities`.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal, SignalGroup

from ..errors import NemesisInputError
from . import _layers as L
from ._jobs import AttentionCache, Probabilities, attention_job, prepare_job, probabilities_job, reconstruction_job, \
    weights_job
from ._models import Geometry, ModelStore, WeightsChoice
from ._scene import ATTENTION_ROLES, RECON_ROLES, Scene
from ._settings import Settings, forget_missing_weights, load_settings, save_settings
from ._workers import RUNNING, Job, RunState, start_job

JOBS = ("prepare", "weights", "probabilities", "reconstruction", "attention")
#: Jobs whose progress a dock shows (or that come and go with the cursor): no napari activity bar.
_DOCK_PROGRESS = ("probabilities", "reconstruction", "attention")
SCOPES = ("selected", "scan")
_REFRESH_S = 1.0  # redraw growing reconstruction layers at most this often (a frame is costly)


class SessionEvents(SignalGroup):
    scan = Signal(object)  # ScanContext | None
    selection = Signal(object)  # int | None
    hover = Signal(object)  # dict | None: the superpatch under the cursor
    probabilities = Signal(object)  # Probabilities | None
    reconstruction = Signal(object)  # ReconstructionRun | None (also while it grows)
    attention = Signal(object)  # AttentionView | None
    weights = Signal(object)  # WeightsChoice
    settings = Signal(object)  # Settings
    run = Signal(str, object)  # job name, RunState: a job started, progressed or ended
    grid_columns = Signal(object)  # the per-superpatch columns shown on hover changed


@dataclass
class ScanContext:
    """The scan the session works on: its layer, the prepared scan and the grid's world transform."""

    layer: Any
    prepared: Any  # train.scan.PreparedScan
    geometry: Geometry
    weights: WeightsChoice

    def __post_init__(self) -> None:
        self.grid_world = L.grid_world_affine(self.grid)

    @property
    def grid(self):
        return self.prepared.grid

    @property
    def n(self) -> int:
        return self.prepared.grid.n

    @property
    def name(self) -> str:
        return str(self.layer.name)

    def box_centre_world(self, index: int) -> np.ndarray:
        """World (LPS z y x mm) centre of the part of superpatch ``index`` inside the scan (a box
        may reach into the padding beyond the scan's last slice)."""
        box = self.grid.box(index, clip=True)
        centre = (np.asarray(box.start, dtype=np.float64) + np.asarray(box.stop)) / 2.0 - 0.5
        world = L.preprocessed_world_affine(self.prepared.pre)
        return world[:3, :3] @ centre + world[:3, 3]


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

    def metrics(self) -> dict[str, float | None]:
        return self.assembler.metrics()

    def error_rmse_hu(self) -> np.ndarray:
        """Masked-patch RMSE per superpatch in HU (NaN where not reconstructed)."""
        from ..data import HU_WINDOW

        return np.sqrt(self.assembler.mse_masked) * (HU_WINDOW[1] - HU_WINDOW[0])


@dataclass
class AttentionView:
    index: int
    token_zyx: tuple[int, int, int]
    maps: Any  # train.attention.AttentionMaps


@dataclass
class _Hover:
    index: int | None = None
    token: tuple[int, int, int] | None = None
    pending_token: tuple[int, int, int] | None = field(default=None)


# viewer -> its session. Keyed weakly and the session holds its viewer weakly, so closing a
# viewer frees its session; each viewer has its own (tests and multiple windows never share one).
_SESSIONS: "weakref.WeakKeyDictionary[Any, NemesisSession]" = weakref.WeakKeyDictionary()


def session_for(viewer) -> "NemesisSession":
    """The session of ``viewer``, made on first use."""
    session = _SESSIONS.get(viewer)
    if session is None:
        session = NemesisSession(viewer)
        _SESSIONS[viewer] = session
    return session


class NemesisSession:
    """Scan, grid, selection, weights and runs of one viewer; the API behind every widget."""

    def __init__(self, viewer) -> None:
        self._viewer = weakref.ref(viewer)
        self.events = SessionEvents()
        self.scene = Scene(viewer)
        self.models = ModelStore()
        self.settings: Settings = load_settings()
        missing = forget_missing_weights(self.settings)
        if missing:
            from napari.utils.notifications import show_warning

            show_warning(f"{missing[0]}: remembered weights file not found; using the bundled weights")
        self.runs: dict[str, RunState] = {name: RunState(name) for name in JOBS}
        self.scan: ScanContext | None = None
        self.probabilities: Probabilities | None = None
        self.reconstruction: ReconstructionRun | None = None
        self.attention: AttentionView | None = None
        self.attention_enabled = False
        self.visible_organs: set[str] = {"liver"}
        self._selected: int | None = None
        self._jobs: dict[str, Job] = {}
        self._grid_columns: dict[str, np.ndarray] = {}
        self._hover = _Hover()
        self._attention_cache = AttentionCache()
        self._adopting = False
        self._last_refresh = 0.0
        self.widgets: dict[str, Any] = {}
        self._parts: dict[str, Any] = {}
        viewer.layers.events.inserted.connect(self._on_layer_inserted)
        from ._interaction import install

        install(self)

    # ---- public state ------------------------------------------------------------------------
    @property
    def viewer(self):
        viewer = self._viewer()
        if viewer is None:
            raise NemesisInputError("this session's napari viewer was closed")
        return viewer

    def part(self, name: str, make):
        """The session's ``name`` helper (the labelling and training controllers), made by
        ``make(session)`` on first use and living as long as the session."""
        if name not in self._parts:
            self._parts[name] = make(self)
        return self._parts[name]

    @property
    def layers(self) -> dict[str, Any]:
        """The layers this session owns, by role (``scan``, ``grid``, ``prob:liver``, ...)."""
        return self.scene.layers

    @property
    def selected(self) -> int | None:
        """The selected superpatch (shared by every widget), or None."""
        return self._selected

    @property
    def weights(self) -> WeightsChoice:
        return WeightsChoice(self.settings.checkpoint or None, self.settings.probe or None)

    def running(self, job: str) -> bool:
        return self.runs[job].status == RUNNING

    def _need_scan(self) -> ScanContext:
        if self.scan is None:
            raise NemesisInputError("no scan open: open a CT (File > Open, or the sample data) first")
        return self.scan

    def _start(self, name: str, fn, *args, wait: bool, **handlers) -> Job | Any:
        if self.running(name):
            raise NemesisInputError(f"{name} is already running; wait for it or press Cancel")
        state = self.runs[name]

        def ended(st: RunState) -> None:
            self._jobs.pop(name, None)
            user_end = handlers.get("on_end")
            if user_end is not None:
                user_end(st)
            self.events.run.emit(name, st)

        def progressed(event: dict) -> None:
            self.events.run.emit(name, state)

        kwargs = {k: v for k, v in handlers.items() if k != "on_end"}
        job = start_job(name, fn, *args, state=state, on_end=ended, on_event=progressed,
                        description=kwargs.pop("description", name), activity=name not in _DOCK_PROGRESS, **kwargs)
        self._jobs[name] = job
        self.events.run.emit(name, state)
        if not wait:
            return job
        job.wait()
        self.scene.settle()  # a script sees (and the benchmark times) everything the job shows
        return job.outcome()

    def cancel(self, job: str | None = None) -> None:
        """Ask a running job (or all of them) to stop; the core stops at its next superpatch."""
        for name, running in list(self._jobs.items()):
            if job is None or name == job:
                running.cancel()

    def wait(self, job: str, timeout_s: float | None = None) -> RunState:
        """Wait (GUI live) until ``job`` has ended; its final state."""
        running = self._jobs.get(job)
        if running is not None:
            running.wait(None if timeout_s is None else int(timeout_s * 1000))
        return self.runs[job]

    # ---- settings and weights ----------------------------------------------------------------
    def update_settings(self, **changes: Any) -> Settings:
        """Change device / batch (remembered between sessions)."""
        for key, value in changes.items():
            if key not in ("device", "batch"):
                raise NemesisInputError(f"unknown setting {key!r}: device or batch (weights: set_weights)")
            setattr(self.settings, key, value)
        self.settings = self.settings.cleaned()
        save_settings(self.settings)
        self.events.settings.emit(self.settings)
        return self.settings

    def set_weights(self, checkpoint: str | None = None, probe: str | None = None, wait: bool = True):
        """Use this checkpoint and probe head (None: the bundled ones). They are loaded (and so
        checked) in a worker; a bad file becomes a one-line notification and changes nothing.
        A scan already open is prepared again if the new weights need another spacing or size."""
        choice = WeightsChoice(str(Path(checkpoint)) if checkpoint else None, str(Path(probe)) if probe else None)
        return self._start("weights", weights_job, choice, self.models, wait=wait, on_done=self._weights_ready,
                           description="loading weights")

    def _weights_ready(self, result) -> None:
        choice, geometry = result
        self.settings.checkpoint = choice.checkpoint or ""
        self.settings.probe = choice.probe or ""
        self.models.keep_only(choice)
        save_settings(self.settings)
        self._clear_results()
        self.events.weights.emit(choice)
        self.events.settings.emit(self.settings)
        if self.scan is not None and geometry != self.scan.geometry:
            self.use_scan_layer(self.scan.layer, wait=False)

    # ---- the scan ----------------------------------------------------------------------------
    def open_scan(self, scan, wait: bool = True):
        """Open a scan (a path, a ``data.Volume`` or an Image layer already in the viewer), show
        it in LPS mm world coordinates and draw its superpatch grid."""
        from ..data import Volume
        from ._io import _read_layer, scan_layer_data

        if hasattr(scan, "data") and hasattr(scan, "metadata") and scan in self.viewer.layers:
            return self.use_scan_layer(scan, wait=wait)
        if isinstance(scan, Volume):
            data, kwargs, kind = scan_layer_data(scan)
        else:
            data, kwargs, kind = _read_layer(Path(str(scan)))
            if kind != "image":
                raise NemesisInputError(f"{scan}: this is a label map, not a CT scan")
        self._adopting = True
        try:
            layer = self.viewer.add_image(data, **kwargs)
        finally:
            self._adopting = False
        self.viewer.reset_view()
        return self.use_scan_layer(layer, wait=wait)

    def use_scan_layer(self, layer, wait: bool = True):
        """Make ``layer`` (a 3D Image layer) the session's scan: prepare it and draw its grid."""
        from ._io import layer_world_matrix, volume_from_layer

        if getattr(layer, "ndim", 0) != 3 or getattr(layer, "rgb", False):
            raise NemesisInputError(f"{getattr(layer, 'name', layer)}: a 3D greyscale CT layer is needed")
        volume = volume_from_layer(np.asarray(layer.data), layer.metadata, layer_world_matrix(layer))
        if volume.source is None:
            volume.source = Path(str(layer.name))
        if self.running("prepare"):  # the newest scan wins
            self.cancel("prepare")
            self.wait("prepare")
        weights = self.weights
        return self._start("prepare", prepare_job, volume, weights, self.models, wait=wait,
                           on_done=lambda result: self._scan_ready(layer, weights, *result),
                           description=f"preparing {layer.name}")

    def _scan_ready(self, layer, weights: WeightsChoice, prepared, geometry: Geometry) -> None:
        if self._viewer() is None or layer not in self.viewer.layers:
            return
        self._clear_results()
        self.scene.adopt_scan(layer)
        self.scan = ScanContext(layer, prepared, geometry, weights)
        self._selected = None
        self._attention_cache = AttentionCache()
        self.scene.remove(["selection"])
        self.scene.show_grid(prepared.grid)
        self.scene.prepare_results(prepared.grid, self.visible_organs)  # hidden, so no run adds a layer
        self.scene.orient_camera()
        self._grid_columns = {}
        self.events.scan.emit(self.scan)
        self.events.selection.emit(None)

    def _on_layer_inserted(self, event) -> None:
        layer = event.value
        if self._adopting or self.running("prepare"):
            return
        if layer.metadata.get("kind") == "scan" and getattr(layer, "ndim", 0) == 3:
            if self.scan is None or self.scan.layer is not layer:
                self.use_scan_layer(layer, wait=False)

    def _clear_results(self) -> None:
        self.cancel("reconstruction")
        self.cancel("probabilities")
        self.cancel("attention")
        self.probabilities = None
        self.reconstruction = None
        self.attention = None
        self.scene.clear_results()  # blanked and hidden in place: no run pays for making them again
        self._grid_columns = {}
        self.events.probabilities.emit(None)
        self.events.reconstruction.emit(None)
        self.events.attention.emit(None)

    # ---- selection ---------------------------------------------------------------------------
    def select(self, index: int | None) -> int | None:
        """Select superpatch ``index`` (None clears); every widget follows."""
        if index is not None:
            index = self._need_scan().prepared.check_index(index)
        if index == self._selected:
            return index
        self._selected = index
        self.scene.show_selection(self.scan.grid, index)
        if self.attention is not None and self.attention.index != index:
            self.attention = None
            self.scene.remove(ATTENTION_ROLES)
            self.events.attention.emit(None)
        self.events.selection.emit(index)
        return index

    def select_at(self, world_zyx, view_direction=None) -> int | None:
        """Select the superpatch at a world point (2D) or first hit along a viewing ray (3D)."""
        ctx = self._need_scan()
        point = np.asarray(world_zyx, dtype=np.float64)[-3:]
        if view_direction is not None:
            index = L.superpatch_on_ray(ctx.grid_world, ctx.grid.grid_shape, point,
                                        np.asarray(view_direction, dtype=np.float64)[-3:])
        else:
            index = L.superpatch_at(ctx.grid_world, ctx.grid.grid_shape, point)
        if index is not None:
            self.select(index)
        return index

    def move_selection(self, axis: int, step: int) -> int | None:
        """Move the selection ``step`` superpatches along ``axis`` (0 z, 1 y, 2 x)."""
        ctx = self._need_scan()
        if self._selected is None:
            return self.select(0)
        return self.select(L.neighbour(ctx.grid.grid_shape, self._selected, axis, step))

    def centre_on(self, index: int | None = None) -> None:
        """Move the slice and the camera to the centre of a superpatch (default: the selected one)."""
        ctx = self._need_scan()
        index = self._selected if index is None else ctx.prepared.check_index(index)
        if index is not None:
            self.scene.centre_on(ctx.box_centre_world(index))

    def superpatch_info(self, index: int | None) -> dict[str, Any] | None:
        """What is known about one superpatch: grid position, world box, probabilities, error."""
        if index is None or self.scan is None:
            return None
        ctx = self.scan
        lo = ctx.grid_world[:3, :3] @ (np.asarray(ctx.grid.grid_index(index)) - 0.5) + ctx.grid_world[:3, 3]
        hi = ctx.grid_world[:3, :3] @ (np.asarray(ctx.grid.grid_index(index)) + 0.5) + ctx.grid_world[:3, 3]
        info: dict[str, Any] = {"index": int(index), "grid_zyx": ctx.grid.grid_index(index),
                                "world_min_zyx": np.minimum(lo, hi), "world_max_zyx": np.maximum(lo, hi)}
        for name, values in self._grid_columns.items():
            info[name] = values[index]
        return info

    # ---- hover and keyboard (called by _interaction) -----------------------------------------
    def hover_at(self, world_zyx, view_direction=None, ndisplay: int = 2) -> None:
        if self.scan is None:
            return
        ctx = self.scan
        point = np.asarray(world_zyx, dtype=np.float64)[-3:]
        if ndisplay == 3 and view_direction is not None:
            index = L.superpatch_on_ray(ctx.grid_world, ctx.grid.grid_shape, point,
                                        np.asarray(view_direction, dtype=np.float64)[-3:])
        else:
            index = L.superpatch_at(ctx.grid_world, ctx.grid.grid_shape, point)
        if index != self._hover.index:
            self._hover.index = index
            self.events.hover.emit(self.superpatch_info(index))
        if self.attention_enabled and ndisplay == 2 and index is not None and index == self._selected:
            token = L.token_at(L.patch_world_affine(ctx.grid, index, ctx.geometry.patch),
                               ctx.geometry.superpatch // ctx.geometry.patch, point)
            if token is not None and token != self._hover.token:
                self._hover.token = token
                self.show_attention(token, wait=False)

    # ---- per-superpatch columns (hover status, tables, later label states) --------------------
    def set_grid_column(self, name: str, values) -> None:
        """Show a per-superpatch value on hover (the grid layer's ``features``); None removes it."""
        ctx = self._need_scan()
        if values is None:
            self._grid_columns.pop(name, None)
        else:
            values = np.asarray(values)
            if values.shape[0] != ctx.n:
                raise NemesisInputError(f"column {name!r}: {values.shape[0]} values for {ctx.n} superpatches")
            self._grid_columns[name] = values
        self.scene.set_grid_features(ctx.grid.grid_shape, self._grid_columns)
        self.events.grid_columns.emit(dict(self._grid_columns))

    def show_grid_map(self, name: str, values, rgb=(1.0, 0.85, 0.0), limits=(0.0, 1.0),
                      visible: bool | None = None) -> None:
        """Per-superpatch values (e.g. label states) as a block heatmap over the grid, layer role
        ``map:<name>``; updated in place when shown again. ``visible``: show or hide the layer
        (None: shown when made, then as the user left it)."""
        ctx = self._need_scan()
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (ctx.n,):
            raise NemesisInputError(f"map {name!r}: {values.shape} values for {ctx.n} superpatches")
        self.scene.show_grid_map(f"map:{name}", ctx.grid, values, rgb, name, limits, visible)

    @property
    def grid_columns(self) -> dict[str, np.ndarray]:
        return dict(self._grid_columns)

    def set_window(self, preset: str) -> None:
        """Apply a CT window preset (abdomen, liver, soft tissue, lung, bone) to the scan."""
        if preset not in L.WINDOW_PRESETS:
            raise NemesisInputError(f"unknown window {preset!r}: choose {', '.join(L.WINDOW_PRESETS)}")
        self.scene.set_window(preset)

    # ---- organ probabilities -----------------------------------------------------------------
    def run_probabilities(self, wait: bool = True):
        """Organ probabilities of every superpatch (``train.infer_scan``): heatmaps, table, bars."""
        ctx = self._need_scan()
        return self._start("probabilities", probabilities_job, ctx.prepared, self.models, self.weights,
                           self.settings.device, self.settings.batch, wait=wait,
                           on_done=lambda result: self._probabilities_ready(ctx, result),
                           description="organ probabilities")

    def _probabilities_ready(self, ctx: ScanContext, result: Probabilities) -> None:
        if self.scan is not ctx or self._viewer() is None:
            return
        self.probabilities = result

        def show() -> None:  # on the next event-loop turn: the canvas's frame does not share this one
            if self.probabilities is result and self.scan is ctx:
                self.scene.show_probabilities(ctx.grid, result.values, result.organs, self.visible_organs)

        self.scene.later("probabilities", show)
        for k, organ in enumerate(result.organs):
            self._grid_columns[f"P({organ})"] = result.values[:, k]
        self.scene.set_grid_features(ctx.grid.grid_shape, self._grid_columns)
        self.events.probabilities.emit(result)
        self.events.grid_columns.emit(dict(self._grid_columns))

    def set_organ_visible(self, organ: str, visible: bool) -> None:
        """Show or hide an organ's heatmap (made on first show)."""
        from ._scene import prob_role

        if visible:
            self.visible_organs.add(organ)
        else:
            self.visible_organs.discard(organ)
        result = self.probabilities
        if visible and self.scene.get(prob_role(organ)) is None and result is not None and organ in result.organs:
            self.scene.show_heatmap(self.scan.grid, organ, result.values[:, result.organs.index(organ)], True)
            self.scene.raise_overlays()
        else:
            self.scene.set_visible(prob_role(organ), visible)

    # ---- reconstruction -----------------------------------------------------------------------
    def run_reconstruction(self, strategy: str = "dual", ratio: float = 0.75, noise: float = 0.0, seed: int = 0,
                           scope: str = "selected", wait: bool = True):
        """Mask, noise and reconstruct the selected superpatch or the whole scan
        (``train.iter_reconstruction``); layers fill in superpatch by superpatch."""
        from ..train.scan import ScanReconstruction

        ctx = self._need_scan()
        if scope not in SCOPES:
            raise NemesisInputError(f"scope {scope!r}: choose 'selected' (the selected superpatch) or 'scan'")
        if scope == "selected":
            if self._selected is None:
                raise NemesisInputError("no superpatch selected: click one, or choose the whole scan")
            indices = [self._selected]
            box = ctx.grid.box(self._selected, clip=True)
            shape, origin = box.shape, box.start
        else:
            indices = None
            shape, origin = ctx.prepared.pre.shape, (0, 0, 0)
        if self.running("reconstruction"):
            raise NemesisInputError("reconstruction is already running; wait for it or press Cancel")
        run = ReconstructionRun(strategy, float(ratio), float(noise), int(seed), scope, indices, tuple(origin),
                                ScanReconstruction(ctx.prepared, keys=()), len(indices) if indices else ctx.n)
        self.scene.flush()  # what the last run still had to show, before its layers are reused
        self.reconstruction = run
        targets = self.scene.begin_reconstruction(shape, L.box_world_affine(ctx.grid, origin))
        if self.scene.get("error_map") is not None:  # cleared (made at the first piece otherwise), a turn later
            self._show_reconstruction_later(ctx, run, refresh=False)
        self._last_refresh = time.monotonic()
        self.events.reconstruction.emit(run)
        return self._start("reconstruction", reconstruction_job, ctx.prepared, self.models, self.weights.checkpoint,
                           strategy, ratio, noise, seed, indices, self.settings.device, self.settings.batch,
                           targets, tuple(origin), wait=wait, on_yield=lambda piece: self._reconstruction_piece(ctx, run, piece),
                           on_end=lambda state: self._reconstruction_end(ctx, run, state),
                           description=f"reconstruction ({strategy})")

    def _reconstruction_piece(self, ctx: ScanContext, run: ReconstructionRun, piece) -> None:
        if self.scan is not ctx or self.reconstruction is not run or self._viewer() is None:
            return
        item = piece.item
        start = np.asarray(item.box.start) - np.asarray(run.origin_zyx)
        slices = tuple(slice(int(a), int(a) + int(n)) for a, n in zip(start, item.box.shape))
        for role, array in piece.hu.items():
            self.scene.paste(role, slices, array)
        run.assembler.add(item)
        run.done += 1
        run.device = item.device
        now = time.monotonic()
        if now - self._last_refresh >= _REFRESH_S or run.done == run.total:
            self._last_refresh = now
            self._show_reconstruction_later(ctx, run)
        self.events.reconstruction.emit(run)

    def _show_reconstruction_later(self, ctx: ScanContext, run: ReconstructionRun, refresh: bool = True,
                                   end: bool = False) -> None:
        """Redraw the reconstruction layers and the error map on the next event-loop turn (one
        waiting redraw at most: the newest replaces it); ``end``: the run ended, the layers take
        its arrays first."""

        def show() -> None:
            if self.scan is not ctx or self.reconstruction is not run:
                return
            if end:
                self.scene.finish_layers()
            if refresh or end:
                self.scene.refresh(RECON_ROLES)
            self.scene.show_error_map(ctx.grid, run.error_rmse_hu())

        self.scene.later("reconstruction", show)

    def _reconstruction_end(self, ctx: ScanContext, run: ReconstructionRun, state: RunState) -> None:
        run.status = state.status
        if self.scan is not ctx or self.reconstruction is not run or self._viewer() is None:
            return
        self._show_reconstruction_later(ctx, run, end=True)
        if run.done:
            self._grid_columns["recon RMSE (HU)"] = run.error_rmse_hu()
            self.scene.set_grid_features(ctx.grid.grid_shape, self._grid_columns)
            self.events.grid_columns.emit(dict(self._grid_columns))
        self.events.reconstruction.emit(run)

    # ---- attention ------------------------------------------------------------------------------
    def set_attention(self, enabled: bool) -> None:
        """Follow the cursor with the attention view inside the selected superpatch."""
        self.attention_enabled = bool(enabled)
        self._hover.token = None
        if not enabled:
            self.scene.remove(ATTENTION_ROLES)
            self.attention = None
            self.events.attention.emit(None)

    def show_attention(self, token_zyx, index: int | None = None, wait: bool = True):
        """The last encoder block's plane and axis attention of one token (patch) of a superpatch
        (default: the selected one), as heatmap layers over that superpatch. While one is being
        computed, a newer request waits and only the latest runs."""
        ctx = self._need_scan()
        index = self._selected if index is None else ctx.prepared.check_index(index)
        if index is None:
            raise NemesisInputError("no superpatch selected: click one first")
        token = tuple(int(t) for t in token_zyx)
        if self.running("attention"):
            self._hover.pending_token = token
            if not wait:
                return None
            self.wait("attention")
        self._hover.pending_token = None
        return self._start("attention", attention_job, ctx.prepared, self.models, self.weights.checkpoint, index,
                           token, self.settings.device, self._attention_cache, wait=wait,
                           on_done=lambda result: self._attention_ready(ctx, result),
                           on_end=lambda state: self._attention_end(ctx, index),
                           description="attention")

    def _attention_ready(self, ctx: ScanContext, result) -> None:
        index, maps = result
        if self.scan is not ctx or index != self._selected or self._viewer() is None:
            return
        self.attention = AttentionView(index, tuple(maps.token_zyx), maps)
        self.scene.show_attention(maps.plane, maps.axis, L.patch_world_affine(ctx.grid, index, ctx.geometry.patch))
        self.events.attention.emit(self.attention)

    def _attention_end(self, ctx: ScanContext, index: int) -> None:
        pending = self._hover.pending_token
        if pending is not None and self.scan is ctx and self._selected is not None:
            self._hover.pending_token = None
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, lambda: self.show_attention(pending, wait=False))

    # ---- widgets ----------------------------------------------------------------------------------
    def show_widgets(self) -> dict[str, Any]:
        """Dock the NEMESIS widgets (once) as tabs on the right."""
        from .widgets import WIDGETS

        window = getattr(self.viewer, "window", None)
        if window is None:
            return self.widgets
        for name, cls in WIDGETS.items():
            if name in self.widgets:
                continue
            tabify = bool(self.widgets)
            try:  # through napari's plugin registry, so the Plugins menu knows the widget is open
                _dock, widget = window.add_plugin_dock_widget("napari-nemesis", name, tabify=tabify)
            except Exception:  # plugin not registered (e.g. running from a source tree)
                widget = cls(self.viewer)
                window.add_dock_widget(widget, name=name, area="right", tabify=tabify)
            self.widgets[name] = widget
        first = self.widgets.get("Superpatch grid")
        if first is not None and first.parent() is not None:
            first.parent().raise_()
        return self.widgets

    def close(self) -> None:
        """Stop every job (called when the viewer closes)."""
        self.cancel()
        for job in list(self._jobs.values()):
            job.wait(5000)
