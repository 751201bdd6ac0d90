"""The scans of a cohort: what ``nemesis triage`` and ``nemesis similar`` (and their docks) take as input.

A source is one of:

* a scan file (any suffix of ``data.formats.SCAN_SUFFIXES``);
* a labelling project folder (``labels.project.PROJECT_FILE`` inside): its scans, by id;
* a dataset folder (``imagesTr/`` or ``dataset.json``, as ``nemesis prepare`` reads it): its
  images, labelled or not (label maps are never taken as scans);
* any other folder: what ``labels.project.scans_in_folder`` finds there (the rule of a project's
  "add folder": its scan files, not those named like label maps, and its sub-folders of DICOM
  slices); a folder with files but no scan is read as one DICOM series.

:func:`cohort_scans` expands sources into :class:`CohortScan` entries in order, each file once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import NemesisInputError

__all__ = ["CohortScan", "cohort_scans"]


@dataclass(frozen=True)
class CohortScan:
    """One scan of a cohort: its file (or DICOM folder), and its id in the project it came from."""

    path: Path
    scan_id: str | None = None
    project: Path | None = None

    @property
    def name(self) -> str:
        return str(self.path)

    def as_json(self) -> dict:
        out: dict = {"scan": str(self.path)}
        if self.scan_id is not None:
            out["scan_id"] = self.scan_id
        if self.project is not None:
            out["project"] = str(self.project)
        return out


def _folder_scans(folder: Path) -> list[CohortScan]:
    from ..data.datasets import find_cases
    from ..labels.project import PROJECT_FILE, LabelProject, scans_in_folder

    if (folder / PROJECT_FILE).is_file():
        project = LabelProject.open(folder)
        return [CohortScan(s.image, s.scan_id, folder) for s in project.scans]
    if (folder / "imagesTr").is_dir() or (folder / "dataset.json").is_file():
        return [CohortScan(c.image, c.case_id) for c in find_cases(folder, include_unlabelled=True)]
    scans, _left_out = scans_in_folder(folder)  # the rule a project's "add folder" uses
    if scans:
        return [CohortScan(p) for p in scans]
    if any(p.is_file() and not p.name.startswith(".") for p in folder.iterdir()):
        return [CohortScan(folder)]  # a DICOM series; read_volume says so if it is not one
    raise NemesisInputError(f"{folder}: no scans in this folder (scan files, a labelling project, a dataset "
                            "or a DICOM series)")


def cohort_scans(sources: Iterable[str | os.PathLike] | str | os.PathLike) -> list[CohortScan]:
    """The scans named by ``sources`` (files, folders, labelling projects), in order, each path once.

    A source that does not exist, or a file that is not a scan, is a one-line error naming it."""
    from ..data.formats import SCAN_SUFFIXES

    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: list[CohortScan] = []
    seen: set[Path] = set()
    for src in sources:
        path = Path(src)
        if not path.exists():
            raise NemesisInputError(f"{path}: no such scan, folder or labelling project")
        if path.is_dir():
            found = _folder_scans(path)
        elif path.name.lower().endswith(SCAN_SUFFIXES):
            found = [CohortScan(path)]
        else:
            raise NemesisInputError(f"{path}: not a scan file (expected one of {', '.join(SCAN_SUFFIXES)}), a "
                                    "folder or a labelling project")
        for scan in found:
            key = scan.path.resolve()
            if key not in seen:
                seen.add(key)
                out.append(scan)
    if not out:
        raise NemesisInputError("no scans given")
    return out
