"""Fill a store from a segmentation, with exactly the core's organ-presence rule.

The label map (BTCV, TotalSegmentator or AMOS ids) goes through ``data.to_btcv_labels``, then
``data.preprocess_labels`` (nearest neighbour, to the spacing the model sees) and
``data.presence_labels`` on the store's grid: a superpatch holds an organ when it has at least
``threshold`` voxels of it at that spacing, the same rule the datasets and the probe use.
Superpatches a person labelled or skipped are kept unless ``overwrite=True``; earlier fills are
replaced. Given the ``project``, a fill from a file records that file in it
(``LabelProject.record_segmentation``): patch-level training reads the label map again from there. The whole fill is one save and one undo step, decided under the sidecar's lock on the
labels as saved at that moment (a hand label another writer has just set is kept).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import NemesisInputError
from .store import LabelStore

__all__ = ["FillResult", "fill_from_segmentation", "segmentation_presence", "segmentation_at_model"]


@dataclass
class FillResult:
    """What a fill did: the scheme it read, the presence it computed, what it changed and kept."""

    scheme: str
    presence: np.ndarray  # (n, K) uint8 in the store's organ order
    filled: list[int] = field(default_factory=list)  # superpatches written by this fill
    changed: list[int] = field(default_factory=list)  # of those, the ones whose label changed
    kept: list[int] = field(default_factory=list)  # labelled or skipped by hand, left alone
    organs: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"scheme": self.scheme, "filled": len(self.filled), "changed": len(self.changed),
                "kept_by_hand": len(self.kept), "positives": dict(zip(self.organs, self.presence.sum(0).tolist()))}


def _scan_volume(store: LabelStore):
    if store.volume is not None:
        return store.volume
    from ..data import read_volume

    from .sidecar import ScanFingerprint

    volume = read_volume(store.scan_path)
    if not ScanFingerprint.of_volume(volume).matches(store.scan):
        raise NemesisInputError(f"{store.scan_path}: the scan changed since its labels were opened; reopen it")
    store.volume = volume
    return volume


def segmentation_at_model(store: LabelStore, labels_volume, scheme: str = "auto"):
    """A label map of the store's scan in BTCV ids at the model's spacing, the grid it gives, the
    scheme it was read as, and the store's organ columns in ``data.ORGANS`` order:
    ``(labels, grid, scheme, columns)``. What superpatch presence (:func:`segmentation_presence`) and
    patch labels (patch-level training) are both counted on.

    ``labels_volume``: a label file (read with ``data.read_labels``, checked against the scan) or an
    array on the scan's canonical (z, y, x) grid (e.g. a napari Labels layer's data).
    """
    from ..data import ORGAN_NAMES, SuperpatchGrid, preprocess_labels, read_labels, to_btcv_labels

    missing = [o for o in store.organs if o not in ORGAN_NAMES]
    if missing:
        raise NemesisInputError(f"{store.path}: organ(s) {', '.join(missing)} have no label id in any segmentation "
                                f"scheme (known: {', '.join(ORGAN_NAMES)}); label them by hand")
    volume = _scan_volume(store)
    if isinstance(labels_volume, (str, os.PathLike)):
        source = Path(labels_volume)
        labels = read_labels(source, volume)
    else:
        source = "label array"
        labels = np.asarray(labels_volume)
        if labels.shape != tuple(volume.shape):
            raise NemesisInputError(f"{source}: shape {labels.shape} is not the scan's {tuple(volume.shape)} "
                                    f"({store.scan_path})")
    btcv, used = to_btcv_labels(labels, scheme=scheme, source=source)
    at_model = preprocess_labels(btcv, volume, store.grid.spacing_zyx)
    grid = SuperpatchGrid(at_model.shape, store.grid.superpatch)
    if tuple(grid.grid_shape) != tuple(store.grid.grid_shape_zyx):  # pragma: no cover - same rule as GridSpec
        raise NemesisInputError(f"{source}: grid {grid.grid_shape} is not the store's {store.grid.grid_shape_zyx}")
    columns = [ORGAN_NAMES.index(o) for o in store.organs]
    return at_model, grid, used, columns


def segmentation_presence(store: LabelStore, labels_volume, threshold: int | None = None,
                          scheme: str = "auto") -> tuple[np.ndarray, str]:
    """Organ presence ``(n, K)`` (the store's organs) of a label map on the store's grid, and its scheme.

    ``labels_volume``: a label file (read with ``data.read_labels``, checked against the scan) or an
    array on the scan's canonical (z, y, x) grid (e.g. a napari Labels layer's data).
    """
    from ..data import PRESENCE_THRESHOLD, presence_labels

    threshold = PRESENCE_THRESHOLD if threshold is None else int(threshold)
    if threshold < 1:
        raise NemesisInputError(f"--threshold {threshold}: must be at least 1 voxel")
    at_model, grid, used, columns = segmentation_at_model(store, labels_volume, scheme)
    presence = presence_labels(at_model, grid, threshold)
    return presence[:, columns], used


def fill_from_segmentation(store: LabelStore, labels_volume, threshold: int = 100, overwrite: bool = False,
                           scheme: str = "auto", project=None) -> FillResult:
    """Label every superpatch of ``store`` from a segmentation (see the module docstring).

    ``threshold``: voxels at the model's spacing (default 100, ``data.PRESENCE_THRESHOLD``).
    ``scheme``: ``auto``, ``btcv``, ``totalsegmentator`` or ``amos``. ``project``: the
    ``LabelProject`` the store belongs to; a fill from a file is then recorded in it (for
    patch-level training). Returns a :class:`FillResult`.
    """
    presence, used = segmentation_presence(store, labels_volume, threshold, scheme)
    decided: dict[str, list[int]] = {}

    def decide(current):
        # under the sidecar's lock, on the labels as saved now: a hand label set a moment ago
        # by another writer is kept, whatever this process read earlier
        changes, kept = {}, []
        for i in range(store.n):
            label = current.get(i)
            if not overwrite and label is not None and label.state != "unlabelled" and label.source != "segmentation":
                kept.append(i)
                continue
            changes[i] = (presence[i], "labelled")
        decided["filled"], decided["kept"] = sorted(changes), kept
        return changes

    changed = store.modify(decide, source="segmentation")
    if project is not None and isinstance(labels_volume, (str, os.PathLike)):
        entry = project.find(store.scan_path)
        if entry is not None:
            project.record_segmentation(entry, labels_volume, used)
    return FillResult(used, presence, decided["filled"], changed, decided["kept"], store.organs)
