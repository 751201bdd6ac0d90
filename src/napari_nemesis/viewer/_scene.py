"""The napari layers a session owns, by role: created once, then updated in place.

Runs on the GUI thread only (workers hand their results over through signals). Re-running a job
assigns new data to the existing layers instead of removing and re-adding them, so the user's
contrast, opacity, visibility and layer order survive. The numbers come from :mod:`._layers`.

Roles: ``scan``, ``grid`` (Labels, one voxel per superpatch, drawn transparent: hover features and
picking), ``grid_lines`` (Vectors: the lattice, lines in 2D and wireframe in 3D), ``selection``
(Vectors: the selected box's outline for the current view), ``prob:<organ>`` (organ
heatmaps), ``noisy``, ``masked``, ``reconstruction``, ``abs_error``, ``error_map``,
``attention_plane``, ``attention_axis``.

Adding a napari layer costs the GUI thread 100-300 ms (its controls, its visual, a frame) on a
machine without a GPU, so the layers a run fills are made before any run, when the scan's grid is
drawn (:meth:`Scene.prepare_results`): hidden, blank, one per event-loop turn. A run then only
gives them data; a layer stays hidden until it holds a result, and keeps the user's visibility
choices from then on. While a reconstruction runs, layers are redrawn without thumbnails (the
layer list repaints each time one changes); the final redraw brings them up to date.

A changed layer redraws the canvas (a frame: 40-90 ms under software OpenGL) on the event-loop turn
after the change, so a job's handler does not change layers itself: it hands the change to
:meth:`Scene.later`, which applies it on the next turn.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ..data import HU_WINDOW
from . import _layers as L
from ._jobs import ReconstructionTargets
from ._qtwindow import qt_canvas, qt_window

RECON_ROLES = ("noisy", "masked", "reconstruction", "abs_error")
GRID_ROLES = ("grid", "grid_lines", "selection")
ATTENTION_ROLES = ("attention_plane", "attention_axis")
OVERLAY_ROLES = ("grid_lines", "selection", "grid")  # kept on top, in this order (grid topmost)
#: Air in HU: what a reconstruction layer shows where nothing was reconstructed yet.
EMPTY_HU = -1024.0
#: ``layer.metadata`` key: the layer was made (or cleared) ahead of a result and holds none yet.
BLANK = "nemesis_blank"
_WARM = "nemesis_drawn_once"  # its visual was drawn once (shaders built)
#: The error map's contrast-limit range: a masked-patch RMSE (HU) lies within the model's HU window.
_ERROR_RANGE = (0.0, float(HU_WINDOW[1] - HU_WINDOW[0]))
_SELECTION_RGBA = (1.0, 0.85, 0.0, 1.0)
_SELECTION_COLOR = "#ff7a00"
_SELECTION_WIDTH_MM = 3.0
_LINE_WIDTH_MM = 1.2


def prob_role(organ: str) -> str:
    return f"prob:{organ}"


class Scene:
    """Layer handling for one viewer: add or update a layer by role; nothing else touches them."""

    def __init__(self, viewer) -> None:
        self._viewer = weakref.ref(viewer)
        self._layers: dict[str, Any] = {}
        self._linked: list[Any] = []
        self._added = False
        self._pending: dict[str, Any] = {}  # role -> a function making its layer, one per event-loop turn
        # the running reconstruction's arrays, where to place them and the roles that took theirs
        self._recon: tuple[ReconstructionTargets, np.ndarray, set[str]] | None = None
        self._recon_running = False
        self._adopt_scheduled = False
        self._to_show: list[Any] = []  # layers to show on the next event-loop turn
        self._later: dict[str, Any] = {}  # key -> layer work for the next event-loop turn (newest wins)
        self._canvas = None  # napari's VispyCanvas, found on first use
        self._warming = False
        self._warmed_text = False
        self._features = None

    # ---- bookkeeping ---------------------------------------------------------------------------
    @property
    def viewer(self):
        return self._viewer()

    @property
    def layers(self) -> dict[str, Any]:
        """The layers this scene owns and that are still in the viewer, by role."""
        self._layers = {r: lay for r, lay in self._layers.items() if lay in self.viewer.layers}
        return dict(self._layers)

    def get(self, role: str):
        layer = self._layers.get(role)
        return layer if layer is not None and layer in self.viewer.layers else None

    def remove(self, roles) -> None:
        for role in list(roles):
            layer = self._layers.pop(role, None)
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)

    def roles_with_prefix(self, prefix: str) -> list[str]:
        return [r for r in self.layers if r.startswith(prefix)]

    def _put(self, role: str, kind: str, data, world: np.ndarray, **kwargs):
        """Add the layer of ``role``, or give the existing one new data and transform (in place)."""
        transform = L.transform_kwargs(world)
        layer = self.get(role)
        if layer is not None and layer._type_string == kind:
            layer.data = data
            _set_transform(layer, transform)
            for key in ("features",):
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
            return layer
        if layer is not None:
            self.remove([role])
        self._pending.pop(role, None)
        add = getattr(self.viewer, f"add_{kind}")
        layer = add(data, axis_labels=L.AXIS_LABELS, units=L.UNITS, **transform, **kwargs)
        layer.metadata["nemesis_role"] = role
        self._layers[role] = layer
        self._added = True
        return layer

    def raise_overlays(self, force: bool = False) -> None:
        """After a layer was added: the grid lines, the selection and the grid back on top, the
        grid active (hovering shows its features). Nothing to do (and no cost) otherwise."""
        if not (self._added or force):
            return
        self._added = False
        layers = self.viewer.layers
        overlays = [self.get(role) for role in OVERLAY_ROLES]
        overlays = [layer for layer in overlays if layer is not None]
        if list(layers)[-len(overlays):] != overlays if overlays else False:
            for layer in overlays:
                layers.move(layers.index(layer), len(layers))
        grid = self.get("grid")
        if grid is not None and layers.selection.active is not grid:
            layers.selection.active = grid

    # ---- scan and grid ------------------------------------------------------------------------
    def adopt_scan(self, layer) -> None:
        self._layers["scan"] = layer

    def show_grid(self, grid) -> None:
        world = L.grid_world_affine(grid)
        cell_mm = float(np.mean(np.linalg.norm(world[:3, :3], axis=0)))
        from napari.utils.colormaps import DirectLabelColormap

        # transparent: the layer is there for hovering (its features show in the status bar) and
        # picking; the lines and the selection outline are what is drawn
        colormap = DirectLabelColormap(color_dict={None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)})
        lines = self._put(
            "grid_lines", "vectors", L.grid_lattice_vectors(grid.grid_shape), world, name="superpatch grid lines",
            edge_width=_LINE_WIDTH_MM / cell_mm, length=1.0, edge_color="yellow", vector_style="line",
            opacity=0.8,
        )
        lines.edge_width = _LINE_WIDTH_MM / cell_mm
        layer = self._put(
            "grid", "labels", L.grid_ids(grid.grid_shape), world, name="superpatch grid",
            features=L.grid_features(grid.grid_shape), opacity=1.0, colormap=colormap,
        )
        layer.editable = False  # a display of the grid: no brush can repaint superpatch ids
        self.raise_overlays()

    def show_selection(self, grid, index: int | None) -> None:
        layer = self.get("grid")
        if layer is not None:
            layer.selected_label = 0 if index is None else int(index) + 1
        self.show_selection_outline(grid, index)

    def set_grid_features(self, grid_shape, columns: dict[str, np.ndarray], now: bool = False) -> None:
        """The grid layer's features (shown on hover). Applied on the next event-loop turn unless
        ``now``: napari redraws the layer's controls, which should not share a turn (and a stall)
        with the redraw of new results."""
        self._features = (grid_shape, {k: np.asarray(v).copy() for k, v in columns.items()})
        if now:
            self._apply_features()
            return
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, self._apply_features)

    def flush(self) -> None:
        """Apply now what waits for its event-loop turn and a script expects to see (layer
        updates, features, layers to show)."""
        if self._later:
            self._run_later()
        if self._features is not None:
            self._apply_features()
        if self._to_show:
            self._show_waiting()

    def later(self, key: str, update) -> None:
        """Run ``update`` (a change to layers) on the next event-loop turn; a newer update of the
        same ``key`` replaces a waiting one. A changed layer redraws the canvas on the turn after
        the change: called from a handler, the frame (55-90 ms under software OpenGL) and the
        handler's own work would make one stall; apart, the event loop runs in between."""
        first = not self._later
        self._later.pop(key, None)
        self._later[key] = update
        if first:
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, self._run_later)

    def _run_later(self) -> None:
        waiting, self._later = self._later, {}
        if self._alive():
            for update in waiting.values():
                update()
            self.place_overlays()

    def place_overlays(self) -> None:
        """Place the canvas overlays (colorbars) now if a change asked napari to: it would do so
        while drawing the next frame, and an overlay placed there (at a fractional position it
        always finds moved) asks for a second frame, two frames in one stall. Relies on napari's
        private canvas (0.9); without it, nothing happens."""
        canvas = self._vispy_canvas()
        if canvas is not None and getattr(canvas, "_needs_overlay_position_update", False):
            place = getattr(canvas, "_update_overlay_canvas_positions", None)
            if place is not None:
                place()

    def _vispy_canvas(self):
        if self._canvas is None and self._alive():
            self._canvas = qt_canvas(self.viewer)
        return self._canvas

    @property
    def busy(self) -> bool:
        """Layer work is waiting for its event-loop turn."""
        return bool(self._later or self._to_show or self._features is not None or self._adopt_scheduled)

    def settle(self, timeout_s: float = 30.0) -> None:
        """Let the event loop apply the waiting layer work, and draw it, as it would after a
        button's job (scripts and the benchmark then see what a user sees, and time it);
        whatever is left after ``timeout_s`` is applied at once."""
        import time

        from qtpy.QtCore import QEventLoop, QTimer

        end = time.monotonic() + timeout_s
        turns = 2  # and then the turn that draws what the last update changed
        while (self.busy or turns > 0) and time.monotonic() < end and self._alive():
            turns = turns if self.busy else turns - 1
            loop = QEventLoop()
            QTimer.singleShot(5, loop.quit)
            loop.exec()
        self.flush()

    def _apply_features(self) -> None:
        pending, self._features = self._features, None
        grid = self.get("grid") if self.viewer is not None else None
        if pending is not None and grid is not None:
            grid.features = L.grid_features(*pending)

    def set_window(self, preset: str) -> None:
        level, width = L.WINDOW_PRESETS[preset]
        scan = self.get("scan")
        if scan is not None:
            scan.contrast_limits = L.window_limits(level, width)  # linked layers follow

    # ---- heatmaps ------------------------------------------------------------------------------
    def show_probabilities(self, grid, values: np.ndarray, organs: list[str], visible: set[str]) -> None:
        """One heatmap layer per organ. Layers are made for the organs shown (adding a napari layer
        costs the GUI thread a frame or more); the others get theirs when they are ticked, and
        existing ones are updated in place."""
        wanted = {prob_role(o) for o in organs}
        self.remove([r for r in self.roles_with_prefix("prob:") if r not in wanted])
        for k, organ in enumerate(organs):
            if organ in visible or self.get(prob_role(organ)) is not None:
                self.show_heatmap(grid, organ, values[:, k], organ in visible)
        self.raise_overlays()

    def show_heatmap(self, grid, organ: str, values: np.ndarray, visible: bool = True, blank: bool = False) -> None:
        """An organ's heatmap (``blank``: made ahead of its values, hidden, all zero). New values go
        into the layer's array in place: assigning a new array makes napari recompute the extents
        and re-slice every layer."""
        from napari.utils.colormaps import Colormap

        role = prob_role(organ)
        image = L.block_image(values, grid.grid_shape)
        world = L.grid_world_affine(grid)
        layer = self.get(role)
        if layer is not None and layer.data.shape == image.shape:  # the common case: new values only
            layer.data[...] = image
            _set_transform(layer, L.transform_kwargs(world))
            if tuple(layer.contrast_limits) != (0.0, 1.0):
                layer.contrast_limits = (0.0, 1.0)
            if layer.visible != visible:
                layer.visible = visible  # showing a layer slices and redraws it
            elif visible:
                layer.refresh(extent=False, highlight=False)
            layer.metadata[BLANK] = blank
            return
        existed = layer is not None
        rgb = L.ORGAN_COLORS.get(organ, (1.0, 1.0, 1.0))
        layer = self._put(
            role, "image", image, world,
            name=f"P({organ})", colormap=Colormap(L.heatmap_colors(rgb, max_alpha=0.8), name=f"nemesis {organ}"),
            contrast_limits=(0.0, 1.0), opacity=0.45, blending="translucent", interpolation2d="nearest",
            interpolation3d="nearest", visible=visible,
        )
        if existed:
            layer.contrast_limits = (0.0, 1.0)
            _show(layer, visible)
        else:
            _show_colorbar(layer)  # shown while the heatmap is
        layer.metadata[BLANK] = blank

    def show_grid_map(self, role: str, grid, values: np.ndarray, rgb, name: str, limits=(0.0, 1.0),
                      visible: bool | None = None) -> None:
        """Any per-superpatch values as a block heatmap over the grid (e.g. label states), updated
        in place; ``visible``: show or hide it (None: shown when made, then left as it is)."""
        from napari.utils.colormaps import Colormap

        image = L.block_image(values, grid.grid_shape)
        layer = self.get(role)
        if layer is not None and layer.data.shape == image.shape and layer.data.dtype == image.dtype:
            layer.data[...] = image  # a new array would re-slice every layer
            _set_transform(layer, L.transform_kwargs(L.grid_world_affine(grid)))
            if tuple(layer.contrast_limits) != tuple(limits):
                layer.contrast_limits = tuple(limits)
            if visible is not None and layer.visible != visible:
                if visible:
                    self._lift_under_overlays(layer)
                layer.visible = visible
            elif layer.visible:
                layer.refresh(extent=False, highlight=False)
            return
        shown = True if visible is None else bool(visible)
        existed = layer is not None
        layer = self._put(role, "image", image, L.grid_world_affine(grid),
                          name=name, colormap=Colormap(L.heatmap_colors(rgb, max_alpha=0.8), name=f"nemesis {role}"),
                          contrast_limits=tuple(limits), opacity=0.45, blending="translucent",
                          interpolation2d="nearest", interpolation3d="nearest", visible=shown)
        if existed:
            layer.contrast_limits = tuple(limits)
            _show(layer, shown)
        self.raise_overlays()
        if not shown:
            self._warm_later()  # its first show (the first label) then builds no shaders

    def _lift_under_overlays(self, layer) -> None:
        """A map made ahead (hidden) sits below result layers made later; shown, it goes just under
        the grid's overlays, so the error map or a heatmap never covers the label states. One move
        (a scene-graph rebuild) only when it is not there already."""
        layers = self.viewer.layers
        overlays = [lay for lay in (self.get(role) for role in OVERLAY_ROLES) if lay is not None]
        target = len(layers) - len(overlays)
        index = layers.index(layer)
        if index != target - 1:
            layers.move(index, target)

    def set_visible(self, role: str, visible: bool) -> None:
        layer = self.get(role)
        if layer is not None:
            _show(layer, visible)

    def show_error_map(self, grid, rmse_hu: np.ndarray, blank: bool = False) -> None:
        """The per-superpatch masked-patch RMSE (HU) as a block heatmap; updated in place, shown when
        it first holds a value (``blank``: made or cleared ahead of them, hidden)."""
        from napari.utils.colormaps import Colormap

        values = L.block_image(rmse_hu, grid.grid_shape)
        limits = (0.0, 1.0) if blank else _error_limits(values)
        shown = not blank and bool(np.isfinite(values).any())
        existing = self.get("error_map")
        if existing is not None and existing.data.shape == values.shape:  # the common case: new values only
            _fix_range(existing, _ERROR_RANGE)
            existing.data[...] = values
            if blank:
                existing.metadata[BLANK] = True
                _show(existing, False)
            elif shown and existing.metadata.get(BLANK):
                existing.metadata[BLANK] = False
                self._show_later(existing)
            if tuple(existing.contrast_limits) != limits:
                existing.contrast_limits = limits  # redraws
            else:
                existing.refresh(thumbnail=not self._recon_running, extent=False, highlight=False)
            return
        existed = existing is not None
        layer = self._put(
            "error_map", "image", values, L.grid_world_affine(grid), name="reconstruction error map (RMSE HU)",
            colormap=Colormap(_inferno_over_ct(), name="nemesis error"), contrast_limits=limits,
            opacity=0.5, blending="translucent", interpolation2d="nearest", interpolation3d="nearest",
            visible=shown,
        )
        _fix_range(layer, _ERROR_RANGE)
        layer.contrast_limits = limits
        if not existed:
            _show_colorbar(layer)
        _show(layer, shown)
        layer.metadata[BLANK] = not shown
        self.raise_overlays()

    # ---- result layers made ahead of any run ----------------------------------------------------
    def prepare_results(self, grid, organs) -> None:
        """Make the layers a run fills: the four reconstruction layers, the error map and the
        heatmaps of ``organs`` (those shown), hidden and blank, one per event-loop turn. Layers
        already there (an earlier scan's) are blanked and hidden in place."""
        box_world = L.box_world_affine(grid, (0, 0, 0))
        zeros = np.zeros(grid.n, dtype=np.float32)
        makers: dict[str, Any] = {}
        for role in RECON_ROLES:
            makers[role] = lambda role=role: self._make_recon_layer(role, _placeholder(role), box_world)
        for organ in organs:
            makers[prob_role(organ)] = lambda organ=organ: self.show_heatmap(grid, organ, zeros, False, blank=True)
        makers["error_map"] = lambda: self.show_error_map(grid, zeros, blank=True)
        self._recon = None
        for role, make in makers.items():
            layer = self.get(role)
            if layer is None:
                self._pending[role] = make
            elif role in RECON_ROLES:
                self._blank(layer, _placeholder(role), box_world)
            else:
                make()  # the grid may have changed: new blank values and transform, in place
        self._schedule_pending()

    def clear_results(self) -> None:
        """The results are out of date (new weights, a new scan): blank and hide the result layers
        in place (a run never pays for making them again); the attention view goes."""
        self.remove(ATTENTION_ROLES)
        self._recon = None
        self._later.clear()  # updates of the results now out of date
        for role in RECON_ROLES + ("error_map",) + tuple(self.roles_with_prefix("prob:")):
            layer = self.get(role)
            if layer is None:
                continue
            if role in RECON_ROLES:
                self._blank(layer, _placeholder(role), None)
            else:
                layer.metadata[BLANK] = True
                _show(layer, False)

    def _blank(self, layer, data: np.ndarray, world: np.ndarray | None) -> None:
        layer.metadata[BLANK] = True
        _show(layer, False)
        layer.data = data  # frees a whole-scan array; hidden, so nothing is sliced or drawn
        if world is not None:
            _set_transform(layer, L.transform_kwargs(world))

    def _show_later(self, layer) -> None:
        """Show a layer on the next event-loop turn: its first frame (a new visual, a colorbar)
        then does not share a stall with the redraw the current turn already asked for."""
        self._to_show.append(layer)
        if len(self._to_show) == 1:
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, self._show_waiting)

    def _show_waiting(self) -> None:
        waiting, self._to_show = self._to_show, []
        if self._alive():
            for layer in waiting:
                if layer in self.viewer.layers and not layer.metadata.get(BLANK):
                    _show(layer, True)
            self.place_overlays()

    @property
    def pending(self) -> list[str]:
        """Roles whose layers are still to be made (one per event-loop turn), then ``warm-up``
        until they were drawn once."""
        return list(self._pending) + (["warm-up"] if self._warming else [])

    def _schedule_pending(self) -> None:
        if self._pending:
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, self._make_next_pending)

    def _make_next_pending(self) -> None:
        if not self._pending or not self._alive():
            return
        role = next(iter(self._pending))
        self._pending.pop(role)()
        self._link_contrast()
        self.raise_overlays()
        self.place_overlays()
        if self._pending:
            self._schedule_pending()
        else:
            from qtpy.QtCore import QTimer

            self._warming = True
            QTimer.singleShot(0, self._warm_up)

    def _warm_up(self) -> None:
        """Draw each blank result layer once, off screen, one per event-loop turn, the first with
        the characters colorbar ticks use: a visual's first frame builds and compiles its shaders,
        and each new character of text is rendered into the shared glyph atlas (0.1-0.3 s in all
        under software OpenGL), which the frame showing a run's first result should not pay.

        ``_warming`` stays set while this runs: the screenshot handles events, and a warm-up
        started meanwhile would save (and later restore) the text overlay shown here."""
        self._warming = False
        if not self._alive():
            return
        roles = RECON_ROLES + ("error_map",) + tuple(self.roles_with_prefix("prob:"))
        layers = [self.get(role) for role in roles]
        layers = [lay for lay in layers if lay is not None and lay.metadata.get(BLANK)]
        layers += [self.get(role) for role in self.roles_with_prefix("map:")]  # hidden while empty
        layers = [lay for lay in layers if lay is not None and not lay.visible and not lay.metadata.get(_WARM)]
        if not layers:
            return
        layer, text = layers[0], _text_overlay(self.viewer)  # shares the colorbars' font
        saved = (text.visible, text.text) if text is not None and not self._warmed_text else None
        self._warming = True
        try:
            layer.visible = True
            if saved is not None:
                text.text, text.visible = "0123456789.-+e", True
            self.viewer.screenshot(canvas_only=True, flash=False)
        except Exception:  # no canvas (a headless viewer): nothing to warm
            return
        finally:
            self._warming = False
            layer.visible = False
            if saved is not None:
                text.visible, text.text = saved
            self.place_overlays()
        self._warmed_text = True
        layer.metadata[_WARM] = True
        if len(layers) > 1:
            from qtpy.QtCore import QTimer

            self._warming = True
            QTimer.singleShot(0, self._warm_up)

    def _warm_later(self) -> None:
        if not (self._warming or self._pending):  # else the running warm-up (or the one to come) takes it
            from qtpy.QtCore import QTimer

            self._warming = True
            QTimer.singleShot(0, self._warm_up)

    def _make_now(self, roles) -> None:
        for role in roles:
            make = self._pending.pop(role, None)
            if make is not None:
                make()
        self._link_contrast()
        self.raise_overlays()

    def _alive(self) -> bool:
        viewer = self.viewer
        window = getattr(viewer, "window", None) if viewer is not None else None
        return viewer is not None and (window is None or qt_window(viewer) is not None)

    # ---- reconstruction ------------------------------------------------------------------------
    def begin_reconstruction(self, shape, world: np.ndarray) -> ReconstructionTargets:
        """The arrays a reconstruction of ``shape`` placed by ``world`` writes into: the layers' own
        where their shape fits, else new ones, readied (reset or allocated) by the job's thread.
        The layers take them, and the new placement, at their next redraw (:meth:`refresh`)."""
        self._make_now(RECON_ROLES)
        for role in RECON_ROLES:  # removed by the user since: made again (the only time a run adds one)
            if self.get(role) is None:
                self._make_recon_layer(role, _placeholder(role), world)
        self._link_contrast()
        self.raise_overlays()
        reuse = {}
        for role in RECON_ROLES:
            layer = self.get(role)
            if not layer.metadata.get(BLANK) and tuple(layer.data.shape) == tuple(shape):
                reuse[role] = layer.data
        targets = ReconstructionTargets(shape, {r: 0.0 if r == "abs_error" else EMPTY_HU for r in RECON_ROLES}, reuse)
        self._recon = (targets, np.asarray(world), set())
        self._recon_running = True
        return targets

    def _adopt(self, everything: bool = False) -> None:
        """Give the reconstruction layers the run's arrays and placement once the job readied them:
        the shown ones now (a blank reconstruction layer is shown then), the hidden ones one per
        later event-loop turn (each new array re-computes the viewer's extents), or ``everything``."""
        if self._recon is None or self._recon[0].arrays is None:
            return
        targets, world, adopted = self._recon
        for role, array in targets.arrays.items():
            layer = self.get(role)
            if role in adopted or layer is None:
                continue
            shown = layer.visible or (role == "reconstruction" and layer.metadata.get(BLANK))
            if everything or shown:
                self._adopt_one(layer, role, array, world)
                adopted.add(role)
        self._adopt_later()

    def _adopt_later(self) -> None:
        if self._recon is None:
            return
        targets, world, adopted = self._recon
        waiting = [r for r in targets.arrays if r not in adopted and self.get(r) is not None]
        if not waiting:
            self._recon = None
            return
        if self._adopt_scheduled:
            return
        from qtpy.QtCore import QTimer

        def next_one(recon=self._recon) -> None:
            self._adopt_scheduled = False
            if self._recon is not recon or not self._alive():
                return
            role = next((r for r in targets.arrays if r not in adopted and self.get(r) is not None), None)
            if role is not None:
                self._adopt_one(self.get(role), role, targets.arrays[role], world)
                adopted.add(role)
                self.place_overlays()
            self._adopt_later()

        self._adopt_scheduled = True
        QTimer.singleShot(0, next_one)

    def _adopt_one(self, layer, role: str, array: np.ndarray, world: np.ndarray) -> None:
        if layer.data is not array:
            layer.data = array
        _set_transform(layer, L.transform_kwargs(world))
        if layer.metadata.get(BLANK):
            layer.metadata[BLANK] = False
            if role == "reconstruction":
                self._show_later(layer)  # showing slices it and rebuilds the scene: a turn of its own
            else:
                _show(layer, False)

    def finish_layers(self) -> None:
        """The reconstruction ended: the layers take its arrays if they have not yet, and the next
        :meth:`refresh` brings their thumbnails up to date."""
        self._adopt(everything=True)
        self._recon = None  # a job that failed before readying its arrays leaves the layers as they were
        self._recon_running = False

    def _make_recon_layer(self, role: str, data: np.ndarray, world: np.ndarray):
        names = {"noisy": "noisy input", "masked": "masked input", "reconstruction": "reconstruction",
                 "abs_error": "absolute error (HU)"}
        if role == "abs_error":
            kwargs = {"colormap": "inferno", "contrast_limits": (0.0, 200.0)}
        else:
            scan = self.get("scan")
            limits = tuple(scan.contrast_limits) if scan is not None else L.window_limits(
                *L.WINDOW_PRESETS[L.DEFAULT_WINDOW])
            kwargs = {"colormap": "gray", "contrast_limits": limits}
        layer = self._put(role, "image", data, world, name=names[role], visible=False, **kwargs)
        layer.metadata[BLANK] = True
        return layer

    def paste(self, role: str, slices, array: np.ndarray) -> None:
        layer = self.get(role)
        if layer is not None:
            layer.data[slices] = array

    def refresh(self, roles) -> None:
        """Redraw these layers (hidden ones cost nothing). While a reconstruction runs, without
        thumbnails: a new thumbnail repaints the layer list, which shares the frame's stall."""
        if any(role in RECON_ROLES for role in roles):
            self._adopt()
        for role in roles:
            layer = self.get(role)
            if layer is not None:
                layer.refresh(thumbnail=not self._recon_running, extent=False, highlight=False)

    def _link_contrast(self) -> None:
        from napari.experimental import link_layers, unlink_layers

        group = [self.get(r) for r in ("scan", "noisy", "masked", "reconstruction")]
        group = [g for g in group if g is not None]
        if [id(g) for g in group] == [id(g) for g in self._linked]:
            return
        if self._linked:
            try:
                unlink_layers(self._linked, ("contrast_limits",))
            except (KeyError, ValueError):  # a layer was removed meanwhile
                pass
        if len(group) > 1:
            link_layers(group, ("contrast_limits",))
        self._linked = group

    # ---- attention ----------------------------------------------------------------------------
    def show_attention(self, plane: np.ndarray, axis: np.ndarray, world: np.ndarray) -> None:
        from napari.utils.colormaps import Colormap

        for role, values, rgb, name in (("attention_plane", plane, (1.0, 0.3, 0.1), "attention: plane stream"),
                                        ("attention_axis", axis, (0.2, 0.9, 0.3), "attention: axis stream")):
            top = float(np.max(values)) if values.size and np.max(values) > 0 else 1.0
            layer = self._put(
                role, "image", np.asarray(values, dtype=np.float32), world, name=name,
                colormap=Colormap(L.heatmap_colors(rgb, max_alpha=0.95), name=f"nemesis {role}"),
                contrast_limits=(0.0, top), opacity=0.8, blending="translucent", interpolation2d="nearest",
                interpolation3d="nearest",
            )
            layer.contrast_limits = (0.0, top)
        self.raise_overlays()

    # ---- camera -------------------------------------------------------------------------------
    def orient_camera(self) -> None:
        """Radiological orientation: superior up when z is the vertical screen axis (coronal,
        sagittal); anterior up in axial slices (y increases downward)."""
        viewer = self.viewer
        if viewer.dims.ndisplay != 2 or viewer.dims.ndim < 3:
            return
        vertical = viewer.dims.displayed[0] - (viewer.dims.ndim - 3)
        wanted = ("up", "right") if vertical == 0 else ("down", "right")
        camera = viewer_camera(viewer)
        if tuple(camera.orientation2d) != wanted:
            camera.orientation2d = wanted

    def centre_on(self, world_zyx, camera: bool = True) -> None:
        """Move the slice through ``world_zyx`` (LPS mm) and, with ``camera``, centre the view on it."""
        viewer = self.viewer
        point = list(viewer.dims.point)
        nd = len(point)
        for axis in range(3):
            point[nd - 3 + axis] = float(world_zyx[axis])
        for axis in viewer.dims.not_displayed:
            viewer.dims.set_point(axis, point[axis])
        if camera:
            viewer_camera(viewer).center = tuple(point[a] for a in viewer.dims.displayed)

    # ---- the selection outline ------------------------------------------------------------------
    def show_selection_outline(self, grid, index: int | None) -> None:
        """The selected superpatch's box edges, drawn for the current view: in 2D the four edges
        in the displayed plane, placed at the box's centre along the hidden axis so napari shows
        them exactly in the slices that cut the box; in 3D all twelve edges."""
        if index is None:
            self.remove(["selection"])
            return
        viewer = self.viewer
        ndim = viewer.dims.ndim
        hidden = None
        if viewer.dims.ndisplay == 2:
            hidden_axes = [a - (ndim - 3) for a in viewer.dims.not_displayed if a >= ndim - 3]
            hidden = hidden_axes[0] if hidden_axes else 0
        vectors = L.box_outline_vectors(grid.grid_index(index), hidden)
        world = L.grid_world_affine(grid)
        cell_mm = float(np.mean(np.linalg.norm(world[:3, :3], axis=0)))
        layer = self._put("selection", "vectors", vectors, world, name="selected superpatch",
                          edge_width=_SELECTION_WIDTH_MM / cell_mm, length=1.0, edge_color=_SELECTION_COLOR,
                          vector_style="line", opacity=1.0)
        layer.edge_width = _SELECTION_WIDTH_MM / cell_mm
        self.raise_overlays()


