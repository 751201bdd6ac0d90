"""The label states' role on the scene: ``map:label state``, each superpatch's box outlined by its
state (labelled: green, skipped: grey, unlabelled: nothing). Outlines, not fills: a fill over every
labelled superpatch mixes its colour with the organ heatmaps and the error map under it (once
everything is labelled, everywhere); an outline leaves the inside of each box to them.

A Labels layer of superpatch ids at a few model voxels per cell (so the outline is a few mm
wide), clipped to the scan, drawn with napari's contour and a colour per id from its state;
hidden while nothing is labelled (a shown layer costs every canvas frame 7-12 ms under software
OpenGL), updated in place."""

from __future__ import annotations

import numpy as np

from ... import _layers as L
from ..._scene import BLANK, show

ROLE = "map:label state"
#: Colour per state code (0 unlabelled, 1 labelled, 2 skipped).
STATE_COLORS = ((0.0, 0.0, 0.0, 0.0), (0.2, 0.9, 0.35, 1.0), (0.75, 0.75, 0.75, 0.7))
CELL_VOXELS = 4  # model voxels per cell of the ids: the outline's width (6 mm at 1.5 mm spacing)
CONTOUR = 1


class LabelStateLayer:
    def __init__(self, scene) -> None:
        self.scene = scene
        self._grid = None

    def show(self, grid, codes: np.ndarray, visible: bool) -> None:
        """Colour each superpatch's outline by its state code; ``visible``: show or hide the layer."""
        from napari.utils.colormaps import DirectLabelColormap

        codes = np.asarray(codes, dtype=np.int64)
        colors = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
        colors.update({i + 1: STATE_COLORS[int(c)] for i, c in enumerate(codes)})
        colormap = DirectLabelColormap(color_dict=colors)
        layer = self.scene.get(ROLE)
        if layer is None or self._grid is not grid:
            ids, world = L.block_image_clipped(np.arange(1, grid.n + 1), grid, dtype=np.int32, fill=0,
                                               max_cell=CELL_VOXELS)
            existed = layer is not None
            layer = self.scene.put(ROLE, "labels", ids, world, name="label state", colormap=colormap,
                                   opacity=1.0, visible=visible)
            layer.contour = CONTOUR
            layer.editable = False
            self._grid = grid
            if existed:
                layer.colormap = colormap
            self.scene.raise_overlays()
        else:
            layer.colormap = colormap
        if visible and not layer.visible:
            self.scene.lift_under_overlays(layer)
        layer.metadata[BLANK] = not visible  # hidden: drawn once off screen, so the first label costs no shaders
        show(layer, visible)
        if not visible:
            self.scene.warm_later()

    def hide(self) -> None:
        self.scene.set_visible(ROLE, False)

    def remove(self) -> None:
        self._grid = None
        self.scene.remove([ROLE])

    def color_of(self, index: int):
        """The outline colour of superpatch ``index`` (RGBA), as napari draws it."""
        layer = self.scene.get(ROLE)
        return None if layer is None else tuple(float(v) for v in layer.colormap.map(np.array([index + 1]))[0])
