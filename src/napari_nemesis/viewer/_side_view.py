"""A second napari canvas inside the window: a ``ViewerModel`` of its own shown by napari's public
``QtViewer`` (the pattern of napari's multiple-viewer example), titled. The orthogonal views and the
similarity search's neighbour view are made of these; layout only."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget


class SideView(QWidget):
    """A canvas (and napari's slider for its hidden axis) with a title above it."""

    def __init__(self, title: str, parent=None) -> None:
        from napari.components import ViewerModel
        from napari.qt import QtViewer

        super().__init__(parent)
        self.model = ViewerModel(title=title)
        self.qt_viewer = QtViewer(self.model, show_welcome_screen=False)
        self.qt_viewer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.title = QLabel(title)
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.title.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(2)
        layout.addWidget(self.title)
        layout.addWidget(self.qt_viewer, 1)

    def set_title(self, text: str) -> None:
        self.model.title = text
        self.title.setText(text)

    def close_view(self) -> None:
        self.model.layers.clear()
        self.qt_viewer.close()
