"""Reconstruction dock: mask, noise and reconstruct; scores; the error map; the attention view."""

from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QSpinBox, QVBoxLayout, \
    QWidget

from .._state import session_for
from ._common import DeviceRow, RunControls, follow, wrapped_label

STRATEGIES = ("dual", "plane", "axis", "random")
SCOPES = {"selected superpatch": "selected", "whole scan": "scan"}
_ATTENTION_HELP = ("Tick, select a superpatch and move the cursor over it: the heatmaps show where "
                   "the patch under the cursor looks in the last encoder block, within its slice "
                   "(plane stream, orange) and along its column (axis stream, green).")


class ReconstructionWidget(QWidget):
    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.session.widgets.setdefault("Reconstruction", self)

        self.strategy = QComboBox()
        self.strategy.addItems(list(STRATEGIES))
        self.ratio = QDoubleSpinBox()
        self.ratio.setRange(0.05, 0.95)
        self.ratio.setSingleStep(0.05)
        self.ratio.setValue(0.75)
        self.noise = QDoubleSpinBox()
        self.noise.setRange(0.0, 0.5)
        self.noise.setDecimals(3)
        self.noise.setSingleStep(0.01)
        self.noise.setValue(0.03)
        self.noise.setToolTip("Gaussian noise sigma in window units (0.03 is about 13 HU)")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.scope = QComboBox()
        self.scope.addItems(list(SCOPES))
        self.device = DeviceRow(self.session)
        self.controls = RunControls(self.session, "reconstruction", "Reconstruct", self.run)
        self.metrics = wrapped_label("PSNR and SSIM appear here after a run.")
        # room for the lines a run writes (its first wraps in a narrow dock): new text then does
        # not resize the label and move what is below it (a repaint sharing the canvas's stall)
        self.metrics.setMinimumHeight(4 * self.metrics.fontMetrics().lineSpacing() + 4)
        self.attention = QCheckBox("attention under the cursor")
        self.attention_info = wrapped_label(_ATTENTION_HELP)

        form_box = QGroupBox("Masking")
        form = QFormLayout(form_box)
        form.addRow("strategy", self.strategy)
        form.addRow("mask ratio", self.ratio)
        form.addRow("noise sigma", self.noise)
        form.addRow("seed", self.seed)
        form.addRow("scope", self.scope)
        form.addRow(self.device)
        attention_box = QGroupBox("MATB attention (last encoder block)")
        attention_layout = QVBoxLayout(attention_box)
        attention_layout.addWidget(self.attention)
        attention_layout.addWidget(self.attention_info)

        layout = QVBoxLayout(self)
        layout.addWidget(form_box)
        layout.addWidget(self.controls)
        layout.addWidget(self.metrics)
        layout.addWidget(attention_box)
        layout.addStretch(1)

        self.attention.toggled.connect(self.session.set_attention)
        follow(self.session.events.reconstruction, self._on_reconstruction, self)
        follow(self.session.events.attention, self._on_attention, self)

    def run(self):
        """What the Reconstruct button does (no waiting: the GUI stays live)."""
        return self.session.run_reconstruction(
            strategy=self.strategy.currentText(), ratio=self.ratio.value(), noise=self.noise.value(),
            seed=self.seed.value(), scope=SCOPES[self.scope.currentText()], wait=False)

    def _on_reconstruction(self, run) -> None:
        if run is None:
            _set_growing(self.metrics, "PSNR and SSIM appear here after a run.")
            return
        m = run.metrics()
        where = f"superpatch {run.indices[0]}" if run.indices else "whole scan"
        lines = [f"{run.strategy} mask {run.ratio:.2f}, noise {run.noise:g}, seed {run.seed}, {where}: "
                 f"{run.done}/{run.total} superpatches" + (f" on {run.device}" if run.device else "")]
        if m.get("psnr_all") is not None:
            lines.append(f"masked patches: PSNR {_fmt(m['psnr_masked'], 2)} dB, SSIM {_fmt(m['ssim_masked'], 3)}")
            lines.append(f"whole: PSNR {_fmt(m['psnr_all'], 2)} dB, SSIM {_fmt(m['ssim_all'], 3)}")
        _set_growing(self.metrics, "\n".join(lines))

    def _on_attention(self, view) -> None:
        if view is None:
            self.attention_info.setText(_ATTENTION_HELP)
            return
        z, y, x = view.token_zyx
        self.attention_info.setText(
            f"superpatch {view.index}, patch (z y x) {z},{y},{x}; block {view.maps.block} "
            f"(the last), mean over heads, on {view.maps.device}")


def _set_growing(label, text: str) -> None:
    """Set a wrapped label's text; its height only grows: a label that shrinks and grows with
    each run moves what is below it, a repaint that shares the canvas's stall."""
    if label.text() == text:
        return
    label.setText(text)
    needed = label.heightForWidth(label.width()) if label.width() > 0 else -1
    if needed > label.minimumHeight():
        label.setMinimumHeight(needed)


def _fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
