"""The label sidecar: one JSON file per scan, tied to the scan's voxels, its grid and an organ list.

Labels are the project's most valuable user data, so the file says exactly what it belongs to and
is refused, with one line naming both sides, when opened for anything else:

* ``scan``: SHA-256 of the scan's canonical voxels (float32, shape first), its shape and spacing,
  so a label set is never applied to another image, whatever its file name;
* ``grid``: superpatch size and the spacing the model sees (z, y, x mm), plus the grid they give;
* ``organs``: the organ names, in order;
* ``version``: a file written by a newer format is refused, not half-read.

The file is replaced atomically and durably on every change (see :mod:`napari_nemesis.atomic`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_json_atomic
from ..data.fingerprint import ScanFingerprint  # its home is data/: the cache and the heads use it too
from ..data.formats import SIDECAR_STEM_SUFFIXES, scan_stem
from ..errors import NemesisInputError

__all__ = [
    "SIDECAR_FORMAT",
    "SIDECAR_VERSION",
    "SIDECAR_SUFFIX",
    "ScanFingerprint",
    "GridSpec",
    "sidecar_path_beside",
    "read_sidecar",
    "write_sidecar",
    "check_sidecar",
]

SIDECAR_FORMAT = "napari-nemesis/superpatch-labels"
#: The sidecar format this version writes; files of a newer version are refused.
SIDECAR_VERSION = 1
SIDECAR_SUFFIX = ".nemesis-labels.json"


def _mm(values) -> str:
    return " x ".join(f"{float(v):g}" for v in values)


@dataclass(frozen=True)
class GridSpec:
    """The superpatch grid labels refer to: size, model spacing, and the grid they give a scan."""

    superpatch: int
    spacing_zyx: tuple[float, float, float]
    grid_shape_zyx: tuple[int, int, int]

    @property
    def n(self) -> int:
        """Number of superpatches."""
        return int(np.prod(self.grid_shape_zyx))

    @classmethod
    def for_scan(cls, shape_zyx, source_spacing_zyx, superpatch: int, spacing_zyx) -> "GridSpec":
        """The grid ``data.SuperpatchGrid.for_preprocessed`` would build, without resampling."""
        from ..data.preprocess import resample_positions

        if int(superpatch) < 1:
            raise NemesisInputError(f"superpatch size {superpatch}: must be a positive integer")
        spacing = tuple(float(s) for s in spacing_zyx)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise NemesisInputError(f"spacing {spacing_zyx}: need three positive numbers (z, y, x mm)")
        shape = []
        for n, s, t in zip(shape_zyx, source_spacing_zyx, spacing):
            # an axis whose spacing already matches is not resampled (data.resample)
            shape.append(int(n) if abs(float(s) - t) <= 1e-9 * t else len(resample_positions(int(n), float(s), t)))
        grid = tuple(-(-d // int(superpatch)) for d in shape)
        return cls(int(superpatch), spacing, grid)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        return {"superpatch": self.superpatch, "spacing_zyx": list(self.spacing_zyx),
                "grid_shape_zyx": list(self.grid_shape_zyx), "n": self.n}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "GridSpec":
        return cls(int(doc["superpatch"]), tuple(float(v) for v in doc["spacing_zyx"]),  # type: ignore[arg-type]
                   tuple(int(v) for v in doc["grid_shape_zyx"]))  # type: ignore[arg-type]

    def same_parameters(self, other: "GridSpec") -> bool:
        return (self.superpatch == other.superpatch
                and np.allclose(self.spacing_zyx, other.spacing_zyx, rtol=0, atol=1e-6)
                and self.grid_shape_zyx == other.grid_shape_zyx)

    def describe(self) -> str:
        g = "x".join(map(str, self.grid_shape_zyx))
        return f"{self.superpatch}^3 superpatches at {_mm(self.spacing_zyx)} mm (z, y, x), grid {g}"


def sidecar_path_beside(scan_path: str | os.PathLike) -> Path:
    """``<folder>/<scan name without extension>.nemesis-labels.json`` (a DICOM folder: beside it)."""
    scan = Path(scan_path)
    return scan.parent / f"{scan_stem(scan.name, SIDECAR_STEM_SUFFIXES)}{SIDECAR_SUFFIX}"


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar's JSON after checking its format, version and structure (not its scan)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NemesisInputError(f"{path}: label sidecar not found") from None
    except RecursionError:
        raise NemesisInputError(f"{path}: unreadable label sidecar (JSON nested too deeply); "
                                "it is left untouched") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise NemesisInputError(f"{path}: unreadable label sidecar ({str(exc).splitlines()[0]}); "
                                "it is left untouched") from None
    if not isinstance(doc, dict) or doc.get("format") != SIDECAR_FORMAT:
        raise NemesisInputError(f"{path}: not a napari-nemesis label sidecar")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise NemesisInputError(f"{path}: label sidecar has no valid format version ({version!r})")
    if version > SIDECAR_VERSION:
        raise NemesisInputError(f"{path}: written by a newer napari-nemesis (label format version {version}; "
                                f"this version reads up to {SIDECAR_VERSION}); upgrade to open it")
    try:
        _check_types(doc)
        ScanFingerprint.from_json(doc["scan"])
        GridSpec.from_json(doc["grid"])
        organs = list(doc["organs"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise NemesisInputError(f"{path}: malformed label sidecar ({exc.__class__.__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if len(set(organs)) != len(organs) or not organs:
        raise NemesisInputError(f"{path}: label sidecar has an empty or repeated organ list")
    return doc


# as in .store (which imports this module)
_STATES = ("unlabelled", "labelled", "skipped")
_SOURCES = ("hand", "segmentation")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_types(doc: dict[str, Any]) -> None:
    """TypeError / ValueError / KeyError naming the first value of the wrong type."""
    if "revision" in doc and (not _is_int(doc["revision"]) or doc["revision"] < 0):
        raise ValueError(f"revision {doc['revision']!r} is not a non-negative integer")
    for key in ("scan", "grid"):
        if not isinstance(doc[key], dict):
            raise TypeError(f"{key} is not an object")
    if not isinstance(doc["scan"].get("voxel_sha256"), str):
        raise TypeError("scan.voxel_sha256 is not text")
    for key in ("shape_zyx", "spacing_zyx"):
        v = doc["scan"].get(key)
        if not isinstance(v, list) or len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise TypeError(f"scan.{key} is not three numbers")
    if not _is_int(doc["grid"].get("superpatch")):
        raise TypeError("grid.superpatch is not an integer")
    for key in ("spacing_zyx", "grid_shape_zyx"):
        v = doc["grid"].get(key)
        if not isinstance(v, list) or len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise TypeError(f"grid.{key} is not three numbers")
    if not isinstance(doc["organs"], list) or not all(isinstance(o, str) for o in doc["organs"]):
        raise TypeError("organs is not a list of names")
    n = 1
    for v in doc["grid"]["grid_shape_zyx"]:
        n *= int(v)
    entries = doc["superpatches"]
    if not isinstance(entries, list):
        raise TypeError("superpatches is not a list")
    for k, e in enumerate(entries):
        if not isinstance(e, dict):
            raise TypeError(f"superpatch entry {k} is not an object")
        if not _is_int(e.get("index")):
            raise TypeError(f"superpatch entry {k}: index {e.get('index')!r} is not an integer")
        if not 0 <= e["index"] < n:
            raise ValueError(f"superpatch entry {k}: index {e['index']} is outside the grid (0..{n - 1})")
        if e.get("state") not in _STATES:
            raise ValueError(f"superpatch entry {k}: state {e.get('state')!r} is not one of {', '.join(_STATES)}")
        organs = e.get("organs", [])
        if organs is not None and (not isinstance(organs, list) or not all(isinstance(o, str) for o in organs)):
            raise TypeError(f"superpatch entry {k}: organs is not a list of names")
        if e.get("source") is not None and e["source"] not in _SOURCES:
            raise ValueError(f"superpatch entry {k}: source {e['source']!r} is not one of {', '.join(_SOURCES)}")
        if e.get("updated") is not None and not isinstance(e["updated"], str):
            raise TypeError(f"superpatch entry {k}: updated is not text")


def check_sidecar(doc: dict[str, Any], path: str | os.PathLike, scan: ScanFingerprint, scan_path,
                  grid: GridSpec, organs) -> None:
    """Refuse, in one line naming both sides, a sidecar made for another scan, grid or organ list."""
    theirs = ScanFingerprint.from_json(doc["scan"])
    their_path = doc["scan"].get("path", "?")
    if not theirs.matches(scan):
        raise NemesisInputError(
            f"{path}: these labels belong to scan {their_path} ({theirs.describe()}), not to {scan_path} "
            f"({scan.describe()}); refusing to apply them")
    their_grid = GridSpec.from_json(doc["grid"])
    if not their_grid.same_parameters(grid):
        raise NemesisInputError(
            f"{path}: these labels were made on {their_grid.describe()}, not on the requested {grid.describe()}; "
            "open them with the grid they were made on")
    if list(doc["organs"]) != list(organs):
        raise NemesisInputError(
            f"{path}: these labels use the organ list [{', '.join(doc['organs'])}], not the requested "
            f"[{', '.join(organs)}]")


def write_sidecar(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """Replace the sidecar atomically and durably (temporary file, flush, fsync, rename, fsync folder)."""
    return write_json_atomic(path, doc, indent=1, durable=True)
