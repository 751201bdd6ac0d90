"""Training dock: mode, data, schedule; Train / Stop / Resume; progress, ETA, the live plot; the result;
the label-efficiency curve (AUROC against the number of labels, with its spread)."""

from __future__ import annotations

import time

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QGridLayout, QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, \
    QLabel, QLineEdit, QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget

from ..._settings import DEVICES
from ..._controls import call_safely, fixed_lines_label, follow, set_progress
from ..._dock import NemesisDock
from .controller import MODE_TITLES, MODES, TrainingConfig

#: What "steps" counts in each mode, and the command's default.
STEP_UNITS = {"linear": ("full-batch steps", 200), "finetune": ("epochs", 8), "pretrain": ("steps", 200)}
#: The plot is redrawn at most this often (ms): drawing costs the GUI thread a few ms.
PLOT_REDRAW_MS = 400
#: While a run goes on, its progress text is rewritten at most this often (s).
TEXT_REFRESH_S = 1.0


class TrainingWidget(NemesisDock):
    dock_title = "Training"

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.controller = self.session.feature("training")
        cfg = self.controller.config

        self.mode = QComboBox()
        self.mode.addItems([MODE_TITLES[m] for m in MODES])
        self.mode.setCurrentIndex(MODES.index(cfg.mode))
        self.mode.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.mode.setMinimumContentsLength(12)  # the long mode names never widen the dock past its area
        self.encoder = _path_row("the session's weights (bundled if none picked)", cfg.checkpoint, self._pick_encoder)
        self.use_project = QCheckBox("the labelling project")
        self.use_project.setChecked(cfg.use_project)
        self.project = _path_row("the Labelling dock's project", cfg.project, self._pick_project)
        self.dataset = _path_row("none (a folder of scans with label maps)", cfg.dataset, self._pick_dataset)
        self.label_ratio = QDoubleSpinBox()
        self.label_ratio.setRange(0.05, 1.0)
        self.label_ratio.setSingleStep(0.05)
        self.label_ratio.setValue(cfg.label_ratio)
        self.label_ratio.setToolTip("Share of the dataset folder's labelled scans used (nested subsets, as "
                                    "'nemesis probe --label-ratio'); the project's labels are all used")
        self.steps = QSpinBox()
        self.steps.setRange(0, 10**7)
        self.steps.setSpecialValueText("default")
        self.steps.setValue(cfg.steps)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(0.0, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setSpecialValueText("default")
        self.lr.setValue(cfg.lr)
        self.batch = QSpinBox()
        self.batch.setRange(0, 256)
        self.batch.setSpecialValueText("default")
        self.batch.setValue(cfg.batch)
        self.device = QComboBox()
        self.device.addItems(list(DEVICES))
        self.device.setCurrentText(cfg.device)
        self.out = _path_row("PROJECT/runs/<mode>-<date-time>", cfg.out, self._pick_out)
        self.apply_when_done = QCheckBox("use the new head when done")
        self.apply_when_done.setToolTip("use the new head for the heatmaps when the run ends (if its held-out AUROC "
                                        "is not near chance)")
        self.apply_when_done.setChecked(cfg.apply_when_done)
        self.train_button = QPushButton("Train")
        self.stop_button = QPushButton("Stop")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue a stopped run where it saved: the last one, or the run in the "
                                      "output folder")
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setFormat("idle")
        self.eta = fixed_lines_label("", lines=2)
        self.status = fixed_lines_label("Runs in a separate process: napari stays responsive, and its memory "
                                    "(GPU included) is freed when it ends.", lines=4)
        self._shown_at = 0.0
        self.plot = LivePlot()
        self.use_new = QPushButton("Use the new weights")
        self.use_new.setToolTip("For this session; 'Keep' also starts the next sessions with them")
        self.keep_new = QPushButton("Keep")
        self.keep_new.setToolTip("Use the new weights now and in the next sessions")
        self.use_bundled = QPushButton("Bundled weights")
        self.use_bundled.setToolTip("Back to the bundled weights and probe head (the heatmaps are recomputed)")
        self.use_encoder = QPushButton("Use as encoder")
        self.use_encoder.setToolTip("A pretraining run's checkpoint becomes the encoder of the next run")
        self.curve_button = QPushButton("Compute curve")
        self.curve_button.setToolTip("Cross-validated AUROC of a linear probe trained on nested random subsets of "
                                     "the project's labels ('nemesis labels curve'): do more labels still help?")
        self.curve_cancel = QPushButton("Cancel")
        self.curve_cancel.setEnabled(False)
        self.curve_seeds = QSpinBox()
        self.curve_seeds.setRange(1, 20)
        self.curve_seeds.setValue(self.controller.curve.seeds)
        self.curve_seeds.setToolTip("random subsets per number of labels: the spread shown")
        self.curve_auto = QCheckBox("again on new labels")
        self.curve_auto.setToolTip("compute the curve again a few seconds after the labels change")
        self.curve_auto.setChecked(self.controller.curve.auto)
        self.curve_bar = QProgressBar()
        self.curve_bar.setTextVisible(True)
        self.curve_bar.setRange(0, 1)
        self.curve_bar.setValue(0)
        self.curve_bar.setFormat("idle")
        self.curve_plot = CurvePlot()
        self.curve_status = fixed_lines_label("How the held-out AUROC grows with the number of labelled superpatches, "
                                          "on this project's own labels.", lines=9)

        what = QGroupBox("What to train")
        form = QFormLayout(what)
        form.addRow("mode", self.mode)
        form.addRow("encoder", self.encoder)
        data = QGroupBox("Data")
        data_form = QFormLayout(data)
        data_form.addRow(self.use_project, self.project)
        data_form.addRow("dataset folder", self.dataset)
        data_form.addRow("label ratio", self.label_ratio)
        schedule = QGroupBox("Schedule")
        schedule_form = QFormLayout(schedule)
        self.steps_label = "steps"
        schedule_form.addRow("steps", self.steps)
        schedule_form.addRow("learning rate", self.lr)
        schedule_form.addRow("batch", self.batch)
        schedule_form.addRow("device", self.device)
        schedule_form.addRow("output folder", self.out)
        self._schedule_form = schedule_form
        for f in (form, data_form, schedule_form):  # a narrow dock puts a field under its label, never cuts it off
            f.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        buttons = QHBoxLayout()
        for button in (self.train_button, self.stop_button, self.resume_button):
            buttons.addWidget(button)
        result = QGridLayout()  # three rows: two long buttons side by side would widen the dock
        result.addWidget(self.use_new, 0, 0)
        result.addWidget(self.keep_new, 0, 1)
        result.addWidget(self.use_bundled, 1, 0, 1, 2)
        result.addWidget(self.use_encoder, 2, 0, 1, 2)

        layout = self.layout_
        layout.addWidget(what)
        layout.addWidget(data)
        layout.addWidget(schedule)
        layout.addWidget(self.apply_when_done)
        layout.addLayout(buttons)
        layout.addWidget(self.bar)
        layout.addWidget(self.eta)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        layout.addLayout(result)
        curve = QGroupBox("Label-efficiency curve")
        curve_layout = QVBoxLayout(curve)
        curve_row = QGridLayout()
        curve_row.addWidget(self.curve_button, 0, 0)
        curve_row.addWidget(self.curve_cancel, 0, 1)
        seeds_row = QHBoxLayout()
        seeds_row.addWidget(QLabel("seeds"))
        seeds_row.addWidget(self.curve_seeds)
        seeds_row.addStretch(1)
        curve_row.addLayout(seeds_row, 1, 0, 1, 2)
        curve_row.addWidget(self.curve_auto, 2, 0, 1, 2)
        curve_layout.addLayout(curve_row)
        curve_layout.addWidget(self.curve_bar)
        curve_layout.addWidget(self.curve_plot)
        curve_layout.addWidget(self.curve_status)
        layout.addWidget(curve)
        self.add_hosted_panels()
        self.finish()

        self.mode.currentIndexChanged.connect(lambda _i: self._mode_changed())
        self.train_button.clicked.connect(lambda: call_safely(self.train))
        self.stop_button.clicked.connect(lambda: call_safely(self.controller.stop))
        self.resume_button.clicked.connect(lambda: call_safely(self.resume))
        self.use_new.clicked.connect(lambda: call_safely(self.controller.apply))
        self.keep_new.clicked.connect(lambda: call_safely(self.controller.keep))
        self.use_bundled.clicked.connect(lambda: call_safely(self.controller.use_bundled))
        self.use_encoder.clicked.connect(lambda: call_safely(self._use_encoder))
        self.dataset.edit.textChanged.connect(lambda _t: self._mode_changed())
        follow(self.controller.events.run, self._on_run, self)
        self.curve_button.clicked.connect(lambda: call_safely(self.compute_curve))
        self.curve_cancel.clicked.connect(self.controller.curve.cancel)
        self.curve_auto.toggled.connect(self.controller.curve.set_auto)
        self.curve_seeds.valueChanged.connect(self.controller.curve.set_seeds)
        follow(self.controller.events.curve, self._on_curve, self)
        self._mode_changed()
        self._on_run(self.controller.run)
        self._on_curve(self.controller.curve.view)

    # ---- the form ---------------------------------------------------------------------------------------
    def config(self) -> TrainingConfig:
        """The dock's fields as a :class:`TrainingConfig`."""
        return TrainingConfig(
            mode=MODES[self.mode.currentIndex()], use_project=self.use_project.isChecked(),
            project=self.project.text(), dataset=self.dataset.text(), steps=self.steps.value(),
            lr=self.lr.value(), label_ratio=self.label_ratio.value(), batch=self.batch.value(),
            device=self.device.currentText(), out=self.out.text(), checkpoint=self.encoder.text(),
            apply_when_done=self.apply_when_done.isChecked(),
        )

    def train(self):
        """What the Train button does."""
        return self.controller.start(self.config())

    def resume(self):
        """What the Resume button does: the run in the output folder if one is named there (e.g. a
        run stopped in an earlier napari session), else the last run."""
        return self.controller.resume(self.out.text() or None)

    def compute_curve(self):
        """What Compute curve does: the project and device of the form, the seeds beside the button."""
        return self.controller.curve.start(self.config(), seeds=self.curve_seeds.value())

    def _on_curve(self, view) -> None:
        running = view.running
        self.curve_button.setEnabled(not running)
        self.curve_cancel.setEnabled(running)
        if running:
            set_progress(self.curve_bar, max(1, view.total), min(view.done, max(1, view.total)),
                         "%v/%m" if view.total else "starting")
        else:
            done = max(1, view.total)
            set_progress(self.curve_bar, done, done if view.status == "done" else min(view.done, done),
                         str(view.status))
        self.curve_plot.show_points(view.points, view.result)
        text = _curve_text(view)
        if view.stale and not running:
            text = "labels changed since: Compute curve again. " + text
        _set(self.curve_status.setText, text, self.curve_status.text())
        estimate = (view.result or {}).get("estimate")
        self.curve_status.setToolTip(f"{text} Held out: {estimate}." if estimate else text)

    def _mode_changed(self) -> None:
        mode = MODES[self.mode.currentIndex()]
        unit, default = STEP_UNITS[mode]
        label = self._schedule_form.labelForField(self.steps)
        if label is not None:
            label.setText(unit)
        self.steps.setSpecialValueText(f"default ({default})")
        self.label_ratio.setEnabled(mode != "pretrain" and bool(self.dataset.text()))
        self.use_project.setText("the project's scans" if mode == "pretrain" else "the labelling project")
        self.apply_when_done.setEnabled(mode != "pretrain")

    def _use_encoder(self) -> None:
        self.encoder.setText(self.controller.use_as_encoder())
        self.mode.setCurrentIndex(MODES.index("linear"))

    def _pick(self, row, title: str, folder: bool) -> None:
        if folder:
            path = QFileDialog.getExistingDirectory(self, title, row.text())
        else:
            path, _ = QFileDialog.getOpenFileName(self, title, row.text(), "safetensors (*.safetensors)")
        if path:
            row.setText(path)

    def _pick_encoder(self) -> None:
        self._pick(self.encoder, "NEMESIS checkpoint", folder=False)

    def _pick_project(self) -> None:
        self._pick(self.project, "Labelling project folder", folder=True)

    def _pick_dataset(self) -> None:
        self._pick(self.dataset, "Dataset folder (BTCV layout, nnU-Net layout or a JSON list)", folder=True)

    def _pick_out(self) -> None:
        self._pick(self.out, "Run folder", folder=True)

    # ---- the run ----------------------------------------------------------------------------------------
    def _on_run(self, run) -> None:
        running = run is not None and run.running
        self.train_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.resume_button.setEnabled(not running)
        self.use_new.setEnabled(not running and run is not None and bool(run.head))
        self.keep_new.setEnabled(not running and run is not None and bool(run.head))
        self.use_encoder.setEnabled(not running and run is not None and bool(run.encoder))
        if run is None:
            return
        self.plot.show_run(run)
        now = time.monotonic()
        if running and now - self._shown_at < TEXT_REFRESH_S and run.status == self.bar.property("status"):
            return  # text at most once a second while it runs: each change repaints part of the dock
        self._shown_at = now
        self.bar.setProperty("status", run.status)
        set_progress(self.bar, max(1, run.total), min(run.step, max(1, run.total)),
                     f"{run.status}: %v/%m" if run.total else run.status)
        eta = f"; about {_duration(run.eta_s)} left" if running and run.eta_s is not None else ""
        where = f" (pid {self.controller.pid})" if running and self.controller.pid else ""
        _set(self.eta.setText, f"{MODE_TITLES[run.mode]}{where}, {_duration(run.elapsed_s)} so far{eta}; run folder "
             f"{run.out}", self.eta.text())
        _set(self.status.setText, run.message, self.status.text())
        self.status.setToolTip(run.message)


