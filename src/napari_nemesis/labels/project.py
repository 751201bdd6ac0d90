"""A labelling project: a folder holding several scans' label sidecars and their shared settings.

``PROJECT/nemesis-labels-project.json`` names the organ list, the superpatch size, the model
spacing and the presence threshold every scan of the project is labelled with, and lists the
scans (an id, the image path, the sidecar under ``PROJECT/labels/``, and, once a scan was filled
from a segmentation file, that file and its label scheme: ``segmentation``, ``segmentation_scheme``).
Images stay where they are; a path inside the project folder is stored relative to it, so the folder
can be moved with them. The recorded segmentation is what patch-level training reads
(``nemesis labels train PROJECT --level patch``): superpatch labels alone cannot say where in a
superpatch an organ lies.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..atomic import file_lock as _file_lock
from ..atomic import os_problem as _os_problem
from ..atomic import write_json_atomic
from ..errors import NemesisInputError
from .sidecar import SIDECAR_SUFFIX, GridSpec, read_sidecar, sidecar_path_beside
from .store import LabelStore, register_project_opener

__all__ = ["PROJECT_FILE", "PROJECT_FORMAT", "PROJECT_VERSION", "ProjectScan", "LabelProject", "scans_in_folder",
           "LABEL_MAP_NAME"]

PROJECT_FILE = "nemesis-labels-project.json"
PROJECT_FORMAT = "napari-nemesis/labelling-project"
PROJECT_VERSION = 1
#: What a scan id may be: it names files (``labels/<id>...``, export cases), so no separators.
SCAN_ID_PATTERN = re.compile(r"^(?!\.\.?$)[A-Za-z0-9_.-]{1,200}$")
#: A file name (without its suffix, lower case) that names a label map, not a scan: ``label0001``,
#: ``abdomen_label_btcv``, ``case_seg``, ``mask``, ``liver-segmentation``, ``ct_gt``.
LABEL_MAP_NAME = re.compile(r"(^|[_.-])(labels?|seg|segmentations?|masks?|gt)\d*($|[_.-])")


def scans_in_folder(folder: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """The scans of a folder, sorted, and the names left out (with why).

    A dataset folder (``imagesTr/``, optionally ``imagesTs/``) gives its images; any other folder
    its scan files (every suffix of ``data.formats`` but single DICOM slices) and its subfolders
    holding DICOM slices (a series each), one level deep. Files whose name says label map
    (:data:`LABEL_MAP_NAME`) are left out.
    """
    from ..data.formats import DICOM_FILE_SUFFIXES, SCAN_FORMATS, scan_stem

    folder = Path(folder)
    if not folder.is_dir():
        raise NemesisInputError(f"{folder}: not a folder")
    if (folder / "imagesTr").is_dir() or (folder / "imagesTs").is_dir():
        from ..data.datasets import find_cases

        try:
            return sorted({c.image for c in find_cases(folder, include_unlabelled=True)}), []
        except NemesisInputError:
            pass  # not a dataset after all: its files, as any folder's
    suffixes = tuple(sfx for f in SCAN_FORMATS if f.reader != "dicom-file" for sfx in f.suffixes)
    scans, left_out = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            try:
                if any(c.is_file() and c.name.lower().endswith(DICOM_FILE_SUFFIXES) for c in path.iterdir()):
                    scans.append(path)
            except OSError:
                left_out.append(f"{path.name} (unreadable folder)")
            continue
        if not path.name.lower().endswith(suffixes):
            continue
        if LABEL_MAP_NAME.search(scan_stem(path.name).lower()):
            left_out.append(f"{path.name} (named like a label map)")
            continue
        scans.append(path)
    return scans, left_out


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _check_doc(path: Path, doc: dict[str, Any]) -> None:
    """Refuse, in one line naming the file, values of the wrong type and paths that leave the project."""
    def bad(what: str) -> NemesisInputError:
        return NemesisInputError(f"{path}: malformed labelling project ({what})")

    organs = doc["organs"]
    if not isinstance(organs, list) or not organs or not all(isinstance(o, str) and o for o in organs) \
            or len(set(organs)) != len(organs):
        raise bad("organs must be a non-empty list of distinct names")
    for key in ("superpatch", "presence_threshold"):
        if isinstance(doc[key], bool) or not isinstance(doc[key], int) or doc[key] < 1:
            raise bad(f"{key} {doc[key]!r} is not a positive integer")
    sp = doc["spacing_zyx"]
    if not isinstance(sp, list) or len(sp) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in sp):
        raise bad(f"spacing_zyx {sp!r} is not three positive numbers")
    scans = doc["scans"]
    if not isinstance(scans, list):
        raise bad("scans is not a list")
    root = path.parent
    seen: set[str] = set()
    for k, entry in enumerate(scans):
        if not isinstance(entry, dict):
            raise bad(f"scan entry {k} is not an object")
        for key in ("id", "image", "labels"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise bad(f"scan entry {k} has no {key!r} text")
        sid = entry["id"]
        for key in ("segmentation", "segmentation_scheme"):
            if entry.get(key) is not None and (not isinstance(entry[key], str) or not entry[key]):
                raise bad(f"scan entry {k}: {key} is not text")
        if not SCAN_ID_PATTERN.match(sid):
            raise NemesisInputError(f"{path}: scan id {sid!r} is not a plain name (letters, digits, _ . -); "
                                    "it would name files outside the project; refusing it")
        if sid in seen:
            raise bad(f"scan id {sid!r} appears twice")
        seen.add(sid)
        labels = Path(entry["labels"])
        if labels.is_absolute() or ".." in labels.parts or not _inside(root, root / labels):
            raise NemesisInputError(f"{path}: labels path {entry['labels']!r} of scan {sid!r} leaves the project "
                                    f"folder {root}; label files must lie inside it")


@dataclass(frozen=True)
class ProjectScan:
    """One scan of a project: its id (unique in the project), image and label sidecar, and the
    segmentation file it was last filled from (``None``: its labels are superpatch labels only)."""

    scan_id: str
    image: Path
    labels: Path
    segmentation: Path | None = None
    segmentation_scheme: str | None = None


class LabelProject:
    """Open with :meth:`open`; :meth:`store` gives a scan's :class:`LabelStore` (adding the scan)."""

    def __init__(self, root: Path, doc: dict[str, Any]) -> None:
        self.root = root
        self._doc = doc

    # ---- settings ---------------------------------------------------------------------------
    @property
    def file(self) -> Path:
        return self.root / PROJECT_FILE

    @property
    def organs(self) -> tuple[str, ...]:
        return tuple(self._doc["organs"])

    @property
    def superpatch(self) -> int:
        return int(self._doc["superpatch"])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self._doc["spacing_zyx"])  # type: ignore[return-value]

    @property
    def threshold(self) -> int:
        """Voxels (at the model's spacing) for a segmentation to mark an organ present."""
        return int(self._doc["presence_threshold"])

    def __repr__(self) -> str:
        return f"LabelProject({str(self.root)!r}, scans={len(self.scans)}, organs={len(self.organs)})"

    # ---- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike, create: bool = False, *, superpatch: int | None = None,
             spacing_zyx=None, organs: Iterable[str] | None = None,
             threshold: int | None = None) -> "LabelProject":
        """Open the project in ``root``; ``create=True`` starts one there if there is none.

        Settings given for an existing project must agree with it (a project has one grid and one
        organ list); for a new one they default to 128, ``data.DEFAULT_SPACING_ZYX``, the 8 BTCV
        organs and ``data.PRESENCE_THRESHOLD``.
        """
        from ..data import DEFAULT_SPACING_ZYX, ORGAN_NAMES, PRESENCE_THRESHOLD

        root = Path(root)
        asked = {
            "superpatch": None if superpatch is None else int(superpatch),
            "spacing_zyx": None if spacing_zyx is None else [float(s) for s in spacing_zyx],
            "organs": None if organs is None else [str(o) for o in organs],
            "presence_threshold": None if threshold is None else int(threshold),
        }
        if (root / PROJECT_FILE).is_file():
            project = cls(root, cls._read(root / PROJECT_FILE))
            for key, value in asked.items():
                if value is not None and value != project._doc[key]:
                    raise NemesisInputError(f"{project.file}: the project uses {key} {project._doc[key]}, "
                                            f"not the requested {value}")
            return project
        if not create:
            raise NemesisInputError(f"{root}: not a labelling project (no {PROJECT_FILE}); "
                                    "'nemesis labels fill PROJECT SCAN SEG' starts one")
        if root.exists() and not root.is_dir():
            raise NemesisInputError(f"{root}: exists and is not a folder")
        doc = {
            "format": PROJECT_FORMAT,
            "version": PROJECT_VERSION,
            "organs": asked["organs"] or list(ORGAN_NAMES),
            "superpatch": asked["superpatch"] or 128,
            "spacing_zyx": asked["spacing_zyx"] or list(DEFAULT_SPACING_ZYX),
            "presence_threshold": asked["presence_threshold"] or PRESENCE_THRESHOLD,
            "scans": [],
        }
        organ_list = doc["organs"]
        if not organ_list or len(set(organ_list)) != len(organ_list):
            raise NemesisInputError(f"organ list {organ_list}: must be non-empty without repeats")
        GridSpec.for_scan((1, 1, 1), (1.0, 1.0, 1.0), doc["superpatch"], doc["spacing_zyx"])  # validates
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NemesisInputError(f"{root}: cannot create the labelling project folder ({_os_problem(exc)})") from None
        with _file_lock(root / PROJECT_FILE):
            if not (root / PROJECT_FILE).is_file():  # another process may have just made it
                try:
                    write_json_atomic(root / PROJECT_FILE, doc, durable=True)
                except OSError as exc:
                    raise NemesisInputError(f"{root / PROJECT_FILE}: cannot write the labelling project "
                                            f"({_os_problem(exc)})") from None
        return cls.open(root, superpatch=superpatch, spacing_zyx=spacing_zyx, organs=organs, threshold=threshold)

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        import json

        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except RecursionError:
            raise NemesisInputError(f"{path}: unreadable labelling project (JSON nested too deeply)") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise NemesisInputError(f"{path}: unreadable labelling project ({str(exc).splitlines()[0]})") from None
        if not isinstance(doc, dict) or doc.get("format") != PROJECT_FORMAT:
            raise NemesisInputError(f"{path}: not a napari-nemesis labelling project")
        version = doc.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version > PROJECT_VERSION:
            raise NemesisInputError(f"{path}: written by a newer napari-nemesis (project format version {version}; "
                                    f"this version reads up to {PROJECT_VERSION}); upgrade to open it")
        for key in ("organs", "superpatch", "spacing_zyx", "presence_threshold", "scans"):
            if key not in doc:
                raise NemesisInputError(f"{path}: malformed labelling project (no {key!r})")
        _check_doc(path, doc)
        return doc

    def _reload(self) -> None:
        self._doc = self._read(self.file)

    # ---- scans ------------------------------------------------------------------------------
    @property
    def scans(self) -> list[ProjectScan]:
        return [ProjectScan(s["id"], self._abs(s["image"]), self._abs(s["labels"]),
                            self._abs(s["segmentation"]) if s.get("segmentation") else None,
                            s.get("segmentation_scheme")) for s in self._doc["scans"]]

    def _abs(self, p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() else (self.root / path)

    def _rel(self, p: Path) -> str:
        p = p.resolve()
        try:
            return str(p.relative_to(self.root.resolve()))
        except ValueError:
            return str(p)

    def scan(self, key: str | os.PathLike) -> ProjectScan:
        """A scan of the project by id or by image path."""
        found = self.find(key)
        if found is None:
            raise NemesisInputError(f"{key}: not a scan of the labelling project {self.root} "
                                    f"(scans: {', '.join(s.scan_id for s in self.scans) or 'none'})")
        return found

    def find(self, key: str | os.PathLike) -> ProjectScan | None:
        for s in self.scans:
            if s.scan_id == str(key):
                return s
        target = Path(key).resolve()
        for s in self.scans:
            if s.image.resolve() == target:
                return s
        return None

    def add(self, scan_path: str | os.PathLike) -> ProjectScan:
        """Add ``scan_path`` to the project (no-op if it is there already); returns its entry."""
        scan_path = Path(scan_path)
        if not scan_path.exists():
            raise NemesisInputError(f"{scan_path}: no such scan")
        with _file_lock(self.file):
            self._reload()
            found = self.find(scan_path)
            if found is not None:
                return found
            base = re.sub(r"[^A-Za-z0-9_.-]", "_", sidecar_path_beside(scan_path).name[: -len(SIDECAR_SUFFIX)]) or "scan"
            taken = {s.scan_id for s in self.scans}
            scan_id, k = base, 2
            while scan_id in taken:
                scan_id, k = f"{base}-{k}", k + 1
            entry = {"id": scan_id, "image": self._rel(scan_path), "labels": f"labels/{scan_id}{SIDECAR_SUFFIX}"}
            doc = dict(self._doc)
            doc["scans"] = list(self._doc["scans"]) + [entry]
            try:
                write_json_atomic(self.file, doc, durable=True)
            except OSError as exc:
                raise NemesisInputError(f"{self.file}: cannot add {scan_path} to the labelling project "
                                        f"({_os_problem(exc)}); the project is unchanged") from None
            self._doc = doc
        return self.find(scan_id)  # type: ignore[return-value]

    def record_segmentation(self, scan: str | os.PathLike | ProjectScan, segmentation: str | os.PathLike,
                            scheme: str | None = None) -> ProjectScan:
        """Note that ``scan`` was filled from the label map file ``segmentation`` (read as ``scheme``),
        so patch-level training can read it again; returns the updated entry."""
        key = scan.scan_id if isinstance(scan, ProjectScan) else scan
        with _file_lock(self.file):
            self._reload()
            sid = self.scan(key).scan_id
            doc = dict(self._doc)
            doc["scans"] = [dict(e, segmentation=self._rel(Path(segmentation)), segmentation_scheme=scheme)
                            if e["id"] == sid else e for e in self._doc["scans"]]
            try:
                write_json_atomic(self.file, doc, durable=True)
            except OSError as exc:
                raise NemesisInputError(f"{self.file}: cannot record the segmentation of {sid} "
                                        f"({_os_problem(exc)}); the project is unchanged") from None
            self._doc = doc
        return self.scan(sid)

    def add_folder(self, folder: str | os.PathLike) -> dict[str, Any]:
        """Add every scan of ``folder`` (:func:`scans_in_folder`); scans already in the project stay
        as they are. Returns ``added`` and ``already`` (scan ids) and ``left_out`` (names, why)."""
        scans, left_out = scans_in_folder(folder)
        before = {s.scan_id for s in self.scans}
        added, already = [], []
        for path in scans:
            entry = self.add(path)
            (already if entry.scan_id in before else added).append(entry.scan_id)
            before.add(entry.scan_id)
        return {"folder": str(folder), "added": added, "already": already, "left_out": left_out}

    def store(self, scan: str | os.PathLike | ProjectScan, volume=None, add: bool = True) -> LabelStore:
        """The :class:`LabelStore` of a scan (id, path or entry); a new path is added when ``add``."""
        if not isinstance(scan, ProjectScan):
            found = self.find(scan)
            if found is None:
                if not add:
                    self.scan(scan)  # raises the one-line error
                found = self.add(scan)
            scan = found
        return LabelStore.open_sidecar(scan.labels, scan.image, volume=volume, superpatch=self.superpatch,
                                       spacing_zyx=self.spacing_zyx, organs=self.organs)

    # ---- status -----------------------------------------------------------------------------
    def next_unlabelled(self, after: str | os.PathLike | None = None,
                        status: dict[str, Any] | None = None) -> ProjectScan | None:
        """The next scan with superpatches still unlabelled (or none labelled yet), in project
        order after the scan ``after`` (id or path; from the first when None or not in the
        project), coming round to the start (``after`` itself last); a scan whose image is
        missing is passed over.
        None when every scan is done. ``status``: :meth:`status`'s result, when already read."""
        rows = {row["id"]: row for row in (status or self.status())["scans"]}
        scans = self.scans
        start = 0
        if after is not None:
            found = self.find(after)
            if found is not None:
                start = [s.scan_id for s in scans].index(found.scan_id) + 1
        for k in range(len(scans)):
            sc = scans[(start + k) % len(scans)]
            row = rows.get(sc.scan_id)
            todo = row is None or row["unlabelled"] is None or row["unlabelled"] > 0
            if todo and sc.image.exists():
                return sc  # ``after`` itself comes last: the one scan left with work
        return None

    def status(self) -> dict[str, Any]:
        """Per scan: labelled / skipped / unlabelled counts and positives per organ, plus totals
        and the scan to label next (:meth:`next_unlabelled` from the first scan).

        Read from the sidecars alone (no image is opened, nothing is written). The CLI's ``labels
        status`` and the viewer's Project dock both show this.
        """
        rows = []
        totals = {"superpatches": 0, "labelled": 0, "skipped": 0, "unlabelled": 0,
                  "positives": {o: 0 for o in self.organs}}
        for s in self.scans:
            row: dict[str, Any] = {"id": s.scan_id, "image": str(s.image), "labels": str(s.labels),
                                   "image_found": s.image.exists()}
            if s.labels.exists():
                doc = read_sidecar(s.labels)
                n = GridSpec.from_json(doc["grid"]).n
                states = {"labelled": 0, "skipped": 0}
                positives = {o: 0 for o in self.organs}
                for e in doc["superpatches"]:
                    if e["state"] in states:
                        states[e["state"]] += 1
                    if e["state"] == "labelled":
                        for o in e.get("organs", []):
                            if o in positives:
                                positives[o] += 1
            else:  # added, nothing labelled yet (the grid size needs the image)
                n, states, positives = None, {"labelled": 0, "skipped": 0}, {o: 0 for o in self.organs}
            row.update(superpatches=n, labelled=states["labelled"], skipped=states["skipped"],
                       unlabelled=None if n is None else n - states["labelled"] - states["skipped"],
                       positives=positives)
            rows.append(row)
            totals["superpatches"] += n or 0
            totals["labelled"] += states["labelled"]
            totals["skipped"] += states["skipped"]
            totals["unlabelled"] += row["unlabelled"] or 0
            for o, v in positives.items():
                totals["positives"][o] += v
        doc = {"project": str(self.root), "organs": list(self.organs), "superpatch": self.superpatch,
               "spacing_zyx": list(self.spacing_zyx), "presence_threshold": self.threshold,
               "scans": rows, "totals": totals}
        following = self.next_unlabelled(status=doc)
        doc["next_unlabelled"] = following.scan_id if following is not None else None
        return doc


register_project_opener(LabelProject.open)  # LabelStore.for_scan(scan, project_dir) opens projects with it
