"""What radiologists expect of a CT viewer: head-up coronal and sagittal views, orientation
markers, a scale bar in mm, window presets and window/level by dragging with the right mouse
button (horizontal: width, vertical: level), with a live readout on the canvas and in the grid dock.

:func:`install_for_viewer` works without a session (the reader calls it, so a scan opened with
napari's File > Open, before any NEMESIS dock, is shown head-up and with its markers).
"""

from __future__ import annotations

import math
import weakref

from psygnal import Signal, SignalGroup

from ... import _layers as L
from ..._scene import orient_camera
from ....errors import NemesisInputError
from .markers import OrientationMarkers

#: Right-drag sensitivity: the width doubles every this many pixels to the right; the level moves
#: by this share of the width per pixel up.
WIDTH_DOUBLING_PX = 150.0
LEVEL_PER_PX = 1.0 / 300.0
MIN_WIDTH_HU = 1.0

_INSTALLED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def install_for_viewer(viewer) -> OrientationMarkers | None:
    """Once per viewer: radiological orientation kept on every change of axes or 2D/3D, the
    orientation markers, the scale bar in mm. Returns the markers (None without a canvas)."""
    from ..._napari_private import real_viewer

    viewer = real_viewer(viewer)
    if viewer in _INSTALLED:
        return _INSTALLED[viewer]
    ref = weakref.ref(viewer)

    def reorient(*_args) -> None:
        v = ref()
        if v is not None:
            orient_camera(v)

    viewer.dims.events.order.connect(reorient)
    viewer.dims.events.ndisplay.connect(reorient)
    viewer.dims.events.ndim.connect(reorient)
    orient_camera(viewer)
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    scale_bar = getattr(overlays, "scale_bar", None) or viewer.scale_bar
    scale_bar.visible = True  # in mm: the layers' units (every layer of ours is in mm)
    markers = OrientationMarkers(viewer) if getattr(viewer, "window", None) is not None else None
    _INSTALLED[viewer] = markers
    return markers


def window_of(limits) -> tuple[float, float]:
    """(level, width) of contrast limits."""
    lo, hi = (float(v) for v in limits)
    return (lo + hi) / 2.0, hi - lo


def dragged_window(level: float, width: float, dx: float, dy: float) -> tuple[float, float]:
    """The window after dragging ``dx`` pixels right and ``dy`` pixels down from (level, width):
    right widens (doubling every :data:`WIDTH_DOUBLING_PX`), up raises the level."""
    new_width = max(MIN_WIDTH_HU, width * math.pow(2.0, dx / WIDTH_DOUBLING_PX))
    new_level = level - dy * LEVEL_PER_PX * width
    return new_level, new_width


class RadiologyEvents(SignalGroup):
    window = Signal(float, float)  # level, width (HU) of the active scan


class RadiologyController:
    def __init__(self, session) -> None:
        self.session = session
        self.events = RadiologyEvents()
        self.markers = install_for_viewer(session.viewer)
        self._watched = None
        session.viewer.mouse_drag_callbacks.append(self._drag)
        session.events.scan.connect(self._on_scan)

    # ---- presets and the readout ------------------------------------------------------------------
    def set_preset(self, preset: str) -> None:
        if preset not in L.WINDOW_PRESETS:
            raise NemesisInputError(f"unknown window {preset!r}: choose {', '.join(L.WINDOW_PRESETS)}")
        self.set_window(*L.WINDOW_PRESETS[preset])

    def set_window(self, level: float, width: float) -> None:
        """Window the active scan (linked result layers follow)."""
        self.session.scene.set_window(level, max(MIN_WIDTH_HU, width))

    def window(self) -> tuple[float, float] | None:
        layer = self._scan_layer()
        return window_of(layer.contrast_limits) if layer is not None else None

    def _scan_layer(self):
        ctx = self.session.scan
        return ctx.layer if ctx is not None else self.session.scene.get("scan")

    def _on_scan(self, ctx) -> None:
        layer = ctx.layer if ctx is not None else None
        if layer is self._watched:
            return
        if self._watched is not None:
            try:
                self._watched.events.contrast_limits.disconnect(self._on_limits)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._watched = layer
        if layer is not None:
            layer.events.contrast_limits.connect(self._on_limits)
        self._on_limits()

    def _on_limits(self, *_args) -> None:
        window = self.window() if self._watched is not None else None
        if self.markers is not None:
            self.markers.set_readout(None if window is None else f"W {window[1]:.0f}  L {window[0]:.0f}")
        if window is not None:
            self.events.window.emit(*window)

    # ---- right-drag window/level ---------------------------------------------------------------
    def _drag(self, viewer, event):
        if getattr(event, "button", 1) != 2 or event.modifiers:
            return
        layer = self._scan_layer()
        if layer is None:
            return
        from ..._napari_private import viewer_camera

        camera = viewer_camera(viewer)
        zooming = getattr(camera, "mouse_pan", None)
        if zooming is not None:
            camera.mouse_pan = False  # vispy's camera zooms on a right-drag: not while we window
        start = event.pos
        level, width = window_of(layer.contrast_limits)
        try:
            yield
            while event.type == "mouse_move":
                dx, dy = float(event.pos[0] - start[0]), float(event.pos[1] - start[1])
                self.set_window(*dragged_window(level, width, dx, dy))
                event.handled = True
                yield
        finally:
            if zooming is not None:
                camera.mouse_pan = zooming
