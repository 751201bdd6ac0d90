"""Linked orthogonal views: the two planes the main canvas does not show, in a dock under it, each
with the scan, the grid, the heatmaps and every other image, label or line layer that is shown on
the main canvas (copies sharing their data), a crosshair through the point under the cursor, the
selected superpatch's outline, and the main canvas's window/level.

The side views follow the cursor (throttled: one update per :data:`FOLLOW_MS` at most, so a moving
mouse never queues frames), jump to a newly selected superpatch and show a new scan when one is
opened. Off by default (the grid dock's "Orthogonal views" box turns them on): two more canvases
cost frames on a machine without a GPU.
"""

from __future__ import annotations

import numpy as np
from psygnal import Signal, SignalGroup

from ... import _layers as L
from ..._napari_private import skip_thumbnails, viewer_camera
from ..._scene import orient_camera
from .lines import box_outline, plane_lattice
from .mirror import WATCHED, bring_in_step, make_copy, mirrored_kind, whole_scan_role
from .planes import crosshair_vectors, dims_order, side_planes

#: The side views follow the cursor at most this often (ms).
FOLLOW_MS = 60
DOCK_NAME = "Orthogonal views"


class OrthoEvents(SignalGroup):
    enabled = Signal(bool)


class OrthoViewsController:
    def __init__(self, session) -> None:
        self.session = session
        self.events = OrthoEvents()
        self.enabled = False
        self.widget = None
        self.dock = None
        self.point: np.ndarray | None = None  # world (z, y, x) mm the crosshair goes through
        self._watched: dict[int, tuple[object, object]] = {}
        self._timer = None
        events = session.events
        events.scan.connect(self._on_scan)
        events.selection.connect(self._on_selection)
        events.hover_point.connect(self._on_hover_point)
        events.view.connect(self._on_view)
        for signal in (events.probabilities, events.reconstruction, events.attention):
            signal.connect(self._on_results)

    # ---- on / off ---------------------------------------------------------------------------------
    @property
    def views(self) -> list:
        return list(self.widget.views) if self.widget is not None else []

    def set_enabled(self, on: bool) -> None:
        on = bool(on)
        if on == self.enabled:
            return
        if on:
            self._open()
        else:
            self._close()
        self.enabled = on
        self.events.enabled.emit(on)

    def _open(self) -> None:
        from qtpy.QtCore import QTimer

        from .views import OrthoViewsWidget

        viewer = self.session.viewer
        dims = viewer.dims
        nd = dims.ndim
        main = tuple(a - (nd - 3) for a in dims.displayed) if nd >= 3 else (1, 2)
        self.widget = OrthoViewsWidget(side_planes(main, dims.ndisplay))
        self.dock = viewer.window.add_dock_widget(self.widget, name=DOCK_NAME, area="bottom")
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._follow_now)
        viewer.dims.events.point.connect(self._on_main_slice)
        layers = viewer.layers
        layers.events.inserted.connect(self._on_layers)
        layers.events.removed.connect(self._on_layers)
        layers.events.moved.connect(self._on_layers)
        self._fit_dock()
        self._rebuild()

    def _close(self) -> None:
        viewer = self.session._viewer()
        for layer, callback in self._watched.values():
            try:
                layer.events.disconnect(callback)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._watched.clear()
        if viewer is not None:
            for signal, slot in ((viewer.layers.events.inserted, self._on_layers),
                                 (viewer.layers.events.removed, self._on_layers),
                                 (viewer.layers.events.moved, self._on_layers),
                                 (viewer.dims.events.point, self._on_main_slice)):
                try:
                    signal.disconnect(slot)
                except (TypeError, ValueError, RuntimeError):
                    pass
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if self.widget is not None:
            self.widget.close_views()
            if viewer is not None and getattr(viewer, "window", None) is not None:
                try:
                    viewer.window.remove_dock_widget(self.widget)
                except (KeyError, LookupError, RuntimeError):
                    pass
        self.widget = self.dock = None

    def _fit_dock(self) -> None:
        """A third of the window's height for the side views: the main canvas keeps the rest."""
        from qtpy.QtCore import Qt

        from ..._napari_private import qt_window

        window = qt_window(self.session.viewer)
        if window is not None and self.dock is not None:
            window.resizeDocks([self.dock], [max(160, int(window.height() / 3))], Qt.Orientation.Vertical)

    # ---- the session's events -----------------------------------------------------------------------
    def _on_scan(self, ctx) -> None:
        if self.enabled:
            self.point = None
            self.session.scene.later("ortho:rebuild", self._rebuild)

    def _on_view(self) -> None:
        if not self.enabled:
            return
        dims = self.session.viewer.dims
        nd = dims.ndim
        planes = side_planes(tuple(a - (nd - 3) for a in dims.displayed), dims.ndisplay)
        if tuple(v.plane for v in self.views) != planes:
            for view, plane in zip(self.views, planes):
                view.set_plane(plane)
            self.session.scene.later("ortho:rebuild", self._rebuild)

    def _on_layers(self, _event=None) -> None:
        if self.enabled:
            self.session.scene.later("ortho:sync", self._sync)

    def _on_results(self, _result) -> None:
        if self.enabled:
            self.session.scene.later("ortho:refresh", self._refresh)

    def _on_selection(self, index) -> None:
        if not self.enabled:
            return
        ctx = self.session.scan
        if index is not None and ctx is not None:
            self.point = np.asarray(ctx.box_centre_world(int(index)), dtype=np.float64)
            # a turn of its own: the main canvas redraws the selection on the next one
            self.session.scene.turns.step("ortho:follow:0", lambda: self._follow_now(centre=True))
        else:
            self.session.scene.turns.step("ortho:follow:0", self._follow_now)

    def _on_main_slice(self, _event=None) -> None:
        """The main canvas's slider moved: the crosshair's line across the side views moves with it."""
        if not self.enabled or self.point is None:
            return
        dims = self.session.viewer.dims
        if dims.ndisplay != 2 or dims.ndim < 3:
            return
        point = np.asarray(dims.point, dtype=np.float64)[-3:]
        hidden = [a - (dims.ndim - 3) for a in dims.not_displayed if a >= dims.ndim - 3]
        if hidden and not np.isclose(self.point[hidden[0]], point[hidden[0]]):
            self.point = self.point.copy()
            self.point[hidden[0]] = point[hidden[0]]
            if self._timer is not None and not self._timer.isActive():
                self._timer.start(FOLLOW_MS)

    def _on_hover_point(self, world, ndisplay: int, _index) -> None:
        if not self.enabled or world is None or ndisplay != 2:
            return
        self.point = np.asarray(world, dtype=np.float64)[-3:]
        if self._timer is not None and not self._timer.isActive():
            self._timer.start(FOLLOW_MS)

    # ---- keeping the side views in step ----------------------------------------------------------------
    def _originals(self) -> list:
        """The main canvas's layers the side views show: the user's own (a segmentation they opened)
        and, of the session's, those that cover the scan (see :func:`.mirror.whole_scan_role`)."""
        viewer = self.session.viewer
        skip = {role: layer for role, layer in self.session.layers.items() if not whole_scan_role(role)}
        return [layer for layer in viewer.layers if mirrored_kind(layer, skip)]

    def _rebuild(self) -> None:
        """Every copy made again (a new scan, other planes), the camera fitted, the slices on the scan."""
        if not self.enabled and self.widget is None:
            return
        for view in self.views:
            view.model.layers.clear()
            view.copies.clear()
            for lines in (view.grid, view.outline, view.crosshair):
                lines.key = None
                lines.visible = False
        self._sync()
        ctx = self.session.scan
        for view in self.views:
            if view.model.layers:
                view.model.dims.order = dims_order(view.plane)
                orient_camera(view.model)
                view.model.reset_view()
        if ctx is not None and self.point is None:
            lo, hi = self._extent()
            self.point = (lo + hi) / 2.0
        if self.session.selected is not None and ctx is not None:
            self.point = np.asarray(ctx.box_centre_world(self.session.selected), dtype=np.float64)
        self._follow_now(centre=False)
        from qtpy.QtCore import QTimer

        QTimer.singleShot(50, lambda: self._fit_views() if self.widget is not None else None)

    def _sync(self) -> None:
        """Copies for the shown layers (in the main canvas's order), none for the others."""
        originals = self._originals()
        wanted = {id(layer): layer for layer in originals if layer.visible}
        grid_lines = self.session.layers.get("grid_lines")
        watched = originals + ([grid_lines] if grid_lines is not None else [])
        for layer in watched:
            self._watch(layer)
        for view in self.views:
            model = view.model
            for key in [k for k in view.copies if k not in wanted]:
                copy = view.copies.pop(key)
                if copy in model.layers:
                    model.layers.remove(copy)
            for position, (key, layer) in enumerate(wanted.items()):
                if key not in view.copies:
                    copy = make_copy(layer)
                    skip_thumbnails(copy)
                    view.copies[key] = copy
                    model.layers.insert(position, copy)  # in its place: under the lines above it
                    if len(model.layers) == 1:
                        model.dims.order = dims_order(view.plane)
                        orient_camera(model)
                        model.reset_view()
                    bring_in_step(copy, layer, self._width_factor(view))
                else:
                    bring_in_step(view.copies[key], layer, self._width_factor(view))
            self._order(model, [view.copies[k] for k in wanted if k in view.copies])
            self._show_lattice(view, grid_lines)
        for key in [k for k in self._watched if k not in {id(x) for x in watched}]:
            layer, callback = self._watched.pop(key)
            try:
                layer.events.disconnect(callback)
            except (TypeError, ValueError, RuntimeError):
                pass

    def _show_lattice(self, view, grid_lines) -> None:
        """The grid's lines in the view's plane, shown while the main canvas shows its own."""
        ctx = self.session.scan
        if ctx is None or grid_lines is None or not grid_lines.visible:
            view.grid.visible = False
            return
        key = (id(ctx.grid), view.plane.name)
        if view.grid.key != key:
            view.grid.set(plane_lattice(ctx.grid, view.plane.hidden), view.plane.displayed, key=key)
        view.grid.visible = len(view.grid.data) > 0

    def _width_factor(self, view) -> float:
        """How many times more mm a screen pixel holds in ``view`` than on the main canvas."""
        try:
            main = float(viewer_camera(self.session.viewer).zoom)
            side = float(viewer_camera(view.model).zoom)
        except (AttributeError, TypeError, ValueError):
            return 1.0
        return max(1.0, main / side) if side > 0 and main > 0 else 1.0

    @staticmethod
    def _order(model, wanted: list) -> None:
        layers = model.layers
        for target, layer in enumerate(wanted):
            if layer in layers:
                current = layers.index(layer)
                if current != target:
                    layers.move(current, target)

    def _watch(self, layer) -> None:
        key = id(layer)
        if key in self._watched:
            return

        def changed(event, key=key) -> None:
            if getattr(event, "type", None) in WATCHED:
                self.session.scene.later("ortho:sync", self._sync)

        layer.events.connect(changed)
        self._watched[key] = (layer, changed)

    def _refresh(self) -> None:
        """Results changed in place (heatmaps, reconstructions): the copies re-sliced."""
        self._sync()
        for view in self.views:
            for copy in view.copies.values():
                if copy.visible:
                    copy.refresh()

    def _extent(self) -> tuple[np.ndarray, np.ndarray]:
        ctx = self.session.scan
        if ctx is None:
            return np.zeros(3), np.ones(3)
        world = np.asarray(ctx.layer.extent.world, dtype=np.float64)
        return world[0][-3:], world[1][-3:]

    def _follow_now(self, centre: bool = False) -> None:
        """Slices, crosshair and selection outline through :attr:`point`: the first view now, the
        second on the next event-loop turn (each view's new slice is a frame of its own)."""
        if self.widget is None or self.point is None or self.session.scan is None:
            return
        views = self.views
        self._follow_view(views[0], centre)
        for k, view in enumerate(views[1:], start=1):
            self.session.scene.turns.step(f"ortho:follow:{k}", lambda view=view: self._follow_view(view, centre))

    def _follow_view(self, view, centre: bool) -> None:
        ctx = self.session.scan
        if self.widget is None or self.point is None or ctx is None or view not in self.views:
            return
        lo, hi = self._extent()
        point = np.clip(self.point, lo, hi)
        selected = self.session.selected
        for view in (view,):
            model = view.model
            if not model.layers:
                continue
            plane = view.plane
            if float(model.dims.point[plane.hidden]) != float(point[plane.hidden]):
                model.dims.set_point(plane.hidden, float(point[plane.hidden]))
            on_slice = point.copy()  # the slider snaps to a slice: the crosshair lies in that one
            on_slice[plane.hidden] = float(model.dims.point[plane.hidden])
            view.crosshair.set(crosshair_vectors(on_slice, lo, hi, plane), plane.displayed)
            view.crosshair.visible = True
            self._outline(view, ctx, selected, float(on_slice[plane.hidden]))
            if centre:
                camera = viewer_camera(model)
                camera.center = tuple(float(point[a]) for a in plane.displayed)

    def _fit_views(self) -> None:
        """Each side view zoomed to the scan (once its dock has its size), its lines widened to match."""
        for view in self.views:
            if view.model.layers:
                view.model.reset_view()
        self._sync()
        if self.point is not None:
            self._follow_now(centre=False)

    def _outline(self, view, ctx, selected, slice_at: float) -> None:
        """The selected superpatch's outline in this view's plane, shown in the slices that cut the
        box (its edges made again only when the selection, the grid or the plane changed)."""
        if selected is None:
            view.outline.visible = False
            return
        key = (int(selected), id(ctx.grid), view.plane.name)
        if view.outline.key != key:
            edges, (low, high) = box_outline(ctx.grid, int(selected), view.plane.hidden)
            view.outline.set(edges, view.plane.displayed, key=key)
            view.outline.span = (low, high)
        low, high = view.outline.span
        view.outline.visible = len(view.outline.data) > 0 and low - 1e-6 <= slice_at <= high + 1e-6
