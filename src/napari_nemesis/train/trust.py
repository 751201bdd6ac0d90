"""How far to trust organ probabilities on one scan: the head's held-out score and how unlike the scan is.

Two facts travel with every probability the CLI and the viewer show:

* :func:`held_out_auroc`: the AUROC the head scored on data it was not trained on, as its file records it
  (``held_out_auroc`` and ``held_out_on``; older heads: ``auroc_mean_test``, ``heldout_auroc``,
  ``auroc_mean``), with what that data was.
* :func:`scan_warnings`: one-line reasons the scan is unlike what the model was trained on: slices far
  coarser than the model's spacing (the model then sees interpolated anatomy), a field of view much
  smaller than one superpatch, intensities that do not look like CT in Hounsfield units.
* :func:`seen_by_head`: whether the scan is one the head was trained on (its canonical voxels' digest is
  among the head's ``train_voxel_sha256``): its probabilities are then training-set figures, which the
  held-out AUROC does not describe, and a warning says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.preprocess import HU_WINDOW

__all__ = ["held_out_auroc", "scan_warnings", "seen_by_head", "trust_report", "COARSER_THAN", "SMALLER_THAN"]

#: A scan axis this many times coarser than the model's spacing is interpolated more than the model saw.
COARSER_THAN = 2.5
#: A field of view below this share of one superpatch (per axis, in mm) leaves most of it padding.
SMALLER_THAN = 0.25

_LEGACY_KEYS = (("auroc_mean_test", "the test split of its own training data"),
                ("heldout_auroc", "held-out labels"), ("auroc_mean", "held-out labels"))


def held_out_auroc(meta: dict[str, Any]) -> tuple[float | None, str | None]:
    """``(AUROC, what it was measured on)`` as the head records it, or ``(None, None)``."""
    keys = (("held_out_auroc", meta.get("held_out_on") or "held-out data"),) + _LEGACY_KEYS
    for key, where in keys:
        value = meta.get(key)
        try:
            if value is not None and np.isfinite(float(value)):
                return float(value), str(where)
        except (TypeError, ValueError):
            continue
    return None, None


def scan_warnings(volume, model_spacing_zyx, superpatch: int = 128) -> list[str]:
    """Reasons (one line each) why probabilities on ``volume`` deserve less trust; empty when none."""
    out = []
    native = np.asarray(volume.spacing, dtype=float)
    model = np.asarray(model_spacing_zyx, dtype=float)
    for axis, name in enumerate(("z", "y", "x")):
        if native[axis] > COARSER_THAN * model[axis]:
            out.append(f"voxels {native[axis]:g} mm apart along {name}, {native[axis] / model[axis]:.1f}x the model's "
                       f"{model[axis]:g} mm: the model sees interpolated anatomy there")
    extent = native * np.asarray(volume.shape, dtype=float)
    span = model * superpatch
    small = [f"{n} {e:.0f} mm" for n, e, s in zip("zyx", extent, span) if e < SMALLER_THAN * s]
    if small:
        out.append(f"field of view {', '.join(small)}: under {SMALLER_THAN:.0%} of a superpatch "
                   f"({' x '.join(f'{s:.0f}' for s in span)} mm), mostly padding")
    arr = np.asarray(volume.array)
    sample = arr.ravel()[:: max(1, arr.size // 200_000)].astype(np.float32)
    if sample.size:
        lo_hu, hi_hu = HU_WINDOW
        air, body = float((sample < -500).mean()), float(((sample > lo_hu) & (sample < hi_hu)).mean())
        lo, hi = float(sample.min()), float(sample.max())
        if lo >= -100:
            out.append(f"no voxel below {lo:.0f}: no air, unlike CT in Hounsfield units (a rescale slope/intercept lost?)")
        elif body < 0.05:
            out.append(f"only {body:.1%} of voxels in the soft-tissue window [{lo_hu:g}, {hi_hu:g}] HU (air {air:.0%}, "
                       f"range {lo:.0f}..{hi:.0f}): little anatomy the model knows")
    return out


def seen_by_head(volume, head_meta: dict[str, Any]) -> str | None:
    """The case id under which the head was trained on this very scan (same canonical voxels), or ``None``.

    Heads record the digests of their training scans (``train_voxel_sha256``, ``{case_id: digest}``);
    older heads record none, and nothing is hashed for them.
    """
    from ..data.fingerprint import ScanFingerprint

    digests = head_meta.get("train_voxel_sha256")
    if not isinstance(digests, dict) or not digests:
        return None
    mine = ScanFingerprint.of_volume(volume).voxel_sha256
    return next((str(cid) for cid, digest in digests.items() if digest == mine), None)


def trust_report(volume, head_meta: dict[str, Any], model_spacing_zyx, superpatch: int = 128) -> dict[str, Any]:
    """The ``trust`` object of ``nemesis infer --json`` and the Organ probabilities dock."""
    auroc, where = held_out_auroc(head_meta)
    warnings = scan_warnings(volume, model_spacing_zyx, superpatch)
    seen = seen_by_head(volume, head_meta)
    if seen is not None:
        warnings.insert(0, f"the head was trained on this scan (case {seen}): these probabilities are training-set "
                           "figures, not what its held-out AUROC describes")
    return {"head_held_out_auroc": auroc, "head_held_out_on": where, "head_trained_on_this_scan": seen,
            "warnings": warnings}
