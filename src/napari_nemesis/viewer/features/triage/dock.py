"""Triage dock: what to triage (scans, folders, projects), the mask, Run, the ranking; a click on a
row opens that scan at that superpatch. The similarity search's panel sits here too."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QAbstractItemView, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGridLayout, \
    QGroupBox, QListWidget, QPushButton, QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout

from ..._controls import RunControls, call_safely, follow, wrapped_label
from ..._dock import NemesisDock
from .controller import JOB

_HELP = ("Ranks every superpatch of every scan by how much worse the model reconstructs it than anatomy it "
         "knows (see the score in the user guide). Click a row: the scan opens at that superpatch.")
_SHOWN = 200  # rows in the table (the JSON of `nemesis triage` has them all)


class TriageWidget(NemesisDock):
    dock_title = "Triage"

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.controller = self.session.feature("triage")
        from ....model.masking import DEFAULT_STRATEGY, menu_strategies  # not at napari start-up

        self.sources = QListWidget()
        self.sources.setFixedHeight(80)
        self.add_folder = QPushButton("Add folder...")
        self.add_files = QPushButton("Add scans...")
        self.add_open = QPushButton("Add open scans")
        self.clear = QPushButton("Clear")
        self.strategy = QComboBox()
        self.strategy.addItems(list(menu_strategies()))
        self.strategy.setCurrentText(DEFAULT_STRATEGY)
        self.ratio = QDoubleSpinBox()
        self.ratio.setRange(0.05, 0.95)
        self.ratio.setSingleStep(0.05)
        self.ratio.setValue(0.75)
        self.seeds = QSpinBox()
        self.seeds.setRange(1, 10)
        self.seeds.setValue(3)
        self.controls = RunControls(self.session, JOB, "Triage", self.run)
        self.summary = wrapped_label(_HELP)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["#", "scan", "sp", "score"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.setFixedHeight(220)

        what = QGroupBox("Scans to triage")
        what_layout = QVBoxLayout(what)
        what_layout.addWidget(self.sources)
        buttons = QGridLayout()  # two a row: the dock is narrow
        for k, button in enumerate((self.add_folder, self.add_files, self.add_open, self.clear)):
            buttons.addWidget(button, k // 2, k % 2)
        what_layout.addLayout(buttons)
        how = QGroupBox("Mask")
        form = QFormLayout(how)
        form.addRow("strategy", self.strategy)
        form.addRow("ratio", self.ratio)
        form.addRow("seeds", self.seeds)

        self.layout_.addWidget(what)
        self.layout_.addWidget(how)
        self.layout_.addWidget(self.controls)
        self.layout_.addWidget(self.summary)
        self.layout_.addWidget(self.table)
        self.add_hosted_panels()
        self.finish()

        self.add_folder.clicked.connect(self._pick_folder)
        self.add_files.clicked.connect(self._pick_files)
        self.add_open.clicked.connect(lambda: call_safely(self.controller.add_open_scans))
        self.clear.clicked.connect(self.controller.clear_sources)
        self.table.cellClicked.connect(lambda r, _c: call_safely(self.controller.open_entry, r))
        events = self.controller.events
        follow(events.sources, self._on_sources, self)
        follow(events.result, self._on_result, self)
        follow(events.message, lambda text: self.summary.setText(text), self)
        self._on_sources(self.controller.sources)
        if self.controller.result is not None:
            self._on_result(self.controller.result)

    def run(self):
        return call_safely(self.controller.run, self.strategy.currentText(), self.ratio.value(), self.seeds.value(),
                           wait=False)

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "A folder of scans or a labelling project")
        if folder:
            call_safely(self.controller.add_sources, [folder])

    def _pick_files(self) -> None:
        from ....data.formats import file_dialog_filter

        files, _ = QFileDialog.getOpenFileNames(self, "CT scans", "", file_dialog_filter("CT scans"))
        if files:
            call_safely(self.controller.add_sources, files)

    def _on_sources(self, sources) -> None:
        self.sources.clear()
        self.sources.addItems([str(s) for s in sources])

    def _on_result(self, result) -> None:
        self.table.setRowCount(0)
        if result is None:
            self.summary.setText(_HELP)
            return
        ranking = result.get("ranking", [])
        shown = ranking[:_SHOWN]
        self.table.setRowCount(len(shown))
        for r, entry in enumerate(shown):
            score = entry.get("score")
            values = (str(r + 1), Path(str(entry["scan"])).name, str(entry["superpatch"]),
                      "-" if score is None else f"{float(score):.2f}")
            for c, text in enumerate(values):
                item = QTableWidgetItem(text)
                if c == 1:
                    item.setToolTip(str(entry["scan"]))
                if c == 3 and score is None:
                    item.setToolTip(str(entry.get("reason", "not scored")))
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
        scans = len({str(e["scan"]) for e in ranking})
        scored = sum(1 for e in ranking if e.get("score") is not None)
        self.summary.setText(f"{scored} superpatches of {scans} scan(s) ranked, most surprising first; "
                             f"{len(ranking) - scored} not scored (mostly padding), listed last"
                             + (f" (the first {_SHOWN} shown)" if len(ranking) > _SHOWN else "")
                             + ". Click a row to open it.")
