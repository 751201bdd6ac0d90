"""The side views: one canvas per plane (:class:`..._side_view.SideView`), in one widget docked under
the main canvas. Layout only; :mod:`.controller` keeps them in step with the main viewer."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QSplitter, QVBoxLayout, QWidget

from ..._side_view import SideView
from .lines import PlaneLines
from .planes import Plane

GRID_COLOR = "yellow"  # the main canvas's lattice colour
SELECTION_COLOR = "#ff7a00"
CROSSHAIR_COLOR = "#00e5ff"

#: A side view's title says which way is up, as the main canvas's markers do.
_UP = {"axial": "anterior up", "coronal": "head up", "sagittal": "head up"}


class PlaneView(SideView):
    """One plane of the orthogonal views, with the copies it shows."""

    def __init__(self, plane: Plane, parent=None) -> None:
        super().__init__(f"{plane.name} ({_UP[plane.name]})", parent)
        self.plane = plane
        self.copies: dict[int, object] = {}  # id(original layer) -> its copy here
        # drawn over the copies, in this order: the lattice, the selection, the crosshair
        self.grid = PlaneLines(self.qt_viewer, GRID_COLOR, width=1.0, opacity=0.8, order=0)
        self.outline = PlaneLines(self.qt_viewer, SELECTION_COLOR, width=3.0, order=1)
        self.crosshair = PlaneLines(self.qt_viewer, CROSSHAIR_COLOR, width=1.0, opacity=0.9, order=2)

    def set_plane(self, plane: Plane) -> None:
        self.plane = plane
        self.set_title(f"{plane.name} ({_UP[plane.name]})")

    def close_view(self) -> None:
        self.copies.clear()
        for lines in (self.grid, self.outline, self.crosshair):
            lines.close()
        super().close_view()


class OrthoViewsWidget(QWidget):
    """Two side views side by side."""

    def __init__(self, planes: tuple[Plane, Plane], parent=None) -> None:
        super().__init__(parent)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.views = [PlaneView(p) for p in planes]
        for view in self.views:
            self.splitter.addWidget(view)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.splitter)
        self.setMinimumHeight(160)

    def close_views(self) -> None:
        for view in self.views:
            view.close_view()
