"""Orientation markers at the canvas edges: which patient direction each edge faces.

napari's world frame is DICOM patient coordinates, LPS+ mm in (z, y, x): ``z`` toward Superior,
``y`` toward Posterior, ``x`` toward the patient's Left. In a 2D view the first displayed axis runs
vertically and the second horizontally, each increasing down or up / right or left as the camera's
``orientation2d`` says, so each edge's letter follows from the displayed axes and the camera: an
axial slice shows A at the top, P at the bottom, R on the left and L on the right; coronal S / I and
R / L; sagittal S / I and A / P. In 3D no marker is shown (the view turns freely).

The markers are small Qt labels on the canvas widget (napari has no canvas overlay at the middle of
an edge), transparent to the mouse, and follow the canvas's size, the axes and the camera.
"""

from __future__ import annotations

import weakref

#: Letter of each world axis (z, y, x) toward its negative and its positive end.
AXIS_LETTERS = (("I", "S"), ("A", "P"), ("R", "L"))
EDGES = ("top", "bottom", "left", "right")


def edge_letters(displayed_zyx, orientation2d) -> dict[str, str]:
    """The letter at each canvas edge for a 2D view of world axes ``displayed_zyx`` (vertical,
    horizontal; 0 z, 1 y, 2 x) with the camera's ``orientation2d`` (``("down"|"up", "right"|"left")``:
    the way each displayed axis increases on the screen)."""
    vertical, horizontal = (int(a) for a in displayed_zyx)
    v_dir, h_dir = (str(getattr(o, "value", o)) for o in orientation2d)
    neg_v, pos_v = AXIS_LETTERS[vertical]
    neg_h, pos_h = AXIS_LETTERS[horizontal]
    top, bottom = (neg_v, pos_v) if v_dir == "down" else (pos_v, neg_v)
    left, right = (neg_h, pos_h) if h_dir == "right" else (pos_h, neg_h)
    return {"top": top, "bottom": bottom, "left": left, "right": right}


def view_letters(viewer) -> dict[str, str] | None:
    """The markers of a viewer's current view, or None (3D, or fewer than three dimensions)."""
    from ..._napari_private import viewer_camera

    dims = viewer.dims
    if dims.ndisplay != 2 or dims.ndim < 3:
        return None
    offset = dims.ndim - 3
    displayed = [a - offset for a in dims.displayed]
    if min(displayed) < 0:
        return None
    return edge_letters(displayed, viewer_camera(viewer).orientation2d)


class OrientationMarkers:
    """Four letters on a viewer's canvas, kept up to date; ``readout`` a fifth line (bottom left)
    for the window/level."""

    def __init__(self, viewer) -> None:
        from qtpy.QtCore import QEvent, QObject, Qt
        from qtpy.QtWidgets import QLabel

        from ..._napari_private import canvas_widget, viewer_camera

        self._viewer = weakref.ref(viewer)
        self.canvas = canvas_widget(viewer)
        self.labels: dict[str, QLabel] = {}
        self.readout = None
        if self.canvas is None:
            return
        style = ("QLabel { color: #ffe14d; background: rgba(0, 0, 0, 110); padding: 1px 4px; "
                 "font-weight: bold; font-size: 15px; border-radius: 3px; }")
        for edge in EDGES:
            label = QLabel("", self.canvas)
            label.setObjectName(f"nemesis_orientation_{edge}")
            label.setStyleSheet(style)
            label.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
            self.labels[edge] = label
        self.readout = QLabel("", self.canvas)
        self.readout.setObjectName("nemesis_window_readout")
        self.readout.setStyleSheet(style.replace("font-size: 15px", "font-size: 12px"))
        self.readout.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.readout.hide()

        markers = weakref.ref(self)

        class _Resize(QObject):
            def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
                m = markers()
                if m is not None and event.type() == QEvent.Type.Resize:
                    m.place()
                return False

        self._filter = _Resize(self.canvas)
        self.canvas.installEventFilter(self._filter)
        viewer.dims.events.order.connect(self.update)
        viewer.dims.events.ndisplay.connect(self.update)
        viewer.dims.events.ndim.connect(self.update)
        camera = viewer_camera(viewer)
        if hasattr(camera.events, "orientation2d"):
            camera.events.orientation2d.connect(self.update)
        self.update()

    def update(self, *_args) -> None:
        viewer = self._viewer()
        if viewer is None or not self.labels:
            return
        try:
            letters = view_letters(viewer)
            for edge, label in self.labels.items():
                if letters is None:
                    label.hide()
                else:
                    label.setText(letters[edge])
                    label.adjustSize()
                    label.show()
            self.place()
        except RuntimeError:  # the canvas was deleted (the window closed)
            self.labels = {}

    def letters(self) -> dict[str, str] | None:
        """What the markers show now (None: hidden)."""
        if not self.labels or not all(lab.isVisible() or lab.isVisibleTo(self.canvas) for lab in self.labels.values()):
            return None
        return {edge: label.text() for edge, label in self.labels.items()}

    def set_readout(self, text: str | None) -> None:
        if self.readout is None:
            return
        try:
            if not text:
                self.readout.hide()
                return
            self.readout.setText(text)
            self.readout.adjustSize()
            self.readout.show()
            self.place()
        except RuntimeError:
            self.readout = None

    def place(self) -> None:
        if self.canvas is None:
            return
        w, h, m = self.canvas.width(), self.canvas.height(), 6
        for edge, label in self.labels.items():
            lw, lh = label.width(), label.height()
            x, y = {"top": ((w - lw) // 2, m), "bottom": ((w - lw) // 2, h - lh - m),
                    "left": (m, (h - lh) // 2), "right": (w - lw - m, (h - lh) // 2)}[edge]
            label.move(x, y)
        if self.readout is not None:
            self.readout.move(m, h - self.readout.height() - m - 26)
