"""The kernel's layer handling for one viewer: layers by role, made once, then updated in place.

Runs on the GUI thread only (workers hand their results over through signals). Re-running a job
assigns new data to the existing layers instead of removing and re-adding them, so the user's
contrast, opacity, visibility and layer order survive. The numbers come from :mod:`._layers`;
which roles exist is the features' business (each feature's ``layers.py`` puts its own roles here:
``grid``, ``grid_lines``, ``selection``, ``prob:<organ>``, ``patch:<organ>``, ``noisy`` ... ``error_map``,
``attention_plane`` ...); the scene only knows ``scan``, the overlay roles kept on top, the roles
whose contrast follows the scan's, and the roles of results (blanked when results go stale).

Adding a napari layer costs the GUI thread 100-300 ms (its controls, its visual, a frame) on a
machine without a GPU, so features make the layers a run fills ahead (:meth:`Scene.make_ahead`):
hidden, blank, one per event-loop turn, then drawn once off screen (:meth:`_warm_up`: shaders and
glyphs built before the first result needs them). A changed layer redraws the canvas on the turn
after the change, so handlers hand layer changes to :meth:`Scene.later`. All of this goes through
the one queue of :mod:`._turns`.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np

from . import _layers as L
from ._napari_private import added_inactive, ask_frame, draw_offscreen, layer_type, no_frame_asked, paint_after, place_canvas_overlays, qt_canvas, qt_window, text_overlay, tool_overlays_when_used, viewer_camera
from ._turns import TurnQueue

#: ``layer.metadata`` key: the layer was made (or cleared) ahead of a result and holds none yet.
BLANK = "nemesis_blank"
_WARM = "nemesis_drawn_once"  # its visual was drawn once (shaders built)
ROLE = "nemesis_role"
_AHEAD = ("make:", "warm")  # queue keys of work done ahead of any result
_COLORBAR = "colorbar:"  # queue key of a layer's colorbar: it outlives the layer's results
_OPENING = "open"  # queue keys of a scan's opening (its layer added, then shown): not a result either
_ACTIVATE = "activate"  # queue key of making the topmost overlay the active layer
_NOT_RESULTS = (*_AHEAD, _COLORBAR, _OPENING, _ACTIVATE)  # waiting work that stale results leave in place
#: The characters colorbar ticks use, a few per turn (each new one costs 8-15 ms to render).
_GLYPH_CHUNKS = ("0123", "4567", "89.-+e")


#: napari's ``add_image`` defaults that its ``Image`` layer does not share.
_IMAGE_DEFAULTS = {"colormap": "gray", "blending": "translucent_no_depth"}


def new_layer(kind: str, data, **kwargs):
    """A napari layer of ``kind`` ("image", "labels", "vectors", ...) made as ``viewer.add_<kind>``
    makes it, not yet in any viewer (:meth:`Scene.insert` puts it where it belongs)."""
    import napari.layers

    if kind == "image":
        kwargs = {**kwargs, **{k: v for k, v in _IMAGE_DEFAULTS.items() if kwargs.get(k) is None}}
    layer = getattr(napari.layers, kind.capitalize())(data, **kwargs)
    if kind == "labels":
        tool_overlays_when_used(layer)  # their visuals when the user first paints, not now
    return layer


class Scene:
    """Add or update a layer by role; nothing else touches the session's layers."""

    def __init__(self, viewer) -> None:
        self._viewer = weakref.ref(viewer)
        self._layers: dict[str, Any] = {}
        self._linked: list[Any] = []
        self._added = False
        self.turns = TurnQueue(self._alive, self.place_overlays)
        self.overlay_roles: list[str] = []  # kept on top, in this order (the last topmost)
        self.contrast_roles: list[str] = ["scan"]  # contrast limits linked with the scan's
        self.result_clearers: list[Callable[[], None]] = []  # features' "results are stale" hooks
        self._makers: dict[str, Callable[[], Any]] = {}
        self._canvas = None
        self._glyphs_left = list(_GLYPH_CHUNKS)  # the colorbars' characters still to render

    # ---- bookkeeping ---------------------------------------------------------------------------
    @property
    def viewer(self):
        return self._viewer()

    @property
    def layers(self) -> dict[str, Any]:
        """The layers this scene owns and that are still in the viewer, by role."""
        viewer = self.viewer
        if viewer is None:
            return {}
        self._layers = {r: lay for r, lay in self._layers.items() if lay in viewer.layers}
        return dict(self._layers)

    def get(self, role: str):
        layer = self._layers.get(role)
        viewer = self.viewer
        return layer if layer is not None and viewer is not None and layer in viewer.layers else None

    def remove(self, roles) -> None:
        for role in list(roles):
            layer = self._layers.pop(role, None)
            if layer is not None and self.viewer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)

    def roles_with_prefix(self, prefix: str) -> list[str]:
        return [r for r in self.layers if r.startswith(prefix)]

    def adopt(self, role: str, layer) -> None:
        """A layer made elsewhere (the scan, opened by a reader) plays ``role``."""
        self._layers[role] = layer

    def put(self, role: str, kind: str, data, world: np.ndarray, **kwargs):
        """Add the layer of ``role``, or give the existing one new data and transform (in place)."""
        transform = L.transform_kwargs(world)
        layer = self.get(role)
        if layer is not None and layer_type(layer) == kind:
            layer.data = data
            set_transform(layer, transform)
            if "features" in kwargs:
                layer.features = kwargs["features"]
            return layer
        if layer is not None:
            self.remove([role])
        self.turns.drop(f"make:{role}")
        layer = new_layer(kind, data, axis_labels=L.AXIS_LABELS, units=L.UNITS, **transform, **kwargs)
        layer.metadata[ROLE] = role
        self.insert(layer, role)
        self._layers[role] = layer
        self._added = True
        return layer

    def insert(self, layer, role: str | None = None, index: int | None = None) -> None:
        """Add a new layer where it belongs: at ``index`` if given (a scan: 0, under everything), an
        overlay at its place among the overlays, any other layer just under them. napari rebuilds
        the canvas's scene graph and every layer's overlays for each insert and each move (30-50 ms
        apiece here): appended on top, then the overlays moved back above it, a layer cost four. It
        does not become the active layer (that is :meth:`raise_overlays`' business)."""
        layers = self.viewer.layers
        if index is None:
            roles = self.overlay_roles
            above = roles[roles.index(role) + 1:] if role in roles else roles
            slots = [layers.index(lay) for lay in (self.get(r) for r in above) if lay is not None]
            index = min(slots) if slots else len(layers)
        with paint_after(self.viewer), added_inactive(self.viewer):
            layers.insert(index, layer)

    def raise_overlays(self, force: bool = False) -> None:
        """After a layer was added: the overlays back on top, the topmost active (hovering shows
        its features). Nothing to do (and no cost) otherwise."""
        if not (self._added or force) or self.viewer is None:
            return
        self._added = False
        layers = self.viewer.layers
        overlays = [lay for lay in (self.get(role) for role in self.overlay_roles) if lay is not None]
        if overlays and list(layers)[-len(overlays):] != overlays:
            for layer in overlays:
                layers.move(layers.index(layer), len(layers))
        if self._topmost_to_activate() is not None:
            self.turns.step(_ACTIVATE, self._activate_topmost)

    def _topmost_to_activate(self):
        """The topmost overlay's layer when it exists and is not the active layer yet. Only that one:
        making the others active first (the grid's lines before its picking layer) swapped napari's
        layer controls once more, a relayout and a repaint of the window each (60-100 ms here)."""
        topmost = self.get(self.overlay_roles[-1]) if self.overlay_roles else None
        if topmost is None or self.viewer.layers.selection.active is topmost or not self._can_activate():
            return None
        return topmost

    def _activate_topmost(self) -> None:
        """On a turn of its own: napari lays out the new active layer's controls beside the canvas,
        and the window is laid out and repainted for it, a stall as long as the layer's making."""
        if not self._alive():
            return
        topmost = self._topmost_to_activate()
        if topmost is not None:
            with paint_after(self.viewer):  # other layer controls beside the canvas can resize it
                self.viewer.layers.selection.active = topmost

    def _can_activate(self) -> bool:
        """Making a layer active makes napari read its value under the cursor; in 3D, before the mouse
        has moved over the canvas, napari's cursor has no view direction and that read fails
        ("len() of unsized object"). Then the active layer is left as it is."""
        viewer = self.viewer
        return viewer.dims.ndisplay == 2 or getattr(viewer.cursor, "view_direction", None) is not None

    def lift_under_overlays(self, layer) -> None:
        """Move a layer made earlier just under the overlays (one scene-graph rebuild, only when it
        is not there already): a map shown now covers the result layers made after it."""
        layers = self.viewer.layers
        overlays = [lay for lay in (self.get(role) for role in self.overlay_roles) if lay is not None]
        target = len(layers) - len(overlays)
        index = layers.index(layer)
        if index != target - 1:
            layers.move(index, target)

    def set_visible(self, role: str, visible: bool) -> None:
        layer = self.get(role)
        if layer is not None:
            show(layer, visible)

    # ---- the one next-turn queue -----------------------------------------------------------------
    def later(self, key: str, update: Callable[[], None]) -> None:
        """Run ``update`` (a change to layers) on the next event-loop turn; a newer update of the
        same ``key`` replaces a waiting one. Called from a handler, the canvas's frame and the
        handler's own work would make one stall; apart, the event loop runs in between."""
        self.turns.later(key, update)

    def show_later(self, layer) -> None:
        """Show a layer on the next event-loop turn: its first frame (a new visual, a colorbar)
        then does not share a stall with the redraw the current turn already asked for."""

        def show_it() -> None:
            if layer in self.viewer.layers and not layer.metadata.get(BLANK):
                show(layer, True)

        self.turns.later(f"show:{id(layer)}", show_it)

    def flush(self) -> None:
        """Apply now what waits for its event-loop turn and a script expects to see."""
        self.turns.flush()

    @property
    def busy(self) -> bool:
        """Layer work a script waits for is queued (making layers ahead and warming them up are not)."""
        return any(not k.startswith(_AHEAD) for k in self.turns.waiting(""))

    @property
    def pending(self) -> list[str]:
        """Roles whose layers are still to be made (one per event-loop turn), then ``warm-up``
        until they were drawn once."""
        made = [k[len("make:"):] for k in self.turns.waiting("make:")]
        return made + (["warm-up"] if self.turns.waiting("warm") else [])

    def settle(self, timeout_s: float = 30.0) -> None:
        """Let the event loop apply the waiting layer work, and draw it, as it would after a
        button's job (scripts and the benchmark then see what a user sees, and time it);
        whatever is left after ``timeout_s`` is applied at once."""
        from qtpy.QtCore import QEventLoop, QTimer

        end = time.monotonic() + timeout_s
        turns = 2  # and then the turn that draws what the last update changed
        while (self.busy or turns > 0) and time.monotonic() < end and self._alive():
            turns = turns if self.busy else turns - 1
            loop = QEventLoop()
            QTimer.singleShot(5, loop.quit)
            loop.exec()
        self.flush()

    def clear_results(self) -> None:
        """The results are out of date (new weights, a new scan): waiting updates are dropped and
        every feature blanks and hides its result layers in place (no run pays for making them
        again)."""
        for key in [k for k in self.turns.waiting("") if not k.startswith(_NOT_RESULTS)]:
            self.turns.drop(key)
        for clear in list(self.result_clearers):
            clear()

    # ---- layers made ahead of any result ----------------------------------------------------------
    def make_ahead(self, role: str, make: Callable[[], Any]) -> None:
        """Make ``role``'s layer on a later event-loop turn of its own (hidden, blank), then draw it
        once off screen; :meth:`make_now` makes it at once when a run needs it first."""
        self._makers[role] = make

        def made() -> None:
            with self.unseen():
                make()
                self.link_contrast()
                self.raise_overlays()
            if not self.turns.waiting("make:"):
                self.warm_later()

        self.turns.step(f"make:{role}", made)

    @contextmanager
    def unseen(self):
        """For work that changes nothing on the canvas (a layer made hidden or transparent, the
        overlays put back on top of it): no frame is asked for, where napari would repaint the whole
        canvas for it on the next turn (60-100 ms under software OpenGL). Should the sliders' range
        change meanwhile, the canvas gets its frame."""
        viewer = self.viewer
        if viewer is None:
            yield
            return
        before = tuple(viewer.dims.range)
        with no_frame_asked(viewer):
            yield
        if self._alive() and tuple(viewer.dims.range) != before:
            ask_frame(viewer)

    def make_now(self, roles) -> None:
        for role in roles:
            key = f"make:{role}"
            if key in self.turns.waiting("make:"):
                self.turns.drop(key)
                self._makers[role]()
        self.link_contrast()
        self.raise_overlays()

    def blank(self, layer, data: np.ndarray | None = None, world: np.ndarray | None = None) -> None:
        """Hide a layer and mark it as holding no result (``data``: a small array instead of a
        whole-scan one, freed; hidden, so nothing is sliced or drawn)."""
        layer.metadata[BLANK] = True
        show(layer, False)
        if data is not None:
            layer.data = data
        if world is not None:
            set_transform(layer, L.transform_kwargs(world))

    def colorbar_for(self, layer) -> None:
        """The layer's colorbar (:func:`show_colorbar`): at once for a shown layer; for a layer made
        ahead, hidden, on a turn of its own (napari builds a colorbar's visual and its text there
        and then: 60-100 ms, which the turn that added the layer already spent once)."""
        if layer.visible:
            show_colorbar(layer)
        else:
            self.turns.step(f"{_COLORBAR}{id(layer)}", lambda: show_colorbar(layer) if self._alive() else None)

    def warm_later(self) -> None:
        """Draw the hidden blank layers once, off screen, on later turns (see :meth:`_warm_up`)."""
        self.turns.step("warm", self._warm_up)

    def _warm_up(self) -> None:
        """Draw one hidden blank layer once, off screen (a small buffer), per event-loop turn, after
        the characters colorbar ticks use, a few a turn: a visual's first frame builds and compiles
        its shaders, and each new character of text is rendered into the shared glyph atlas
        (0.1-0.3 s in all under software OpenGL), which the frame showing a run's first result
        should not pay."""
        if not self._alive():
            return
        layers = [lay for lay in self.layers.values()
                  if lay.metadata.get(BLANK) and not lay.visible and not lay.metadata.get(_WARM)]
        if not layers:
            return
        layer, text = layers[0], text_overlay(self.viewer)  # shares the colorbars' font
        glyphs = self._glyphs_left[0] if text is not None and self._glyphs_left else None
        saved = (text.visible, text.text) if glyphs is not None else None
        with no_frame_asked(self.viewer):  # shown, drawn, hidden: the canvas is as it was
            try:
                if glyphs is not None:  # the glyphs first, a few a turn, then one layer a turn
                    text.text, text.visible = glyphs, True
                else:
                    layer.visible = True
                if not draw_offscreen(self.viewer):
                    return  # no canvas (a headless viewer): nothing to warm
            except Exception:  # a canvas that cannot draw off screen: nothing to warm
                return
            finally:
                layer.visible = False
                if saved is not None:
                    text.visible, text.text = saved
        self.place_overlays()
        if glyphs is not None:
            self._glyphs_left.pop(0)
        else:
            layer.metadata[_WARM] = True
        if glyphs is not None or len(layers) > 1:
            self.warm_later()

    # ---- shared display helpers -----------------------------------------------------------------
    def block_map(self, role: str, grid, values: np.ndarray, colormap, name: str, limits=(0.0, 1.0),
                  visible: bool | None = None, lift: bool = False, **kwargs):
        """Per-superpatch values as a block image over the grid, clipped to the scan, updated in
        place; ``visible``: show or hide it (None: shown when made, then as the user left it);
        ``lift``: when it is shown, it goes just under the overlays (above results made after it).
        Returns the layer."""
        image, world = L.block_image_clipped(values, grid)
        return self.image_map(role, image, world, colormap, name, limits, visible, lift, **kwargs)

    def image_map(self, role: str, image: np.ndarray, world: np.ndarray, colormap, name: str, limits=(0.0, 1.0),
                  visible: bool | None = None, lift: bool = False, **kwargs):
        """:meth:`block_map` for a block image already built (e.g. ``L.patch_block_image_clipped``:
        one block per patch): the layer of ``role`` given ``image`` and its world matrix, in place
        when the shape and dtype allow."""
        layer = self.get(role)
        if layer is not None and layer.data.shape == image.shape and layer.data.dtype == image.dtype:
            layer.data[...] = image  # a new array would re-slice every layer
            set_transform(layer, L.transform_kwargs(world))
            if tuple(layer.contrast_limits) != tuple(limits):
                layer.contrast_limits = tuple(limits)
            if visible is not None and layer.visible != visible:
                if visible and lift:
                    self.lift_under_overlays(layer)
                layer.visible = visible
            elif layer.visible:
                layer.refresh(extent=False, highlight=False)
            return layer
        shown = True if visible is None else bool(visible)
        existed = layer is not None
        options = {"opacity": 0.45, "blending": "translucent", "interpolation2d": "nearest",
                   "interpolation3d": "nearest", **kwargs}
        layer = self.put(role, "image", image, world, name=name, colormap=colormap,
                         contrast_limits=tuple(limits), visible=shown, **options)
        if existed:
            layer.contrast_limits = tuple(limits)
            show(layer, shown)
        self.raise_overlays()
        if not shown:
            self.warm_later()
        return layer

    def place_overlays(self) -> None:
        place_canvas_overlays(self._vispy_canvas())

    def _vispy_canvas(self):
        if self._canvas is None and self._alive():
            self._canvas = qt_canvas(self.viewer)
        return self._canvas

    def set_window(self, level: float, width: float) -> None:
        scan = self.get("scan")
        if scan is not None:
            scan.contrast_limits = L.window_limits(level, width)  # linked layers follow

    def link_contrast(self) -> None:
        from napari.experimental import link_layers, unlink_layers

        group = [lay for lay in (self.get(r) for r in self.contrast_roles) if lay is not None]
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

    def _alive(self) -> bool:
        viewer = self.viewer
        window = getattr(viewer, "window", None) if viewer is not None else None
        return viewer is not None and (window is None or qt_window(viewer) is not None)

    # ---- camera -------------------------------------------------------------------------------
    def orient_camera(self) -> None:
        """Radiological orientation (see :func:`orient_camera`)."""
        if self.viewer is not None:
            orient_camera(self.viewer)

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

    def fit_to(self, layer) -> None:
        """Camera and slice on ``layer`` alone: zoomed to fit it, the slider in its middle."""
        viewer = self.viewer
        if viewer is None or layer not in viewer.layers:
            return
        try:
            viewer.reset_view(layers=[layer])
        except TypeError:  # an older napari: fit every layer
            viewer.reset_view()
        lo, hi = np.asarray(layer.extent.world[0], dtype=float), np.asarray(layer.extent.world[1], dtype=float)
        centre = (lo + hi) / 2.0
        nd = viewer.dims.ndim
        for axis in viewer.dims.not_displayed:
            k = axis - (nd - len(centre))
            if 0 <= k < len(centre):
                viewer.dims.set_point(axis, float(centre[k]))
        orient_camera(viewer)


