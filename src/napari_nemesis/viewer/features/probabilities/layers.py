"""The probabilities' roles on the scene, one block heatmap per organ and level, clipped to the scan,
made for the organs shown, updated in place: ``prob:<organ>`` at the superpatch level (one block per
superpatch) and ``<level>:<organ>`` at the others (``patch:<organ>``: one block per 16^3 patch,
``_layers.patch_block_image_clipped``). Each level keeps its own layers, so switching levels hides
one set and shows the other without making layers again."""

from __future__ import annotations

import numpy as np

from ....model.levels import DEFAULT_LEVEL
from ... import _layers as L
from ..._scene import BLANK, heatmap, show


def prob_role(organ: str, level: str = DEFAULT_LEVEL) -> str:
    """The role of ``organ``'s heatmap at ``level``: ``prob:liver``, ``patch:liver``."""
    return f"{role_prefix(level)}{organ}"


def role_prefix(level: str = DEFAULT_LEVEL) -> str:
    return "prob:" if level == DEFAULT_LEVEL else f"{level}:"


class ProbabilityLayers:
    """The heatmaps of one level. ``values`` are per superpatch ``(n,)`` at the superpatch level and
    per patch ``(n, tokens)`` (superpatch by superpatch, tokens in raster order) at the patch level."""

    def __init__(self, scene, level: str = DEFAULT_LEVEL) -> None:
        self.scene = scene
        self.level = level
        self.prefix = role_prefix(level)

    def role(self, organ: str) -> str:
        return prob_role(organ, self.level)

    def zeros(self, grid, patch: int | None) -> np.ndarray:
        if self.level == DEFAULT_LEVEL:
            return np.zeros(grid.n, dtype=np.float32)
        return np.zeros((grid.n, (grid.superpatch // int(patch)) ** 3), dtype=np.float32)

    def make_ahead(self, grid, organs, patch: int | None = None) -> None:
        """Blank hidden heatmaps of ``organs`` (those shown), made one per event-loop turn."""
        zeros = self.zeros(grid, patch)
        for organ in organs:
            role = self.role(organ)
            if self.scene.get(role) is None:
                self.scene.make_ahead(role, lambda organ=organ: self.show(grid, organ, zeros, False, blank=True,
                                                                          patch=patch))
            else:
                self.show(grid, organ, zeros, False, blank=True, patch=patch)  # the grid may have changed: in place

    def show_all(self, grid, values: np.ndarray, organs: list[str], visible: set[str],
                 patch: int | None = None) -> None:
        """One heatmap per organ (``values[..., k]``): layers for the organs shown (adding a layer
        costs a frame or more); the others get theirs when ticked; existing ones are updated in place."""
        wanted = {self.role(o) for o in organs}
        self.scene.remove([r for r in self.scene.roles_with_prefix(self.prefix) if r not in wanted])
        for k, organ in enumerate(organs):
            if organ in visible or self.scene.get(self.role(organ)) is not None:
                self.show(grid, organ, values[..., k], organ in visible, patch=patch)
        self.scene.raise_overlays()

    def show(self, grid, organ: str, values: np.ndarray, visible: bool = True, blank: bool = False,
             patch: int | None = None) -> None:
        role = self.role(organ)
        existed = self.scene.get(role) is not None
        rgb = L.ORGAN_COLORS.get(organ, (1.0, 1.0, 1.0))
        colormap = heatmap(rgb, f"nemesis {organ}")
        if self.level == DEFAULT_LEVEL:
            layer = self.scene.block_map(role, grid, values, colormap, f"P({organ})", (0.0, 1.0), visible)
        else:
            image, world = L.patch_block_image_clipped(values, grid, int(patch))
            layer = self.scene.image_map(role, image, world, colormap, f"P({organ}) per {self.level}", (0.0, 1.0),
                                         visible)
        if not existed:
            self.scene.colorbar_for(layer)  # shown while the heatmap is
        layer.metadata[BLANK] = blank

    def set_visible(self, organ: str, visible: bool) -> None:
        self.scene.set_visible(self.role(organ), visible)

    def exists(self, organ: str) -> bool:
        return self.scene.get(self.role(organ)) is not None

    def clear(self) -> None:
        """Hide every heatmap of this level and mark it as holding no result (kept for the next run)."""
        for role in self.scene.roles_with_prefix(self.prefix):
            layer = self.scene.get(role)
            layer.metadata[BLANK] = True
            show(layer, False)