class LivePlot(QWidget):
    """Training loss and held-out AUROC against the step (matplotlib in the dock).

    At most every :data:`PLOT_REDRAW_MS`, with the points that arrived meanwhile. The axes, ticks
    and labels (what makes a matplotlib draw cost tens of ms, more on a busy CPU) are drawn only
    when a limit changes: the x-axis spans the run's steps and the loss axis only grows. Otherwise
    the lines are drawn over the saved background (blitting), which takes about a millisecond, so
    the plot never makes napari stutter. Nothing is drawn while the dock is hidden.
    """

    def __init__(self) -> None:
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.4, 2.3), dpi=90)
        self.figure.subplots_adjust(left=0.15, right=0.85, bottom=0.2, top=0.88)  # fixed: no layout pass
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(190)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.loss_axes = self.figure.add_subplot(111)
        self.auroc_axes = self.loss_axes.twinx()
        (self.loss_line,) = self.loss_axes.plot([], [], color="tab:blue", lw=1.0, label="training loss",
                                                animated=True)
        (self.auroc_line,) = self.auroc_axes.plot([], [], color="tab:orange", marker="o", ms=4, lw=1.2,
                                                  label="held-out AUROC", animated=True)
        self.loss_axes.set_xlabel("step", fontsize=8)
        self.loss_axes.set_ylabel("loss", fontsize=8, color="tab:blue")
        self.auroc_axes.set_ylabel("AUROC", fontsize=8, color="tab:orange")
        self.auroc_axes.set_ylim(0.0, 1.05)
        for ax in (self.loss_axes, self.auroc_axes):
            ax.tick_params(labelsize=7)
            ax.locator_params(nbins=4)  # fewer tick labels: text is most of a full draw's cost
        self._run = None
        self._drawn = None
        self._limits = None
        self._background = None
        self.draws = 0  # updates that showed new points
        self.full_draws = 0  # of those, the ones that redrew the axes
        self.canvas.mpl_connect("draw_event", self._on_draw)
        self._timer = QTimer(self)
        self._timer.setInterval(PLOT_REDRAW_MS)
        self._timer.timeout.connect(self._redraw)
        self._timer.start()

    def show_run(self, run) -> None:
        """Remember the run; its new points are drawn at the next redraw tick."""
        self._run = run

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        self._drawn = None  # shown again: bring it up to date at the next tick

    def _on_draw(self, _event) -> None:
        """After a full draw (axes only: the lines are animated): keep the background, add the lines."""
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        self._draw_lines()

    def _draw_lines(self) -> None:
        self.loss_axes.draw_artist(self.loss_line)
        self.auroc_axes.draw_artist(self.auroc_line)

    def _limits_for(self, run) -> tuple:
        top = max(run.loss) if run.loss else 1.0
        current = self._limits[1] if self._limits is not None and self._limits[3] == id(run) else 0.0
        loss_top = current if 0.0 < top <= current else 1.25 * top if top > 0 else 1.0
        return (max(1, run.total, run.step), loss_top, run.mode, id(run))

    def _redraw(self) -> None:
        run = self._run
        if run is None or not self.isVisible():
            return
        key = (len(run.loss), len(run.auroc), id(run), run.total)
        if key == self._drawn:
            return
        self._drawn = key
        self.loss_line.set_data(run.loss_steps, run.loss)
        self.auroc_line.set_data(run.auroc_steps, run.auroc)
        limits = self._limits_for(run)
        if not (run.loss or run.auroc) and self._background is not None:
            limits = self._limits  # a new run without points yet: clear the lines, keep the axes
        if limits != self._limits or self._background is None:
            self._limits = limits
            self.loss_axes.set_xlim(0, limits[0])
            self.loss_axes.set_ylim(0.0, limits[1])
            self.canvas.draw()  # the axes; _on_draw keeps them as the background and adds the lines
            self.full_draws += 1
        else:
            self.canvas.restore_region(self._background)
            self._draw_lines()
            self.canvas.blit(self.figure.bbox)
        self.draws += 1


