"""Similarity search: the superpatches of a cohort nearest to one superpatch in the encoder's feature space
(``nemesis similar``; the napari "Find similar" action calls :func:`similar` too).

A superpatch's feature is what the organ probe reads: the frozen encoder on the whole superpatch (no mask,
no noise), the mean of its tokens (``probe.encode_features``). Similarity is the cosine of two features.

Features are computed once per scan and kept in a cache folder, keyed by content: the SHA-256 of the scan's
bytes (a DICOM folder: its file names and bytes), the encoder's digest (``probe.encoder_digest``), the spacing
the scan is resampled to and the superpatch size. Moving or renaming a scan keeps its entry; changing one byte
of it, or the weights, makes a new one. An entry is ``<key>.safetensors`` (one float32 tensor ``features``
(n, E)) with its JSON metadata inside the file (the key's parts, the grid, the preprocessed shape), written
atomically (``atomic.atomic_path``); nothing is pickled. The folder is ``cache_dir=``, else
``$NEMESIS_FEATURE_CACHE``, else ``features/`` in the dataset cache folder (``data.datasets.default_cache_dir``:
``$NEMESIS_CACHE_DIR`` or ``~/.cache/napari-nemesis``). Entries are never pruned: delete the folder to empty it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..errors import NemesisInputError
from ..model import NemesisMAE
from .cohort import CohortScan, cohort_scans
from .events import CancelFn, ProgressFn, check_cancel, emit
from .probe import encode_features, encoder_digest

__all__ = ["FEATURE_CACHE_ENV", "FEATURE_FORMAT", "feature_cache_dir", "scan_digest", "ScanFeatures",
           "scan_features", "similar"]

FEATURE_CACHE_ENV = "NEMESIS_FEATURE_CACHE"
FEATURE_FORMAT = "napari-nemesis/superpatch-features"
FEATURE_VERSION = 1


def feature_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$NEMESIS_FEATURE_CACHE``, else ``<dataset cache folder>/features``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(FEATURE_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from ..data.datasets import default_cache_dir

    return default_cache_dir() / "features"


def scan_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a scan's content: a file's bytes; a folder's (DICOM series) file names and bytes."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class ScanFeatures:
    """One scan's superpatch features (n, E) float32 and the grid they belong to."""

    scan: CohortScan
    features: np.ndarray
    grid_shape: tuple[int, int, int]
    shape_zyx: tuple[int, int, int]  # the scan at the model's spacing
    superpatch: int
    digest: str
    from_cache: bool
    path: Path  # the cache entry

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    def check_index(self, index) -> int:
        """``index`` as a superpatch of this scan, or a one-line error naming the scan and the valid range."""
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise NemesisInputError(f"{self.scan.path}: superpatch {index!r} is not an integer") from None
        if not 0 <= i < self.n:
            grid = "x".join(map(str, self.grid_shape))
            raise NemesisInputError(f"{self.scan.path}: superpatch {i} is out of range 0..{self.n - 1} "
                                    f"(grid {grid} z y x)")
        return i

    def grid_index(self, i: int) -> list[int]:
        return [int(v) for v in np.unravel_index(int(i), self.grid_shape)]


def _spacing_key(model: NemesisMAE, spacing_zyx) -> Any:
    from ..data.spacing import Spacing, recorded_spacing

    spacing = recorded_spacing(model)[0] if spacing_zyx is None else spacing_zyx
    return Spacing.parse(spacing).to_json()


