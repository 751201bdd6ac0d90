"""The base of every NEMESIS dock.

Whichever route added it (``launch()``, the Plugins menu one at a time in any order, ``napari -w``,
``add_plugin_dock_widget``), a dock tabs itself with the NEMESIS docks already there on the
event-loop turn after napari wrapped it (:func:`._window.arrange_docks`) and scrolls instead of
forcing its height; the view is then fitted again to the active scan (the canvas just got narrower).
"""

from __future__ import annotations

from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import QAbstractSpinBox, QComboBox, QFrame, QProgressBar, QScrollArea, QSizePolicy, QVBoxLayout, \
    QWidget

from ._napari_private import real_viewer
from ._window import DOCK_WIDTH_PX, arrange_docks, dock_of


#: The narrowest a dock gets (1280 x 800 leaves it about 270 px); its body must fit beside the scroll bar.
DOCK_MIN_WIDTH_PX = 260
SHRINK_ABOVE_PX = 120  # a combo or spin box narrower than this keeps its natural width
BOX_MIN_PX = 100


def let_shrink(body: QWidget) -> None:
    """Widgets whose natural width is their longest text shrink with the dock instead of widening the
    body past it (a body wider than the dock is cut off at its right edge, with no way to scroll):
    combo and spin boxes keep 100 px (a combo box elides its item), progress bars their middle."""
    for box in [*body.findChildren(QComboBox), *body.findChildren(QAbstractSpinBox)]:
        # a combo box elides its text; a seed's range (2^31) asks for 11 digits and the arrows
        if box.minimumSizeHint().width() > SHRINK_ABOVE_PX:
            box.setMinimumWidth(BOX_MIN_PX)
    for bar in body.findChildren(QProgressBar):
        bar.setMinimumWidth(48)


class NemesisDock(QScrollArea):
    """A dock's frame: a scrolling body with a vertical layout (``self.layout_``), the viewer (never
    napari's proxy) and its session. Subclasses set ``dock_title`` (the manifest's display name) and fill
    ``self.layout_``."""

    dock_title = ""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        from ._session import session_for  # with the package's features

        self.viewer = real_viewer(napari_viewer)
        self.session = session_for(self.viewer)
        self.body = QWidget()
        self.layout_ = QVBoxLayout(self.body)
        self.layout_.setContentsMargins(4, 6, 4, 6)  # Qt's 9-11 px a side: room a narrow dock needs
        self.panels: dict[str, QWidget] = {}  # feature name -> its panel hosted here
        self._shrunk = False  # let_shrink has run (at the first show)
        self.setWidget(self.body)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # Ignored: the dock area never grows to the body's height (napari adds no stretch either)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Ignored)
        self.setMinimumHeight(120)
        self.setMinimumWidth(DOCK_MIN_WIDTH_PX)
        self.session.widgets.setdefault(self.dock_title, self)
        QTimer.singleShot(0, self._docked)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        return QSize(DOCK_WIDTH_PX, 400)

    def add_hosted_panels(self) -> None:
        """Add here the panels other features host in this dock (``Feature.host``)."""
        for spec in self.session.hosted_panels(self.dock_title):
            self.panels[spec.name] = spec.make_panel(self.session, self.body)
            self.layout_.addWidget(self.panels[spec.name])

    def finish(self) -> None:
        """Call at the end of a subclass's ``__init__``: the body's stretch at the bottom."""
        self.layout_.addStretch(1)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        """The first time the dock shows (napari's style sheet has been applied: it sets minimum widths
        of its own), its widgets are allowed to shrink to the dock's narrowest width."""
        if not self._shrunk:
            self._shrunk = True
            let_shrink(self.body)
        super().showEvent(event)

    def _docked(self) -> None:
        try:
            dock = dock_of(self)
        except RuntimeError:  # deleted before the turn came
            return
        if dock is not None:
            front = getattr(self.session, "dock_front", None)
            arrange_docks(self.viewer, newest=None if front else dock, front=front, refit=self.session.fit_view)


