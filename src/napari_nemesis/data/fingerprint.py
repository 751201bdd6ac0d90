"""What identifies a scan's content, whatever file it came from: :class:`ScanFingerprint`.

One digest for the label sidecars (labels follow the image, not the file), the superpatch cache
(``voxel_sha256`` per case) and the heads trained on them (``train_voxel_sha256``), so "is this the
scan that was trained on?" has one answer everywhere (``train.trust``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ScanFingerprint"]


@dataclass(frozen=True)
class ScanFingerprint:
    """What identifies a scan's content: a hash of its canonical voxels, its shape and spacing."""

    voxel_sha256: str
    shape_zyx: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]

    @classmethod
    def of_volume(cls, volume) -> "ScanFingerprint":
        """Hash ``volume.array`` as float32 in canonical (z, y, x) order, shape first.

        The canonical array is the same for one scan stored as NIfTI, DICOM, NRRD or MHA, so the
        labels follow the image, not the file.
        """
        arr = np.ascontiguousarray(volume.array, dtype=np.float32)
        h = hashlib.sha256(("float32:" + "x".join(str(int(s)) for s in arr.shape) + ";").encode())
        h.update(memoryview(arr).cast("B"))
        return cls(h.hexdigest(), tuple(int(s) for s in arr.shape),  # type: ignore[arg-type]
                   tuple(round(float(s), 6) for s in volume.spacing))  # type: ignore[arg-type]

    def to_json(self, path: str | os.PathLike | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {"voxel_sha256": self.voxel_sha256, "shape_zyx": list(self.shape_zyx),
                               "spacing_zyx": list(self.spacing_zyx)}
        if path is not None:
            doc["path"] = str(path)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "ScanFingerprint":
        return cls(str(doc["voxel_sha256"]), tuple(int(v) for v in doc["shape_zyx"]),  # type: ignore[arg-type]
                   tuple(float(v) for v in doc["spacing_zyx"]))  # type: ignore[arg-type]

    def matches(self, other: "ScanFingerprint") -> bool:
        return (self.voxel_sha256 == other.voxel_sha256 and self.shape_zyx == other.shape_zyx
                and np.allclose(self.spacing_zyx, other.spacing_zyx, rtol=0, atol=1e-4))

    def describe(self) -> str:
        mm = " x ".join(f"{float(v):g}" for v in self.spacing_zyx)
        return f"{'x'.join(map(str, self.shape_zyx))} voxels at {mm} mm, sha256 {self.voxel_sha256[:12]}"
