"""Every reach into napari's private attributes, in one place.

napari 0.9 has no public accessor for a few things the plugin needs: the ``QMainWindow`` (closing it
must stop our jobs and child processes; docks are tabbed and the window kept on the screen), the
vispy canvas (the labelling keys filter its key events; colorbars are placed before a frame, not
while napari draws one). A viewer handed to a dock by napari's own routes (the Plugins menu,
``napari -w``, ``add_plugin_dock_widget``) is a ``PublicOnlyProxy``: not a QObject, and every
private access through it raises a FutureWarning a user sees as a toast. :func:`real_viewer` unwraps
it once, where a dock first meets its viewer, so nothing else ever holds a proxy. When napari
removes one of these attributes the functions here return None and the feature degrades (its tests
then fail and say so).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager


@contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def real_viewer(viewer):
    """The napari ``Viewer`` behind a ``PublicOnlyProxy`` (or ``viewer`` itself)."""
    try:
        wrapped = object.__getattribute__(viewer, "__wrapped__")
    except AttributeError:
        return viewer
    return real_viewer(wrapped)


def qt_window(viewer):
    """The viewer's ``QMainWindow``, or None (a headless viewer, a closed one, a future napari)."""
    viewer = real_viewer(viewer) if viewer is not None else None
    window = getattr(viewer, "window", None) if viewer is not None else None
    if window is None:
        return None
    with _quiet():
        return getattr(window, "_qt_window", None)


def qt_viewer(viewer):
    window = getattr(real_viewer(viewer), "window", None) if viewer is not None else None
    with _quiet():
        return getattr(window, "_qt_viewer", None)


def qt_canvas(viewer):
    """The vispy canvas napari draws the layers on, or None."""
    with _quiet():
        return getattr(qt_viewer(viewer), "canvas", None)


def scene_of(qt_viewer_widget):
    """The vispy scene node a ``QtViewer``'s canvas draws its layers under (world coordinates, the
    displayed axes in vispy's reversed order), or None. Visuals of ours go there (a side view's lines)."""
    with _quiet():
        canvas = getattr(qt_viewer_widget, "canvas", None)
        view = getattr(canvas, "view", None)
        return getattr(view, "scene", None)


@contextmanager
def paint_after(viewer):
    """Changes inside the block that resize the canvas (a first layer widens the layer controls)
    do not paint it there and then: Qt's GL widget repaints synchronously on every resize, a whole
    frame (50-120 ms under software OpenGL) inside the handler, before the frame napari asks for
    next anyway. The canvas is asked for that one frame when the block ends."""
    scene_canvas = _scene_canvas(viewer)
    draw = getattr(getattr(scene_canvas, "events", None), "draw", None)
    if draw is None:
        yield
        return
    native = getattr(scene_canvas, "native", None)
    size = native.size() if native is not None else None
    try:
        with draw.blocker():
            yield
    finally:
        try:  # resized meanwhile: its one frame (otherwise nothing was held back)
            if native is not None and native.size() != size:
                scene_canvas.update()
        except RuntimeError:  # the canvas was closed meanwhile
            pass


def _scene_canvas(viewer):
    with _quiet():
        return getattr(qt_canvas(viewer), "_scene_canvas", None) if viewer is not None else None


def draw_offscreen(viewer, size: tuple[int, int] = (64, 64)) -> bool:
    """Draw the canvas's scene once into a small off-screen buffer: every shown visual builds and
    compiles its shaders and uploads its data, as in a frame, but the pixels cost next to nothing
    (napari's screenshot repaints the whole canvas and reads it back: 100-200 ms under software
    OpenGL). False without a canvas, or before the canvas was first shown: its GL context does
    not exist yet, and vispy would send the draw's textures to whichever context is current
    (another viewer's), which then fails every later frame of both."""
    canvas = _scene_canvas(viewer)
    native = getattr(canvas, "native", None)
    if canvas is None or not hasattr(canvas, "render") or native is None:
        return False
    try:
        if not native.isValid():
            return False
    except (AttributeError, RuntimeError):  # not a GL widget, or deleted meanwhile
        return False
    canvas.render(size=tuple(int(v) for v in size), alpha=False)
    return True


@contextmanager
def no_frame_asked(viewer):
    """Changes inside the block that leave the canvas as it was (a hidden layer shown, drawn off
    screen, hidden again) ask for no frame: each would repaint the whole canvas on the next turn
    for nothing. A frame asked for before the block is still drawn."""
    canvas = _scene_canvas(viewer)
    if canvas is None or not callable(getattr(canvas, "update", None)):
        yield
        return
    # vispy's own "drawing now" flag would not do: its draw clears it, and an off-screen draw asks
    # for a frame after that, when it puts the canvas's transforms back.
    own = canvas.__dict__.get("update")
    canvas.update = _no_update
    try:
        yield
    finally:
        if own is None:
            canvas.__dict__.pop("update", None)
        else:
            canvas.update = own


def _no_update(*_args, **_kwargs) -> None:
    return None


