"""Project dock: the labelling project's scans and their counts, the next scan, adding a folder."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtGui import QFont
from qtpy.QtWidgets import QAbstractItemView, QFileDialog, QGridLayout, QGroupBox, QHeaderView, QPushButton, \
    QTableWidget, QTableWidgetItem, QVBoxLayout

from ....data import ORGAN_NAMES
from ..._controls import call_safely, fixed_lines_label, follow, wrapped_label
from ..._dock import NemesisDock

#: Where a scans-table row keeps its scan id.
_ID_ROLE = Qt.ItemDataRole.UserRole
#: The scans table's columns: header, status-row key (None: the scan id), tooltip.
SCAN_COLUMNS = (
    ("scan", None, "the scan's id in the project (double-click to open it)"),
    ("n", "superpatches", "superpatches in the scan's grid (- : not opened yet)"),
    ("labelled", "labelled", "labelled superpatches"),
    ("skipped", "skipped", "skipped superpatches"),
    ("todo", "unlabelled", "unlabelled superpatches (- : none labelled yet)"),
)


class ProjectWidget(NemesisDock):
    dock_title = "Project"

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.controller = self.session.feature("project")

        self.where = fixed_lines_label("", 1)
        self.summary = wrapped_label("")
        self.scans = QTableWidget(0, len(SCAN_COLUMNS))
        self.scans.setHorizontalHeaderLabels([c[0] for c in SCAN_COLUMNS])
        for k, (_title, _key, tip) in enumerate(SCAN_COLUMNS):
            self.scans.horizontalHeaderItem(k).setToolTip(tip)
        self.scans.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.scans.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.scans.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.scans.verticalHeader().setVisible(False)
        header = self.scans.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for k in range(1, len(SCAN_COLUMNS)):
            header.setSectionResizeMode(k, QHeaderView.ResizeMode.ResizeToContents)
        self.open_next = QPushButton("Open next unlabelled scan")
        self.open_next.setToolTip("The next scan of the project with superpatches left to label, after the one "
                                  "being labelled; opened as File > Open does")
        self.open_selected = QPushButton("Open selected")
        self.add_folder = QPushButton("Add scans from folder...")
        self.add_folder.setToolTip("Every scan file (and DICOM series folder) in a folder, or a dataset folder's "
                                   "images; files named like label maps are left out")
        self.refresh = QPushButton("Refresh")
        self.positives = QTableWidget(0, 3)
        self.positives.setHorizontalHeaderLabels(["organ", "this scan", "all scans"])
        self.positives.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.positives.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.positives.verticalHeader().setVisible(False)
        organ_header = self.positives.horizontalHeader()
        organ_header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for k in (1, 2):
            organ_header.setSectionResizeMode(k, QHeaderView.ResizeMode.ResizeToContents)
        for table in (self.scans, self.positives):
            table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 8)  # compact rows
            table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # fixed heights: the 8 BTCV organs and 6 scans fit, more scroll inside their table
        for table, rows in ((self.positives, len(ORGAN_NAMES)), (self.scans, 6)):
            table.setFixedHeight(table.horizontalHeader().sizeHint().height() + 2 * table.frameWidth() + 6
                                 + rows * table.verticalHeader().defaultSectionSize())
        self.message = fixed_lines_label("", 3)
        self.message.setText(self.controller.message)

        buttons = QGridLayout()
        buttons.addWidget(self.open_next, 0, 0, 1, 2)
        buttons.addWidget(self.open_selected, 1, 0)
        buttons.addWidget(self.refresh, 1, 1)
        buttons.addWidget(self.add_folder, 2, 0, 1, 2)
        organs = QGroupBox("Positives per organ")
        organs.setToolTip("labelled superpatches with the organ present: in the selected (or the labelled) scan, "
                          "and in all scans")
        QVBoxLayout(organs).addWidget(self.positives)

        layout = self.layout_
        layout.addWidget(self.where)
        layout.addWidget(self.summary)
        layout.addWidget(self.scans)
        layout.addLayout(buttons)
        layout.addWidget(organs)
        layout.addWidget(self.message)
        self.add_hosted_panels()
        self.finish()

        self.open_next.clicked.connect(lambda: call_safely(self.controller.open_next))
        self.open_selected.clicked.connect(lambda: call_safely(self._open_selected))
        self.add_folder.clicked.connect(lambda: call_safely(self._pick_folder))
        self.refresh.clicked.connect(lambda: call_safely(self.controller.refresh, wait=False))
        self.scans.cellDoubleClicked.connect(lambda row, _col: call_safely(self._open_row, row))
        self.scans.itemSelectionChanged.connect(self._show_positives)
        follow(self.controller.events.status, self._on_status, self)
        follow(self.controller.events.message, self._on_message, self)
        follow(self.session.events.labels, lambda _i: self._mark_active(), self)
        self._on_status(self.controller.status)

    # ---- actions ------------------------------------------------------------------------------------
    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of scans to add to the labelling project")
        if folder:
            self.controller.add_folder(folder, wait=False)

    def _selected_id(self) -> str | None:
        rows = self.scans.selectionModel().selectedRows()
        if not rows:
            return None
        item = self.scans.item(rows[0].row(), 0)
        return None if item is None else item.data(_ID_ROLE)

    def _open_selected(self) -> None:
        scan_id = self._selected_id()
        if scan_id is None:
            self.message.setText("select a scan in the table first")
            return
        self.controller.open_id(scan_id)

    def _open_row(self, row: int) -> None:
        item = self.scans.item(row, 0)
        if item is not None:
            self.controller.open_id(item.data(_ID_ROLE))

    # ---- showing ------------------------------------------------------------------------------------
    def _on_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.setToolTip(text)

    def _on_status(self, status) -> None:
        folder = self.controller.project_dir
        self.where.setText(f"labelling project: {folder.name}" if folder is not None else "no labelling project")
        self.where.setToolTip(f"{folder}: the project the Labelling dock labels into (pick another there)")
        self.open_next.setEnabled(status is not None)
        self.open_selected.setEnabled(status is not None and bool(status["scans"]))
        if status is None:
            self.scans.setRowCount(0)
            self.positives.setRowCount(0)
            self.summary.setText("No project in this folder yet: label a scan in the Labelling dock, or add scans "
                                 "from a folder, to start it.")
            return
        selected = self._selected_id()
        rows = status["scans"]
        self.scans.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, (_title, key, _tip) in enumerate(SCAN_COLUMNS):
                value = row["id"] if key is None else row[key]
                item = QTableWidgetItem("-" if value is None else str(value))
                if key is None:
                    item.setData(_ID_ROLE, row["id"])
                    tip = f"{row['image']}" + ("" if row.get("image_found", True) else " (image not found)")
                    item.setToolTip(tip)
                self.scans.setItem(r, c, item)
            if selected == row["id"]:
                self.scans.selectRow(r)
        totals = status["totals"]
        started = sum(1 for row in rows if row["superpatches"] is not None)
        following = status.get("next_unlabelled")
        text = (f"{len(rows)} scan(s): {totals['labelled']} labelled, {totals['skipped']} skipped, "
                f"{totals['unlabelled']} unlabelled superpatches")
        if started < len(rows):
            text += f" ({len(rows) - started} scan(s) not started)"
        text += f"; next: {following}" if following else "; every scan is done"
        self.summary.setText(text)
        self._mark_active()
        self._show_positives()

    def _mark_active(self) -> None:
        """The scan being labelled in bold."""
        active = self.controller.active_id()
        for r in range(self.scans.rowCount()):
            first = self.scans.item(r, 0)
            bold = first is not None and first.data(_ID_ROLE) == active
            for c in range(self.scans.columnCount()):
                item = self.scans.item(r, c)
                if item is not None and item.font().bold() != bold:
                    font = QFont(item.font())
                    font.setBold(bold)
                    item.setFont(font)

    def _show_positives(self) -> None:
        status = self.controller.status
        if status is None:
            self.positives.setRowCount(0)
            return
        scan_id = self._selected_id() or self.controller.active_id()
        row = self.controller.row(scan_id) if scan_id is not None else None
        self.positives.horizontalHeaderItem(1).setText(scan_id[:14] if scan_id else "this scan")
        organs = status["organs"]
        self.positives.setRowCount(len(organs))
        for r, organ in enumerate(organs):
            values = (organ.replace("_", " "), "-" if row is None else str(row["positives"][organ]),
                      str(status["totals"]["positives"][organ]))
            for c, value in enumerate(values):
                self.positives.setItem(r, c, QTableWidgetItem(value))

    def table_counts(self) -> dict[str, dict[str, str]]:
        """What the scans table shows, by scan id and column (for tests and scripts)."""
        out = {}
        for r in range(self.scans.rowCount()):
            scan_id = self.scans.item(r, 0).data(_ID_ROLE)
            out[scan_id] = {title: self.scans.item(r, c).text() for c, (title, _k, _t) in enumerate(SCAN_COLUMNS)}
        return out



