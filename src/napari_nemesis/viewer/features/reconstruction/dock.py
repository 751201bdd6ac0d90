"""Reconstruction dock: mask, noise and reconstruct; scores; the error map (the attention view's
panel sits here too, the attention feature's)."""

from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QSpinBox

from ..._controls import DeviceRow, RunControls, follow, wrapped_label
from ..._dock import NemesisDock
from .controller import JOB

SCOPES = {"selected superpatch": "selected", "whole scan": "scan"}
_SCOPE_TITLES = {v: k for k, v in SCOPES.items()}
_EMPTY = "PSNR and SSIM appear here after a run."


class ReconstructionWidget(NemesisDock):
    dock_title = "Reconstruction"

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.controller = self.session.feature("reconstruction")

        self.strategy = QComboBox()
        from ....model.masking import menu_strategies  # here, not at napari start-up (the manifest names this module)

        self.strategy.addItems(list(menu_strategies()))
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
        self.controls = RunControls(self.session, JOB, "Reconstruct", self.run)
        self.metrics = wrapped_label(_EMPTY)
        # room for the lines a run writes (its first wraps in a narrow dock): new text then does
        # not resize the label and move what is below it (a repaint sharing the canvas's stall)
        self.metrics.setMinimumHeight(4 * self.metrics.fontMetrics().lineSpacing() + 4)
        self.error_map = QCheckBox("show the error map")
        self.error_map.setToolTip("The masked-patch RMSE of each superpatch. Over the reconstruction it hides the "
                                  "anatomy: tick to compare superpatches")

        form_box = QGroupBox("Masking")
        form = QFormLayout(form_box)
        form.addRow("strategy", self.strategy)
        form.addRow("mask ratio", self.ratio)
        form.addRow("noise sigma", self.noise)
        form.addRow("seed", self.seed)
        form.addRow("scope", self.scope)
        form.addRow(self.device)

        self.layout_.addWidget(form_box)
        self.layout_.addWidget(self.controls)
        self.layout_.addWidget(self.metrics)
        self.layout_.addWidget(self.error_map)
        self.add_hosted_panels()
        self.finish()

        self.error_map.toggled.connect(self.controller.set_error_map_visible)
        follow(self.session.events.reconstruction, self._on_reconstruction, self)

    def run(self):
        """What the Reconstruct button does (no waiting: the GUI stays live)."""
        return self.session.run_reconstruction(
            strategy=self.strategy.currentText(), ratio=self.ratio.value(), noise=self.noise.value(),
            seed=self.seed.value(), scope=SCOPES[self.scope.currentText()], wait=False)

    def _on_reconstruction(self, run) -> None:
        if run is None:
            _set_growing(self.metrics, _EMPTY)
            return
        if run.done == 0:
            self._show_settings(run)  # a script's run: the fields say what is on screen
        m = run.metrics()
        where = f"superpatch {run.indices[0]}" if run.indices else "whole scan"
        state = {"cancelled": ", cancelled", "failed": ", failed"}.get(str(run.status), "")
        lines = [f"{run.strategy} mask {run.ratio:.2f}, noise {run.noise:g}, seed {run.seed}, {where}: "
                 f"{run.done}/{run.total} superpatches{state}" + (f" on {run.device}" if run.device else "")]
        if m.get("psnr_all") is not None:
            lines.append(f"masked patches: PSNR {_fmt(m['psnr_masked'], 2)} dB, SSIM {_fmt(m['ssim_masked'], 3)}")
            lines.append(f"whole: PSNR {_fmt(m['psnr_all'], 2)} dB, SSIM {_fmt(m['ssim_all'], 3)}")
        _set_growing(self.metrics, "\n".join(lines))

    def _show_settings(self, run) -> None:
        for widget, getter, setter, value in (
                (self.strategy, self.strategy.currentText, self.strategy.setCurrentText, run.strategy),
                (self.scope, self.scope.currentText, self.scope.setCurrentText, _SCOPE_TITLES[run.scope]),
                (self.ratio, self.ratio.value, self.ratio.setValue, run.ratio),
                (self.noise, self.noise.value, self.noise.setValue, run.noise),
                (self.seed, self.seed.value, self.seed.setValue, run.seed)):
            if getter() != value:  # an unchanged field is left alone (a change re-lays out the dock)
                widget.blockSignals(True)
                setter(value)
                widget.blockSignals(False)


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
