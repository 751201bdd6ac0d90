"""The side views: one napari canvas per plane (a ``ViewerModel`` of its own with napari's public
``QtViewer``, the pattern of napari's multiple-viewer example), in one widget docked under the
main canvas. Layout only; :mod:`.controller` keeps them in step with the main viewer."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QSizePolicy, QSplitter, QVBoxLayout, QWidget

from .planes import Plane

#: A side view's title says which way is up, as the main canvas's markers do.
_UP = {"axial": "anterior up", "coronal": "head up", "sagittal": "head up"}


class SideView(QWidget):
    """One plane: a canvas and napari's slider for the plane's hidden axis."""

    def __init__(self, plane: Plane, parent=None) -> None:
        from napari.components import ViewerModel
        from napari.qt import QtViewer

        super().__init__(parent)
        self.plane = plane
        self.model = ViewerModel(title=plane.name)
        self.qt_viewer = QtViewer(self.model, show_welcome_screen=False)
        self.qt_viewer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.title = QLabel(f"{plane.name} ({_UP[plane.name]})")
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(2)
        layout.addWidget(self.title)
        layout.addWidget(self.qt_viewer, 1)
        self.copies: dict[int, object] = {}  # id(original layer) -> its copy here
        self.crosshair = None
        self.outline = None

    def set_plane(self, plane: Plane) -> None:
        self.plane = plane
        self.model.title = plane.name
        self.title.setText(f"{plane.name} ({_UP[plane.name]})")

    def close_view(self) -> None:
        self.model.layers.clear()
        self.copies.clear()
        self.crosshair = self.outline = None
        self.qt_viewer.close()


class OrthoViewsWidget(QWidget):
    """Two side views side by side."""

    def __init__(self, planes: tuple[Plane, Plane], parent=None) -> None:
        super().__init__(parent)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.views = [SideView(p) for p in planes]
        for view in self.views:
            self.splitter.addWidget(view)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.splitter)
        self.setMinimumHeight(160)

    def close_views(self) -> None:
        for view in self.views:
            view.close_view()
