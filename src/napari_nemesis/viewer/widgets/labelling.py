"""Kept for scripts: the dock lives in its feature (:mod:`napari_nemesis.viewer.features.labelling.dock`)."""

from ..features.labelling.dock import LabellingWidget

__all__ = ["LabellingWidget"]
