"""The Labelling dock's logic: the open scan's labels, the keys, fill, label next, progress colours.

One :class:`LabellingController` per session (:func:`labelling_for`). It opens the labels of the
session's scan in a labelling project (``labels.LabelProject``: the folder ``nemesis labels
train`` trains from), with the scan already read (no second read) and the session's grid, so a
superpatch index means the same box in the viewer and in the sidecar. The cursor
(``labels.LabelCursor``) follows the shared selection; every action is one core call, saved
before it returns (``labels.LabelStore``), then the grid is recoloured by label state
(``session.show_grid_map``) and the state shows on hover (``session.set_grid_column``).

Keys (``labels.KEYS``): 1-9 toggle an organ, Enter marks labelled and moves on, ``s`` skips,
arrows and Page Up/Down move to a neighbour, ``n``/``p`` to the next/previous unlabelled
superpatch, Ctrl+Z undoes. napari binds most of these keys itself (numbers switch a Labels layer's
mode, arrows step the slider, Ctrl+Z undoes a brush stroke), so they are ours only where that
cannot surprise anyone: while the keyboard focus is in the Labelling dock, and, in *labelling
mode*, also on the canvas (:class:`LabellingKeys`); text fields always keep their keys.

A scan with no file of its own (built in memory, or a layer that did not come from a file) is
written once into the project (``PROJECT/images/<name>-<hash>.nii.gz``) so that training, which
runs in another process, can read it; its voxels and so its labels are the same.
"""

from __future__ import annotations

import json
import os
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal, SignalGroup
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtCore import Signal as QtSignal

from ....errors import NemesisError, NemesisInputError
from ..._napari_private import qt_window
from ..._settings import default_project_dir, load_project_dir, save_project_dir  # noqa: F401 (re-exported)
from ..._workers import FAILED, RunState, start_job
from .layers import LabelStateLayer

#: The map over the grid (``map:label state``) and the hover column.
MAP_NAME = "label state"
COLUMN = "label"


def scan_image_path(volume, project_root: Path, write: bool = True) -> Path:
    """The image file the project records for ``volume``: its own file when it came from one,
    else a NIfTI copy written once into ``PROJECT/images`` (same voxels, so the same hash)."""
    from ....data.formats import scan_stem
    from ....data.io import write_volume
    from ....labels import ScanFingerprint

    source = Path(str(volume.source)) if volume.source is not None else None
    if source is not None and source.is_file() and volume.meta.get("format") not in ("memory", "napari-layer"):
        return source
    stem = scan_stem(source.name) if source is not None else "scan"
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "scan"
    digest = ScanFingerprint.of_volume(volume).voxel_sha256[:12]
    path = Path(project_root) / "images" / f"{stem}-{digest}.nii.gz"
    if write and not path.is_file():
        write_volume(np.asarray(volume.array, dtype=np.float32), path, volume, dtype=np.float32)
    return path


@dataclass(frozen=True)
class PendingLabels:
    """A scan with no labels in the project yet: nothing is written (no project file, no scan entry,
    no image copy) until the first label, when :meth:`LabellingController.ensure_store` starts them."""

    project_dir: Path
    organs: tuple[str, ...]


# ---- jobs (worker threads; core calls only) -------------------------------------------------------
def open_store_job(project_dir: Path, volume, superpatch: int, spacing_zyx, organs, create: bool = True, *,
                   cancel, report):
    """Open (``create``: or start) the project with the session's grid and the scan's labels in it.
    Without ``create``, a scan the project does not hold yet gives :class:`PendingLabels` and
    nothing is written; a project of another grid is refused either way."""
    from ....labels import PROJECT_FILE, LabelProject

    report({"event": "stage", "name": "opening labels"})
    project_dir = Path(project_dir)
    new = not (project_dir / PROJECT_FILE).is_file()
    if not create:
        if new:
            return PendingLabels(project_dir, tuple(organs))
        project = LabelProject.open(project_dir, superpatch=superpatch, spacing_zyx=spacing_zyx)
        found = project.find(scan_image_path(volume, project.root, write=False))
        if found is None:
            return PendingLabels(project_dir, tuple(project.organs))
        return project.store(found, volume=volume)
    project = LabelProject.open(project_dir, create=True, superpatch=superpatch, spacing_zyx=spacing_zyx,
                                organs=organs if new else None)
    image = scan_image_path(volume, project.root)
    return project.store(image, volume=volume)


