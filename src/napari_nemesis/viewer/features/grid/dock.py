"""Superpatch grid dock: which scan is active (and a chooser among the open ones and, for a DICOM
folder with several series, among its series), the grid, the selection and what is hovered; the CT
window panel sits here too (the radiology feature's)."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QCheckBox, QComboBox, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from ..._controls import PaintedText, call_safely, fixed_lines_label, follow, wrapped_label
from ..._dock import NemesisDock

_HELP = ("Click a superpatch to select it (2D or 3D). Shift + arrow keys move the selection in the "
         "slice, Shift + Page Up / Page Down toward the head / feet.")
_NO_SCAN = "No scan yet: open a CT (File > Open) or the sample."


class GridWidget(NemesisDock):
    dock_title = "Superpatch grid"
    shows_scan_progress = True  # the session's scan jobs then need no activity bar

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.controller = self.session.feature("grid")

        # text that changes while a scan opens or on every selection sits in boxes of fixed size:
        # a label's new size re-lays out the dock, and that repaints the whole window in the same frame
        self.active = fixed_lines_label("Active scan: none", lines=2)
        self.scan_combo = QComboBox()
        self.scan_combo.setToolTip("The open scans: the one picked here is shown, with its grid and results")
        self.series_row = QHBoxLayout()
        self.series_combo = QComboBox()
        self.series_combo.setToolTip("This DICOM folder holds several series: pick the one to open")
        self.series_label = QLabel("series")
        self.sample_button = QPushButton("Open the sample CT")
        self.grid_info = wrapped_label(_NO_SCAN)  # new text once per scan: its relayout is the opening's, not a frame's
        self.show_grid = QCheckBox("show the grid")
        self.show_grid.setChecked(self.controller.visible)
        self.selection_info = PaintedText(lines=5, text="Nothing selected.")
        self.hover_info = PaintedText(lines=6)  # follows the cursor: never re-lays out the dock

        scan_box = QGroupBox("Scan")
        scan_layout = QVBoxLayout(scan_box)
        scan_layout.addWidget(self.active)
        scan_layout.addWidget(self.scan_combo)
        self.series_row.addWidget(self.series_label)
        self.series_row.addWidget(self.series_combo, 1)
        scan_layout.addLayout(self.series_row)
        scan_layout.addWidget(self.sample_button)
        scan_layout.addWidget(self.grid_info)
        scan_layout.addWidget(self.show_grid)

        selection_box = QGroupBox("Selected superpatch")
        selection_layout = QVBoxLayout(selection_box)
        selection_layout.addWidget(self.selection_info)
        selection_layout.addWidget(wrapped_label(_HELP))
        selection_layout.addWidget(self.hover_info)

        self.layout_.addWidget(scan_box)
        self.add_hosted_panels()
        self.layout_.addWidget(selection_box)
        self.finish()

        self.scan_combo.activated.connect(self._use_scan)
        self.series_combo.activated.connect(self._use_series)
        self.sample_button.clicked.connect(self._open_sample)
        self.show_grid.toggled.connect(self.controller.set_visible)
        events = self.session.events
        follow(events.scan, self._on_scan, self)
        follow(events.scans, self._refresh_scans, self)
        follow(events.selection, self._on_selection, self)
        follow(events.hover, self._on_hover, self)
        follow(events.grid_columns, lambda _c: self._on_selection(self.session.selected), self)
        follow(events.run, self._on_run, self)
        self._refresh_scans()
        self._on_scan(self.session.scan)

    # ---- the session's scans --------------------------------------------------------------------
    def _refresh_scans(self, *_args) -> None:
        layers = self.session.scan_layers()
        active = self.session.scan.layer if self.session.scan is not None else None
        self.scan_combo.blockSignals(True)
        self.scan_combo.clear()
        self.scan_combo.addItems([layer.name for layer in layers])
        if active in layers:
            self.scan_combo.setCurrentIndex(layers.index(active))
        self.scan_combo.blockSignals(False)
        self.scan_combo.setEnabled(len(layers) > 1)
        self._refresh_series(active)

    def _refresh_series(self, layer) -> None:
        series = dict(layer.metadata.get("dicom_series") or {}) if layer is not None else {}
        chosen = layer.metadata.get("volume_meta", {}).get("series_uid") if layer is not None else None
        self.series_combo.blockSignals(True)
        self.series_combo.clear()
        for uid, slices in series.items():
            self.series_combo.addItem(f"{uid} ({slices} slices)", uid)
        if chosen in series:
            self.series_combo.setCurrentIndex(list(series).index(chosen))
        self.series_combo.blockSignals(False)
        for widget in (self.series_combo, self.series_label):
            widget.setVisible(len(series) > 1)

    def _on_scan(self, ctx) -> None:
        self._refresh_scans()
        if ctx is None:
            preparing = self.session.running("prepare")
            self.active.setText("Active scan: preparing..." if preparing else "Active scan: none")
            self.grid_info.setText(_NO_SCAN if not preparing else "")
            self._on_selection(None)
            return
        self.active.setText(f"Active scan: <b>{ctx.name}</b>")
        g = ctx.grid
        sz, sy, sx = ctx.prepared.pre.spacing_zyx
        self.grid_info.setText(
            f"{g.n} superpatches of {g.superpatch}\u00b3 voxels at {sx:g} x {sy:g} x {sz:g} mm "
            f"(x y z), grid {' x '.join(map(str, g.grid_shape))} (z y x); each box is "
            f"{g.superpatch * sx:g} x {g.superpatch * sy:g} x {g.superpatch * sz:g} mm.")

    def _on_run(self, job: str, state) -> None:
        """Reading and preparing a scan show their progress here (they have no activity bar while
        this dock is open: adding one re-lays out the whole window)."""
        if job in ("open", "prepare") and state.running and self.session.scan is None:
            verb = "reading" if job == "open" else "preparing"
            detail = f" ({state.message})" if state.message and state.message != "starting" else ""
            self.active.setText(f"Active scan: {verb}...{detail}")

    def _on_selection(self, index) -> None:
        info = self.session.superpatch_info(index)
        self.selection_info.setText(describe(info) if info else "Nothing selected.")

    def _on_hover(self, info) -> None:
        self.hover_info.setText(f"Under the cursor: {describe(info)}" if info else "")

    # ---- choosing --------------------------------------------------------------------------------
    def _use_scan(self, row: int) -> None:
        layers = self.session.scan_layers()
        if 0 <= row < len(layers):
            call_safely(self.session.use_scan_layer, layers[row], wait=False)

    def _use_series(self, row: int) -> None:
        uid = self.series_combo.itemData(row)
        ctx = self.session.scan
        if uid is None or ctx is None:
            return
        from ..._io import open_series

        call_safely(open_series, self.session, ctx.layer, uid)

    def _open_sample(self) -> None:
        self.viewer.open_sample("napari-nemesis", "abdomen_ct")


def describe(info: dict) -> str:
    """One superpatch's place and what the features know about it (the hover columns)."""
    lo, hi = info["world_min_zyx"], info["world_max_zyx"]
    parts = [f"superpatch {info['index']}, grid (z y x) {','.join(map(str, info['grid_zyx']))}; "
             f"z {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f}, x {lo[2]:.0f}..{hi[2]:.0f} mm (LPS)"]
    extras = [f"{k} {float(v):.2f}" if isinstance(v, (float, np.floating)) else f"{k} {v}"
              for k, v in info.items() if k not in ("index", "grid_zyx", "world_min_zyx", "world_max_zyx")
              and not (isinstance(v, (float, np.floating)) and np.isnan(v))]
    if extras:
        parts.append("; ".join(extras))
    return "\n".join(parts)
