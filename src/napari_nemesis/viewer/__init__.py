"""The napari face of napari-nemesis: the only package that imports napari, Qt, magicgui or superqt.

``launch`` is the one scripting entry point; the dock widgets, the demo and the tests drive the
same session object it returns::

    from napari_nemesis.viewer import launch
    session = launch("scan.nii.gz")          # a viewer with the scan, its grid and the widgets
    session.select(3)
    session.run_probabilities(wait=True)
    session.run_reconstruction("plane", 0.75, 0.03, 0, "selected", wait=True)
    session.layers["reconstruction"]

Importing this package is cheap (napari imports the reader module during plugin discovery):
napari and Qt load when ``launch`` or a widget is used, torch only inside worker jobs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["launch", "session_for"]


def launch(scan: Any = None, viewer: Any = None, widgets: bool = True):
    """Open (or reuse) a napari viewer with ``scan`` and its superpatch grid; return its session.

    ``scan``: a path (NIfTI, NRRD, MetaImage, DICOM folder), a ``data.Volume`` or an Image layer
    of ``viewer``; None keeps the viewer's current scan (or none). ``viewer``: a napari viewer,
    default the current one or a new one. ``widgets``: dock the Superpatch grid, Reconstruction,
    Organ probabilities, Labelling and Training widgets. Returns the
    :class:`~._session.NemesisSession` the docks use:
    ``select(i)``, ``selected``, ``run_probabilities(wait=True)``,
    ``run_reconstruction(strategy, ratio, noise, seed, scope, wait=True)``, ``layers``.
    """
    import napari

    from ._napari_private import real_viewer

    if viewer is None:
        viewer = napari.current_viewer() or napari.Viewer()
    session = session_for(real_viewer(viewer))
    if widgets:
        session.show_widgets()
    if scan is not None:
        session.open_scan(scan, wait=True)
    elif session.scan is None:
        candidates = session.scan_layers()
        if candidates and not session.running("prepare"):
            session.use_scan_layer(candidates[-1], wait=True)
        elif session.running("prepare"):
            session.wait("prepare")
            session.scene.settle()
    return session


def session_for(viewer):
    """The NEMESIS session of a napari viewer (made on first use, with every feature of
    :data:`~.features.FEATURES`); napari's proxy viewer and the viewer behind it share one."""
    from ._session import session_for as _session_for

    return _session_for(viewer)
