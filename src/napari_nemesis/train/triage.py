"""Surprise triage: rank every superpatch of a cohort by how much worse the model reconstructs it than the
anatomy it knows (``nemesis triage``; the napari Triage dock calls :func:`triage` too).

How a superpatch is scored
--------------------------
1. Every superpatch of every scan is masked and reconstructed ``seeds`` times (mask seeds ``seed`` ..
   ``seed + seeds - 1``, no noise; ``train.scan.iter_reconstruction``). Each masked voxel inside the scan
   gets the model's squared error and the squared error of ``baselines.local_fill`` (every masked patch
   = the mean of its nearest visible patches: what interpolation without anatomy predicts), summed over
   the seeds.
2. The errors are pooled in *windows* the size of one patch (16^3 voxels for the bundled weights), every
   half patch along each axis, inside each superpatch: ``e_model`` and ``e_fill`` are the window's mean
   squared errors over its masked voxels (all seeds together).
3. Windows the model cannot be judged on are left out: a window must lie wholly inside the scan and at
   least one patch from the padding beyond it (the model sees padding as a cut to air), and at least half a
   patch from the superpatch's own faces (there the model has context on one side only; in normal anatomy
   its largest errors sit there). A superpatch less than ``min_inside`` inside the scan, or with no window
   left, is not scored (``score`` null, listed last with a ``reason``).
4. The reference is the cohort itself: all kept windows of all scans, cut into strata by decile of
   ``e_fill`` and, within each decile, by whether the window holds air (at least 5 % of its voxels at or
   below the HU window's floor), bone or contrast (5 % at or above its ceiling), both, or neither (a stratum
   of fewer than 30 windows falls back to its decile). A window's surprise is the robust z-score of
   ``e_model`` within its stratum::

       z = (e_model - median in the stratum) / max(1.4826 MAD in the stratum, 1.4826 MAD of all windows)

   A stratum holds windows equally hard for a learning-free fill and alike in what they hold, so a lung
   border is compared with other air-tissue windows, not with flat liver; the global floor keeps a stratum
   with almost no spread (air) from turning tiny errors into large scores.
5. A superpatch's ``score`` is its largest window z; ``hotspot_zyx`` / ``hotspot_world_xyz`` give that
   window's centre (original voxel index and world RAS+ mm). Higher is more surprising; the largest of a
   superpatch's few thousand windows reaches 3-5 in normal anatomy (with the bundled weights).

The score is relative to the cohort: the same superpatch can score differently among other scans. What it
finds depends on the weights: with the bundled ``small`` weights a 3 cm dense mass or a block of noise in the
abdomen ranks at the top; a dark cavity does not (the model paints dark tissue where it is unsure, so an air
hole costs it little), nor does such a ball in the chest, whose contrast-filled vessels against the lung are
as hard for these weights. See ``docs/training.md`` (``nemesis triage``).

:func:`triage` returns plain dicts and takes ``progress`` / ``cancel`` like the other core loops, so a dock
can run it on a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NemesisInputError
from ..model import NemesisMAE
from ..model.masking import DEFAULT_STRATEGY, check_strategy
from .baselines import local_fill
from .cohort import CohortScan, cohort_scans
from .events import CancelFn, ProgressFn, check_cancel, emit

__all__ = ["triage", "scan_errors", "ScanErrors", "SCORE_DEFINITION", "N_BINS", "print_ranking"]

#: Bins of the fill's error the reference is cut into (deciles).
N_BINS = 10
#: Windows kept: at least this many cells (half patches) from the padding and from the superpatch faces.
PADDING_MARGIN_CELLS = 2
FACE_MARGIN_CELLS = 1
#: A window counts as holding air (or bone) when this fraction of its voxels is at the window's floor (ceiling).
CLIP_FRACTION = 0.05
#: Reference strata: deciles of the fill's error, times the clipping class when STRATIFY_CLIPPED.
STRATIFY_CLIPPED = True
#: Fewest windows a stratum needs for its own median and MAD.
MIN_STRATUM = 30
#: One line for JSON results and tables.
SCORE_DEFINITION = ("largest robust z-score, over the superpatch's patch-sized windows, of the model's masked-voxel "
                    "MSE against the cohort's windows of similar local-fill MSE (deciles); windows near the padding "
                    "or the superpatch faces are left out")


@dataclass
class ScanErrors:
    """Masked-voxel squared errors of the model and of the local fill, summed over the mask seeds, on a grid
    of ``cell``^3-voxel cells per superpatch: arrays (n, g, g, g) with g = superpatch // cell."""

    cell: int
    model_sq: np.ndarray
    fill_sq: np.ndarray
    count: np.ndarray  # masked voxels inside the scan, summed over seeds
    inside: np.ndarray  # fraction of each cell's voxels inside the scan
    dark: np.ndarray  # voxels inside the scan at or below the window's floor (air, lung)
    bright: np.ndarray  # voxels inside the scan at or above its ceiling (bone, contrast, metal)
    superpatch_inside: np.ndarray  # (n,) fraction of each superpatch inside the scan


