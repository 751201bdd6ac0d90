"""The side views: one canvas per plane (:class:`..._side_view.SideView`), in one widget docked under
the main canvas. Layout only; :mod:`.controller` keeps them in step with the main viewer."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QSplitter, QVBoxLayout, QWidget

from ..._side_view import SideView
from .planes import Plane

#: A side view's title says which way is up, as the main canvas's markers do.
_UP = {"axial": "anterior up", "coronal": "head up", "sagittal": "head up"}


class PlaneView(SideView):
    """One plane of the orthogonal views, with the copies it shows."""

    def __init__(self, plane: Plane, parent=None) -> None:
        super().__init__(f"{plane.name} ({_UP[plane.name]})", parent)
        self.plane = plane
        self.copies: dict[int, object] = {}  # id(original layer) -> its copy here
        self.crosshair = None
        self.outline = None

    def set_plane(self, plane: Plane) -> None:
        self.plane = plane
        self.set_title(f"{plane.name} ({_UP[plane.name]})")

    def close_view(self) -> None:
        self.copies.clear()
        self.crosshair = self.outline = None
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
