"""The orthogonal views' switch (hosted in the Superpatch grid dock)."""

from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QGroupBox, QVBoxLayout

from ..._controls import call_safely, follow, wrapped_label

HELP = ("Coronal and sagittal views (or the two planes the canvas does not show) under the canvas, with "
        "the grid and heatmaps, a crosshair that follows the cursor and the selection, and the same "
        "window/level.")


class OrthoPanel(QGroupBox):
    def __init__(self, session, parent=None) -> None:
        super().__init__("Orthogonal views", parent)
        self.controller = session.feature("orthoviews")
        self.toggle = QCheckBox("show the orthogonal views")
        self.toggle.setToolTip("Coronal and sagittal views linked to the canvas: one crosshair, one window/level")
        self.toggle.setChecked(self.controller.enabled)
        layout = QVBoxLayout(self)
        layout.addWidget(self.toggle)
        layout.addWidget(wrapped_label(HELP))
        self.toggle.toggled.connect(lambda on: call_safely(self.controller.set_enabled, on))
        follow(self.controller.events.enabled, self._on_enabled, self)

    def _on_enabled(self, on: bool) -> None:
        if self.toggle.isChecked() != on:
            self.toggle.blockSignals(True)
            self.toggle.setChecked(on)
            self.toggle.blockSignals(False)