def _cell_size(patch: int) -> int:
    return patch // 2 if patch % 2 == 0 and patch >= 2 else patch


def _cells(a: np.ndarray, g: int, h: int) -> np.ndarray:
    return a.reshape(g, h, g, h, g, h).sum(axis=(1, 3, 5))


def scan_errors(prepared, model: NemesisMAE, strategy: str = DEFAULT_STRATEGY, ratio: float = 0.75,
                seeds: Iterable[int] = (0, 1, 2), batch: int = 2, device: str = "auto", bf16: bool = False,
                cancel: CancelFn | None = None, step=None) -> ScanErrors:
    """Reconstruct every superpatch of ``prepared`` (a ``train.scan.PreparedScan``) once per seed
    (``iter_reconstruction``, SSIM skipped) and sum, cell by cell, the squared errors of the model and of
    ``baselines.local_fill`` over the masked voxels inside the scan. ``step(seed, index)`` follows each one."""
    from .scan import iter_reconstruction

    s, p = model.cfg.superpatch, model.cfg.patch
    h = _cell_size(p)
    g = s // h
    n = prepared.grid.n
    shape = (n, g, g, g)
    model_sq, fill_sq, count = (np.zeros(shape, np.float64) for _ in range(3))
    inside = np.zeros(shape, np.float32)
    dark, bright = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    sp_inside = np.zeros(n, np.float64)
    for seed in seeds:
        stream = iter_reconstruction(prepared, model, strategy, ratio, 0.0, int(seed), None, batch, device, bf16,
                                     cancel, None, ssim=False)
        for item in stream:
            box = item.box.shape
            pad = [(0, s - d) for d in box]
            valid = tuple(slice(0, d) for d in box)
            clean = np.pad(item.clean, pad)
            hidden = np.pad(item.masked_voxels, pad)
            fill = local_fill(clean, hidden, valid, p)
            inner = np.zeros((s, s, s), bool)
            inner[valid] = True
            sel = hidden & inner
            i = item.index
            model_sq[i] += _cells(np.where(sel, np.square(np.pad(item.recon, pad) - clean, dtype=np.float64), 0.0),
                                  g, h)
            fill_sq[i] += _cells(np.where(sel, np.square(fill - clean, dtype=np.float64), 0.0), g, h)
            count[i] += _cells(sel.astype(np.float64), g, h)
            inside[i] = _cells(inner.astype(np.float32), g, h) / h ** 3
            dark[i] = _cells((inner & (clean <= 0.0)).astype(np.float32), g, h)
            bright[i] = _cells((inner & (clean >= 1.0)).astype(np.float32), g, h)
            sp_inside[i] = float(np.prod(box)) / s ** 3
            if step is not None:
                step(int(seed), i)
    return ScanErrors(h, model_sq, fill_sq, count, inside, dark, bright, sp_inside)


# ---- windows -----------------------------------------------------------------------------------------
def _window_sum(a: np.ndarray, w: int) -> np.ndarray:
    from numpy.lib.stride_tricks import sliding_window_view

    return sliding_window_view(a, (w, w, w), axis=(-3, -2, -1)).sum(axis=(-1, -2, -3))


def _kept_cells(inside: np.ndarray, margin: int) -> np.ndarray:
    """Cells wholly inside the scan and at least ``margin`` cells from any cell that is not (per superpatch;
    the padding only lies at the high end of the last superpatch along each axis)."""
    from scipy.ndimage import binary_erosion

    full = inside >= 1.0
    if margin <= 0:
        return full
    # the low faces of a superpatch are no padding: pad them as inside so erosion only eats from the padding
    k = np.ones((2 * margin + 1,) * 3, bool)
    out = np.empty_like(full)
    for i, f in enumerate(full):
        grown = np.pad(f, [(margin, 0)] * 3, constant_values=True)
        out[i] = binary_erosion(grown, k, border_value=1)[margin:, margin:, margin:] & f
    return out


