"""Organ probabilities dock: weights, the level (superpatch or patch), Run, organ heatmap toggles, the
superpatch table, the bars, the patch under the cursor."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QCheckBox, QComboBox, QFileDialog, QGridLayout, QGroupBox, \
    QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from ....data import ORGAN_NAMES
from ... import _layers as L
from ..._controls import DeviceRow, RunControls, call_safely, follow, wrapped_label
from ..._dock import NemesisDock
from .controller import JOB

#: What each level's Compute gives (the level chooser's tooltip and the empty summary).
_LEVEL_HELP = {
    "superpatch": "one probability per organ for every superpatch (128\u00b3 voxels, about 19 cm)",
    "patch": "organ maps at patch resolution: one probability per organ for every 16\u00b3-voxel patch "
             "(about 24 mm), and per superpatch the max of its patches",
}


class ProbabilitiesWidget(NemesisDock):
    dock_title = "Organ probabilities"

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.controller = self.session.feature("probabilities")
        settings = self.session.settings

        self.checkpoint = QLineEdit(self.session.weights.checkpoint or "")
        self.checkpoint.setPlaceholderText("bundled small model")
        self.probe = QLineEdit(self.session.weights.probe or "")
        self.probe.setPlaceholderText("bundled probe head")
        self.apply_weights = QPushButton("Use these weights")
        self.batch = QSpinBox()
        self.batch.setRange(1, 64)
        self.batch.setValue(settings.batch)
        self.device = DeviceRow(self.session)
        from ....model.levels import HEAD_LEVELS  # here, not when napari imports the manifest's modules

        self.level = QComboBox()
        for level in HEAD_LEVELS:
            self.level.addItem(level, level)
            self.level.setItemData(self.level.count() - 1, _LEVEL_HELP.get(level, level), Qt.ItemDataRole.ToolTipRole)
        self.level.setCurrentIndex(HEAD_LEVELS.index(self.controller.level))
        self.level.setToolTip("superpatch: one value per 128\u00b3 box; patch: one per 16\u00b3 patch "
                              "(the patch-level head: the bundled one, or a patch-level head picked as the probe)")
        self.controls = RunControls(self.session, JOB, "Compute", self.run)
        self.summary = wrapped_label(self._empty_summary())
        self.table_caption = wrapped_label("")
        self.patch_info = wrapped_label("")
        self.organ_boxes = {organ: QCheckBox(organ.replace("_", " ")) for organ in ORGAN_NAMES}
        self.table = QTableWidget(0, 2 + len(ORGAN_NAMES))
        self.table.setHorizontalHeaderLabels(["sp", "z,y,x"] + [_short(o) for o in ORGAN_NAMES])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        # fixed heights: filling the table or drawing the bars never re-lays out the dock (a resize of the
        # bars redraws the matplotlib figure in the same stall as the canvas's frame)
        self.table.setFixedHeight(190)
        self.bars = _Bars()

        weights_box = QGroupBox("Weights")
        weights = QGridLayout(weights_box)
        for row, (label, edit, pick) in enumerate((("checkpoint", self.checkpoint, self._pick_checkpoint),
                                                   ("probe head", self.probe, self._pick_probe))):
            browse = QPushButton("...")
            browse.setMaximumWidth(32)
            browse.clicked.connect(pick)
            weights.addWidget(QLabel(label), row, 0)
            weights.addWidget(edit, row, 1)
            weights.addWidget(browse, row, 2)
        weights.addWidget(self.apply_weights, 2, 0, 1, 3)
        batch_row = QHBoxLayout()
        batch_row.addWidget(QLabel("batch"))
        batch_row.addWidget(self.batch)
        batch_row.addStretch(1)
        weights.addLayout(batch_row, 3, 0, 1, 3)
        weights.addWidget(self.device, 4, 0, 1, 3)

        level_row = QHBoxLayout()
        level_row.addWidget(QLabel("level"))
        level_row.addWidget(self.level, 1)

        organs_box = QGroupBox("Heatmaps")
        organs = QGridLayout(organs_box)
        for k, (organ, box) in enumerate(self.organ_boxes.items()):
            r, g, b = L.ORGAN_COLORS.get(organ, (1, 1, 1))
            box.setStyleSheet(f"QCheckBox {{ color: rgb({int(255 * r)}, {int(255 * g)}, {int(255 * b)}); }}")
            box.setChecked(organ in self.controller.visible_organs)
            box.toggled.connect(lambda on, o=organ: self.controller.set_organ_visible(o, on))
            organs.addWidget(box, k // 2, k % 2)

        layout = self.layout_
        layout.addWidget(weights_box)
        layout.addLayout(level_row)
        layout.addWidget(self.controls)
        layout.addWidget(self.patch_info)
        layout.addWidget(self.summary)
        layout.addWidget(organs_box)
        layout.addWidget(self.table_caption)
        layout.addWidget(self.table)
        layout.addWidget(self.bars)
        self.add_hosted_panels()
        self.finish()

        self.apply_weights.clicked.connect(self._apply_weights)
        self.batch.valueChanged.connect(lambda v: self.session.update_settings(batch=int(v)))
        self.table.cellClicked.connect(self._row_clicked)
        self.level.currentIndexChanged.connect(self._level_picked)
        follow(self.controller.events.level, self._on_level, self)
        follow(self.controller.events.patch_hover, self._on_patch_hover, self)
        events = self.session.events
        follow(events.probabilities, self._on_probabilities, self)
        follow(events.selection, self._on_selection, self)
        follow(events.settings, self._on_settings, self)
        if self.controller.result is not None:
            self._on_probabilities(self.controller.result)

    def run(self):
        """What the Compute button does (no waiting: the GUI stays live)."""
        return self.session.run_probabilities(wait=False)

    # ---- the level --------------------------------------------------------------------------------
    def _level_picked(self, row: int) -> None:
        level = self.level.itemData(row)
        if level and level != self.controller.level:
            call_safely(self.controller.set_level, level)

    def _on_level(self, level: str) -> None:
        row = self.level.findData(level)
        if row >= 0 and row != self.level.currentIndex():
            self.level.blockSignals(True)
            self.level.setCurrentIndex(row)
            self.level.blockSignals(False)

    def _empty_summary(self) -> str:
        level = self.controller.level
        return f"{level.capitalize()} level. Press Compute: {_LEVEL_HELP.get(level, level)}."

    def _on_patch_hover(self, info) -> None:
        if info is None:
            self.patch_info.setText("")
            return
        probs = sorted(info["probabilities"].items(), key=lambda kv: -kv[1])
        top = ", ".join(f"{o.replace('_', ' ')} {p:.2f}" for o, p in probs[:3])
        self.patch_info.setText(f"Under the cursor: patch {','.join(map(str, info['patch_zyx']))} (z,y,x) of "
                                f"superpatch {info['superpatch']}: {top}")

    # ---- weights ----------------------------------------------------------------------------------
    def _pick_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "NEMESIS checkpoint", self.checkpoint.text(),
                                              "safetensors (*.safetensors)")
        if path:
            self.checkpoint.setText(path)

    def _pick_probe(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Probe head", self.probe.text(), "safetensors (*.safetensors)")
        if path:
            self.probe.setText(path)

    def _apply_weights(self) -> None:
        call_safely(self.session.set_weights, self.checkpoint.text().strip() or None,
                    self.probe.text().strip() or None, wait=False)

    def _on_settings(self, settings) -> None:
        weights = self.session.weights  # in use: the remembered ones, or this session's
        self.checkpoint.setText(weights.checkpoint or "")
        self.probe.setText(weights.probe or "")
        if self.batch.value() != settings.batch:
            self.batch.setValue(settings.batch)

    # ---- results ----------------------------------------------------------------------------------
    def _on_probabilities(self, result) -> None:
        self.table.setRowCount(0)
        if result is None:
            self.summary.setText(self._empty_summary())
            self.table_caption.setText("")
            self.patch_info.setText("")
            self.bars.show_values(None, None)
            return
        grid = self.session.scan.grid
        values = result.values
        self.table.setColumnCount(2 + len(result.organs))
        self.table.setHorizontalHeaderLabels(["sp", "z,y,x"] + [_short(o) for o in result.organs])
        self.table.setRowCount(len(values))
        for i, row in enumerate(values):
            self.table.setItem(i, 0, _item(str(i)))
            self.table.setItem(i, 1, _item(",".join(map(str, grid.grid_index(i)))))
            for k, p in enumerate(row):
                cell = _item(f"{p:.2f}")
                if p >= result.threshold:
                    cell.setBackground(QColor(255, 220, 120))
                    cell.setForeground(QColor(0, 0, 0))
                self.table.setItem(i, 2 + k, cell)
        self.table.resizeColumnsToContents()
        per_patch = result.patch_values is not None
        counted = result.patch_values[result.inside] if per_patch else values  # (patches or superpatches, K)
        present = [f"{o.replace('_', ' ')} ({int((counted[:, k] >= result.threshold).sum())})"
                   for k, o in enumerate(result.organs) if (counted[:, k] >= result.threshold).any()]
        trust = (f" The head's AUROC on {result.auroc_on}: {result.auroc:.2f}." if result.auroc is not None
                 else " The head records no held-out AUROC.")
        if result.warnings:
            trust += " Trust these less: " + "; ".join(result.warnings) + "."
        kept = "" if self.session.weights_remembered else " (this session only)"
        if per_patch:
            sz, sy, sx = (result.patch * float(v) for v in self.session.scan.prepared.pre.spacing_zyx)
            what = (f"Patch level: {result.n_patches} patches of {result.patch}\u00b3 voxels ({sx:g} x {sy:g} x "
                    f"{sz:g} mm) in {len(values)} superpatches")
            unit = "patches"
            self.table_caption.setText("Per superpatch: the max of its patches (patch level)")
        else:
            what, unit = f"Superpatch level: {len(values)} superpatches", "superpatches"
            self.table_caption.setText("Per superpatch (superpatch level)")
        self.summary.setText(
            f"{what} on {result.device} with {result.describe_weights()}{kept}. Present "
            f"(p >= {result.threshold:g}, {unit}): {', '.join(present) or 'none'}.{trust}")
        self._on_selection(self.session.selected)

    def _on_selection(self, index) -> None:
        result = self.controller.result
        if index is not None and index < self.table.rowCount():
            self.table.blockSignals(True)
            self.table.selectRow(index)
            self.table.blockSignals(False)
        if result is None or index is None:
            self.bars.show_values(None, None)
        else:
            from ....model.levels import DEFAULT_LEVEL

            title = f"superpatch {index}" if result.level == DEFAULT_LEVEL else \
                f"superpatch {index}: max of its patches"
            self.bars.show_values(result.organs, result.values[index], result.threshold, title=title)

    def _row_clicked(self, row: int, _column: int) -> None:
        self.session.select(row)
        self.session.centre_on(row)


class _Bars(QWidget):
    """The selected superpatch's probabilities as horizontal bars (matplotlib in the dock)."""

    def __init__(self) -> None:
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.2), dpi=90, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setFixedHeight(180)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.axes = self.figure.add_subplot(111)
        self.show_values(None, None)

    def show_values(self, organs, values, threshold: float = 0.5, title: str = "") -> None:
        ax = self.axes
        ax.clear()
        if organs is None:
            ax.text(0.5, 0.5, "select a superpatch", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        else:
            ax.set_axis_on()
            y = np.arange(len(organs))
            colors = [L.ORGAN_COLORS.get(o, (0.6, 0.6, 0.6)) for o in organs]
            ax.barh(y, values, color=colors)
            ax.axvline(threshold, color="0.4", lw=0.8, ls="--")
            ax.set_yticks(y, [o.replace("_", " ") for o in organs], fontsize=8)
            ax.invert_yaxis()
            ax.set_xlim(0, 1)
            ax.tick_params(axis="x", labelsize=8)
            ax.set_title(title, fontsize=9)
        self.canvas.draw_idle()


def _item(text: str) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
    return item


def _short(organ: str) -> str:
    return {"gallbladder": "gallb", "left_kidney": "kid L", "right_kidney": "kid R", "pancreas": "panc",
            "stomach": "stom"}.get(organ, organ)
