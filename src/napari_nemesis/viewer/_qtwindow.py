"""napari's Qt main window of a viewer: the one place the plugin reaches into napari's privates.

napari 0.9 has no public accessor for the ``QMainWindow`` (closing it must stop our jobs and child
processes; the labelling keys filter the canvas's key events; colorbars are placed on its canvas).
A viewer handed to a dock widget is napari's ``PublicOnlyProxy``, which warns (FutureWarning) on
every private access; the warning says nothing a user can act on, so it is silenced here. When
napari removes ``Window._qt_window`` this returns None and the features above degrade (tests of
the keys, of closing and of the overlay placement then fail and say so).
"""

from __future__ import annotations

import warnings


def qt_window(viewer):
    """The viewer's ``QMainWindow``, or None (a headless viewer, a closed one, a future napari)."""
    window = getattr(viewer, "window", None) if viewer is not None else None
    if window is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return getattr(window, "_qt_window", None)


def qt_canvas(viewer):
    """The vispy canvas napari draws the layers on, or None."""
    window = qt_window(viewer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return getattr(getattr(window, "_qt_viewer", None), "canvas", None)
