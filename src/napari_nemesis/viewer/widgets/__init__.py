"""The dock widgets: one file each, layout only. Each asks the viewer's session to do the work
(:mod:`napari_nemesis.viewer._state`) and shows what the session announces."""

from __future__ import annotations

from .grid import GridWidget
from .labelling import LabellingWidget
from .probabilities import ProbabilitiesWidget
from .reconstruction import ReconstructionWidget
from .training import TrainingWidget

#: Dock title -> widget class (the manifest's display names).
WIDGETS = {
    "Superpatch grid": GridWidget,
    "Reconstruction": ReconstructionWidget,
    "Organ probabilities": ProbabilitiesWidget,
    "Labelling": LabellingWidget,
    "Training": TrainingWidget,
}

__all__ = ["GridWidget", "ReconstructionWidget", "ProbabilitiesWidget", "LabellingWidget", "TrainingWidget",
           "WIDGETS"]