def _entry_key(digest: str, encoder: str, spacing: Any, superpatch: int) -> str:
    text = json.dumps({"scan_sha256": digest, "encoder_sha256": encoder, "spacing_zyx": spacing,
                       "superpatch": int(superpatch)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def _read_entry(path: Path, digest: str, encoder: str, spacing: Any, superpatch: int):
    """(features, meta) of a cache entry that matches, else None (a broken or foreign file is ignored)."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            meta = json.loads((fh.metadata() or {}).get("meta", "{}"))
            feats = fh.get_tensor("features")
    except Exception:  # noqa: BLE001 - a damaged entry is recomputed, never trusted
        return None
    want = {"format": FEATURE_FORMAT, "scan_sha256": digest, "encoder_sha256": encoder, "spacing_zyx": spacing,
            "superpatch": int(superpatch)}
    if any(meta.get(k) != v for k, v in want.items()) or feats.ndim != 2 or not np.isfinite(feats).all():
        return None
    grid = meta.get("grid")
    if not (isinstance(grid, list) and len(grid) == 3 and int(np.prod(grid)) == feats.shape[0]):
        return None
    return np.ascontiguousarray(feats, dtype=np.float32), meta


def _write_entry(path: Path, feats: np.ndarray, meta: dict[str, Any]) -> None:
    from safetensors.numpy import save_file

    try:
        with atomic_path(path) as tmp:
            save_file({"features": np.ascontiguousarray(feats, np.float32)}, str(tmp),
                      metadata={"format": FEATURE_FORMAT, "meta": json.dumps(meta)})
    except OSError as exc:  # a read-only or full cache folder: the features are still returned
        import warnings

        from ..data import NemesisDataWarning

        warnings.warn(f"{path.parent}: cannot write the feature cache ({exc.strerror or exc}); features are "
                      "computed again next time", NemesisDataWarning, stacklevel=3)


def scan_features(
    scan,
    model: NemesisMAE,
    spacing_zyx=None,
    cache_dir: str | os.PathLike | None = None,
    batch: int = 2,
    device: str = "auto",
    bf16: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    encoder: str | None = None,
    index: int | None = None,
) -> ScanFeatures:
    """The superpatch features of ``scan`` (a path or a :class:`~.cohort.CohortScan`): from the cache when
    an entry matches its content, the encoder, the spacing and the superpatch size; else computed (the scan
    prepared at ``spacing_zyx``, None: the checkpoint's pretraining spacing) and cached. ``encoder``: the
    encoder's digest when the caller has it already. ``index``: a superpatch the caller will read, checked
    (:meth:`ScanFeatures.check_index`) before anything is encoded."""
    from .runtime import resolve_device
    from .scan import prepare_for_model

    entry = scan if isinstance(scan, CohortScan) else CohortScan(Path(scan))
    if not entry.path.exists():
        raise NemesisInputError(f"{entry.path}: no such scan")
    digest = scan_digest(entry.path)
    encoder = encoder or encoder_digest(model)
    spacing = _spacing_key(model, spacing_zyx)
    s = model.cfg.superpatch
    path = feature_cache_dir(cache_dir) / f"{_entry_key(digest, encoder, spacing, s)}.safetensors"
    found = _read_entry(path, digest, encoder, spacing, s)
    if found is not None:
        feats, meta = found
        out = ScanFeatures(entry, feats, tuple(meta["grid"]), tuple(meta["shape_zyx"]), s, digest, True, path)
        if index is not None:
            out.check_index(index)
        return out
    check_cancel(cancel, "features")
    prepared = prepare_for_model(entry.path, model, None if spacing_zyx is None else spacing_zyx)
    grid = prepared.grid
    if index is not None:  # fail before the encoder runs
        ScanFeatures(entry, np.zeros((grid.n, 0), np.float32), tuple(grid.grid_shape), tuple(prepared.pre.shape), s,
                     digest, False, path).check_index(index)
    patches = (p for _, _, p in grid.iter_superpatches(prepared.pre.array))
    feats = encode_features(model, patches, batch, resolve_device(device), bf16, progress, cancel,
                            what=f"features {entry.path.name}", total=grid.n)
    feats = np.asarray(feats, np.float32)
    meta = {"format": FEATURE_FORMAT, "version": FEATURE_VERSION, "scan_sha256": digest, "encoder_sha256": encoder,
            "spacing_zyx": spacing, "superpatch": s, "grid": list(grid.grid_shape),
            "shape_zyx": list(prepared.pre.shape), "source": str(entry.path),
            "feature": "frozen encoder, no mask, no noise, mean of tokens"}
    _write_entry(path, feats, meta)
    return ScanFeatures(entry, feats, tuple(grid.grid_shape), tuple(prepared.pre.shape), s, digest, False, path)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def similar(
    query_scan,
    superpatch_index: int,
    among,
    model: NemesisMAE,
    k: int = 5,
    spacing_zyx=None,
    cache_dir: str | os.PathLike | None = None,
    batch: int = 2,
    device: str = "auto",
    bf16: bool = False,
    checkpoint: str | os.PathLike | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """The ``k`` superpatches of ``among`` (scans, folders, labelling projects; ``cohort.cohort_scans``)
    nearest to superpatch ``superpatch_index`` of ``query_scan`` by cosine similarity of encoder features,
    nearest first. The query superpatch itself is never a neighbour; the query scan's other superpatches are
    candidates when it is among them. A bad index is a one-line error naming the scan and the valid range.

    Returns ``{"query": {"scan", "superpatch", "grid_zyx"}, "neighbours": [{"scan", "superpatch",
    "similarity"}], "k", "scans", "candidates", "checkpoint", "encoder_sha256", "spacing_zyx", "cache":
    {"dir", "hits", "computed"}}``; ``progress`` gets a ``stage`` per scan and the encoder's ``item`` events.
    """
    if int(k) < 1:
        raise NemesisInputError(f"k {k} must be >= 1")
    encoder = encoder_digest(model)
    opts = dict(spacing_zyx=spacing_zyx, cache_dir=cache_dir, batch=batch, device=device, bf16=bf16,
                progress=progress, cancel=cancel, encoder=encoder)
    query = cohort_scans([query_scan])
    if len(query) != 1:
        raise NemesisInputError(f"{query_scan}: the query must be one scan, not {len(query)}")
    scans = cohort_scans(among if not isinstance(among, (str, os.PathLike)) else [among])
    q = scan_features(query[0], model, **opts, index=superpatch_index)
    i = q.check_index(superpatch_index)
    qv = _unit(q.features[i])
    hits, computed = int(q.from_cache), int(not q.from_cache)
    rows: list[tuple[float, int, int, str]] = []
    for n_scan, entry in enumerate(scans):
        check_cancel(cancel, "similarity search")
        emit(progress, "stage", name=f"scan {n_scan + 1}/{len(scans)}: {entry.path.name}", scan=str(entry.path),
             index=n_scan, scans=len(scans))
        same = entry.path.resolve() == q.scan.path.resolve()
        f = q if same else scan_features(entry, model, **opts)
        if not same:
            hits, computed = hits + int(f.from_cache), computed + int(not f.from_cache)
        sims = _unit(f.features) @ qv
        for j, v in enumerate(sims):
            if same and j == i:
                continue
            rows.append((float(v), n_scan, j, str(entry.path)))
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    return {
        "query": {"scan": str(q.scan.path), "superpatch": i, "grid_zyx": q.grid_index(i)},
        "neighbours": [{"scan": scan, "superpatch": j, "similarity": round(v, 6)} for v, _, j, scan in rows[:int(k)]],
        "k": int(k), "scans": len(scans), "candidates": len(rows),
        "checkpoint": str(checkpoint) if checkpoint else (str(model.checkpoint_path) if model.checkpoint_path else None),
        "encoder_sha256": encoder, "spacing_zyx": _spacing_key(model, spacing_zyx),
        "cache": {"dir": str(feature_cache_dir(cache_dir)), "hits": hits, "computed": computed},
    }
