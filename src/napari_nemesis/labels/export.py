"""Export a labelling project as a superpatch cache that ``nemesis probe`` / ``evaluate`` read.

A project labels *some* superpatches of each scan; a cache entry gives presence for every
superpatch of its case. So each labelled superpatch becomes a case of its own: its ``S^3`` crop
(windowed, float16, exactly what ``SuperpatchGrid.superpatch_of`` gives the model, padding
included) with a grid of one superpatch whose presence is the hand label. Skipped and unlabelled
superpatches are not exported.

The cache's ``labels.npy`` of a case is a stand-in that reproduces the label at the cache's
presence rule: for each organ present, ``data.PRESENCE_THRESHOLD`` voxels of its BTCV id. It is
exact for superpatches of the exported size or larger; a smaller superpatch would split a hand
label it knows nothing about, so use the exported size.

Split (``nemesis probe`` trains on ``train`` and reports on ``test``): with several scans whole
scans are held out, ``data.split_cases``'s fallback rule over scan ids (40 %, spread evenly);
with one scan the same rule runs over its labelled superpatches.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_json_atomic
from ..errors import NemesisInputError
from .project import LabelProject

__all__ = ["export_project", "EXPORT_KEY"]

#: Key of the cache index that marks (and describes) an export of a labelling project.
EXPORT_KEY = "exported_from_labels"


def _held_out(ids: list[str]) -> set[str]:
    from ..data import Case, split_cases

    _, test = split_cases([Case(i, Path(i)) for i in ids], test_ids=())
    return {c.case_id for c in test}


def _stand_in_labels(presence_btcv: np.ndarray, superpatch: int) -> np.ndarray:
    from ..data import ORGAN_IDS, PRESENCE_THRESHOLD

    labels = np.zeros(superpatch ** 3, dtype=np.uint8)
    for k in np.flatnonzero(presence_btcv):
        labels[k * PRESENCE_THRESHOLD:(k + 1) * PRESENCE_THRESHOLD] = ORGAN_IDS[k]
    return labels.reshape((superpatch,) * 3)


def export_project(project: LabelProject | str | os.PathLike, out_dir: str | os.PathLike,
                   progress=None, cancel=None) -> dict[str, Any]:
    """Write the labelled superpatches of ``project`` as a cache in ``out_dir`` (see module doc).

    ``out_dir`` must be new, empty, or an earlier export (which is replaced whole: the new
    export is built beside it and renamed into place). Returns a summary dict.
    """
    from ..data import ORGAN_NAMES, PRESENCE_THRESHOLD, SuperpatchGrid, organ_voxel_counts, preprocess
    from ..data.datasets import CACHE_IMAGE_DTYPE, cache_index, replace_folder
    from ..train.events import check_cancel, emit

    if not isinstance(project, LabelProject):
        project = LabelProject.open(project)
    out_dir = Path(out_dir)
    if sorted(project.organs) != sorted(ORGAN_NAMES):
        raise NemesisInputError(f"{project.file}: a cache holds the 8 BTCV organs, but this project labels "
                                f"{', '.join(project.organs)}; train from the project with 'nemesis labels train'")
    s = project.superpatch
    if s ** 3 < len(ORGAN_NAMES) * PRESENCE_THRESHOLD:
        raise NemesisInputError(f"superpatch {s}: too small to export ({s}^3 voxels)")
    if out_dir.exists():
        index = out_dir / "index.json"
        earlier = False
        if index.is_file():
            import json

            try:
                earlier = EXPORT_KEY in json.loads(index.read_text())
            except (OSError, ValueError, TypeError, RecursionError):
                earlier = False
        if not earlier and any(out_dir.iterdir()):
            raise NemesisInputError(f"{out_dir}: exists, is not empty and is not an export of a labelling project")
    status = {row["id"]: row for row in project.status()["scans"]}
    scans = [sc for sc in project.scans if status[sc.scan_id]["labelled"] > 0]
    if not scans:
        raise NemesisInputError(f"{project.root}: no labelled superpatches to export")
    order = [ORGAN_NAMES.index(o) for o in project.organs]  # project column k -> ORGAN_NAMES column
    total = sum(status[sc.scan_id]["labelled"] for sc in scans)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a cache is shared like any output folder
    cases: dict[str, Any] = {}
    revisions: dict[str, int] = {}
    try:
        emit(progress, "start", step=0, total=total)
        done = 0
        per_scan: dict[str, list[str]] = {}
        for sc in scans:
            store = project.store(sc, add=False)
            revisions[sc.scan_id] = store.revision
            pre = preprocess(store.volume, project.spacing_zyx)
            grid = SuperpatchGrid.for_preprocessed(pre, s)
            presence = store.presence()
            for i in store.indices("labelled"):
                check_cancel(cancel, "export")
                case_id = f"{sc.scan_id}-sp{i:04d}"
                btcv = np.zeros(len(ORGAN_NAMES), dtype=np.uint8)
                btcv[order] = presence[i]
                case_dir = tmp / "cases" / case_id
                if case_dir.resolve().parent != (tmp / "cases").resolve():  # ids are checked on reading; never trust
                    raise NemesisInputError(f"{project.file}: scan id {sc.scan_id!r} would write outside {out_dir}")
                case_dir.mkdir(parents=True)
                np.save(case_dir / "image.npy", grid.superpatch_of(pre.array, i).astype(CACHE_IMAGE_DTYPE))
                stand_in = _stand_in_labels(btcv, s)
                np.save(case_dir / "labels.npy", stand_in)
                counts = organ_voxel_counts(stand_in[None])[0]
                assert ((counts >= PRESENCE_THRESHOLD).astype(np.uint8) == btcv).all()
                box = grid.box(i)
                scale = np.asarray(pre.scale_zyx)
                shift = np.eye(4)
                shift[:3, 3] = np.asarray(box.start) * scale  # crop origin, in original voxel edges
                cases[case_id] = {
                    "image": f"cases/{case_id}/image.npy",
                    "labels": f"cases/{case_id}/labels.npy",
                    "shape_zyx": [s, s, s],
                    "spacing_zyx": list(pre.spacing_zyx),
                    "source_shape_zyx": list(grid.box_original(i).shape),
                    "source_spacing_zyx": list(pre.source_spacing_zyx),
                    "source_orientation": store.volume.orientation,
                    "scale_zyx": list(pre.scale_zyx),
                    "source_canonical_affine": (pre.source_canonical_affine @ shift).tolist(),
                    "grid_shape": [1, 1, 1],
                    "presence": [btcv.astype(int).tolist()],
                    "organ_voxels": [counts.tolist()],
                    "label_scheme": "btcv",
                    "sources": {"image": {"path": str(sc.image.resolve()), "voxel_sha256": store.scan.voxel_sha256},
                                "label": {"path": str(sc.labels.resolve()), "revision": store.revision}},
                    "scan_id": sc.scan_id,
                    "superpatch_index": i,
                }
                per_scan.setdefault(sc.scan_id, []).append(case_id)
                done += 1
                emit(progress, "item", done=done, total=total)
            del pre
        if len(per_scan) >= 2:
            test_scans = _held_out(sorted(per_scan))
            split_over = "scans"
            for scan_id, ids in per_scan.items():
                for cid in ids:
                    cases[cid]["split"] = "test" if scan_id in test_scans else "train"
        else:
            test_ids = _held_out(sorted(cases))
            split_over = "superpatches"
            for cid in cases:
                cases[cid]["split"] = "test" if cid in test_ids else "train"
        export = {"project": str(project.root.resolve()), "revisions": revisions, "split_over": split_over}
        write_json_atomic(tmp / "index.json", cache_index(project.spacing_zyx, s, project.root,
                                                          **{EXPORT_KEY: export}, cases=cases))
        replace_folder(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    n_test = sum(1 for c in cases.values() if c["split"] == "test")
    emit(progress, "end", done=total)
    return {"cache": str(out_dir), "superpatches": len(cases), "train": len(cases) - n_test, "test": n_test,
            "scans": len(per_scan), "split_over": split_over, "superpatch": s, "spacing_zyx": list(project.spacing_zyx)}
