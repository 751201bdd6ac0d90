"""The kernel: one NEMESIS session per napari viewer.

The session holds what every feature shares: the scans open in this viewer and the active one,
its grid, the selection and the hover, the settings and the weights, the jobs (start / wait /
cancel) and the events (psygnal) through which the features talk. It imports no feature: the
features (:mod:`.features`, one folder each) are handed to it when it is made, and each
controller subscribes to the events it needs. State changes happen on the GUI thread.

One scan is *active* at a time and everything on screen belongs to it: opening another scan (our
reader, File > Open, drag and drop, a script) or picking another scan layer (the layer list, the
grid dock's chooser) makes it active everywhere at once: the other scans are hidden, the camera
and slice move into it, results of the old scan are cleared before the new one's grid is drawn.

The session lives on its viewer (no module-level singleton; two viewers, two sessions). napari's
``PublicOnlyProxy`` (what a dock gets through the Plugins menu or ``-w``) is unwrapped first, so a
proxy and the real viewer share one session.
"""

from __future__ import annotations

import os

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal, SignalGroup

from ..errors import NemesisInputError
from . import _layers as L
from ._jobs import prepare_job, weights_job
from ._models import Geometry, ModelStore, WeightsChoice
from ._napari_private import real_viewer
from ._runstate import RUNNING
from ._scene import Scene, new_layer
from ._settings import Settings, forget_missing_weights, load_settings, save_settings
from ._workers import Job, RunState, start_job

_frozen: set[str] = set()  # the moments keep_out_of_collector has frozen at


def keep_out_of_collector(moment: str = "first scan") -> None:
    """Move every object alive now (napari's, torch's: over a million, nearly all living as long as
    the viewer) out of the cyclic garbage collector's sight (``gc.freeze``, O(1)). A full
    collection walks all of them, 0.2-0.4 s with the GIL held, on the GUI thread or on a worker
    (then the GUI thread waits for the GIL), at whatever moment the allocation count happens to
    trip it. Once per process and ``moment``: when the first scan starts to be read (its worker
    then imports pandas and scipy, and the collections those imports tripped stalled the viewer
    0.3 s with no event to show for it) and again before its layer exists (what those imports
    made). What is frozen is never collected as a cycle, so no scan is; everything made afterwards
    is collected as before. ``NEMESIS_NO_GC_FREEZE=1`` leaves the collector alone (the test
    suite, whose viewers come and go)."""
    import gc

    if moment in _frozen or os.environ.get("NEMESIS_NO_GC_FREEZE"):
        return
    _frozen.add(moment)
    gc.freeze()


#: Kernel jobs; features add their own names when they first start one.
KERNEL_JOBS = ("open", "prepare", "weights")


def read_scan_job(path: Path, *, cancel, report):
    """Read a scan file for a layer (worker thread): ``(data, kwargs, "image")``; a label map is refused."""
    from ._io import _read_layer

    from ._napari_private import warm_first_layer_costs

    report({"event": "stage", "name": f"reading {path.name}"})
    data, kwargs, kind = _read_layer(path)
    if kind != "image":
        raise NemesisInputError(f"{path}: this is a label map, not a CT scan")
    warm_first_layer_costs()  # here, not on the GUI thread when the layer is added
    import torch  # noqa: F401  (here, its libraries mapped ahead: the preparing needs it next, and
    # the objects it makes are then alive when they are kept out of the collector)
    return data, kwargs, kind


class SessionEvents(SignalGroup):
    scans = Signal(object)  # list of the scan layers open in the viewer
    scan = Signal(object)  # ScanContext | None: the active scan (None: none, or being switched)
    selection = Signal(object)  # int | None
    hover = Signal(object)  # dict | None: the superpatch under the cursor
    hover_point = Signal(object, int, object)  # world point, 2 or 3 (displayed dims), superpatch | None
    probabilities = Signal(object)  # a probabilities result | None
    reconstruction = Signal(object)  # a reconstruction run | None (also while it grows)
    attention = Signal(object)  # an attention view | None
    weights = Signal(object)  # WeightsChoice
    settings = Signal(object)  # Settings
    run = Signal(str, object)  # job name, RunState: a job started, progressed or ended
    grid_columns = Signal(object)  # the per-superpatch columns shown on hover changed
    view = Signal()  # displayed axes rolled or 2D/3D toggled
    project = Signal(object)  # Path | None: the labelling project the docks use changed
    labels = Signal(object)  # list[int]: labels of the labelled scan changed; None: another scan's labels opened


