"""Superpatch grid dock: which scan, the grid, CT window presets, the selection and what is hovered."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QCheckBox, QComboBox, QGridLayout, QGroupBox, QHBoxLayout, QPushButton, QVBoxLayout, \
    QWidget

from .. import _layers as L
from .._state import session_for
from ._common import call_safely, follow, wrapped_label

_HELP = ("Click a superpatch to select it (2D or 3D). Shift + arrow keys move the selection in the "
         "slice, Shift + Page Up / Page Down toward the head / feet.")


class GridWidget(QWidget):
    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.session.widgets.setdefault("Superpatch grid", self)

        self.scan_combo = QComboBox()
        self.use_button = QPushButton("Use this scan")
        self.sample_button = QPushButton("Open the sample CT")
        self.grid_info = wrapped_label("No scan yet: open a CT (File > Open) or the sample.")
        self.show_grid = QCheckBox("show the grid")
        self.show_grid.setChecked(True)
        self.window_buttons = {name: QPushButton(name) for name in L.WINDOW_PRESETS}
        self.selection_info = wrapped_label("Nothing selected.")
        self.hover_info = wrapped_label("")

        scan_box = QGroupBox("Scan")
        scan_layout = QVBoxLayout(scan_box)
        row = QHBoxLayout()
        row.addWidget(self.scan_combo, 1)
        row.addWidget(self.use_button)
        scan_layout.addLayout(row)
        scan_layout.addWidget(self.sample_button)
        scan_layout.addWidget(self.grid_info)
        scan_layout.addWidget(self.show_grid)

        window_box = QGroupBox("CT window")
        window_layout = QGridLayout(window_box)
        for k, button in enumerate(self.window_buttons.values()):
            level, width = L.WINDOW_PRESETS[button.text()]
            button.setToolTip(f"level {level:g} HU, width {width:g} HU")
            window_layout.addWidget(button, k // 3, k % 3)

        selection_box = QGroupBox("Selected superpatch")
        selection_layout = QVBoxLayout(selection_box)
        selection_layout.addWidget(self.selection_info)
        selection_layout.addWidget(wrapped_label(_HELP))
        selection_layout.addWidget(self.hover_info)

        layout = QVBoxLayout(self)
        layout.addWidget(scan_box)
        layout.addWidget(window_box)
        layout.addWidget(selection_box)
        layout.addStretch(1)

        self.use_button.clicked.connect(self._use_scan)
        self.sample_button.clicked.connect(self._open_sample)
        self.show_grid.toggled.connect(self._toggle_grid)
        for name, button in self.window_buttons.items():
            button.clicked.connect(lambda _checked=False, n=name: self.session.set_window(n))
        events = self.session.events
        follow(events.scan, self._on_scan, self)
        follow(events.selection, self._on_selection, self)
        follow(events.hover, self._on_hover, self)
        follow(events.grid_columns, lambda _c: self._on_selection(self.session.selected), self)
        self.viewer.layers.events.inserted.connect(self._refresh_scans)
        self.viewer.layers.events.removed.connect(self._refresh_scans)
        self.destroyed.connect(self._unhook)
        self._refresh_scans()
        if self.session.scan is not None:
            self._on_scan(self.session.scan)
        elif not self.session.running("prepare"):  # a scan opened before the widget: use the newest
            scans = [lay for lay in self._scan_layers() if lay.metadata.get("kind") == "scan"]
            if scans:
                call_safely(self.session.use_scan_layer, scans[-1], wait=False)

    # ---- layout reacts to the session -------------------------------------------------------------
    def _unhook(self, *_args) -> None:
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            try:
                ev.disconnect(self._refresh_scans)
            except (ValueError, RuntimeError):
                pass

    def _scan_layers(self):
        return [layer for layer in self.viewer.layers
                if layer._type_string == "image" and layer.ndim == 3 and not getattr(layer, "rgb", False)
                and "nemesis_role" not in layer.metadata]

    def _refresh_scans(self, *_args) -> None:
        current = self.session.scan.layer.name if self.session.scan is not None else self.scan_combo.currentText()
        self.scan_combo.blockSignals(True)
        self.scan_combo.clear()
        names = [layer.name for layer in self._scan_layers()]
        self.scan_combo.addItems(names)
        if current in names:
            self.scan_combo.setCurrentText(current)
        self.scan_combo.blockSignals(False)
        self.use_button.setEnabled(bool(names))

    def _on_scan(self, ctx) -> None:
        self._refresh_scans()
        if ctx is None:
            self.grid_info.setText("No scan yet: open a CT (File > Open) or the sample.")
            return
        g = ctx.grid
        sz, sy, sx = ctx.prepared.pre.spacing_zyx
        self.grid_info.setText(
            f"{ctx.name}: {g.n} superpatches of {g.superpatch}\u00b3 voxels at {sx:g} x {sy:g} x {sz:g} mm "
            f"(x y z), grid {' x '.join(map(str, g.grid_shape))} (z y x); each box is "
            f"{g.superpatch * sx:g} x {g.superpatch * sy:g} x {g.superpatch * sz:g} mm.")

    def _on_selection(self, index) -> None:
        info = self.session.superpatch_info(index)
        self.selection_info.setText(_describe(info) if info else "Nothing selected.")

    def _on_hover(self, info) -> None:
        self.hover_info.setText(f"Under the cursor: {_describe(info)}" if info else "")

    # ---- buttons -----------------------------------------------------------------------------------
    def _use_scan(self) -> None:
        name = self.scan_combo.currentText()
        layer = next((lay for lay in self._scan_layers() if lay.name == name), None)
        if layer is not None:
            call_safely(self.session.use_scan_layer, layer, wait=False)

    def _open_sample(self) -> None:
        self.viewer.open_sample("napari-nemesis", "abdomen_ct")

    def _toggle_grid(self, visible: bool) -> None:
        for role in ("grid", "grid_lines"):
            self.session.scene.set_visible(role, visible)


def _describe(info: dict) -> str:
    lo, hi = info["world_min_zyx"], info["world_max_zyx"]
    parts = [f"superpatch {info['index']}, grid (z y x) {','.join(map(str, info['grid_zyx']))}; "
             f"z {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f}, x {lo[2]:.0f}..{hi[2]:.0f} mm (LPS)"]
    extras = [f"{k} {float(v):.2f}" if isinstance(v, (float, np.floating)) else f"{k} {v}"
              for k, v in info.items() if k not in ("index", "grid_zyx", "world_min_zyx", "world_max_zyx")
              and not (isinstance(v, (float, np.floating)) and np.isnan(v))]
    if extras:
        parts.append("; ".join(extras))
    return "\n".join(parts)