@dataclass
class _Windows:
    e_model: np.ndarray  # (n, m, m, m)
    e_fill: np.ndarray
    kept: np.ndarray
    clipped: np.ndarray  # 0: neither end of the window clipped, 1: one end (air or bone), 2: both (interface)


def _windows(err: ScanErrors, w: int) -> _Windows:
    n, g = err.count.shape[0], err.count.shape[1]
    count = _window_sum(err.count, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        e_model = _window_sum(err.model_sq, w) / count
        e_fill = _window_sum(err.fill_sq, w) / count
    kept = _window_sum(_kept_cells(err.inside, PADDING_MARGIN_CELLS).astype(np.int32), w) == w ** 3
    kept &= count >= (err.cell * w) ** 3 / 2  # masked in at least half a seed on average
    m = g - w + 1
    pos = np.arange(m)
    away = (pos >= FACE_MARGIN_CELLS) & (pos <= m - 1 - FACE_MARGIN_CELLS)
    kept &= away[:, None, None] & away[None, :, None] & away[None, None, :]
    kept &= np.isfinite(e_model) & np.isfinite(e_fill)
    vox = float((err.cell * w) ** 3)
    dark = _window_sum(err.dark, w) / vox >= CLIP_FRACTION
    bright = _window_sum(err.bright, w) / vox >= CLIP_FRACTION
    return _Windows(e_model, e_fill, kept, dark.astype(np.int8) + bright.astype(np.int8))


def _strata(w: _Windows, edges) -> np.ndarray:
    b = _bin_of(np.nan_to_num(w.e_fill), edges)
    return b + N_BINS * w.clipped.astype(np.int64) if STRATIFY_CLIPPED else b


def _reference(windows: Sequence[_Windows]) -> dict[str, Any]:
    """Decile edges of the fill's error over the cohort's kept windows, the model error's median and MAD in
    each stratum, and the global MAD floor."""
    x = np.concatenate([w.e_fill[w.kept] for w in windows])
    y = np.concatenate([w.e_model[w.kept] for w in windows])
    if x.size == 0:
        return {"windows": 0}
    edges = np.quantile(x, np.linspace(0, 1, N_BINS + 1))
    st = np.concatenate([_strata(w, edges)[w.kept] for w in windows])
    n_strata = N_BINS * (3 if STRATIFY_CLIPPED else 1)
    floor = 1.4826 * float(np.median(np.abs(y - np.median(y))))
    b = _bin_of(x, edges)
    med, mad = np.zeros(n_strata), np.zeros(n_strata)
    for k in range(n_strata):
        sel = st == k
        if sel.sum() < MIN_STRATUM:  # too few windows: the fill-error bin alone
            sel = b == (k % N_BINS)
        med[k] = np.median(y[sel]) if sel.any() else np.median(y)
        mad[k] = 1.4826 * np.median(np.abs(y[sel] - med[k])) if sel.any() else 0.0
    return {"windows": int(x.size), "fill_mse_edges": edges.tolist(), "model_mse_median": med.tolist(),
            "model_mse_mad": mad.tolist(), "mad_floor": max(floor, 1e-12)}


def _bin_of(x: np.ndarray, edges) -> np.ndarray:
    inner = np.asarray(edges)[1:-1]
    return np.clip(np.searchsorted(inner, x, side="right"), 0, N_BINS - 1)


def _z(w: _Windows, ref: dict[str, Any]) -> np.ndarray:
    out = np.full(w.e_model.shape, -np.inf)
    if not ref.get("windows"):
        return out
    b = _strata(w, ref["fill_mse_edges"])
    med, mad = np.asarray(ref["model_mse_median"])[b], np.asarray(ref["model_mse_mad"])[b]
    z = (w.e_model - med) / np.maximum(mad, ref["mad_floor"])
    out[w.kept] = z[w.kept]
    return out


# ---- the command's core ------------------------------------------------------------------------------
@dataclass
class _Scored:
    scan: CohortScan
    prepared: Any
    errors: ScanErrors
    windows: _Windows


def _geometry(prepared):
    """What the ranking needs of a prepared scan, without its voxels: the grid (mapped to the scan), the
    spacing and where it came from."""
    import dataclasses
    from types import SimpleNamespace

    from ..data import SuperpatchGrid

    pre = dataclasses.replace(prepared.pre, array=np.zeros((0, 0, 0), np.float32))
    grid = SuperpatchGrid(prepared.grid.shape, prepared.grid.superpatch, mapping=pre)
    return SimpleNamespace(grid=grid, pre=pre, spacing_source=prepared.spacing_source)


def _psnr(sq: float, n: float) -> float | None:
    if n <= 0:
        return None
    mse = sq / n
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def _as_source(item) -> tuple[CohortScan, Any]:
    """(entry, prepared scan or None) for a path / CohortScan / train.scan.PreparedScan."""
    if all(hasattr(item, a) for a in ("volume", "pre", "grid")):
        src = item.volume.source
        return CohortScan(Path(str(src)) if src is not None else Path(item.name)), item
    if isinstance(item, CohortScan):
        return item, None
    raise TypeError(item)


def _expand(sources) -> list[tuple[CohortScan, Any]]:
    if isinstance(sources, (str, os.PathLike)) or all(hasattr(sources, a) for a in ("volume", "pre", "grid")):
        sources = [sources]
    out: list[tuple[CohortScan, Any]] = []
    paths: list = []

    def flush() -> None:
        if paths:
            out.extend((s, None) for s in cohort_scans(paths))
            paths.clear()

    for item in sources:
        if isinstance(item, (str, os.PathLike)):
            paths.append(item)
            continue
        flush()
        out.append(_as_source(item))
    flush()
    if not out:
        raise NemesisInputError("triage: no scans given")
    return out


def triage(
    sources,
    model: NemesisMAE,
    strategy: str = DEFAULT_STRATEGY,
    ratio: float = 0.75,
    seeds: int = 3,
    seed: int = 0,
    spacing_zyx=None,
    batch: int = 2,
    device: str = "auto",
    bf16: bool = False,
    min_inside: float = 0.25,
    checkpoint: str | os.PathLike | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """Rank every superpatch of ``sources`` by surprise (the module docstring defines the score).

    ``sources``: scan files, folders of scans, labelling projects or dataset folders (``cohort.cohort_scans``),
    or ``train.scan.PreparedScan`` objects (used as they are: the viewer's open scans), in any mix. Scans
    are prepared at ``spacing_zyx`` (None: the checkpoint's pretraining spacing). ``progress`` gets a
    ``stage`` event per scan and a ``step`` per superpatch and seed; ``cancel`` is polled before each
    batch. Returns plain JSON-able data: ``ranking`` (highest score first; unscored superpatches last),
    ``scans``, the settings (``mask``, ``ratio``, ``seeds``, ``checkpoint``, ...) and ``score_definition``.
    """
    from .runtime import resolve_device
    from .scan import prepare_for_model

    check_strategy(strategy)
    if not 0 < ratio < 1:
        raise NemesisInputError(f"mask ratio {ratio} must be in (0, 1)")
    if int(seeds) < 1:
        raise NemesisInputError(f"seeds {seeds} must be >= 1")
    if not 0 <= float(min_inside) <= 1:
        raise NemesisInputError(f"min_inside {min_inside} must be in [0, 1]")
    if int(seed) < 0 or int(seed) + int(seeds) > 2 ** 63:
        raise NemesisInputError(f"seed {seed} must be in 0..2^63-1 (with {seeds} seeds after it)")
    items = _expand(sources)
    seed_list = list(range(int(seed), int(seed) + int(seeds)))
    w = max(1, model.cfg.patch // _cell_size(model.cfg.patch))  # cells per window: one patch
    scored: list[_Scored] = []
    for k, (entry, prepared) in enumerate(items):
        check_cancel(cancel, "triage")
        emit(progress, "stage", name=f"scan {k + 1}/{len(items)}: {os.path.basename(entry.name)}", scan=entry.name,
             index=k, scans=len(items))
        if prepared is None:
            prepared = prepare_for_model(entry.path, model, spacing_zyx)
        total = prepared.grid.n * len(seed_list)
        done = 0

        def step(s: int, i: int) -> None:
            nonlocal done
            done += 1
            emit(progress, "step", step=done, total=total, stage=os.path.basename(entry.name), scan=entry.name,
                 superpatch=i, seed=s)

        emit(progress, "start", step=0, total=total, scan=entry.name)
        errors = scan_errors(prepared, model, strategy, ratio, seed_list, batch, device, bf16, cancel, step)
        scored.append(_Scored(entry, _geometry(prepared), errors, _windows(errors, w)))
        del prepared  # only the geometry is kept: a cohort is scored one scan in memory at a time
    ref = _reference([s.windows for s in scored])
    ranking: list[dict[str, Any]] = []
    unscored: list[dict[str, Any]] = []
    for s in scored:
        z = _z(s.windows, ref)
        for i in range(s.prepared.grid.n):
            row = _row(s, i, z[i], w, min_inside)
            (ranking if row["score"] is not None else unscored).append(row)
    ranking.sort(key=lambda r: -r["score"])
    return {
        "ranking": ranking + unscored,
        "scans": [{**s.scan.as_json(), "superpatches": s.prepared.grid.n, "grid": list(s.prepared.grid.grid_shape),
                   "spacing_zyx": list(s.prepared.pre.spacing_zyx), "spacing_source": s.prepared.spacing_source}
                  for s in scored],
        "mask": strategy, "ratio": float(ratio), "seeds": seed_list,
        "checkpoint": str(checkpoint) if checkpoint else (str(model.checkpoint_path) if model.checkpoint_path else None),
        "min_inside": float(min_inside), "window_voxels": int(_cell_size(model.cfg.patch) * w),
        "score_definition": SCORE_DEFINITION,
        "reference": {"windows": ref.get("windows", 0), "bins": N_BINS,
                      **({k: ref[k] for k in ("fill_mse_edges", "model_mse_median", "model_mse_mad", "mad_floor")}
                         if ref.get("windows") else {})},
        "device": str(resolve_device(device)),
    }


def _row(s: _Scored, i: int, z: np.ndarray, w: int, min_inside: float) -> dict[str, Any]:
    grid, pre = s.prepared.grid, s.prepared.pre
    e = s.errors
    ob = grid.box_original(i)
    row: dict[str, Any] = {
        **s.scan.as_json(), "superpatch": i, "score": None, "grid_zyx": list(grid.grid_index(i)),
        "inside_fraction": round(float(e.superpatch_inside[i]), 4),
        "psnr": _psnr(float(e.model_sq[i].sum()), float(e.count[i].sum())),
        "baseline_psnr": _psnr(float(e.fill_sq[i].sum()), float(e.count[i].sum())),
        "bbox_zyx": [list(ob.start), list(ob.stop)],
        "centre_zyx": [round((a + b - 1) / 2, 1) for a, b in zip(ob.start, ob.stop)],
    }
    if e.superpatch_inside[i] < min_inside:
        row["reason"] = f"less than {min_inside:g} of the superpatch lies inside the scan"
        return row
    if not np.isfinite(z).any():
        row["reason"] = "no patch-sized window lies far enough inside the scan and the superpatch"
        return row
    j = np.unravel_index(int(np.argmax(z)), z.shape)
    row["score"] = round(float(z[j]), 4)
    centre = np.asarray(grid.box(i).start, float) + (np.asarray(j, float) + w / 2) * e.cell - 0.5  # preprocessed voxels
    hom = np.append(centre, 1.0)
    row["hotspot_zyx"] = [round(float(v), 1) for v in (pre.to_source @ hom)[:3]]
    row["hotspot_world_xyz"] = [round(float(v), 1) for v in (pre.affine @ hom)[:3]]
    row["model_mse"] = round(float(s.windows.e_model[i][j]), 6)
    row["fill_mse"] = round(float(s.windows.e_fill[i][j]), 6)
    return row


def print_ranking(result: dict[str, Any], top: int = 10, file=None) -> None:
    """The ``top`` entries of :func:`triage`'s ranking as a short table (what ``nemesis triage`` prints)."""
    import sys

    out = file or sys.stdout
    rows = result["ranking"][:top] if top else result["ranking"]
    names = [os.path.basename(r["scan"]) for r in rows]
    width = max([len("scan")] + [len(n) for n in names])
    print(f"{'rank':>4}  {'scan':<{width}}  {'superpatch':>10}  {'score':>7}  {'PSNR':>6}  {'fill':>6}  hotspot z y x",
          file=out)
    for k, (r, name) in enumerate(zip(rows, names), start=1):
        score = "-" if r["score"] is None else f"{r['score']:.2f}"
        psnr = "-" if r["psnr"] is None else f"{r['psnr']:.1f}"
        fill = "-" if r["baseline_psnr"] is None else f"{r['baseline_psnr']:.1f}"
        where = " ".join(f"{v:g}" for v in r["hotspot_zyx"]) if "hotspot_zyx" in r else r.get("reason", "")
        print(f"{k:>4}  {name:<{width}}  {r['superpatch']:>10}  {score:>7}  {psnr:>6}  {fill:>6}  {where}", file=out)