def _text_overlay(viewer):
    """The canvas's text overlay (napari 0.9: ``viewer.canvas.overlays.text``), or None."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    text = getattr(overlays, "text", None) if overlays is not None else None
    return text if text is not None else getattr(viewer, "text_overlay", None)


def _show(layer, visible: bool) -> None:
    """Set a layer's visibility only if it changes: each assignment re-lays the canvas overlays
    (about 15 ms under software OpenGL) even when nothing changes."""
    if layer.visible != bool(visible):
        layer.visible = bool(visible)


def _show_colorbar(layer) -> None:
    """Show the layer's colorbar at the canvas's top left, where colorbars stack downwards: their
    place then does not depend on the width of their tick labels. At the top right (napari's
    default) they sit side by side from the right edge, so new limits with wider digits move
    them, and napari moves overlays while it draws a frame, which asks for a second frame."""
    layer.colorbar.position = "top_left"
    layer.colorbar.visible = True


def _fix_range(layer, limits_range: tuple[float, float]) -> None:
    """Give a layer the whole range its contrast limits can take, once: napari widens the range
    to fit new limits, and each change re-lays out the layer controls' slider (and with it the
    dock beside the canvas, which repaints the canvas a second time in the same stall)."""
    if tuple(layer.contrast_limits_range) != tuple(limits_range):
        layer.contrast_limits_range = limits_range


def _placeholder(role: str) -> np.ndarray:
    """A reconstruction layer's data before any run: one voxel (air, or no error)."""
    return np.full((1, 1, 1), 0.0 if role == "abs_error" else EMPTY_HU, dtype=np.float32)


