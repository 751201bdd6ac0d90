"""The probabilities' roles on the scene: ``prob:<organ>``, one block heatmap per organ over the
grid (clipped to the scan), made for the organs shown, updated in place."""

from __future__ import annotations

import numpy as np

from ... import _layers as L
from ..._scene import BLANK, heatmap, show, show_colorbar


def prob_role(organ: str) -> str:
    return f"prob:{organ}"


class ProbabilityLayers:
    def __init__(self, scene) -> None:
        self.scene = scene

    def make_ahead(self, grid, organs) -> None:
        """Blank hidden heatmaps of ``organs`` (those shown), made one per event-loop turn."""
        zeros = np.zeros(grid.n, dtype=np.float32)
        for organ in organs:
            role = prob_role(organ)
            if self.scene.get(role) is None:
                self.scene.make_ahead(role, lambda organ=organ: self.show(grid, organ, zeros, False, blank=True))
            else:
                self.show(grid, organ, zeros, False, blank=True)  # the grid may have changed: in place

    def show_all(self, grid, values: np.ndarray, organs: list[str], visible: set[str]) -> None:
        """One heatmap per organ: layers for the organs shown (adding a layer costs a frame or
        more); the others get theirs when ticked; existing ones are updated in place."""
        wanted = {prob_role(o) for o in organs}
        self.scene.remove([r for r in self.scene.roles_with_prefix("prob:") if r not in wanted])
        for k, organ in enumerate(organs):
            if organ in visible or self.scene.get(prob_role(organ)) is not None:
                self.show(grid, organ, values[:, k], organ in visible)
        self.scene.raise_overlays()

    def show(self, grid, organ: str, values: np.ndarray, visible: bool = True, blank: bool = False) -> None:
        role = prob_role(organ)
        existed = self.scene.get(role) is not None
        rgb = L.ORGAN_COLORS.get(organ, (1.0, 1.0, 1.0))
        layer = self.scene.block_map(role, grid, values, heatmap(rgb, f"nemesis {organ}"), f"P({organ})",
                                     (0.0, 1.0), visible)
        if not existed:
            show_colorbar(layer)  # shown while the heatmap is
        layer.metadata[BLANK] = blank

    def set_visible(self, organ: str, visible: bool) -> None:
        self.scene.set_visible(prob_role(organ), visible)

    def exists(self, organ: str) -> bool:
        return self.scene.get(prob_role(organ)) is not None

    def clear(self) -> None:
        for role in self.scene.roles_with_prefix("prob:"):
            layer = self.scene.get(role)
            layer.metadata[BLANK] = True
            show(layer, False)
