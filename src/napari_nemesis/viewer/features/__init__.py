"""The viewer's features, one folder each: its controller (state, events, jobs), its layers (its
roles on the scene) and its dock (layout only). A feature imports the kernel, never another
feature; features talk through the session's events.

:data:`FEATURES` is the one list: adding a feature touches its own folder, this list and, for a
dock, the manifest (``napari.yaml``; a test checks the two agree). Controllers are made in this
order when a viewer's session starts; modules are imported only then (napari's plugin discovery
imports none of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class Feature:
    """One feature: its session name, its controller and dock classes (``"module:Class"``,
    relative to this package), the dock's title (the manifest's display name), and for a feature
    whose panel lives inside another's dock, that panel and the host dock's title."""

    name: str
    controller: str
    dock: str | None = None
    title: str | None = None
    panel: str | None = None
    host: str | None = None

    def make_controller(self, session):
        return _load(self.controller)(session)

    def make_dock(self, viewer):
        return _load(self.dock)(viewer)

    def make_panel(self, session, parent=None):
        return _load(self.panel)(session, parent)


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(import_module(module, __name__), name)


FEATURES: tuple[Feature, ...] = (
    Feature("radiology", ".radiology.controller:RadiologyController", panel=".radiology.panel:WindowPanel",
            host="Superpatch grid"),
    Feature("grid", ".grid.controller:GridController", ".grid.dock:GridWidget", "Superpatch grid"),
    Feature("orthoviews", ".orthoviews.controller:OrthoViewsController", panel=".orthoviews.panel:OrthoPanel",
            host="Superpatch grid"),
    Feature("probabilities", ".probabilities.controller:ProbabilitiesController",
            ".probabilities.dock:ProbabilitiesWidget", "Organ probabilities"),
    Feature("reconstruction", ".reconstruction.controller:ReconstructionController",
            ".reconstruction.dock:ReconstructionWidget", "Reconstruction"),
    Feature("attention", ".attention.controller:AttentionController",
            panel=".attention.panel:AttentionPanel", host="Reconstruction"),
    Feature("labelling", ".labelling.controller:LabellingController", ".labelling.dock:LabellingWidget",
            "Labelling"),
    Feature("project", ".project.controller:ProjectController", ".project.dock:ProjectWidget", "Project"),
    Feature("training", ".training.controller:TrainingController", ".training.dock:TrainingWidget", "Training"),
    Feature("triage", ".triage.controller:TriageController", ".triage.dock:TriageWidget", "Triage"),
    Feature("similar", ".similar.controller:SimilarController", panel=".similar.panel:SimilarPanel", host="Triage"),
)

#: Dock title -> feature, for the docks napari's Plugins menu lists.
DOCKS = {f.title: f for f in FEATURES if f.title}
