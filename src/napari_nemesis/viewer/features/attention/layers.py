"""The attention view's roles on the scene: ``attention_plane`` and ``attention_axis``, one voxel
per patch of the selected superpatch."""

from __future__ import annotations

import numpy as np

from ..._scene import heatmap

ROLES = ("attention_plane", "attention_axis")
_STREAMS = (("attention_plane", (1.0, 0.3, 0.1), "attention: plane stream"),
            ("attention_axis", (0.2, 0.9, 0.3), "attention: axis stream"))


class AttentionLayers:
    def __init__(self, scene) -> None:
        self.scene = scene

    def show(self, plane: np.ndarray, axis: np.ndarray, world: np.ndarray) -> None:
        for (role, rgb, name), values in zip(_STREAMS, (plane, axis)):
            top = float(np.max(values)) if values.size and np.max(values) > 0 else 1.0
            layer = self.scene.put(
                role, "image", np.asarray(values, dtype=np.float32), world, name=name,
                colormap=heatmap(rgb, f"nemesis {role}", max_alpha=0.95), contrast_limits=(0.0, top), opacity=0.8,
                blending="translucent", interpolation2d="nearest", interpolation3d="nearest")
            layer.contrast_limits = (0.0, top)
        self.scene.raise_overlays()

    def remove(self) -> None:
        self.scene.remove(ROLES)
