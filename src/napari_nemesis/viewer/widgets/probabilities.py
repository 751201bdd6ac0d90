"""Kept for scripts: the dock lives in its feature (:mod:`napari_nemesis.viewer.features.probabilities.dock`)."""

from ..features.probabilities.dock import ProbabilitiesWidget

__all__ = ["ProbabilitiesWidget"]
