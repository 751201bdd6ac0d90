"""Mouse and keyboard: click to select a superpatch (2D and 3D), hover, arrow keys to move.

Callbacks sit on the viewer, not on a layer, so they work whichever layer is active. A click is
a press and release without a drag (a drag pans the camera); it selects only while the active
layer is not in a drawing mode, so painting labels never changes the selection by accident.
"""

from __future__ import annotations

import numpy as np

from ._napari_private import qt_window as qt_window_of

#: Shift + arrows move the selection in the axial plane (Up = anterior, Left = patient right as
#: seen on screen), Shift + Page Up/Down move it toward superior/inferior.
KEYS = {
    "Shift-Left": (2, -1),
    "Shift-Right": (2, 1),
    "Shift-Up": (1, -1),
    "Shift-Down": (1, 1),
    "Shift-PageUp": (0, 1),
    "Shift-PageDown": (0, -1),
}
_CLICK_PIXELS = 4  # a press and release closer than this (canvas pixels) is a click


def install(session) -> None:
    viewer = session.viewer

    def on_press(_viewer, event):
        if getattr(event, "button", 1) != 1 or event.modifiers:
            return
        start = np.asarray(event.pos, dtype=float)
        yield
        while event.type == "mouse_move":
            yield
        if np.linalg.norm(np.asarray(event.pos, dtype=float) - start) > _CLICK_PIXELS:
            return  # a drag
        click(session, event.position, event.view_direction, len(event.dims_displayed))

    def on_move(_viewer, event):
        session.hover_at(event.position, event.view_direction, len(event.dims_displayed))

    viewer.mouse_drag_callbacks.append(on_press)
    viewer.mouse_move_callbacks.append(on_move)
    for key, (axis, step) in KEYS.items():
        viewer.bind_key(key, _mover(session, axis, step), overwrite=True)
    viewer.dims.events.order.connect(lambda _e: _view_changed(session))
    viewer.dims.events.ndisplay.connect(lambda _e: _view_changed(session))
    qt_window = qt_window_of(viewer)
    if qt_window is not None:  # closing the window stops the session's jobs
        qt_window.destroyed.connect(lambda *_a: session.cancel())


def _view_changed(session) -> None:
    """Axes rolled or 2D/3D toggled: radiological orientation; features redraw for the new view."""
    session.scene.orient_camera()
    session.events.view.emit()


def click(session, position, view_direction=None, ndisplay: int = 2) -> int | None:
    """Select the superpatch under a click (what a mouse press-and-release does)."""
    if session.scan is None or not _selecting_allowed(session.viewer):
        return None
    return session.select_at(position, view_direction if ndisplay == 3 else None)


def _selecting_allowed(viewer) -> bool:
    active = viewer.layers.selection.active
    mode = str(getattr(active, "mode", "pan_zoom"))
    return mode in ("pan_zoom", "Mode.PAN_ZOOM")


def _mover(session, axis: int, step: int):
    def move(_viewer):
        if session.scan is not None:
            session.move_selection(axis, step)
            session.centre_on()

    move.__name__ = f"nemesis_move_selection_{axis}_{step}"
    return move
