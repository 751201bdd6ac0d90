"""Find similar (hosted in the Triage dock): where to search, k, the button, the neighbours."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QAbstractItemView, QFileDialog, QGroupBox, QHBoxLayout, QLineEdit, QPushButton, QSpinBox, \
    QTableWidget, QTableWidgetItem, QVBoxLayout

from ..._controls import RunControls, call_safely, follow, wrapped_label
from .controller import JOB

HELP = ("Select a superpatch, choose where to search (a folder of scans or a labelling project) and press "
        "Find similar: the nearest superpatches of the other scans in the encoder's feature space. Click one: "
        "it is shown under the canvas.")


class SimilarPanel(QGroupBox):
    def __init__(self, session, parent=None) -> None:
        super().__init__("Find similar anatomy", parent)
        self.session = session
        self.controller = session.feature("similar")
        self.among = QLineEdit()
        self.among.setPlaceholderText("a folder of scans or a project")
        browse = QPushButton("...")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._pick)
        self.k = QSpinBox()
        self.k.setRange(1, 50)
        self.k.setValue(self.controller.k)
        self.controls = RunControls(session, JOB, "Find similar", self.run)
        self.info = wrapped_label(HELP)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["scan", "sp", "similarity"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.setFixedHeight(150)
        row = QHBoxLayout()
        row.addWidget(self.among, 1)
        row.addWidget(browse)
        row.addWidget(self.k)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.controls)
        layout.addWidget(self.info)
        layout.addWidget(self.table)
        self.table.cellClicked.connect(lambda r, _c: call_safely(self.controller.show_neighbour, r))
        follow(self.controller.events.result, self._on_result, self)
        follow(self.controller.events.message, lambda text: self.info.setText(text), self)

    def _pick(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Scans to search (a folder or a labelling project)")
        if folder:
            self.among.setText(folder)

    def run(self):
        def go():
            text = self.among.text().strip()
            self.controller.set_among([text] if text else [])
            self.controller.k = int(self.k.value())
            return self.controller.run(wait=False)

        return call_safely(go)

    def _on_result(self, result) -> None:
        self.table.setRowCount(0)
        if result is None:
            self.info.setText(HELP)
            return
        neighbours = result.get("neighbours", [])
        self.table.setRowCount(len(neighbours))
        for r, n in enumerate(neighbours):
            for c, text in enumerate((Path(str(n["scan"])).name, str(n["superpatch"]), f"{float(n['similarity']):.3f}")):
                item = QTableWidgetItem(text)
                if c == 0:
                    item.setToolTip(str(n["scan"]))
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
        self.info.setText(f"{len(neighbours)} nearest superpatches, most similar first. Click one to see it.")