def orient_camera(viewer) -> None:
    """Radiological orientation: superior up when z is the vertical screen axis (coronal,
    sagittal); anterior up in axial slices (y increases downward)."""
    if viewer.dims.ndisplay != 2 or viewer.dims.ndim < 3:
        return
    vertical = viewer.dims.displayed[0] - (viewer.dims.ndim - 3)
    wanted = ("up", "right") if vertical == 0 else ("down", "right")
    camera = viewer_camera(viewer)
    if tuple(str(getattr(o, "value", o)) for o in camera.orientation2d) != wanted:
        camera.orientation2d = wanted


def show(layer, visible: bool) -> None:
    """Set a layer's visibility only if it changes: each assignment re-lays the canvas overlays
    (about 15 ms under software OpenGL) even when nothing changes."""
    if layer.visible != bool(visible):
        layer.visible = bool(visible)


def show_colorbar(layer) -> None:
    """Show the layer's colorbar at the canvas's top left, where colorbars stack downwards: their
    place then does not depend on the width of their tick labels. At the top right (napari's
    default) they sit side by side from the right edge, so new limits with wider digits move
    them, and napari moves overlays while it draws a frame, which asks for a second frame."""
    layer.colorbar.position = "top_left"
    layer.colorbar.visible = True


def fix_range(layer, limits_range: tuple[float, float]) -> None:
    """Give a layer the whole range its contrast limits can take, once: napari widens the range
    to fit new limits, and each change re-lays out the layer controls' slider (and with it the
    dock beside the canvas, which repaints the canvas a second time in the same stall)."""
    if tuple(layer.contrast_limits_range) != tuple(limits_range):
        layer.contrast_limits_range = limits_range


def set_transform(layer, transform: dict[str, Any]) -> None:
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


def heatmap(rgb, name: str, max_alpha: float = 0.8):
    """A colormap from transparent to ``rgb``."""
    from napari.utils.colormaps import Colormap

    return Colormap(L.heatmap_colors(rgb, max_alpha=max_alpha), name=name)