def fill_job(store, source, threshold: int | None, overwrite: bool, scheme: str, project_dir=None,
             layer_file=None, *, cancel, report):
    """``labels.fill_from_segmentation`` with the project the store belongs to, so a fill from a file
    records that file in it (``LabelProject.record_segmentation``, as ``nemesis labels fill`` does:
    patch-level training reads it again). A Labels layer read from a file (``layer_file``) counts as
    that file while its voxels are still the file's (not painted on since); returns the fill's
    result and the segmentation file recorded (None when none was)."""
    from ....labels import PROJECT_FILE, LabelProject, fill_from_segmentation

    report({"event": "stage", "name": "presence from the segmentation"})
    project = None
    if project_dir is not None and (Path(project_dir) / PROJECT_FILE).is_file():
        project = LabelProject.open(project_dir)
        if project.find(store.scan_path) is None:
            project = None
    if layer_file is not None and isinstance(source, np.ndarray) and _same_as_file(store, source, layer_file):
        source = Path(layer_file)
    result = fill_from_segmentation(store, source, threshold=threshold, overwrite=overwrite, scheme=scheme,
                                    project=project)
    recorded = source if project is not None and isinstance(source, Path) else None
    return result, recorded


def _same_as_file(store, array: np.ndarray, path) -> bool:
    """A label array still holds exactly the label map file ``path`` (read on the scan's grid)."""
    from ....data import read_labels
    from ....errors import NemesisError

    path = Path(path)
    if not path.is_file() or store.volume is None:
        return False
    scans = {Path(str(p)).resolve() for p in (store.volume.source, store.scan_path) if p}
    if path.resolve() in scans:  # a label layer made on the scan (its source is the scan's file)
        return False
    try:
        on_file = np.asarray(read_labels(path, store.volume))
    except (NemesisError, OSError, ValueError):
        return False
    return on_file.shape == array.shape and bool(np.array_equal(on_file, array))


class _Relay(QObject):
    """Label changes from whatever thread made them (a fill runs in a worker) to the GUI thread."""

    changed = QtSignal(object)


class LabellingEvents(SignalGroup):
    store = Signal(object)  # LabelStore | None: labels opened for the session's scan (or closed)
    labels = Signal(object)  # list[int]: superpatches whose label changed
    message = Signal(str)  # one line for the dock: opened, filled, refused, ...