@dataclass
class ScanContext:
    """The active scan: its layer, the prepared scan and the grid's world transform."""

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
        return L.box_centre_world(self.prepared, index)


# viewer -> its session. Keyed weakly and the session holds its viewer weakly, so closing a
# viewer frees its session; each viewer has its own (tests and multiple windows never share one).
_SESSIONS: "weakref.WeakKeyDictionary[Any, NemesisSession]" = weakref.WeakKeyDictionary()


def session_for(viewer, features=None) -> "NemesisSession":
    """The session of ``viewer`` (or of the viewer behind napari's proxy), made on first use with
    ``features`` (default: :data:`napari_nemesis.viewer.features.FEATURES`)."""
    viewer = real_viewer(viewer)
    session = _SESSIONS.get(viewer)
    if session is None:
        if features is None:
            from .features import FEATURES as features  # the package's one list (not imported by the kernel's modules)
        session = NemesisSession(viewer, features)
        _SESSIONS[viewer] = session
        session.install_features()
    return session


def existing_session(viewer) -> "NemesisSession | None":
    return _SESSIONS.get(real_viewer(viewer)) if viewer is not None else None


def is_scan_layer(layer) -> bool:
    """A layer that is a CT scan (our reader's, or a script's ``Volume``), not one of our results."""
    return (getattr(layer, "ndim", 0) == 3 and not getattr(layer, "rgb", False)
            and layer.metadata.get("kind") == "scan" and "nemesis_role" not in layer.metadata)


