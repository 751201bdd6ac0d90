"""Kept for scripts: the dock lives in its feature (:mod:`napari_nemesis.viewer.features.reconstruction.dock`)."""

from ..features.reconstruction.dock import ReconstructionWidget

__all__ = ["ReconstructionWidget"]