class CurvePlot(QWidget):
    """The label-efficiency curve: mean AUROC over seeds against the labelled superpatches (log
    scale), a bar of one standard deviation at each point and the band from the lowest to the
    highest seed. Drawn again only when a point arrives (a few times a run), and not while hidden."""

    def __init__(self) -> None:
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.4, 2.2), dpi=90)
        self.figure.subplots_adjust(left=0.2, right=0.96, bottom=0.21, top=0.92)  # fixed: no layout pass
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.axes = self.figure.add_subplot(111)
        self._points: list = []
        self._result = None
        self._drawn = None
        self.draws = 0
        self._style()
        self.canvas.draw_idle()

    def _style(self) -> None:
        ax = self.axes
        ax.set_xlabel("labelled superpatches", fontsize=8)
        ax.set_ylabel("held-out AUROC", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3, lw=0.5)

    def show_points(self, points, result=None) -> None:
        """Draw these points (dicts of ``label_curve``) if they changed and the plot is visible."""
        self._points = list(points or [])
        self._result = result
        if self.isVisible():
            self._redraw()

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        self._redraw()

    def _redraw(self) -> None:
        points = [p for p in self._points if p.get("auroc_mean") is not None]
        key = tuple((p["labelled"], p["auroc_mean"], p["auroc_std"]) for p in points) + (len(self._points),)
        if key == self._drawn:
            return
        self._drawn = key
        import numpy as np

        ax = self.axes
        ax.clear()
        self._style()
        if points:
            n = np.asarray([p["labelled"] for p in points], dtype=float)
            mean = np.asarray([p["auroc_mean"] for p in points])
            std = np.asarray([p["auroc_std"] or 0.0 for p in points])
            lo = np.asarray([p["auroc_min"] for p in points])
            hi = np.asarray([p["auroc_max"] for p in points])
            ax.fill_between(n, lo, hi, color="tab:orange", alpha=0.18, lw=0, label="lowest to highest seed")
            ax.errorbar(n, mean, yerr=std, color="tab:orange", marker="o", ms=4, lw=1.3, capsize=2,
                        label="mean ± std over seeds")
            ax.set_xscale("log", base=2)
            ax.set_xlim(n.min() / 1.3, n.max() * 1.3)
            from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

            ax.xaxis.set_major_locator(FixedLocator(n))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            bottom = max(0.0, min(0.5, float(lo.min()) - 0.05))
            ax.set_ylim(bottom, 1.02)
            ax.legend(fontsize=6, loc="best", frameon=False)
        else:
            ax.set_ylim(0.4, 1.02)
            ax.text(0.5, 0.5, "no curve yet" if not self._points else "AUROC undefined", ha="center",
                    va="center", transform=ax.transAxes, fontsize=8, color="grey")
        self.canvas.draw_idle()
        self.draws += 1


