"""The CT window panel (hosted in the Superpatch grid dock): presets and the live readout."""

from __future__ import annotations

from qtpy.QtWidgets import QGridLayout, QGroupBox, QPushButton, QVBoxLayout

from ... import _layers as L
from ..._controls import PaintedText, call_safely, follow


class WindowPanel(QGroupBox):
    def __init__(self, session, parent=None) -> None:
        super().__init__("CT window", parent)
        self.controller = session.feature("radiology")
        self.buttons = {name: QPushButton(name) for name in L.WINDOW_PRESETS}
        # painted in a box of fixed size: it changes at every step of a right-drag, and a label's new
        # text would re-lay out the dock (a full-window repaint) in each of those frames
        self.readout = PaintedText(lines=4, text="right-drag on the canvas: horizontal = width, vertical = level")
        grid = QGridLayout()
        for k, (name, button) in enumerate(self.buttons.items()):
            level, width = L.WINDOW_PRESETS[name]
            button.setToolTip(f"level {level:g} HU, width {width:g} HU")
            button.clicked.connect(lambda _checked=False, n=name: call_safely(self.controller.set_preset, n))
            grid.addWidget(button, k // 3, k % 3)
        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addWidget(self.readout)
        follow(self.controller.events.window, self._on_window, self)
        window = self.controller.window()
        if window is not None:
            self._on_window(*window)

    def _on_window(self, level: float, width: float) -> None:
        self.readout.setText(f"window: width {width:.0f} HU, level {level:.0f} HU "
                             "(right-drag on the canvas: horizontal = width, vertical = level)")
