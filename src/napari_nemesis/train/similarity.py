"""Similarity search: the superpatches of other scans nearest to one superpatch in the encoder's
feature space (``nemesis similar``, the Triage dock's "Find similar").

A superpatch's feature is the frozen encoder's mean token (no mask, no noise: what the organ probe
reads), compared by cosine similarity. Each scan's features are computed once and cached by content:
the key is the SHA-256 of the scan's bytes (every file of a DICOM folder), the encoder's digest
(:func:`.probe.encoder_digest`), the spacing and the superpatch size. So a renamed or moved file
is still a hit, and an edited file or other weights is a miss. The cache holds safetensors files
(``features``, ``inside``) with their metadata as JSON, written atomically. Its folder is
``cache_dir``, else ``$NEMESIS_FEATURE_CACHE``, else ``~/.cache/napari-nemesis/features``.

Candidates are superpatches at least ``min_inside`` (default half) inside their scan: the padding
beyond a scan's edge looks alike in every scan and would crowd out anatomy. The query's own scan
is left out of the neighbours (the search is for other scans).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NemesisInputError
from .events import CancelFn, ProgressFn, check_cancel, emit

#: A candidate superpatch lies at least this much inside its scan.
MIN_INSIDE = 0.5
_CACHE_VERSION = 1


def feature_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("NEMESIS_FEATURE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "napari-nemesis" / "features"


def content_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a scan's bytes: the file, or every file of a folder (a DICOM series) in name order."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise NemesisInputError(f"{path}: no file to read")
    h = hashlib.sha256()
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        try:
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as exc:
            raise NemesisInputError(f"{f}: cannot read ({exc.strerror or exc})") from None
    return h.hexdigest()


def scan_features(path, model, spacing_zyx=None, batch: int = 2, device: str = "auto", cache_dir=None,
                  progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> dict[str, Any]:
    """One scan's superpatch features, from the cache or computed (and cached): ``features`` (n, E)
    float32, ``inside`` (n,) the fraction of each superpatch inside the scan, ``grid`` shape,
    ``cached`` whether it came from the cache."""
    from safetensors.numpy import load_file, save_file

    from ..atomic import atomic_path, write_json_atomic
    from ..data import SuperpatchGrid, inside_fraction, preprocess, read_volume
    from ..data.spacing import Spacing
    from ..data.spacing import recorded_spacing
    from .probe import encode_features, encoder_digest
    from .runtime import resolve_device

    path = Path(path)
    spacing = Spacing.parse(spacing_zyx if spacing_zyx is not None else recorded_spacing(model, None, None)[0])
    key_doc = {"v": _CACHE_VERSION, "content": content_digest(path), "encoder": encoder_digest(model),
               "spacing": spacing.to_json(), "superpatch": int(model.cfg.superpatch)}
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:32]
    folder = feature_cache_dir(cache_dir)
    tensors, meta = folder / f"{key}.safetensors", folder / f"{key}.json"
    if tensors.is_file() and meta.is_file():
        try:
            arrays = load_file(str(tensors))
            doc = json.loads(meta.read_text())
            if doc.get("key") == key_doc:
                emit(progress, "stage", name=f"features of {path.name} (cached)")
                return {"scan": str(path), "features": arrays["features"], "inside": arrays["inside"],
                        "grid": tuple(doc["grid"]), "cached": True}
        except Exception:  # a damaged cache entry: computed again below and replaced
            pass
    emit(progress, "stage", name=f"features of {path.name}")
    volume = read_volume(path)
    pre = preprocess(volume, spacing.value)
    grid = SuperpatchGrid.for_preprocessed(pre, model.cfg.superpatch)
    inside = np.asarray([inside_fraction(pre.array.shape, grid.box(i).start, grid.superpatch) for i in range(grid.n)],
                        dtype=np.float32)
    feats = encode_features(model, (p for _, _, p in grid.iter_superpatches(pre.array)), batch=batch,
                            device=resolve_device(device), progress=progress, cancel=cancel, what=f"features of {path.name}",
                            total=grid.n)
    check_cancel(cancel, "similarity")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(tensors) as tmp:
            save_file({"features": np.ascontiguousarray(feats, dtype=np.float32), "inside": inside}, str(tmp))
        write_json_atomic(meta, {"key": key_doc, "grid": list(grid.grid_shape), "source": str(path)})
    except OSError:  # a read-only or full cache folder: the search still works, uncached
        pass
    return {"scan": str(path), "features": feats, "inside": inside, "grid": tuple(grid.grid_shape), "cached": False}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def similar(query_scan, superpatch_index: int, among, model, k: int = 5, spacing_zyx=None, batch: int = 2,
            device: str = "auto", cache_dir=None, min_inside: float = MIN_INSIDE,
            progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> dict[str, Any]:
    """The ``k`` superpatches of the scans in ``among`` (files, folders, projects; the query's scan
    left out) nearest to superpatch ``superpatch_index`` of ``query_scan``, by cosine similarity of
    their encoder features. Returns ``{"query", "neighbours": [{"scan", "superpatch", "similarity",
    "inside_fraction"}], "k", "scans", "cache"}``, nearest first."""
    if int(k) < 1:
        raise NemesisInputError(f"k must be at least 1, not {k}")
    query_path = Path(query_scan)
    q = scan_features(query_path, model, spacing_zyx, batch, device, cache_dir, progress, cancel)
    n = len(q["features"])
    if not 0 <= int(superpatch_index) < n:
        raise NemesisInputError(f"{query_path}: no superpatch {superpatch_index}; its grid "
                                f"{'x'.join(str(g) for g in q['grid'])} has superpatches 0..{n - 1}")
    from .cohort import cohort_scans

    scans = [c.path for c in cohort_scans(among) if c.path.resolve() != query_path.resolve()]
    if not scans:
        raise NemesisInputError(f"no other scan to search in {', '.join(str(a) for a in ([among] if isinstance(among, (str, os.PathLike)) else among))}")
    query_vec = _unit(q["features"][int(superpatch_index)])
    rows: list[dict[str, Any]] = []
    hits = int(q["cached"])
    for i, path in enumerate(scans):
        check_cancel(cancel, "similarity")
        emit(progress, "step", step=i, total=len(scans))
        f = scan_features(path, model, spacing_zyx, batch, device, cache_dir, progress, cancel)
        hits += int(f["cached"])
        sims = _unit(f["features"]) @ query_vec
        for j in np.flatnonzero(f["inside"] >= min_inside):
            rows.append({"scan": str(path), "superpatch": int(j), "similarity": float(sims[j]),
                         "inside_fraction": float(f["inside"][j])})
    emit(progress, "step", step=len(scans), total=len(scans))
    rows.sort(key=lambda r: -r["similarity"])
    inside = float(q["inside"][int(superpatch_index)])
    warnings = ([f"superpatch {superpatch_index} of {query_path.name} is only {inside:.0%} inside its scan: its "
                 "features are partly those of padding"] if inside < min_inside else [])
    return {"query": {"scan": str(query_path), "superpatch": int(superpatch_index), "inside_fraction": inside},
            "warnings": warnings,
            "neighbours": rows[: int(k)], "k": int(k), "scans": [str(p) for p in scans],
            "candidates": len(rows), "min_inside": float(min_inside),
            "checkpoint": str(getattr(model, "checkpoint_path", None) or ""),
            "cache": {"folder": str(feature_cache_dir(cache_dir)), "hits": hits, "computed": len(scans) + 1 - hits}}