class _PathRow(QWidget):
    """A path field with a browse button."""

    def __init__(self, placeholder: str, text: str, pick) -> None:
        super().__init__()
        self.edit = QLineEdit(text)
        self.edit.setPlaceholderText(placeholder)
        browse = QPushButton("...")
        browse.setMaximumWidth(32)
        browse.clicked.connect(pick)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(browse)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's name)
        self.edit.setText(text)


def _curve_text(view) -> str:
    """What the dock says under the curve: its last point, how it was estimated, the trend."""
    result = view.result
    if view.running or result is None or result.get("status") != "ok" or not result["points"]:
        return view.message
    last = result["points"][-1]
    if last["auroc_mean"] is None:
        return view.message
    hint = result["trend"]["hint"]
    return (f"AUROC {last['auroc_mean']:.3f} ± {last['auroc_std']:.3f} with {last['labelled']} labels, "
            f"{result['seeds']} seed(s). {hint[:1].upper()}{hint[1:]}.")


def _set(setter, value, current) -> None:
    """Call a Qt setter only when the value changes (each call repaints, a text may re-lay out)."""
    if value != current:
        setter(*value) if isinstance(value, tuple) else setter(value)


def _path_row(placeholder: str, text: str, pick) -> _PathRow:
    return _PathRow(placeholder, text, pick)


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

