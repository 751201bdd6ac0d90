"""The base of every NEMESIS dock, and how the docks share the window.

napari adds a plugin's docks one under the other in the right dock area; five of ours stacked made
the window grow past the screen (napari then remembers that size). So every dock, whichever route
added it (``launch()``, the Plugins menu one at a time in any order, ``napari -w``,
``add_plugin_dock_widget``), is tabbed with the NEMESIS docks already there on the event-loop turn
after napari wrapped it, scrolls instead of forcing its height, and is kept narrow enough that the
canvas keeps at least half the window's width; a window taller or wider than its screen is brought
back onto it, and the view is fitted again to the active scan (the canvas just got narrower).
"""

from __future__ import annotations

from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from ._napari_private import qt_window, real_viewer

#: A dock's width: at most this many pixels and this share of the window; napari's own docks on the
#: left get at most LEFT_SHARE when the canvas would otherwise have less than half the window.
DOCK_WIDTH_PX = 400
DOCK_WIDTH_SHARE = 0.25
LEFT_SHARE = 0.2
SLACK_PX = 48  # splitters and margins between the docks and the canvas


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
        self.panels: dict[str, QWidget] = {}  # feature name -> its panel hosted here
        self.setWidget(self.body)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # Ignored: the dock area never grows to the body's height (napari adds no stretch either)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Ignored)
        self.setMinimumHeight(120)
        self.setMinimumWidth(260)
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

    def _docked(self) -> None:
        try:
            dock = dock_of(self)
        except RuntimeError:  # deleted before the turn came
            return
        if dock is not None:
            front = getattr(self.session, "dock_front", None)
            arrange_docks(self.viewer, newest=None if front else dock, front=front)


def dock_of(widget) -> QDockWidget | None:
    parent = widget.parent()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parent()
    return parent


def _inner(dock: QDockWidget):
    inner = getattr(dock, "inner_widget", None)
    widget = inner() if callable(inner) else dock.widget()
    if widget is not None and not isinstance(widget, NemesisDock):
        found = widget.findChild(NemesisDock)
        widget = found if found is not None else widget
    return widget


def nemesis_docks(viewer) -> list[QDockWidget]:
    """The window's docks that hold a NEMESIS dock, in the order they were added."""
    window = qt_window(viewer)
    if window is None:
        return []
    return [d for d in window.findChildren(QDockWidget) if isinstance(_inner(d), NemesisDock)]


def arrange_docks(viewer, newest: QDockWidget | None = None, front: str | None = None) -> None:
    """Tab the NEMESIS docks together (``newest`` in front, or the one titled ``front``), give them a
    width that leaves the canvas most of the window, keep the window on its screen and fit the view
    to the active scan again."""
    window = qt_window(viewer)
    docks = [d for d in nemesis_docks(viewer) if not d.isFloating()]
    if window is None or not docks:
        return
    anchor = docks[0]
    for dock in docks[1:]:
        if dock not in window.tabifiedDockWidgets(anchor):
            window.tabifyDockWidget(anchor, dock)
    chosen = newest
    if front is not None:
        chosen = next((d for d in docks if getattr(_inner(d), "dock_title", None) == front), chosen)
    if chosen is not None:
        chosen.raise_()
    fit_window(window)
    left = [d for d in window.findChildren(QDockWidget) if d.isVisible() and not d.isFloating()
            and window.dockWidgetArea(d) == Qt.DockWidgetArea.LeftDockWidgetArea]
    left_width = max((d.width() for d in left), default=0)
    half = window.width() / 2.0
    room = window.width() - left_width - half - SLACK_PX  # what the docks may take with the canvas at half
    width = int(max(anchor.minimumSizeHint().width(), min(DOCK_WIDTH_PX, DOCK_WIDTH_SHARE * window.width(), room)))
    window.resizeDocks([anchor], [width], Qt.Orientation.Horizontal)
    if left and window.width() - width - left_width < half + SLACK_PX:
        window.resizeDocks(left[:1], [int(LEFT_SHARE * window.width())], Qt.Orientation.Horizontal)
    from ._session import existing_session

    session = existing_session(viewer)
    if session is not None:
        QTimer.singleShot(0, session.fit_view)


def fit_window(window) -> None:
    """Bring a window larger than its screen's free area back onto it (napari remembers sizes)."""
    if window.isFullScreen():
        return
    screen = window.screen() if hasattr(window, "screen") else None
    if screen is None:
        return
    free = screen.availableGeometry()
    width, height = min(window.width(), free.width()), min(window.height(), free.height())
    if (width, height) != (window.width(), window.height()):
        if window.isMaximized():  # a maximized state remembered from a larger screen (or no window manager)
            window.showNormal()
        window.resize(width, height)
    frame = window.frameGeometry()
    if not free.contains(frame):
        window.move(max(free.left(), min(frame.left(), free.right() - frame.width())),
                    max(free.top(), min(frame.top(), free.bottom() - frame.height())))