def _set_transform(layer, transform: dict[str, Any]) -> None:
    """Give a layer a new data -> world transform, touching only what changes (each assignment
    makes napari re-slice and redraw)."""
    nd = layer.ndim
    if "affine" in transform:
        wanted = {"scale": (1.0,) * nd, "translate": (0.0,) * nd, "affine": np.asarray(transform["affine"])}
    else:
        wanted = {"affine": np.eye(nd + 1), "scale": transform["scale"], "translate": transform["translate"]}
    for name, value in wanted.items():
        current = layer.affine.affine_matrix if name == "affine" else getattr(layer, name)
        if not np.allclose(np.asarray(current, dtype=float), np.asarray(value, dtype=float), rtol=0, atol=1e-12):
            setattr(layer, name, value)


def _error_limits(values: np.ndarray) -> tuple[float, float]:
    """From the least to the most surprising superpatch: the least one stays transparent."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return max(0.0, lo - 1.0), lo + 1.0
    return lo, hi


def _inferno_over_ct() -> np.ndarray:
    """inferno from transparent (0) to opaque yellow (max): low error leaves the anatomy visible."""
    stops = np.array([[0.0, 0.0, 0.0], [0.34, 0.06, 0.43], [0.73, 0.21, 0.33], [0.98, 0.55, 0.04],
                      [0.99, 1.0, 0.64]])
    alpha = np.array([0.0, 0.5, 0.7, 0.85, 0.95])
    return np.column_stack([stops, alpha]).astype(np.float32)


def viewer_camera(viewer):
    """napari's camera: ``viewer.scene.camera`` since 0.9 (``viewer.camera`` warns), else the old one."""
    scene = getattr(viewer, "scene", None)
    return getattr(scene, "camera", None) or viewer.camera
