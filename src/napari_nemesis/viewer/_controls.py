"""Small pieces the docks share: run controls, the device picker, safe signal hookups."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtGui import QPainter, QPalette
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QWidget

from ._runstate import CANCELLED, DONE, FAILED, RUNNING
from ._settings import DEVICES


def follow(signal, slot, owner: QWidget) -> None:
    """Connect a session signal to a widget's slot for as long as the widget lives."""
    signal.connect(slot)

    def _drop(*_args) -> None:
        try:
            signal.disconnect(slot)
        except (ValueError, RuntimeError):
            pass

    owner.destroyed.connect(_drop)


def call_safely(fn, *args, **kwargs):
    """Run a session call from a button: a user error becomes a notification, not a traceback."""
    from napari.utils.notifications import show_error

    from ..errors import NemesisError

    try:
        return fn(*args, **kwargs)
    except NemesisError as exc:
        show_error(" ".join(str(exc).split()))
    return None


def wrapped_label(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def lines_height(widget: QWidget, lines: int) -> int:
    """The height of ``lines`` lines of ``widget``'s font, with a descent above and below."""
    metrics = widget.fontMetrics()
    return lines * metrics.lineSpacing() + 2 * metrics.descent()


def fixed_lines_label(text: str, lines: int) -> QLabel:
    """A wrapped label of ``lines`` lines that never widens its dock (longer text is cut) nor
    re-lays it out when its text changes."""
    label = wrapped_label(text)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    label.setFixedHeight(lines_height(label, lines) + 4)
    return label


class PaintedText(QWidget):
    """Word-wrapped text painted into a box of ``lines`` lines, for text that changes as the cursor
    moves. A QLabel's new text asks its dock for a relayout (it might need other room), and a dock's
    relayout repaints the whole window (60-100 ms of a software-rendered one) in the cursor's
    frame; this box's size never depends on its text, so new text repaints the box alone. Text
    longer than the box is cut at its last line."""

    def __init__(self, lines: int, text: str = "") -> None:
        super().__init__()
        self._text = text
        self.setFixedHeight(lines_height(self, lines))
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)

    def text(self) -> str:
        return self._text

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's name)
        if text != self._text:
            self._text = text
            self.setToolTip(text)
            self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        try:
            painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
            flags = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop | Qt.TextFlag.TextWordWrap
            painter.drawText(self.rect(), int(flags.value if hasattr(flags, "value") else flags), self._text)
        finally:
            painter.end()


def set_progress(bar: QProgressBar, maximum: int, value: int, text: str) -> None:
    """Set a progress bar (range 0..``maximum``), painted with the next window update.
    ``QProgressBar.setValue`` repaints at once, and a repaint redraws the whole window (10-25 ms
    of a software-rendered one) inside whatever handler reported progress."""
    if (bar.maximum(), bar.value(), bar.format()) == (maximum, value, text) and bar.minimum() == 0:
        return
    bar.setUpdatesEnabled(False)
    try:
        bar.setRange(0, maximum)
        bar.setValue(value)
        if bar.format() != text:
            bar.setFormat(text)
    finally:
        bar.setUpdatesEnabled(True)
    bar.update()


class RunControls(QWidget):
    """Run and Cancel buttons, a progress bar and a status line for one session job."""

    def __init__(self, session, job: str, run_text: str, on_run, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.job = job
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setTextVisible(True)
        self.status = wrapped_label("")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.bar, 1)
        self.run_button.clicked.connect(lambda: call_safely(on_run))
        self.cancel_button.clicked.connect(lambda: session.cancel(job))
        follow(session.events.run, self._on_run, self)

    def _on_run(self, job: str, state) -> None:
        if job != self.job:
            return
        running = state.status == RUNNING
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            text = f"%v/%m {state.message}" if state.total else state.message or "working"
        else:
            text = {DONE: "done", CANCELLED: "cancelled", FAILED: "failed"}.get(state.status, self.bar.format())
        value = state.done if running or state.status != DONE else max(1, state.total)
        set_progress(self.bar, max(1, state.total), value, text)


class DeviceRow(QWidget):
    """The compute device (auto / cpu / cuda / mps), remembered, and the one actually used."""

    def __init__(self, session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.combo = QComboBox()
        self.combo.addItems(list(DEVICES))
        self.combo.setCurrentText(session.settings.device)
        self.used = QLabel("used: -")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("device"))
        row.addWidget(self.combo)
        row.addWidget(self.used, 1)
        self.combo.currentTextChanged.connect(lambda text: session.update_settings(device=text))
        follow(session.events.settings, self._on_settings, self)
        follow(session.events.run, self._on_run, self)

    def _on_settings(self, settings) -> None:
        if self.combo.currentText() != settings.device:
            self.combo.blockSignals(True)
            self.combo.setCurrentText(settings.device)
            self.combo.blockSignals(False)

    def _on_run(self, _job: str, state) -> None:
        if state.device:
            self.used.setText(f"used: {state.device}")