class NemesisSession:
    """Scans, grid, selection, weights and jobs of one viewer; the API behind every dock."""

    def __init__(self, viewer, features=()) -> None:
        self._viewer = weakref.ref(viewer)
        self.events = SessionEvents()
        self.scene = Scene(viewer)
        self.models = ModelStore()
        self.settings: Settings = load_settings()
        missing = forget_missing_weights(self.settings)
        if missing:
            from napari.utils.notifications import show_warning

            show_warning(f"{missing[0]}: remembered weights file not found; using the bundled weights")
        #: weights picked for this session only (a head the Training dock made): never remembered
        self._session_weights: WeightsChoice | None = None
        self.runs: dict[str, RunState] = {name: RunState(name) for name in KERNEL_JOBS}
        self.scan: ScanContext | None = None
        self._selected: int | None = None
        self._hover_index: int | None = None
        self._jobs: dict[str, Job] = {}
        self._grid_columns: dict[str, np.ndarray] = {}
        self._adopting = False
        self._preparing: Any = None  # the layer being prepared
        self.widgets: dict[str, Any] = {}
        self.dock_front: str | None = None
        self._specs = tuple(features)
        self.features: dict[str, Any] = {}
        self._labels_project: Path | None = None
        self._labels_scan: Path | None = None
        viewer.layers.events.inserted.connect(self._on_layer_inserted)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.layers.selection.events.active.connect(self._on_active_layer)
        from ._interaction import install

        install(self)

    def install_features(self) -> None:
        """Make each feature's controller (in the list's order), then adopt a scan already open."""
        for spec in self._specs:
            if spec.name not in self.features:
                self.features[spec.name] = spec.make_controller(self)
        if self.scan is None and not self.running("prepare"):
            scans = self.scan_layers()
            if scans:
                self.use_scan_layer(scans[-1], wait=False)

    # ---- public state ------------------------------------------------------------------------
    @property
    def viewer(self):
        viewer = self._viewer()
        if viewer is None:
            raise NemesisInputError("this session's napari viewer was closed")
        return viewer

    @property
    def labels_project(self) -> Path | None:
        """The labelling project the docks use (the Labelling dock sets it; training and the
        Project dock read it); setting another one emits ``events.project``."""
        return self._labels_project

    @labels_project.setter
    def labels_project(self, path) -> None:
        path = None if path is None else Path(path)
        if path != self._labels_project:
            self._labels_project = path
            self.events.project.emit(path)

    @property
    def labels_scan(self) -> Path | None:
        """The image file the labelled scan is recorded as in the project (None: no labels open);
        a change emits ``events.labels(None)``."""
        return self._labels_scan

    @labels_scan.setter
    def labels_scan(self, path) -> None:
        path = None if path is None else Path(path)
        if path != self._labels_scan:
            self._labels_scan = path
            self.events.labels.emit(None)

    def labels_changed(self, indices) -> None:
        """The labelled scan's labels changed (superpatch ``indices``): tell every feature."""
        self.events.labels.emit(list(indices))

    @property
    def alive(self) -> bool:
        return self._viewer() is not None

    def feature(self, name: str):
        """A feature's controller (``grid``, ``probabilities``, ``reconstruction``, ``attention``,
        ``labelling``, ``training``, ...)."""
        try:
            return self.features[name]
        except KeyError:
            raise NemesisInputError(f"no feature {name!r} in this session") from None

    def part(self, name: str, make):
        """The session's ``name`` helper, made by ``make(session)`` on first use (kept for scripts:
        features are :meth:`feature`)."""
        if name not in self.features:
            self.features[name] = make(self)
        return self.features[name]

    def hosted_panels(self, dock_title: str):
        """The feature specs whose panel lives in the dock titled ``dock_title``."""
        return [spec for spec in self._specs if spec.panel and spec.host == dock_title]

    @property
    def layers(self) -> dict[str, Any]:
        """The layers this session owns, by role (``scan``, ``grid``, ``prob:liver``, ...)."""
        return self.scene.layers

    @property
    def selected(self) -> int | None:
        """The selected superpatch (shared by every dock), or None."""
        return self._selected

    @property
    def weights(self) -> WeightsChoice:
        if self._session_weights is not None:
            return self._session_weights
        return WeightsChoice(self.settings.checkpoint or None, self.settings.probe or None)

    # feature results, for scripts (each feature owns its state)
    @property
    def probabilities(self):
        return self.feature("probabilities").result if "probabilities" in self.features else None

    @property
    def reconstruction(self):
        return self.feature("reconstruction").run if "reconstruction" in self.features else None

    @property
    def attention(self):
        return self.feature("attention").view if "attention" in self.features else None

    @property
    def visible_organs(self) -> set[str]:
        return self.feature("probabilities").visible_organs

    def run_probabilities(self, wait: bool = True, level: str | None = None):
        """Organ probabilities of the whole scan at the Organ probabilities dock's level (``level``:
        switch to that one of ``model.levels.HEAD_LEVELS`` first): ``train.infer_scan`` per
        superpatch, ``train.patch_level.infer_patch_scan`` per patch; heatmaps, table, bars."""
        return self.feature("probabilities").run(wait=wait, level=level)

    def set_probability_level(self, level: str) -> str:
        """Show the organ probabilities at ``level`` (``superpatch`` or ``patch``)."""
        return self.feature("probabilities").set_level(level)

    def set_organ_visible(self, organ: str, visible: bool) -> None:
        self.feature("probabilities").set_organ_visible(organ, visible)

    def run_reconstruction(self, strategy: str = "dual", ratio: float = 0.75, noise: float = 0.0, seed: int = 0,
                           scope: str = "selected", wait: bool = True):
        """Mask, noise and reconstruct the selected superpatch or the whole scan."""
        return self.feature("reconstruction").start(strategy, ratio, noise, seed, scope, wait=wait)

    def set_attention(self, enabled: bool) -> None:
        self.feature("attention").set_enabled(enabled)

    def show_attention(self, token_zyx, index: int | None = None, wait: bool = True):
        return self.feature("attention").show(token_zyx, index, wait=wait)

    def set_window(self, preset: str) -> None:
        """Apply a CT window preset (abdomen, liver, soft tissue, lung, bone) to the scan."""
        self.feature("radiology").set_preset(preset)

    # ---- jobs --------------------------------------------------------------------------------
    def running(self, job: str) -> bool:
        state = self.runs.get(job)
        return state is not None and state.status == RUNNING

    def need_scan(self) -> ScanContext:
        if self.scan is None:
            raise NemesisInputError("no scan open: open a CT (File > Open, or the sample data) first")
        return self.scan


    def start(self, name: str, fn, *args, wait: bool, progress_in_dock: bool = False, **handlers) -> Job | Any:
        """Run ``fn`` in a worker (:func:`._workers.start_job`) as the session's job ``name``;
        ``wait``: until it ended and its layer work was drawn, then its result (or its error).
        ``progress_in_dock``: a dock shows its progress (no napari activity bar)."""
        if self.running(name):
            raise NemesisInputError(f"{name} is already running; wait for it or press Cancel")
        state = self.runs.setdefault(name, RunState(name))

        def ended(st: RunState) -> None:
            self._jobs.pop(name, None)
            user_end = handlers.get("on_end")
            if user_end is not None:
                user_end(st)
            self.events.run.emit(name, st)

        def progressed(_event: dict) -> None:
            self.events.run.emit(name, state)

        kwargs = {k: v for k, v in handlers.items() if k != "on_end"}
        job = start_job(name, fn, *args, state=state, on_end=ended, on_event=progressed,
                        description=kwargs.pop("description", name), activity=not progress_in_dock, **kwargs)
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
        return self.runs.setdefault(job, RunState(job))

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

    def set_weights(self, checkpoint: str | None = None, probe: str | None = None, wait: bool = True,
                    remember: bool = True):
        """Use this checkpoint and probe head (None: the bundled ones). They are loaded (and so
        checked) in a worker; a bad file becomes a one-line notification and changes nothing.
        ``remember``: the next session starts with them too (False: this session only, e.g. a head
        just trained, until the user keeps it). A scan already open is prepared again if the new
        weights need another spacing or size."""
        choice = WeightsChoice(str(Path(checkpoint)) if checkpoint else None, str(Path(probe)) if probe else None)
        return self.start("weights", weights_job, choice, self.models, wait=wait,
                          on_done=lambda result: self._weights_ready(result, remember),
                          description="loading weights")

    def _weights_ready(self, result, remember: bool = True) -> None:
        choice, geometry = result
        if remember:
            self._session_weights = None
            self.settings.checkpoint = choice.checkpoint or ""
            self.settings.probe = choice.probe or ""
            save_settings(self.settings)
        else:
            self._session_weights = choice
        self.models.keep_only(choice)
        self.clear_results()
        self.events.weights.emit(choice)
        self.events.settings.emit(self.settings)
        if self.scan is not None and geometry != self.scan.geometry:
            self.use_scan_layer(self.scan.layer, wait=False)

    @property
    def weights_remembered(self) -> bool:
        """The weights in use are the ones the next session starts with."""
        return self._session_weights is None

    # ---- scans -------------------------------------------------------------------------------
    def scan_layers(self) -> list[Any]:
        """The scan layers open in this viewer, in layer order."""
        viewer = self._viewer()
        return [layer for layer in viewer.layers if is_scan_layer(layer)] if viewer is not None else []

    def open_scan(self, scan, wait: bool = True):
        """Open a scan (a path, a ``data.Volume`` or an Image layer already in the viewer), show
        it in LPS mm world coordinates and make it the active scan. A file is read in a worker
        (reading a CT takes the GUI thread's time otherwise); its layer is added on the turn after."""
        from ..data import Volume
        from ._io import scan_layer_data

        if hasattr(scan, "data") and hasattr(scan, "metadata") and scan in self.viewer.layers:
            return self.use_scan_layer(scan, wait=wait)
        if isinstance(scan, Volume):
            return self._add_scan(scan_layer_data(scan), wait=wait)
        path = Path(str(scan))
        keep_out_of_collector("reading")
        job = self.start("open", read_scan_job, path, wait=False, progress_in_dock=self._grid_dock_open(),
                         on_done=lambda read: self._before_scan_layer(read),
                         description=f"reading {path.name}")
        if not wait:
            return job
        job.wait()
        job.outcome()
        self.scene.settle()  # the layer is added on a turn of its own, as it is for a user
        if self.running("prepare"):
            self.wait("prepare")
        self.scene.settle()
        return self.scan

    def _before_scan_layer(self, read) -> None:
        """A scan was read: its layer is added on the next event-loop turn. A viewer with no layer yet
        gets its 3D sliders now (napari makes them with the first 3D layer: a turn's worth of its own)."""
        viewer = self._viewer()
        if viewer is not None and len(viewer.layers) == 0 and viewer.dims.ndim < 3:
            viewer.dims.ndim = 3
        keep_out_of_collector()
        self.scene.later("open", lambda: self._add_scan(read, wait=False))

    def _add_scan(self, read, wait: bool):
        """The scan's layer, under every other layer (a move later would rebuild the canvas's scene
        graph once more). Not waited for (an event-loop turn of the viewer's): added hidden, and
        shown, fitted and prepared on the next turn, so that making the layer (its visual, its
        controls) and its first frame are two short stalls, not one long one."""
        data, kwargs, _kind = read
        if not wait:
            kwargs = {**kwargs, "visible": False}
        layer = new_layer("image", data, **kwargs)
        self._adopting = True
        try:
            self.scene.insert(layer, index=0)
        finally:
            self._adopting = False
        if wait:
            return self.use_scan_layer(layer, wait=True)
        viewer = self.viewer

        def use() -> None:
            if layer in viewer.layers and (self.scan is None or self.scan.layer is not layer):
                self.use_scan_layer(layer, wait=False)

        self.scene.later(f"open:use:{id(layer)}", use)
        return None

    def use_scan_layer(self, layer, wait: bool = True):
        """Make ``layer`` (a 3D Image layer) the active scan: shown alone, prepared, its grid drawn."""
        from ._io import layer_world_matrix, volume_from_layer

        if getattr(layer, "ndim", 0) != 3 or getattr(layer, "rgb", False):
            raise NemesisInputError(f"{getattr(layer, 'name', layer)}: a 3D greyscale CT layer is needed")
        if self.running("prepare"):  # the newest scan wins
            if self._preparing is layer:
                return self.wait("prepare") if wait else self._jobs.get("prepare")
            self.cancel("prepare")
            self.wait("prepare")
        volume = volume_from_layer(np.asarray(layer.data), layer.metadata, layer_world_matrix(layer))
        if volume.source is None:
            volume.source = Path(str(layer.name))
        if self.scan is not None and self.scan.layer is not layer:
            self._leave_scan()  # nothing of the old scan stays on screen while the new one prepares
        self._show_only(layer)
        self._preparing = layer
        weights = self.weights
        return self.start("prepare", prepare_job, volume, weights, self.models, wait=wait,
                          progress_in_dock=self._grid_dock_open(),
                          on_done=lambda result: self._scan_ready(layer, weights, *result),
                          on_end=lambda _state: setattr(self, "_preparing", None),
                          description=f"preparing {layer.name}")

    def _grid_dock_open(self) -> bool:
        """The grid dock shows the reading and preparing of a scan (then they need no activity bar)."""
        return any(getattr(widget, "shows_scan_progress", False) for widget in self.widgets.values())

    def _show_only(self, layer) -> None:
        """The active scan alone visible, the camera and the slice on it."""
        for other in self.scan_layers():
            if other is not layer and other.visible:
                other.visible = False
        if not layer.visible:
            layer.visible = True
        layers = self.viewer.layers
        ours = [layers.index(lay) for lay in self.scene.layers.values() if lay is not layer]
        if ours and layers.index(layer) > min(ours):  # a scan opened later lies under our heatmaps and grid
            layers.move(layers.index(layer), 0)
        self.scene.adopt("scan", layer)
        self.scene.fit_to(layer)

    def _leave_scan(self) -> None:
        self.clear_results()
        self.scan = None
        self._selected = None
        self._grid_columns = {}
        self.events.scan.emit(None)
        self.events.selection.emit(None)

    def _scan_ready(self, layer, weights: WeightsChoice, prepared, geometry: Geometry) -> None:
        if self._viewer() is None or layer not in self.viewer.layers:
            return
        self.clear_results()
        self.scene.adopt("scan", layer)
        self.scan = ScanContext(layer, prepared, geometry, weights)
        self._selected = None
        self._grid_columns = {}
        self.events.scan.emit(self.scan)
        self.events.selection.emit(None)
        self.events.scans.emit(self.scan_layers())
        self.scene.orient_camera()
        from qtpy.QtCore import QTimer

        from ._window import arrange_docks

        viewer = self.viewer  # the active grid layer widens napari's layer controls: the docks make room again
        QTimer.singleShot(100, lambda: arrange_docks(viewer, refit=self.fit_view) if self.alive else None)

    def fit_view(self) -> None:
        """Fit the camera to the active scan (the docks changed the canvas's size)."""
        if self.scan is not None and self._viewer() is not None:
            self.scene.fit_to(self.scan.layer)

    def _on_layer_inserted(self, event) -> None:
        layer = event.value
        self.events.scans.emit(self.scan_layers())
        if self._adopting or not is_scan_layer(layer):
            return
        if self.scan is None or self.scan.layer is not layer:
            self.use_scan_layer(layer, wait=False)

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        self.events.scans.emit(self.scan_layers())
        if self.scan is not None and layer is self.scan.layer:
            self._leave_scan()
            rest = self.scan_layers()
            if rest:
                self.use_scan_layer(rest[-1], wait=False)

    def _on_active_layer(self, event) -> None:
        """The user picked another scan in the layer list: it becomes the active scan."""
        layer = getattr(event, "value", None)
        if layer is None or not is_scan_layer(layer) or self._adopting:
            return
        if (self.scan is None or self.scan.layer is not layer) and self._preparing is not layer:
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, lambda: self._activate_if_still(layer))

    def _activate_if_still(self, layer) -> None:
        viewer = self._viewer()
        if viewer is None or layer not in viewer.layers or viewer.layers.selection.active is not layer:
            return
        if (self.scan is None or self.scan.layer is not layer) and self._preparing is not layer:
            self.use_scan_layer(layer, wait=False)

    def clear_results(self) -> None:
        """The results are out of date (new weights, another scan): every result job is cancelled
        and every feature clears its results (layers blanked in place, state and docks reset)."""
        for name in list(self._jobs):
            if name not in KERNEL_JOBS:
                self.cancel(name)
        self.scene.clear_results()
        self._grid_columns = {}
        self.events.grid_columns.emit({})


    # ---- selection ---------------------------------------------------------------------------
    def select(self, index: int | None) -> int | None:
        """Select superpatch ``index`` (None clears); every dock follows."""
        if index is not None:
            index = self.need_scan().prepared.check_index(index)
        if index == self._selected:
            return index
        self._selected = index
        self.events.selection.emit(index)
        return index

    def select_at(self, world_zyx, view_direction=None) -> int | None:
        """Select the superpatch at a world point (2D) or first hit along a viewing ray (3D)."""
        index = self.superpatch_at(world_zyx, view_direction)
        if index is not None:
            self.select(index)
        return index

    def superpatch_at(self, world_zyx, view_direction=None) -> int | None:
        ctx = self.need_scan()
        point = np.asarray(world_zyx, dtype=np.float64).ravel()
        if point.size < 3:
            return None
        point = point[-3:]
        direction = None if view_direction is None else np.asarray(view_direction, dtype=np.float64).ravel()
        if direction is not None and direction.size >= 3 and np.all(np.isfinite(direction[-3:])):
            return L.superpatch_on_ray(ctx.grid_world, ctx.grid.grid_shape, point, direction[-3:])
        return L.superpatch_at(ctx.grid_world, ctx.grid.grid_shape, point)

    def move_selection(self, axis: int, step: int) -> int | None:
        """Move the selection ``step`` superpatches along ``axis`` (0 z, 1 y, 2 x)."""
        ctx = self.need_scan()
        if self._selected is None:
            return self.select(0)
        return self.select(L.neighbour(ctx.grid.grid_shape, self._selected, axis, step))

    def centre_on(self, index: int | None = None) -> None:
        """Move the slice and the camera to the centre of a superpatch (default: the selected one)."""
        ctx = self.need_scan()
        index = self._selected if index is None else ctx.prepared.check_index(index)
        if index is not None:
            self.scene.centre_on(ctx.box_centre_world(index))

    def superpatch_info(self, index: int | None) -> dict[str, Any] | None:
        """What is known about one superpatch: grid position, world box, probabilities, labels, error."""
        if index is None or self.scan is None:
            return None
        ctx = self.scan
        box = ctx.grid.box(index, clip=True)
        world = L.preprocessed_world_affine(ctx.prepared.pre)
        corners = np.array([np.asarray(box.start, float) - 0.5, np.asarray(box.stop, float) - 0.5])
        ends = corners @ world[:3, :3].T + world[:3, 3]
        info: dict[str, Any] = {"index": int(index), "grid_zyx": ctx.grid.grid_index(index),
                                "world_min_zyx": ends.min(axis=0), "world_max_zyx": ends.max(axis=0)}
        for name, values in self._grid_columns.items():
            info[name] = values[index]
        return info

    # ---- hover -------------------------------------------------------------------------------
    def hover_at(self, world_zyx, view_direction=None, ndisplay: int = 2) -> None:
        if self.scan is None:
            return
        index = self.superpatch_at(world_zyx, view_direction if ndisplay == 3 else None)
        if index != self._hover_index:
            self._hover_index = index
            self.events.hover.emit(self.superpatch_info(index))
        self.events.hover_point.emit(world_zyx, ndisplay, index)

    # ---- per-superpatch columns (hover status, tables, label states) ---------------------------
    def set_grid_column(self, name: str, values) -> None:
        """Show a per-superpatch value on hover (the grid's status line and docks); None removes it."""
        ctx = self.need_scan()
        if values is None:
            self._grid_columns.pop(name, None)
        else:
            values = np.asarray(values)
            if values.shape[0] != ctx.n:
                raise NemesisInputError(f"column {name!r}: {values.shape[0]} values for {ctx.n} superpatches")
            self._grid_columns[name] = values
        self.events.grid_columns.emit(dict(self._grid_columns))

    def set_grid_columns(self, columns: dict[str, Any]) -> None:
        """Several columns at once (one event); a value None removes that column."""
        ctx = self.need_scan()
        for name, values in columns.items():
            if values is None:
                self._grid_columns.pop(name, None)
                continue
            values = np.asarray(values)
            if values.shape[0] != ctx.n:
                raise NemesisInputError(f"column {name!r}: {values.shape[0]} values for {ctx.n} superpatches")
            self._grid_columns[name] = values
        self.events.grid_columns.emit(dict(self._grid_columns))

    @property
    def grid_columns(self) -> dict[str, np.ndarray]:
        return dict(self._grid_columns)

    def show_grid_map(self, name: str, values, rgb=(1.0, 0.85, 0.0), limits=(0.0, 1.0),
                      visible: bool | None = None) -> None:
        """Per-superpatch values (e.g. label states) as a block heatmap over the grid, layer role
        ``map:<name>``; updated in place when shown again. ``visible``: show or hide the layer
        (None: shown when made, then as the user left it)."""
        from ._scene import heatmap

        ctx = self.need_scan()
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (ctx.n,):
            raise NemesisInputError(f"map {name!r}: {values.shape} values for {ctx.n} superpatches")
        self.scene.block_map(f"map:{name}", ctx.grid, values, heatmap(rgb, f"nemesis map:{name}"), name, limits,
                             visible, lift=True)

    # ---- docks ---------------------------------------------------------------------------------
    def show_widgets(self, front: str = "Superpatch grid") -> dict[str, Any]:
        """Dock the NEMESIS docks (once), tabbed on the right, ``front`` in front."""
        from ._window import arrange_docks

        window = getattr(self.viewer, "window", None)
        if window is None:
            return self.widgets
        for spec in self._specs:
            if not spec.title or spec.title in self.widgets:
                continue
            try:  # through napari's plugin registry, so the Plugins menu knows the dock is open
                _dock, widget = window.add_plugin_dock_widget("napari-nemesis", spec.title, tabify=bool(self.widgets))
            except Exception:  # plugin not registered (e.g. running from a source tree)
                widget = spec.make_dock(self.viewer)
                window.add_dock_widget(widget, name=spec.title, area="right", tabify=bool(self.widgets))
            self.widgets[spec.title] = widget
        self.dock_front = front  # the docks tab themselves in on the next turn: this one stays in front
        arrange_docks(self.viewer, front=front, refit=self.fit_view)

        def done() -> None:
            self.dock_front = None

        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, done)
        return self.widgets

    def close(self) -> None:
        """Stop every job (called when the viewer closes)."""
        self.cancel()
        for job in list(self._jobs.values()):
            job.wait(5000)
