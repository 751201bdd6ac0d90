"""Superpatch labels as user data: stores, sidecars, projects, fills, label-next, export, training.

No Qt, no napari. Importing this package does not import torch (training imports it when run).

* :class:`LabelStore` (``store``): one scan's labels, saved atomically and durably on every change;
* ``sidecar``: the file format, tied to the scan's voxels, the grid and the organ list;
* :class:`LabelCursor` (``cursor``; old names ``LabellingSession``, ``session``): the selected superpatch
  and the labelling actions; :func:`key_action`, the one key dispatcher the viewer also uses;
* :func:`fill_from_segmentation` (``fill``): presence from a label map, the core's rule;
* :class:`LabelProject` (``project``): several scans and their settings in one folder;
* :func:`rank_unlabelled` (``ranking``): label next, by the probe's uncertainty;
* :func:`export_project` (``export``): a superpatch cache ``nemesis probe`` reads;
* :func:`train_from_labels` (``training``): the probe head (or a fine-tune) from a project;
* :func:`label_curve` (``curve``): cross-validated AUROC against the number of labels.

See ``docs/labels.md``.
"""

from .export import export_project
from .fill import FillResult, fill_from_segmentation, segmentation_presence
from .project import PROJECT_FILE, LabelProject, ProjectScan
from .ranking import mean_binary_entropy, rank_unlabelled
from .cursor import KEYS, LabelCursor, LabellingSession, key_action
from .sidecar import SIDECAR_FORMAT, SIDECAR_SUFFIX, SIDECAR_VERSION, GridSpec, ScanFingerprint, read_sidecar
from .store import SOURCES, STATES, UNLABELLED, LabelStore, SuperpatchLabel

__all__ = [
    "LabelStore", "SuperpatchLabel", "STATES", "SOURCES", "UNLABELLED",
    "SIDECAR_FORMAT", "SIDECAR_VERSION", "SIDECAR_SUFFIX", "GridSpec", "ScanFingerprint", "read_sidecar",
    "LabelCursor", "LabellingSession", "KEYS", "key_action",
    "FillResult", "fill_from_segmentation", "segmentation_presence",
    "LabelProject", "ProjectScan", "PROJECT_FILE",
    "mean_binary_entropy", "rank_unlabelled",
    "export_project",
    "train_from_labels", "TrainOptions", "label_curve",
]


def __getattr__(name):
    # training needs torch: imported on first use only
    if name in ("train_from_labels", "TrainOptions"):
        from . import training

        return getattr(training, name)
    if name == "label_curve":
        from .curve import label_curve

        return label_curve
    raise AttributeError(name)
