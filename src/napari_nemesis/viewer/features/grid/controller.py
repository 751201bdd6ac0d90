"""The superpatch grid: its layers follow the active scan, the selection and the view.

The grid is drawn when a scan becomes active and hidden while none is (another scan is being
prepared: nothing of the old patient stays on screen); the selection outline follows the shared
selection and is redrawn for the current view (2D plane or 3D); the per-superpatch columns other
features publish (probabilities, label states, errors) become the grid layer's ``features``, shown
in napari's status bar on hover, a turn after they change.
"""

from __future__ import annotations

from .layers import GridLayers


class GridController:
    def __init__(self, session) -> None:
        self.session = session
        self.layers = GridLayers(session.scene)
        self.visible = True
        events = session.events
        events.scan.connect(self._on_scan)
        events.selection.connect(self._on_selection)
        events.view.connect(self._on_view)
        events.grid_columns.connect(self._on_columns)

    def set_visible(self, visible: bool) -> None:
        """Show or hide the grid lines (and the transparent picking layer)."""
        self.visible = bool(visible)
        if self.session.scan is not None:
            self.layers.set_visible(self.visible)

    def _on_scan(self, ctx) -> None:
        if ctx is None:
            self.layers.set_visible(False)
            self.layers.show_selection(None, None)
            return
        def draw() -> None:  # a turn of its own: adding its layers costs the GUI thread a frame or more each
            if self.session.scan is ctx:
                self.layers.show_grid(ctx.grid)
                self.layers.set_visible(self.visible)
                self.layers.show_selection(ctx.grid, self.session.selected)
                self.session.scene.raise_overlays(force=True)

        self.session.scene.turns.step("grid:draw", draw)

    def _on_selection(self, index) -> None:
        ctx = self.session.scan
        if ctx is not None:
            self.layers.show_selection(ctx.grid, index)

    def _on_view(self) -> None:
        ctx = self.session.scan
        if ctx is not None and self.session.selected is not None:
            self.layers.show_selection(ctx.grid, self.session.selected)

    def _on_columns(self, columns) -> None:
        ctx = self.session.scan
        if ctx is None:
            return

        def apply() -> None:  # napari redraws the layer's controls: a turn of its own
            if self.session.scan is ctx:
                self.layers.set_features(ctx.grid, self.session.grid_columns)

        self.session.scene.later("grid:features", apply)