class LabellingController:
    """The open scan's labels and what the Labelling dock's buttons and keys do to them."""

    def __init__(self, session) -> None:
        from ....data import ORGAN_NAMES

        self._session = weakref.ref(session)
        self.events = LabellingEvents()
        self.layer = LabelStateLayer(session.scene)
        self._project_dir: Path = load_project_dir()
        session.labels_project = self._project_dir
        #: the organ list a *new* project gets (a project keeps its own: a project setting)
        self.new_project_organs: tuple[str, ...] = tuple(ORGAN_NAMES)
        self.store = None
        self.pending: PendingLabels | None = None
        self.cursor = None
        self.show_states = True
        self.keys_on_canvas = False
        self.message = ""
        self._ctx = None
        self._unsubscribe = None
        self._open_state = RunState("labels")
        self._fill_state = RunState("fill")
        self._jobs: dict[str, Any] = {}
        self._pending_next = False
        self._relay = _Relay()
        self._relay.changed.connect(self._labels_changed)
        session.events.scan.connect(self._on_scan)
        session.events.selection.connect(self._on_selection)
        session.events.weights.connect(self._on_weights)
        session.events.probabilities.connect(self._on_probabilities)
        if session.scan is not None:
            self.open_scan(wait=False)

    @property
    def session(self):
        session = self._session()
        if session is None:
            raise NemesisInputError("this labelling controller's viewer was closed")
        return session

    @property
    def project_dir(self) -> Path:
        return self._project_dir

    @project_dir.setter
    def project_dir(self, path) -> None:
        """The project labels go to; the session shares it (the Training dock trains from it)."""
        self._project_dir = Path(path)
        session = self._session()
        if session is not None:
            session.labels_project = self._project_dir

    # ---- opening ----------------------------------------------------------------------------------
    def set_project(self, path, organs=None, wait: bool = True):
        """Label into the project folder ``path`` (made on first use, with ``organs`` or the 8 BTCV
        organs); the open scan's labels are opened there. Remembered for the next session."""
        self.project_dir = Path(path).expanduser()
        if organs:
            self.new_project_organs = tuple(str(o) for o in organs)
        save_project_dir(self.project_dir)
        return self.open_scan(wait=wait, create=True)  # the user picked this project: labels start there

    def open_scan(self, wait: bool = True, create: bool = False):
        """Open the labels of the session's scan (in a worker: hashing a scan takes a moment). A scan
        the project does not hold yet is registered at its first label, not now (``create``: now)."""
        session = self.session
        ctx = session.scan
        if ctx is None:
            self._set_store(None, None)
            return None
        spacing = tuple(float(s) for s in ctx.prepared.pre.spacing_zyx)
        job = start_job("labels", open_store_job, self.project_dir, ctx.prepared.volume, int(ctx.grid.superpatch),
                        spacing, self.new_project_organs, create, state=self._open_state,
                        on_done=lambda store: self._set_store(ctx, store),
                        on_end=lambda st: self._job_ended("labels", st), description="opening labels")
        self._jobs["labels"] = job
        if wait:
            job.wait()
            job.outcome()
        return self.store if wait else job

    def _job_ended(self, name: str, state: RunState) -> None:
        self._jobs.pop(name, None)
        if state.status == FAILED:
            if name == "labels":  # never keep labelling into a project other than the one shown
                self._set_store(None, None)
            self._say(state.error)

    def _say(self, text: str) -> None:
        self.message = text
        self.events.message.emit(text)

    def _set_store(self, ctx, store) -> None:
        session = self._session()
        if session is None or not session.alive or (store is not None and session.scan is not ctx):
            return  # a newer scan was opened meanwhile, or the viewer closed
        if store is not None and not isinstance(store, PendingLabels) and tuple(store.grid.grid_shape_zyx) != tuple(ctx.grid.grid_shape):
            raise NemesisInputError(f"{store.path}: the labels' grid {store.grid.grid_shape_zyx} is not the viewer's "
                                    f"{ctx.grid.grid_shape}")
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        from ....labels import LabelCursor

        if isinstance(store, PendingLabels):
            self.pending, store = store, None
            self.store, self._ctx, self.cursor = None, ctx, None
            session.labels_scan = None
            self._say(f"not labelled yet: the first label starts this scan's labels in {self.pending.project_dir}")
            self._refresh()
            self.events.store.emit(None)
            return
        self.pending = None
        self.store, self._ctx = store, ctx
        session.labels_scan = Path(store.scan_path) if store is not None else None
        self.cursor = None
        if store is not None:
            self.cursor = LabelCursor(store, session.selected if session.selected is not None else 0)
            self._unsubscribe = store.subscribe(self._relay.changed.emit)
            self._say(f"labels of {ctx.name}: {store.path}")
        self._refresh()
        self.events.store.emit(store)

    def _on_scan(self, ctx) -> None:
        if ctx is None:
            self._set_store(None, None)
        elif self._ctx is not ctx:
            self.open_scan(wait=False)

    def _on_weights(self, _choice) -> None:
        if self.store is not None and self._current():
            self._refresh()  # new weights cleared the session's hover columns

    def _current(self) -> bool:
        session = self._session()
        return session is not None and self.store is not None and session.scan is self._ctx

    # ---- showing ----------------------------------------------------------------------------------
    def label_texts(self) -> np.ndarray:
        """What hovering a superpatch says about its label."""
        texts = np.empty(self.store.n, dtype=object)
        for i, label in self.store.items():
            if label.state == "labelled":
                texts[i] = "labelled: " + (", ".join(label.organs) or "no organ")
            elif label.state == "skipped":
                texts[i] = "skipped"
            else:
                texts[i] = "unlabelled"
        return texts

    def set_show_states(self, shown: bool) -> None:
        self.show_states = bool(shown)
        session = self._session()
        if session is None:
            return
        if self.show_states and self._current():
            self._show_map(session)
        else:
            self.layer.hide()

    def _refresh(self, indices=None) -> None:
        session = self._session()
        if session is None or session.scan is None:
            return
        if not self._current():
            self.layer.remove()
            return
        if self.show_states:
            self._show_map(session)
        session.set_grid_column(COLUMN, self.label_texts())

    def _show_map(self, session) -> None:
        """The label-state map, shown once a superpatch is labelled or skipped: an all-unlabelled
        map draws nothing, yet a shown layer costs every canvas frame 7-12 ms (software OpenGL)."""
        codes = self.store.state_codes()
        self.layer.show(session.scan.grid, codes, visible=bool(np.any(codes > 0)))

    def _labels_changed(self, indices) -> None:
        if self._current():
            self._refresh(indices)
            self.events.labels.emit(list(indices))
            self.session.labels_changed(indices)  # the other features (Project, Training) hear it

    def counter(self) -> str:
        return self.cursor.counter() if self.cursor is not None else "no labels open"

    # ---- the cursor and the keys -------------------------------------------------------------------
    def _on_selection(self, index) -> None:
        if self.cursor is not None and index is not None and self._current() and 0 <= index < self.store.n:
            self.cursor.go_to(int(index))

    @property
    def organs(self) -> tuple[str, ...]:
        """The organs labels take: the open labels', else those they will have."""
        if self.store is not None:
            return tuple(self.store.organs)
        return tuple(self.pending.organs) if self.pending is not None else ()

    def ensure_store(self):
        """The scan's labels, started in the project now if they are still pending."""
        if self.store is None and self.pending is not None and self._ctx is self.session.scan:
            self.open_scan(wait=True, create=True)
        return self.store

    def _need_cursor(self):
        if self.cursor is None and self.pending is not None:
            self.ensure_store()
        if self.cursor is None or not self._current():
            raise NemesisInputError("no labels open: open a scan first (its labels open in the project "
                                    f"{self.project_dir})")
        return self.cursor

    def _go(self, index: int | None, centre: bool = True) -> None:
        if index is None:
            return
        session = self.session
        session.select(int(index))
        if centre:
            session.centre_on(int(index))

    def act(self, action: str, *args):
        """One labelling action on the selected superpatch (``toggle``, ``accept``, ``skip``,
        ``undo``, ``move``, ``next_unlabelled``, ``previous_unlabelled``); selects where it lands."""
        cursor = self._need_cursor()
        session = self.session
        if action in ("toggle", "accept", "skip") and session.selected is None:
            self._go(cursor.index)  # nothing selected yet: show what the next key would label
            return None
        before = cursor.index
        result = getattr(cursor, action)(*args)
        self._go(cursor.index, centre=cursor.index != before)
        return result

    def handle_key(self, key: str) -> bool:
        """What a labelling key does (see ``labels.KEYS``); False when it is not one of ours.
        A refused change (e.g. the sidecar cannot be written) becomes a notification."""
        from ....labels import key_action

        found = key_action(key, len(self.store.organs)) if self.cursor is not None and self._current() else None
        if found is None:
            return False
        try:
            self.act(found[0], *found[1])
        except NemesisError as exc:
            _notify(str(exc))
        return True

    # ---- label next -------------------------------------------------------------------------------
    def label_next(self, wait: bool = False) -> int | None:
        """Select the unlabelled superpatch the current probe is least sure about. Uses the
        session's last organ probabilities; runs them first when there are none."""
        cursor = self._need_cursor()
        session = self.session
        result = session.probabilities
        if result is not None and result.values.shape[0] == self.store.n:
            index = cursor.label_next(result.values)
            if index is None:
                self._say("every superpatch is labelled or skipped")
                return None
            self._go(index)
            self._say(f"label next: superpatch {index} (the probe's most uncertain unlabelled one)")
            return index
        self._pending_next = True
        self._say("label next: computing the organ probabilities first")
        session.run_probabilities(wait=wait)
        return session.selected if wait else None

    def _on_probabilities(self, result) -> None:
        if self._pending_next and result is not None and self._current():
            self._pending_next = False
            self.label_next()

    # ---- fill from a segmentation -----------------------------------------------------------------
    def segmentation_array(self, layer) -> np.ndarray:
        """A Labels layer's data as a label map on the scan's canonical voxel grid (refused when it
        is not on the scan's grid)."""
        from ..._io import layer_world_matrix, volume_from_layer

        volume = self.store.volume
        data = np.asarray(layer.data)
        if data.ndim != 3:
            raise NemesisInputError(f"layer {layer.name}: a 3D label map is needed, this one is {data.ndim}D")
        labels = volume_from_layer(data, layer.metadata, layer_world_matrix(layer))
        if tuple(labels.shape) != tuple(volume.shape) or not np.allclose(labels.canonical_affine,
                                                                          volume.canonical_affine, atol=1e-3):
            raise NemesisInputError(f"layer {layer.name}: not on the scan's voxel grid ({tuple(labels.shape)} voxels, "
                                    f"scan {tuple(volume.shape)}); open the label map that belongs to this scan")
        return np.asarray(labels.array)

    def fill(self, source, overwrite: bool = False, threshold: int | None = None, scheme: str = "auto",
             wait: bool = True):
        """Label every superpatch from a segmentation (a Labels layer, a label file or an array on
        the scan's canonical grid) with the core's presence rule (``labels.fill_from_segmentation``);
        hand labels are kept unless ``overwrite``. ``threshold``: voxels at the model's spacing
        (default: the project's)."""
        from ....labels import LabelProject

        self._need_cursor()
        store = self.store
        layer_file = None
        if hasattr(source, "data") and hasattr(source, "metadata"):
            what = f"layer {source.name}"
            layer_file = source.metadata.get("source")  # the label file it was read from, if any
            source = self.segmentation_array(source)
        elif isinstance(source, np.ndarray):  # already on the scan's canonical (z, y, x) grid
            what = "a label array"
        else:
            what = str(source)
            source = Path(str(source))
        if threshold is None:
            threshold = LabelProject.open(self.project_dir).threshold
        job = start_job("fill", fill_job, store, source, threshold, bool(overwrite), scheme, self.project_dir,
                        layer_file, state=self._fill_state, on_done=lambda out: self._filled(what, threshold, *out),
                        on_end=lambda st: self._job_ended("fill", st), description="fill from segmentation")
        self._jobs["fill"] = job
        if wait:
            job.wait()
            return job.outcome()[0]
        return job

    def _filled(self, what: str, threshold: int, res, recorded=None) -> None:
        c = self.store.counts() if self.store is not None else {"labelled": 0}
        kept = (f"; {Path(recorded).name} recorded in the project (patch-level training reads it)" if recorded
                else "; not recorded for patch-level training (no label file: fill from the file)")
        self._say(f"filled from {what} ({res.scheme} ids, >= {threshold} voxels): {len(res.filled)} superpatches, "
                  f"{len(res.changed)} changed, {len(res.kept)} kept (labelled or skipped by hand); "
                  f"{c['labelled']} labelled now{kept}")

    def wait(self, timeout_s: float = 60.0) -> None:
        """Wait (GUI live) for the opening and fill jobs running now."""
        for job in list(self._jobs.values()):
            job.wait(int(timeout_s * 1000))


