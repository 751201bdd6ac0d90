"""Label-id schemes of organ label maps: detect which one a map uses and re-code it to BTCV ids.

The presence task counts BTCV ids (:data:`~.organs.ORGANS`), but the label maps radiologists have
are often TotalSegmentator's (``total``, 117 classes, where 6 is the stomach, not BTCV's liver) or
AMOS's (15 classes, where 10 is the pancreas, not BTCV's portal vein). Reading such a map as BTCV
silently counts the wrong organs, so every place that turns labels into presence goes through
:func:`to_btcv_labels`.

Detection works on the ids present (background 0 ignored):

* all ids in 1..13: ``btcv`` (an AMOS map that lacks 14 and 15 looks the same: name it with
  ``scheme="amos"`` / ``--label-scheme amos``);
* 14 or 15 present, nothing above 15: ``amos``;
* anything in 16..117: ``totalsegmentator`` (the v2 ``total`` task);
* an id above 117: no known scheme, refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from ..errors import NemesisInputError

__all__ = [
    "LABEL_SCHEMES",
    "detect_label_scheme",
    "to_btcv_labels",
    "label_names",
    "btcv_id_map",
    "check_label_scheme",
]

#: The label-id schemes understood everywhere labels are read (``--label-scheme``; plus ``auto``).
LABEL_SCHEMES: tuple[str, ...] = ("btcv", "totalsegmentator", "amos")

_BTCV_NAMES = (
    "spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver", "stomach",
    "aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein", "pancreas",
    "right_adrenal_gland", "left_adrenal_gland",
)
_AMOS_NAMES = (
    "spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver", "stomach",
    "aorta", "inferior_vena_cava", "pancreas", "right_adrenal_gland", "left_adrenal_gland",
    "duodenum", "bladder", "prostate_uterus",
)
# TotalSegmentator v2, task "total": ids 1..117 in order (TotalSegmentator's class map "total").
_TOTALSEG_NAMES = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
    "adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left",
    "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus",
    "trachea", "thyroid_gland", "small_bowel", "duodenum", "colon", "urinary_bladder", "prostate",
    "kidney_cyst_left", "kidney_cyst_right", "sacrum", "vertebrae_S1",
    *(f"vertebrae_L{k}" for k in range(5, 0, -1)),
    *(f"vertebrae_T{k}" for k in range(12, 0, -1)),
    *(f"vertebrae_C{k}" for k in range(7, 0, -1)),
    "heart", "aorta", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right",
    "subclavian_artery_left", "common_carotid_artery_right", "common_carotid_artery_left",
    "brachiocephalic_vein_left", "brachiocephalic_vein_right", "atrial_appendage_left",
    "superior_vena_cava", "inferior_vena_cava", "portal_vein_and_splenic_vein",
    "iliac_artery_left", "iliac_artery_right", "iliac_vena_left", "iliac_vena_right",
    "humerus_left", "humerus_right", "scapula_left", "scapula_right", "clavicula_left",
    "clavicula_right", "femur_left", "femur_right", "hip_left", "hip_right", "spinal_cord",
    "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right",
    "gluteus_minimus_left", "gluteus_minimus_right", "autochthon_left", "autochthon_right",
    "iliopsoas_left", "iliopsoas_right", "brain", "skull",
    *(f"rib_left_{k}" for k in range(1, 13)),
    *(f"rib_right_{k}" for k in range(1, 13)),
    "sternum", "costal_cartilages",
)
_NAMES = {"btcv": _BTCV_NAMES, "amos": _AMOS_NAMES, "totalsegmentator": _TOTALSEG_NAMES}
_MAX_ID = {scheme: len(names) for scheme, names in _NAMES.items()}

# Source id -> BTCV id for every structure the source scheme shares with BTCV's 13.
_BTCV_NAME_TO_ID = {name: k + 1 for k, name in enumerate(_BTCV_NAMES)}
_TOTALSEG_TO_BTCV_NAME = {
    "spleen": "spleen", "kidney_right": "right_kidney", "kidney_left": "left_kidney",
    "gallbladder": "gallbladder", "esophagus": "esophagus", "liver": "liver", "stomach": "stomach",
    "aorta": "aorta", "inferior_vena_cava": "inferior_vena_cava",
    "portal_vein_and_splenic_vein": "portal_vein_and_splenic_vein", "pancreas": "pancreas",
    "adrenal_gland_right": "right_adrenal_gland", "adrenal_gland_left": "left_adrenal_gland",
}


def _to_btcv_table(scheme: str) -> dict[int, int]:
    names = _NAMES[scheme]
    if scheme == "totalsegmentator":
        rename = _TOTALSEG_TO_BTCV_NAME
    else:
        rename = {n: n for n in names}
    return {k + 1: _BTCV_NAME_TO_ID[rename[n]] for k, n in enumerate(names) if rename.get(n) in _BTCV_NAME_TO_ID}


_TO_BTCV = {scheme: _to_btcv_table(scheme) for scheme in LABEL_SCHEMES}


def label_names(scheme: str) -> dict[int, str]:
    """``{id: structure name}`` of a scheme (ids from 1; 0 is background), e.g. for display."""
    if scheme not in _NAMES:
        raise NemesisInputError(f"label scheme {scheme!r}: choose one of {', '.join(LABEL_SCHEMES)}")
    return {k + 1: name for k, name in enumerate(_NAMES[scheme])}


def btcv_id_map(scheme: str) -> dict[int, int]:
    """``{source id: BTCV id}`` for the structures ``scheme`` shares with BTCV (others become 0)."""
    if scheme not in _TO_BTCV:
        raise NemesisInputError(f"label scheme {scheme!r}: choose one of {', '.join(LABEL_SCHEMES)}")
    return dict(_TO_BTCV[scheme])


def check_label_scheme(scheme: str) -> str:
    """``scheme`` if it is ``auto`` or one of :data:`LABEL_SCHEMES`, else a one-line error."""
    if scheme != "auto" and scheme not in LABEL_SCHEMES:
        raise NemesisInputError(f"--label-scheme {scheme}: choose auto, {', '.join(LABEL_SCHEMES)}")
    return scheme


def _present_ids(labels_or_ids, source) -> np.ndarray:
    """Sorted unique non-zero ids of a label array or an iterable of ids."""
    if isinstance(labels_or_ids, Mapping):
        labels_or_ids = list(labels_or_ids.keys())
    elif not isinstance(labels_or_ids, np.ndarray) and isinstance(labels_or_ids, Iterable):
        labels_or_ids = list(labels_or_ids)
    arr = np.asarray(labels_or_ids)
    where = f"{source}: " if source is not None else ""
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise NemesisInputError(f"{where}label ids must be whole numbers")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "ui" and arr.dtype.kind != "b":
        raise NemesisInputError(f"{where}label ids must be integers, not {arr.dtype}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2:
        ids = np.flatnonzero(np.bincount(arr.ravel()))  # fast path for uint8/uint16 maps
    else:
        ids = np.unique(arr)
    ids = ids.astype(np.int64)
    if ids.size and ids[0] < 0:
        raise NemesisInputError(f"{where}negative label id {int(ids[0])}")
    return ids[ids != 0]


def _detect_from_ids(ids: np.ndarray, source) -> str:
    top = int(ids.max()) if ids.size else 0
    if top <= _MAX_ID["btcv"]:
        return "btcv"
    if top <= _MAX_ID["amos"]:
        return "amos"
    if top <= _MAX_ID["totalsegmentator"]:
        return "totalsegmentator"
    where = f"{source}: " if source is not None else ""
    raise NemesisInputError(
        f"{where}label id {top} fits no known scheme (BTCV 1-13, AMOS 1-15, TotalSegmentator total 1-117); "
        "re-code the map to BTCV ids")


def detect_label_scheme(labels_or_ids, source=None) -> str:
    """The scheme (one of :data:`LABEL_SCHEMES`) a label map or set of ids uses, from its ids.

    Ids within 1..13 read as ``btcv`` (also an all-background map); ``source`` (e.g. the file)
    names the map in the one-line :class:`NemesisInputError` raised when no scheme fits.
    """
    return _detect_from_ids(_present_ids(labels_or_ids, source), source)


def to_btcv_labels(labels, scheme: str = "auto", source=None,
                   refuse_binary: bool = False) -> tuple[np.ndarray, str]:
    """``(labels re-coded to BTCV ids (uint8, same shape), scheme used)``.

    The 8 target organs and the other BTCV structures the source scheme has (esophagus, IVC,
    portal/splenic vein, adrenal glands where present) get their BTCV ids; everything else
    becomes 0. ``scheme="auto"`` detects it (:func:`detect_label_scheme`); a named scheme the ids
    contradict (e.g. ``btcv`` with ids above 13) is refused with a one-line error.
    ``refuse_binary``: with ``scheme="auto"``, a map holding only 0 and 1 (a lesion or organ mask,
    whose 1 would read as BTCV's spleen) is refused; naming a scheme reads it anyway.
    """
    check_label_scheme(scheme)
    labels = np.asarray(labels)
    ids = _present_ids(labels, source)
    detected = _detect_from_ids(ids, source)
    if refuse_binary and scheme == "auto" and ids.size == 1 and int(ids[0]) == 1:
        where = f"{source}: " if source is not None else ""
        raise NemesisInputError(
            f"{where}holds only 0 and 1: a binary mask, not an organ label map (1 would read as BTCV's spleen); "
            "give a BTCV/TotalSegmentator/AMOS label map, or --label-scheme btcv if 1 really means spleen")
    if scheme == "auto":
        scheme = detected
    elif ids.size and int(ids.max()) > _MAX_ID[scheme]:
        where = f"{source}: " if source is not None else ""
        raise NemesisInputError(
            f"{where}--label-scheme {scheme} allows ids 1-{_MAX_ID[scheme]} but the map holds id {int(ids.max())} "
            f"(it looks like {detected})")
    table = _TO_BTCV[scheme]
    if scheme == "btcv":
        return labels.astype(np.uint8, copy=False), scheme
    lut = np.zeros(max(_MAX_ID[scheme], int(ids.max()) if ids.size else 0) + 1, dtype=np.uint8)
    for src, dst in table.items():
        lut[src] = dst
    if labels.dtype.kind == "u" and labels.dtype.itemsize <= 2:
        return lut[labels], scheme
    return lut[labels.astype(np.intp, copy=False)], scheme
