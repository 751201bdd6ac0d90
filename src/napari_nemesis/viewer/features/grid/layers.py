"""The grid's roles on the scene: ``grid`` (Labels of superpatch ids, drawn transparent: hover
features and picking), ``grid_lines`` (Vectors: the lattice, lines in 2D and a wireframe in 3D) and
``selection`` (Vectors: the selected box's outline for the current view). All three end at the
scan's edge, not at the padded grid's, so the sliders cover the scan only."""

from __future__ import annotations

import numpy as np

from ... import _layers as L

#: Kept on top of every other layer, in this order (the grid topmost and active).
OVERLAY_ROLES = ("grid_lines", "selection", "grid")
_SELECTION_COLOR = "#ff7a00"
_SELECTION_WIDTH_MM = 3.0
_LINE_WIDTH_MM = 1.2


def _cell_mm(grid) -> float:
    world = L.grid_world_affine(grid)
    return float(np.mean(np.linalg.norm(world[:3, :3], axis=0)))


class GridLayers:
    def __init__(self, scene) -> None:
        self.scene = scene
        self.visible = True
        self._columns: dict[int, dict] = {}
        for role in OVERLAY_ROLES:
            if role not in scene.overlay_roles:
                scene.overlay_roles.append(role)

    def show_grid(self, grid) -> None:
        """The lattice lines and the picking layer: made on two event-loop turns the first time (each
        new layer costs the GUI thread a frame or more), updated in place afterwards."""
        if self.scene.get("grid_lines") is None or self.scene.get("grid") is None:
            self._lines(grid)
            self.scene.turns.step("grid:ids", lambda: self._unseen(self._ids, grid))
            if self.scene.get("selection") is None:  # made ahead, hidden: a first click only gives it data
                self.scene.turns.step("grid:selection", lambda: self._unseen(self._selection_layer, grid))
        else:
            self._lines(grid)
            self._ids(grid)

    def _unseen(self, make, grid) -> None:
        """The picking layer (transparent) and the empty selection layer change nothing on the
        canvas: made without asking it for a frame."""
        with self.scene.unseen():
            make(grid)

    def _lines(self, grid) -> None:
        cell_mm = _cell_mm(grid)
        lines = L.clip_vectors(L.grid_lattice_vectors(grid.grid_shape), L.scan_extent_cells(grid))
        layer = self.scene.put(
            "grid_lines", "vectors", lines, L.grid_world_affine(grid), name="superpatch grid lines",
            edge_width=_LINE_WIDTH_MM / cell_mm, length=1.0, edge_color="yellow", vector_style="line", opacity=0.8)
        layer.edge_width = _LINE_WIDTH_MM / cell_mm
        self.scene.raise_overlays()

    def _ids(self, grid) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        ids, ids_world = L.block_image_clipped(np.arange(1, grid.n + 1), grid, dtype=np.int32, fill=0)
        # transparent: the layer is there for hovering (its features show in the status bar) and
        # picking; the lines and the selection outline are what is drawn
        colormap = DirectLabelColormap(color_dict={None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)})
        layer = self.scene.put("grid", "labels", ids, ids_world, name="superpatch grid",
                               features=L.grid_features(grid.grid_shape, self._columns.get(id(grid))), opacity=1.0,
                               colormap=colormap, visible=self.visible)
        layer.editable = False  # a display of the grid: no brush can repaint superpatch ids
        self.scene.raise_overlays()

    def set_visible(self, visible: bool) -> None:
        self.visible = bool(visible)
        for role in ("grid", "grid_lines"):
            self.scene.set_visible(role, visible)

    def set_features(self, grid, columns) -> None:
        self._columns = {id(grid): dict(columns)}  # for a picking layer made after them
        layer = self.scene.get("grid")
        if layer is not None:
            layer.features = L.grid_features(grid.grid_shape, columns)

    def show_selection(self, grid, index: int | None) -> None:
        """The selected superpatch's box edges, drawn for the current view: in 2D the four edges in
        the displayed plane, placed at the box's centre along the hidden axis so napari shows them
        exactly in the slices that cut the box; in 3D all twelve edges. Clipped to the scan."""
        grid_layer = self.scene.get("grid")
        if grid_layer is not None:
            grid_layer.selected_label = 0 if index is None else int(index) + 1
        if index is None:
            layer = self.scene.get("selection")
            if layer is not None and layer.visible:
                layer.visible = False  # kept: making a layer again costs a frame or more
            return
        viewer = self.scene.viewer
        ndim = viewer.dims.ndim
        hidden = None
        if viewer.dims.ndisplay == 2:
            hidden_axes = [a - (ndim - 3) for a in viewer.dims.not_displayed if a >= ndim - 3]
            hidden = hidden_axes[0] if hidden_axes else 0
        vectors, world = L.selection_outline(grid, index, hidden)
        layer = self._selection_layer(grid, vectors, world)
        if not layer.visible:
            layer.visible = True
        self.scene.raise_overlays()

    def _selection_layer(self, grid, vectors=None, world=None):
        """The outline's layer given ``vectors`` (made if it is not there; without vectors, made
        empty and hidden)."""
        cell_mm = _cell_mm(grid)
        empty = vectors is None
        if empty:
            if self.scene.get("selection") is not None or self.scene.viewer is None:
                return self.scene.get("selection")
            vectors, world = np.zeros((0, 2, 3), np.float32), L.grid_world_affine(grid)
        layer = self.scene.put("selection", "vectors", vectors, world, name="selected superpatch",
                               edge_width=_SELECTION_WIDTH_MM / cell_mm, length=1.0, edge_color=_SELECTION_COLOR,
                               vector_style="line", opacity=1.0, **({"visible": False} if empty else {}))
        layer.edge_width = _SELECTION_WIDTH_MM / cell_mm
        if empty:
            self.scene.raise_overlays()
        return layer
