"""How the NEMESIS docks share napari's window (no session and no dock class imported here).

napari adds a plugin's docks one under the other in the right dock area; five of ours stacked made
the window grow past the screen (napari then remembers that size). :func:`arrange_docks` tabs the
NEMESIS docks (widgets with a ``dock_title``) together, keeps them narrow enough that the canvas
keeps at least half the window's width, brings a window taller or wider than its screen back onto
it, and then calls ``refit`` (the session fits the view to the active scan: the canvas changed).
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QScrollArea

from ._napari_private import qt_window

#: A dock's width: at most this many pixels and this share of the window; napari's own docks on the
#: left get at most LEFT_SHARE when the canvas would otherwise have less than half the window.
DOCK_WIDTH_PX = 400
DOCK_WIDTH_SHARE = 0.25
LEFT_SHARE = 0.2
SLACK_PX = 48  # splitters and margins between the docks and the canvas


def dock_of(widget) -> QDockWidget | None:
    parent = widget.parent()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parent()
    return parent


def _inner(dock: QDockWidget):
    """The NEMESIS dock inside napari's dock widget (one with a ``dock_title``), or None."""
    inner = getattr(dock, "inner_widget", None)
    widget = inner() if callable(inner) else dock.widget()
    if widget is not None and not getattr(widget, "dock_title", None):  # napari wrapped it in a container
        widget = widget.findChild(QScrollArea)
    return widget if getattr(widget, "dock_title", None) else None


def nemesis_docks(viewer) -> list[QDockWidget]:
    """The window's docks that hold a NEMESIS dock, in the order they were added."""
    window = qt_window(viewer)
    if window is None:
        return []
    return [d for d in window.findChildren(QDockWidget) if _inner(d) is not None]


def arrange_docks(viewer, newest: QDockWidget | None = None, front: str | None = None,
                  refit: Callable[[], None] | None = None) -> None:
    """Tab the NEMESIS docks together (``newest`` in front, or the one titled ``front``), give them a
    width that leaves the canvas most of the window, keep the window on its screen, then ``refit``
    (on the next event-loop turn)."""
    window = qt_window(viewer)
    docks = [d for d in nemesis_docks(viewer) if not d.isFloating()]
    if window is None or not docks:
        return
    anchor = docks[0]
    for dock in docks[1:]:
        if dock not in window.tabifiedDockWidgets(anchor):
            window.tabifyDockWidget(anchor, dock)
    _readable_tabs(window, docks)
    chosen = newest
    if front is not None:
        chosen = next((d for d in docks if _inner(d).dock_title == front), chosen)
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
    if refit is not None:
        QTimer.singleShot(0, refit)


def _readable_tabs(window, docks) -> None:
    """The tab bar under the NEMESIS docks shows whole titles and scrolls: seven docks in a 400 px
    column elided to "S..., R..., Or..." at 1280 x 800."""
    from qtpy.QtWidgets import QTabBar

    for dock in docks:  # "Triage", not napari's "Triage (napari-nemesis)": a third of the tab's width
        title = _inner(dock).dock_title
        if dock.windowTitle() != title:
            dock.setWindowTitle(title)
    titles = {d.windowTitle() for d in docks}
    for bar in window.findChildren(QTabBar):
        if any(bar.tabText(i) in titles for i in range(bar.count())):
            bar.setElideMode(Qt.TextElideMode.ElideNone)
            bar.setUsesScrollButtons(True)
            for i in range(bar.count()):
                bar.setTabToolTip(i, bar.tabText(i))


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
