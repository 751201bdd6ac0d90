"""Labelling dock: the selected superpatch's organs, keys, progress, fill from a segmentation, label next."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QComboBox, QFileDialog, QGridLayout, QGroupBox, QLabel, \
    QLineEdit, QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget

from ....data.formats import file_dialog_filter
from ... import _layers as L
from ..._controls import PaintedText, call_safely, follow, set_progress, wrapped_label
from ..._dock import NemesisDock
from .controller import LabellingKeys

KEYS_HELP = ("Keys (while this dock has the focus, or on the canvas in labelling mode): 1-8 tick an organ, "
             "Enter = labelled, move on; s = skip; arrows / Page Up, Page Down = neighbour; n / p = next / "
             "previous unlabelled; Ctrl+Z = undo. Every change is saved at once.")


class LabellingWidget(NemesisDock):
    dock_title = "Labelling"

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.controller = self.session.feature("labelling")
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # a click on the dock gives it the keys

        self.saved_at = wrapped_label("")
        self.project = QLineEdit(str(self.controller.project_dir))
        self.project_browse = QPushButton("...")
        self.project_browse.setMaximumWidth(32)
        self.project_use = QPushButton("Use project")
        self.organ_list = QLineEdit(", ".join(self.controller.new_project_organs))
        self.organ_list.setToolTip("The organs of a new project (a project keeps its own list)")
        # painted in a box of fixed size: a QLabel's new text on every selection asked the dock for a
        # relayout, and a dock's relayout repaints the whole window in the click's frame
        self.title = PaintedText(lines=2, text="No superpatch selected.")
        self.organ_box = QGroupBox("Organs present")
        self.organ_grid = QGridLayout(self.organ_box)
        self.organ_checks: dict[str, QCheckBox] = {}
        self.accept_button = QPushButton("Labelled (Enter)")
        self.accept_button.setToolTip("Mark this superpatch labelled (the ticked organs present, the others "
                                      "absent) and move to the next unlabelled one")
        self.skip_button = QPushButton("Skip (s)")
        self.undo_button = QPushButton("Undo (Ctrl+Z)")
        self.previous_button = QPushButton("< Previous (p)")
        self.previous_button.setToolTip("The previous unlabelled superpatch")
        self.next_button = QPushButton("Next (n) >")
        self.next_button.setToolTip("The next unlabelled superpatch")
        self.label_next_button = QPushButton("Label next: most uncertain")
        self.label_next_button.setToolTip("The unlabelled superpatch the current probe is least sure about "
                                          "(highest mean binary entropy of its organ probabilities)")
        self.counter = QProgressBar()
        self.counter.setTextVisible(True)
        self.show_states = QCheckBox("colour by label state")
        self.show_states.setToolTip("Green: labelled; faint: skipped")
        self.show_states.setChecked(self.controller.show_states)
        self.canvas_keys = QCheckBox("labelling mode")
        self.canvas_keys.setToolTip("The labelling keys also work on the canvas")
        self.canvas_keys.setChecked(self.controller.keys_on_canvas)
        self.fill_layer = QComboBox()
        self.fill_button = QPushButton("Fill from layer")
        self.fill_file_button = QPushButton("Fill from file...")
        self.fill_overwrite = QCheckBox("overwrite hand labels")
        self.fill_threshold = QSpinBox()
        self.fill_threshold.setRange(1, 10**7)
        self.fill_threshold.setValue(100)
        self.fill_threshold.setSuffix(" voxels")
        self.fill_threshold.setToolTip("An organ is present in a superpatch holding at least this many of its "
                                       "voxels at the model's spacing (the core's presence rule)")
        self.message = wrapped_label("")

        project_box = QGroupBox("Labelling project")
        project_layout = QGridLayout(project_box)
        project_layout.addWidget(QLabel("folder"), 0, 0)
        project_layout.addWidget(self.project, 0, 1)
        project_layout.addWidget(self.project_browse, 0, 2)
        project_layout.addWidget(QLabel("new: organs"), 1, 0)
        project_layout.addWidget(self.organ_list, 1, 1, 1, 2)
        project_layout.addWidget(self.project_use, 2, 0, 1, 3)
        project_layout.addWidget(self.saved_at, 3, 0, 1, 3)

        label_box = QGroupBox("Selected superpatch")
        label_layout = QVBoxLayout(label_box)
        label_layout.addWidget(self.title)
        label_layout.addWidget(self.organ_box)
        buttons = QGridLayout()  # two to a row: three did not fit a dock at 1280 x 800
        for k, button in enumerate((self.accept_button, self.skip_button, self.previous_button, self.next_button)):
            buttons.addWidget(button, k // 2, k % 2)
        buttons.addWidget(self.undo_button, 2, 0, 1, 2)
        label_layout.addLayout(buttons)
        label_layout.addWidget(self.label_next_button)
        label_layout.addWidget(self.counter)
        label_layout.addWidget(self.show_states)
        label_layout.addWidget(self.canvas_keys)
        label_layout.addWidget(wrapped_label(KEYS_HELP))

        fill_box = QGroupBox("Fill from a segmentation")
        fill_box.setToolTip("Organ presence from a label map: review it, then correct by hand")
        fill_layout = QGridLayout(fill_box)
        fill_layout.addWidget(self.fill_layer, 0, 0, 1, 2)
        fill_layout.addWidget(self.fill_button, 1, 0)
        fill_layout.addWidget(self.fill_file_button, 1, 1)
        fill_layout.addWidget(QLabel("present from"), 2, 0)
        fill_layout.addWidget(self.fill_threshold, 2, 1)
        fill_layout.addWidget(self.fill_overwrite, 3, 0, 1, 2)

        layout = self.layout_
        layout.addWidget(project_box)
        layout.addWidget(label_box)
        layout.addWidget(fill_box)
        layout.addWidget(self.message)
        self.add_hosted_panels()
        self.finish()

        c = self.controller
        self.project_browse.clicked.connect(self._pick_project)
        self.project_use.clicked.connect(self._use_project)
        self.accept_button.clicked.connect(lambda: call_safely(c.act, "accept"))
        self.skip_button.clicked.connect(lambda: call_safely(c.act, "skip"))
        self.undo_button.clicked.connect(lambda: call_safely(c.act, "undo"))
        self.previous_button.clicked.connect(lambda: call_safely(c.act, "previous_unlabelled"))
        self.next_button.clicked.connect(lambda: call_safely(c.act, "next_unlabelled"))
        self.label_next_button.clicked.connect(lambda: call_safely(c.label_next, wait=False))
        self.show_states.toggled.connect(c.set_show_states)
        self.canvas_keys.toggled.connect(lambda on: setattr(c, "keys_on_canvas", bool(on)))
        self.fill_button.clicked.connect(self._fill_from_layer)
        self.fill_file_button.clicked.connect(self._fill_from_file)
        follow(c.events.store, self._on_store, self)
        follow(c.events.labels, lambda _i: self._show_selected(), self)
        follow(c.events.message, lambda text: self.message.setText(text), self)
        follow(self.session.events.selection, lambda _i: self._show_selected(), self)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.destroyed.connect(self._unhook)
        self.keys = LabellingKeys(c, self, self.viewer)
        self._refresh_layers()
        self._on_store(c.store)
        self.message.setText(c.message)

    # ---- layout reacts --------------------------------------------------------------------------------
    def _unhook(self, *_args) -> None:
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            try:
                ev.disconnect(self._refresh_layers)
            except (ValueError, RuntimeError):
                pass

    def _on_store(self, store) -> None:
        for box in self.organ_checks.values():
            self.organ_grid.removeWidget(box)
            box.deleteLater()
        self.organ_checks = {}
        self.project.setText(str(self.controller.project_dir))
        pending = self.controller.pending
        if store is None and pending is None:
            self.saved_at.setText(f"Labels are saved in the project {self.controller.project_dir} once a scan is open.")
        else:
            self.saved_at.setText(f"Saved at every change to {store.path}" if store is not None else
                                  f"Nothing saved yet: the first label starts this scan's labels in {pending.project_dir}")
            for k, organ in enumerate(self.controller.organs):
                box = QCheckBox(f"{k + 1}  {organ.replace('_', ' ')}" if k < 9 else organ.replace("_", " "))
                r, g, b = L.ORGAN_COLORS.get(organ, (1, 1, 1))
                box.setStyleSheet(f"QCheckBox {{ color: rgb({int(255 * r)}, {int(255 * g)}, {int(255 * b)}); }}")
                box.clicked.connect(lambda _on=False, i=k: call_safely(self.controller.act, "toggle", i))
                # one column: two of "2  gallbladder" / "5  right kidney" do not fit a dock at 1280 x 800
                self.organ_grid.addWidget(box, k, 0)
                self.organ_checks[organ] = box
            try:
                from ....labels import LabelProject

                self.fill_threshold.setValue(LabelProject.open(self.controller.project_dir).threshold)
            except Exception:  # noqa: BLE001 - the default stays
                pass
        self._show_selected()

    def _show_selected(self) -> None:
        c = self.controller
        store = c.store
        index = self.session.selected
        enabled = store is not None or c.pending is not None
        for widget in (self.accept_button, self.skip_button, self.undo_button, self.previous_button,
                       self.next_button, self.label_next_button, self.fill_button, self.fill_file_button):
            widget.setEnabled(enabled)
        if store is None:
            n = self.session.scan.n if self.session.scan is not None else 0
            for box in self.organ_checks.values():
                box.blockSignals(True)
                box.setChecked(False)
                box.blockSignals(False)
                box.setEnabled(c.pending is not None and index is not None)
            if c.pending is None:
                self.title.setText("No labels open: open a scan.")
                set_progress(self.counter, max(1, n), 0, "no labels open")
            else:
                set_progress(self.counter, max(1, n), 0, f"0 of {n} labelled")
                self.title.setText(f"superpatch {index}: unlabelled" if index is not None else
                                   "No superpatch selected: click one (or press n).")
            return
        counts = store.counts()
        set_progress(self.counter, store.n, counts["labelled"], f"{c.counter()}, {counts['skipped']} skipped")
        label = store.get(index) if index is not None and 0 <= index < store.n else None
        for organ, box in self.organ_checks.items():
            box.blockSignals(True)
            box.setChecked(label is not None and organ in label.organs)
            box.blockSignals(False)
            box.setEnabled(label is not None)
        if label is None:
            self.title.setText("No superpatch selected: click one (or press n).")
        else:
            zyx = ",".join(map(str, c.cursor.grid_position)) if c.cursor is not None else ""
            source = f", from the {label.source}" if label.source == "segmentation" else ""
            self.title.setText(f"superpatch {index} (grid z,y,x {zyx}): {label.state}{source}")

    def _refresh_layers(self, *_args) -> None:
        current = self.fill_layer.currentText()
        self.fill_layer.clear()
        names = [layer.name for layer in self.viewer.layers
                 if layer._type_string == "labels" and "nemesis_role" not in layer.metadata]
        self.fill_layer.addItems(names)
        if current in names:
            self.fill_layer.setCurrentText(current)

    # ---- buttons ------------------------------------------------------------------------------------
    def _pick_project(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Labelling project folder", self.project.text())
        if path:
            self.project.setText(path)
            self._use_project()

    def _use_project(self) -> None:
        organs = [o.strip() for o in self.organ_list.text().replace(";", ",").split(",") if o.strip()]
        call_safely(self.controller.set_project, self.project.text().strip(), organs or None, wait=False)

    def _fill_from_layer(self) -> None:
        name = self.fill_layer.currentText()
        if not name:
            self.message.setText("No Labels layer to fill from: open the scan's label map (File > Open) or "
                                 "fill from a file.")
            return
        layer = self.viewer.layers[name]
        call_safely(self.controller.fill, layer, self.fill_overwrite.isChecked(), self.fill_threshold.value(),
                    wait=False)

    def _fill_from_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Label map (BTCV, TotalSegmentator or AMOS ids)", "",
                                              file_dialog_filter("label maps"))
        if path:
            call_safely(self.controller.fill, path, self.fill_overwrite.isChecked(), self.fill_threshold.value(),
                        wait=False)
