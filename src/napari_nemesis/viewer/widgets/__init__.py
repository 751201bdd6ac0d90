"""The docks, under the names scripts used before the viewer became feature slices (each dock now
lives in its feature's folder, :mod:`napari_nemesis.viewer.features`)."""

from __future__ import annotations

from ..features import DOCKS, _load
from ..features.grid.dock import GridWidget
from ..features.labelling.dock import LabellingWidget
from ..features.probabilities.dock import ProbabilitiesWidget
from ..features.reconstruction.dock import ReconstructionWidget
from ..features.training.dock import TrainingWidget

#: Dock title -> dock class (the manifest's display names), from the features' one list.
WIDGETS = {title: _load(feature.dock) for title, feature in DOCKS.items()}

__all__ = ["GridWidget", "ReconstructionWidget", "ProbabilitiesWidget", "LabellingWidget", "TrainingWidget",
           "WIDGETS"]
