"""Find similar: the job (``train.similarity.similar``, the function ``nemesis similar`` calls) on the
active scan's selected superpatch among a folder of scans (or a project, or scan files), the list of
neighbours, and the neighbour shown side by side: its scan read and prepared in a worker, shown in a
canvas of its own under the main one, sliced through the neighbour superpatch's centre and outlined."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal, SignalGroup

from ....errors import NemesisInputError
from ... import _layers as L
from ..._jobs import prepare_job, resolved_device
from ..._io import same_file
from ..._models import ModelStore, WeightsChoice

JOB = "similar"
SHOW_JOB = "neighbour"
DOCK_NAME = "Similar superpatch"


def similar_job(query: str, index: int, among: list[str], store: ModelStore, weights: WeightsChoice, k: int,
                device: str, *, cancel, report) -> dict[str, Any]:
    """The ``k`` nearest superpatches of the other scans (worker thread)."""
    from ....train.similarity import similar

    model = store.model(weights.checkpoint)
    report({"event": "stage", "name": "features", "device": resolved_device(device)})
    return similar(query, int(index), among, model, k=int(k), progress=report, cancel=cancel)


def neighbour_job(path: str, index: int, store: ModelStore, weights: WeightsChoice, *, cancel, report):
    """A neighbour's scan read and prepared as the viewer prepares one (worker thread): its layer data
    and the world centre and outline of the superpatch."""
    from ....data import read_volume
    from ..._io import scan_layer_data

    report({"event": "stage", "name": f"reading {Path(path).name}"})
    volume = read_volume(path)
    prepared, _geometry = prepare_job(volume, weights, store, cancel=cancel, report=report)
    if not 0 <= index < prepared.grid.n:
        raise NemesisInputError(f"{path}: no superpatch {index} (its grid has {prepared.grid.n})")
    centre_world = L.box_centre_world(prepared, index)
    outline = L.selection_outline(prepared.grid, index, 0)  # axial: z hidden
    return scan_layer_data(volume), centre_world, outline, prepared.grid


class SimilarEvents(SignalGroup):
    result = Signal(object)  # the similarity result dict | None
    message = Signal(str)


class SimilarController:
    def __init__(self, session) -> None:
        self.session = session
        self.events = SimilarEvents()
        self.among: list[str] = []
        self.k = 5
        self.result: dict[str, Any] | None = None
        self.view = None  # the neighbour's SideView
        self.dock = None
        self.shown: dict[str, Any] | None = None
        session.events.scan.connect(self._on_scan)

    def set_among(self, paths) -> None:
        for p in paths:
            if not Path(str(p)).expanduser().exists():
                raise NemesisInputError(f"{p}: no such file or folder")
        self.among = [str(Path(str(p)).expanduser()) for p in paths]

    def _query(self) -> tuple[str, int]:
        session = self.session
        ctx = session.need_scan()
        if session.selected is None:
            raise NemesisInputError("find similar: select a superpatch first (click a box)")
        source = ctx.prepared.volume.source
        if source is None or not Path(str(source)).exists():
            raise NemesisInputError(f"{ctx.name}: find similar needs the scan's file (this scan was not read from one)")
        return str(source), int(session.selected)

    def run(self, wait: bool = True):
        """The neighbours of the selected superpatch among :attr:`among`."""
        query, index = self._query()
        if not self.among:
            raise NemesisInputError("find similar: choose the scans to search (a folder, a project or files)")
        session = self.session
        return session.start(JOB, similar_job, query, index, list(self.among), session.models, session.weights,
                             int(self.k), session.settings.device, wait=wait, progress_in_dock=True,
                             on_done=self._ready, description="find similar")

    def _ready(self, result: dict[str, Any]) -> None:
        self.result = result
        self.events.result.emit(result)

    def _on_scan(self, ctx) -> None:
        if self.result is not None and (ctx is None or not same_file(ctx.prepared.volume.source,
                                                                 self.result.get("query", {}).get("scan"))):
            self.result = None  # neighbours of another scan's superpatch: not shown over this one
            self.events.result.emit(None)

    # ---- side by side -----------------------------------------------------------------------------
    def show_neighbour(self, rank: int, wait: bool = False):
        if self.result is None or not 0 <= rank < len(self.result["neighbours"]):
            raise NemesisInputError(f"find similar: no neighbour {rank + 1}")
        entry = self.result["neighbours"][rank]
        session = self.session
        if session.running(SHOW_JOB):
            session.cancel(SHOW_JOB)
            session.wait(SHOW_JOB)
        return session.start(SHOW_JOB, neighbour_job, str(entry["scan"]), int(entry["superpatch"]), session.models,
                             session.weights, wait=wait, progress_in_dock=True,
                             on_done=lambda shown: self._show(entry, shown), description="neighbour")

    def _show(self, entry: dict[str, Any], shown) -> None:
        (data, kwargs, _kind), centre, (vectors, world), grid = shown
        session = self.session
        if not session.alive:
            return
        if self.view is None:
            from ..._side_view import SideView

            self.view = SideView("neighbour")
            self.dock = session.viewer.window.add_dock_widget(self.view, name=DOCK_NAME, area="bottom")
        model = self.view.model
        model.layers.clear()
        kwargs = dict(kwargs)
        layer = model.add_image(data, **kwargs)
        if session.scan is not None:  # the main canvas's window
            layer.contrast_limits = tuple(session.scan.layer.contrast_limits)
        cell_mm = float(np.mean(np.linalg.norm(L.grid_world_affine(grid)[:3, :3], axis=0)))
        model.add_vectors(vectors, name="neighbour superpatch", edge_color="#ff7a00", edge_width=4.0 / cell_mm,
                          length=1.0, vector_style="line", units=tuple(layer.units), **L.transform_kwargs(world))
        from ..._scene import orient_camera

        orient_camera(model)
        model.dims.set_point(0, float(centre[0]))
        model.reset_view()
        from qtpy.QtCore import Qt, QTimer

        from ..._napari_private import qt_window

        window = qt_window(session.viewer)
        if window is not None and self.dock is not None:  # a third of the height, as the orthogonal views
            window.resizeDocks([self.dock], [max(160, int(window.height() / 3))], Qt.Orientation.Vertical)
        view = self.view
        QTimer.singleShot(100, lambda: view.model.reset_view() if self.view is view else None)  # once it has its size
        self.view.set_title(f"{Path(str(entry['scan'])).name}, superpatch {entry['superpatch']}: similarity "
                            f"{float(entry['similarity']):.3f}")
        self.shown = entry
        self.events.message.emit(f"neighbour {Path(str(entry['scan'])).name} superpatch {entry['superpatch']} shown "
                                 "under the canvas")

    def close_neighbour(self) -> None:
        if self.view is not None:
            self.view.close_view()
            try:
                self.session.viewer.window.remove_dock_widget(self.view)
            except (KeyError, LookupError, RuntimeError):
                pass
        self.view = self.dock = self.shown = None

