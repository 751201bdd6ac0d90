"""Kept for scripts: the dock lives in its feature (:mod:`napari_nemesis.viewer.features.grid.dock`)."""

from ..features.grid.dock import GridWidget

__all__ = ["GridWidget"]