def labelling_for(session) -> LabellingController:
    """The labelling controller of a session (made on first use)."""
    return session.feature("labelling")


def _notify(text: str) -> None:
    from napari.utils.notifications import show_error

    show_error(" ".join(text.split()))


# ---- keys -------------------------------------------------------------------------------------------
_KEY_NAMES = {
    **{getattr(Qt.Key, f"Key_{k}"): str(k) for k in range(1, 10)},
    Qt.Key.Key_Return: "Return", Qt.Key.Key_Enter: "Enter", Qt.Key.Key_S: "s", Qt.Key.Key_N: "n",
    Qt.Key.Key_P: "p", Qt.Key.Key_Left: "Left", Qt.Key.Key_Right: "Right", Qt.Key.Key_Up: "Up",
    Qt.Key.Key_Down: "Down", Qt.Key.Key_PageUp: "PageUp", Qt.Key.Key_PageDown: "PageDown",
}


def key_name(event) -> str | None:
    """The ``labels.KEYS`` name of a Qt key event, or None (other keys, other modifiers)."""
    mods = event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
    key = event.key()
    if key == Qt.Key.Key_Z and mods == Qt.KeyboardModifier.ControlModifier:
        return "Control-Z"
    if mods != Qt.KeyboardModifier.NoModifier:
        return None
    return _KEY_NAMES.get(key)