def ask_frame(viewer) -> None:
    """Ask the canvas for one frame (drawn on a later turn)."""
    canvas = _scene_canvas(viewer)
    if canvas is not None:
        try:
            canvas.update()
        except RuntimeError:  # closed meanwhile
            pass


@contextmanager
def added_inactive(viewer):
    """Layers added inside the block do not become the active layer (napari makes each new layer
    active: its controls are laid out beside the canvas and its value read under the cursor, then
    the scene makes its own topmost overlay active again, a second relayout in the same turn)."""
    layers = getattr(viewer, "layers", None) if viewer is not None else None
    if layers is None or not hasattr(layers, "_activate_on_insert"):
        yield
        return
    was = layers._activate_on_insert
    layers._activate_on_insert = False
    try:
        yield
    finally:
        layers._activate_on_insert = was


def canvas_widget(viewer):
    """The Qt widget of the canvas (where key events and overlays of ours go), or None."""
    canvas = qt_canvas(viewer)
    with _quiet():
        return getattr(canvas, "native", None) if canvas is not None else None


def place_canvas_overlays(canvas) -> None:
    """Place the canvas overlays (colorbars) now if a change asked napari to: it would do so while
    drawing the next frame, and an overlay placed there (at a fractional position it always finds
    moved) asks for a second frame. Needs napari 0.9's private canvas; else nothing happens."""
    with _quiet():
        if canvas is not None and getattr(canvas, "_needs_overlay_position_update", False):
            place = getattr(canvas, "_update_overlay_canvas_positions", None)
            if place is not None:
                place()


def layer_type(layer) -> str:
    """``"image"``, ``"labels"``, ``"vectors"``, ... of a layer."""
    with _quiet():
        return str(getattr(layer, "_type_string", type(layer).__name__.lower()))


def text_overlay(viewer):
    """The canvas's text overlay (napari 0.9: ``viewer.canvas.overlays.text``), or None."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    text = getattr(overlays, "text", None) if overlays is not None else None
    return text if text is not None else getattr(viewer, "text_overlay", None)


def viewer_camera(viewer):
    """napari's camera: ``viewer.scene.camera`` since 0.9 (``viewer.camera`` warns), else the old one."""
    scene = getattr(viewer, "scene", None)
    camera = getattr(scene, "camera", None)
    return camera if camera is not None else viewer.camera


def warm_first_layer_costs() -> None:
    """Pay, off the GUI thread, what napari pays on it the first time it makes a scan's layers:
    its unit registry (pint parses its whole definitions file when a layer first has units: 0.5 s)
    and the modules it imports lazily then (scipy.ndimage for an image's thumbnail and contrast
    range, pandas for the grid's features, scikit-image's colours for a label layer's colormap,
    0.1-0.6 s each), and vispy's line patterns. Called from the worker that reads a scan, before its layer is added; a module
    already imported costs nothing, and the registry is napari's own cached one, made once."""
    import importlib

    for name in ("scipy.ndimage", "scipy.linalg", "pandas", "skimage.color"):
        try:
            importlib.import_module(name)
        except ImportError:  # napari made do without it; so do we
            pass
    try:  # a label layer's polygon overlay: vispy's dashed-line patterns, made once (0.1 s)
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()
    except ImportError:
        pass
    try:
        from napari.utils._units import get_unit_registry
    except ImportError:  # a napari without it: its layers make their own
        return
    get_unit_registry().Unit("mm")  # pint's registry is lazy: its first unit parses the definitions


def skip_thumbnails(layer) -> None:
    """No thumbnail for ``layer``: napari recomputes one on every slice and data change (a vectors
    layer's costs 20-40 ms), for a layer list. The side views' layers are in no shown layer list."""
    with _quiet():
        if hasattr(layer, "_update_thumbnail"):
            layer._update_thumbnail = lambda *args, **kwargs: None


#: A label layer's drawing-tool overlays and the modes that use them.
_TOOL_OVERLAYS = {"polygon": ("polygon",), "brush_stroke": ("paint", "erase")}


def tool_overlays_when_used(layer) -> None:
    """A label layer's drawing-tool overlays (the polygon being drawn, the brush's stroke) are made
    when its mode first needs them, not with the layer: napari makes each overlay's visual when the
    layer is added (50 ms here for a label layer's two), for every label layer, though most of ours
    (the grid, the label states, an organ map) are never painted on."""
    with _quiet():
        overlays = getattr(layer, "_overlays", None)
    events = getattr(getattr(layer, "events", None), "mode", None)
    if not hasattr(overlays, "get") or events is None:
        return
    waiting = {key: overlays.get(key) for key in _TOOL_OVERLAYS}
    waiting = {key: overlay for key, overlay in waiting.items() if getattr(overlay, "visible", False)}
    if not waiting:
        return
    for overlay in waiting.values():
        overlay.visible = False

    def on_mode(event=None) -> None:
        mode = str(getattr(layer, "mode", "")).lower()
        for key in [k for k in waiting if mode in _TOOL_OVERLAYS[k]]:
            waiting.pop(key).visible = True  # napari makes its visual now, as it would have
        if not waiting:
            events.disconnect(on_mode)

    events.connect(on_mode)
