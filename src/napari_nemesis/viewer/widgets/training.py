"""Kept for scripts: the dock lives in its feature (:mod:`napari_nemesis.viewer.features.training.dock`)."""

from ..features.training.dock import TrainingWidget

__all__ = ["TrainingWidget"]
