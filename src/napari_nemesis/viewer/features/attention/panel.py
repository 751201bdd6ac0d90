"""The attention panel (hosted in the Reconstruction dock)."""

from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QGroupBox, QVBoxLayout

from ..._controls import follow, wrapped_label

HELP = ("Tick, select a superpatch and move the cursor over it: the heatmaps show where the patch under "
        "the cursor looks in the last encoder block, within its slice (plane stream, orange) and along "
        "its column (axis stream, green).")


class AttentionPanel(QGroupBox):
    def __init__(self, session, parent=None) -> None:
        super().__init__("MATB attention", parent)
        self.setToolTip("The attention of the last encoder block (MATB)")
        self.controller = session.feature("attention")
        self.attention = QCheckBox("attention under the cursor")
        self.attention.setChecked(self.controller.enabled)
        self.info = wrapped_label(HELP)
        layout = QVBoxLayout(self)
        layout.addWidget(self.attention)
        layout.addWidget(self.info)
        self.attention.toggled.connect(self.controller.set_enabled)
        follow(session.events.attention, self._on_attention, self)

    def _on_attention(self, view) -> None:
        if view is None:
            self.info.setText(HELP)
            return
        z, y, x = view.token_zyx
        self.info.setText(f"superpatch {view.index}, patch (z y x) {z},{y},{x}; block {view.maps.block} "
                          f"(the last), mean over heads, on {view.maps.device}")