def _canvas_of(viewer):
    """The widget holding napari's canvas (and its sliders) in the viewer's window, or None."""
    from qtpy.QtWidgets import QWidget

    window = qt_window(viewer)
    if window is None:
        return None
    return next((w for w in window.findChildren(QWidget) if type(w).__name__ == "QtViewer"), None)


def _takes_text(widget) -> bool:
    from qtpy.QtWidgets import QAbstractSpinBox, QComboBox, QLineEdit, QPlainTextEdit, QTextEdit

    if isinstance(widget, (QLineEdit, QAbstractSpinBox, QTextEdit, QPlainTextEdit)):
        return True
    return isinstance(widget, QComboBox) and widget.isEditable()


class LabellingKeys(QObject):
    """Routes the labelling keys to the controller where they are unambiguous.

    An application event filter, child of the Labelling dock (it goes when the dock goes): a key
    pressed while the focus is in the dock, or on napari's canvas in labelling mode, is taken
    before napari's own shortcuts (the ``ShortcutOverride`` is accepted, the key press handled);
    text fields keep their keys, and any other key or place is left alone.
    """

    def __init__(self, controller: LabellingController, dock, viewer) -> None:
        super().__init__(dock)
        from qtpy.QtWidgets import QApplication

        self._controller = weakref.ref(controller)
        self._dock = dock
        canvas = _canvas_of(viewer)
        self._canvas = weakref.ref(canvas) if canvas is not None else (lambda: None)
        QApplication.instance().installEventFilter(self)

    def _ours(self, widget) -> bool:
        from qtpy.QtWidgets import QWidget

        if not isinstance(widget, QWidget) or _takes_text(widget):
            return False
        controller = self._controller()
        if controller is None:
            return False
        try:
            if widget is self._dock or self._dock.isAncestorOf(widget):
                return True
            canvas = self._canvas()
            return bool(controller.keys_on_canvas and canvas is not None
                        and (widget is canvas or canvas.isAncestorOf(widget)))
        except RuntimeError:  # a Qt object already deleted
            return False

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        kind = event.type()
        if kind not in (QEvent.Type.KeyPress, QEvent.Type.ShortcutOverride):
            return False
        name = key_name(event)
        if name is None:
            return False
        from qtpy.QtWidgets import QApplication, QWidget

        target = obj if isinstance(obj, QWidget) else QApplication.focusWidget()
        if not self._ours(target):
            return False
        controller = self._controller()
        if controller is None or controller.cursor is None:
            return False
        if kind == QEvent.Type.ShortcutOverride:
            event.accept()  # "this widget wants the key": no napari shortcut fires, a KeyPress follows
            return True
        return controller.handle_key(name)
