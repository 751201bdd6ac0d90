"""Whole-scan inference, streamed superpatch by superpatch: organ probabilities and reconstruction.

A scan is read, resampled and windowed once (``data.preprocess``), cut into non-overlapping
superpatches (``data.SuperpatchGrid``), and processed a small batch at a time, so memory stays at
the volume plus a few superpatches. Results go back onto the scan's own voxel grid and affine.

The spacing defaults to the one the weights were trained at (:func:`recorded_spacing`): a probe
applied at another spacing sees other anatomy per superpatch than it learned from.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path
from ..data.preprocess import HU_WINDOW
from ..errors import NemesisCheckpointError, NemesisInputError
from ..model import NemesisMAE, make_mask
from .events import CancelFn, ProgressFn, check_cancel, emit
from ..data.spacing import Spacing, recorded_spacing  # recorded_spacing re-exported: its home is data/spacing.py
from .probe import ProbeModel, check_probe_matches
from .runtime import autocast, resolve_device

HU_LO, HU_HI = HU_WINDOW  # the model's window (data.preprocess), under the names callers import


def to_hu(windowed: np.ndarray) -> np.ndarray:
    """Window units [0, 1] back to HU (inside the window; the window's clipping is not undone)."""
    return (np.asarray(windowed, dtype=np.float32) * (HU_HI - HU_LO) + HU_LO).astype(np.float32)


def _batches(iterable, size: int):
    buf = []
    for item in iterable:
        buf.append(item)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def _load_scan(scan):
    from ..data import Volume, check_ct, read_volume

    return check_ct(scan if isinstance(scan, Volume) else read_volume(scan))


def spacing_origin(source: str, model=None, probe=None) -> str:
    """Where a spacing came from, for messages: ``"recorded in probe.safetensors"``, ``"given"``, ..."""
    if source == "probe":
        return f"recorded in {probe or 'the probe head'}"
    if source == "checkpoint":
        return f"recorded in {getattr(model, 'checkpoint_path', None) or 'the checkpoint'}"
    return {"given": "given", "default": "the default"}.get(source, source)


def check_output(values, what: str, model=None, probe=None) -> None:
    """Refuse (one line) NaN / Inf model outputs instead of reporting them as results."""
    arr = np.asarray(values)
    if arr.size and not np.isfinite(arr).all():
        names = " and ".join(str(p) for p in (getattr(model, "checkpoint_path", None), probe) if p) or "the model"
        raise NemesisCheckpointError(f"{names}: {what} are NaN or Inf for this scan; the weights or the input are "
                                     "broken")


def _same_spacing(a, b) -> bool:
    return Spacing.parse(a).close_to(b)


def _spacing_for(spacing_zyx, model, head_meta=None, probe=None):
    if spacing_zyx is None:
        return recorded_spacing(model, head_meta, probe)
    return Spacing.parse(spacing_zyx).value, "given"


# ---- organ probabilities ---------------------------------------------------------------------
@dataclass
class InferResult:
    volume: Any  # data.Volume
    grid: Any  # data.SuperpatchGrid, mapped to the scan
    probabilities: np.ndarray  # (n_superpatches, K)
    organs: list[str]
    threshold: float = 0.5
    info: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One row per superpatch: index, grid position, voxel box (scan's canonical z,y,x), world
        box (RAS+ mm min/max corners) clipped to the scan, and one probability per organ.

        The world box is the superpatch's part of the scan, not of the padding beyond it (the
        column names say so: ``world_min_xyz_clipped``, ``world_max_xyz_clipped``)."""
        out = []
        for i in range(self.grid.n):
            vb = self.grid.box_original(i)
            corners = self.grid.box_world(i, clip=True)
            lo, hi = corners.min(0), corners.max(0)
            row = {"superpatch": i, "grid_zyx": "x".join(map(str, self.grid.grid_index(i))),
                   "voxel_start_zyx": " ".join(map(str, vb.start)), "voxel_stop_zyx": " ".join(map(str, vb.stop)),
                   "world_min_xyz_clipped": " ".join(f"{v:.1f}" for v in lo),
                   "world_max_xyz_clipped": " ".join(f"{v:.1f}" for v in hi)}
            row.update({o: round(float(p), 5) for o, p in zip(self.organs, self.probabilities[i])})
            out.append(row)
        return out

    def probability_map(self, k: int) -> np.ndarray:
        """Organ ``k``'s probability painted on each superpatch's voxels of the original scan."""
        out = np.zeros(self.volume.shape, dtype=np.float32)
        for i in range(self.grid.n):
            out[self.grid.box_original(i).slices] = self.probabilities[i, k]
        return out


def infer_scan(
    scan,
    model: NemesisMAE,
    head,
    organs: list[str],
    spacing_zyx=None,
    threshold: float = 0.5,
    batch: int = 2,
    device: str = "auto",
    bf16: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> InferResult:
    """Per-superpatch organ probabilities for a whole scan (path, ``data.Volume``, or a prepared
    ``train.scan.PreparedScan``, used as it is: no second read or resampling).

    A head that records another encoder than ``model``'s (``head.meta["encoder_sha256"]``) is
    refused (:func:`~.probe.check_probe_matches`). ``spacing_zyx=None``: the spacing the head was
    trained at, else the checkpoint's, else the default (:func:`recorded_spacing`).
    """
    from ..data import SuperpatchGrid, preprocess

    width = head.norm.normalized_shape[0]
    if width != model.cfg.embed_dim:
        raise NemesisCheckpointError(f"probe head expects {width}-wide features but the model gives {model.cfg.embed_dim}; "
                                     "use the head trained for this checkpoint")
    head_meta = getattr(head, "meta", None)
    check_probe_matches(model, head_meta, probe=getattr(head, "path", None))
    prepared = scan if all(hasattr(scan, a) for a in ("volume", "pre", "grid")) else None  # a train.scan.PreparedScan
    if prepared is not None:
        if spacing_zyx is not None and not Spacing.parse(spacing_zyx).close_to(prepared.pre.spacing_zyx):
            raise NemesisInputError(f"{prepared.name}: prepared at {prepared.pre.spacing_zyx} (z, y, x), not at the "
                                    f"asked {Spacing.parse(spacing_zyx).value}; prepare it again or leave spacing_zyx out")
        if prepared.grid.superpatch != model.cfg.superpatch:
            raise NemesisInputError(f"{prepared.name}: prepared for {prepared.grid.superpatch}^3 superpatches, the "
                                    f"model's are {model.cfg.superpatch}^3")
        spacing_zyx = prepared.pre.spacing_zyx
    spacing, spacing_source = _spacing_for(spacing_zyx, model, head_meta, getattr(head, "path", None))
    trained_at, source = recorded_spacing(model, head_meta, getattr(head, "path", None))
    if spacing_source == "given" and source == "probe" and not _same_spacing(spacing, trained_at):
        import warnings

        from ..data import NemesisDataWarning

        warnings.warn(f"{getattr(head, 'path', None) or 'the probe head'} was trained at spacing {trained_at} (z, y, x) "
                      f"but is applied at {spacing}: its probabilities may not mean what they did in training",
                      NemesisDataWarning, stacklevel=2)
    dev = resolve_device(device)
    if prepared is not None:            # read and resampled once, by the caller (the viewer)
        vol, pre, grid = prepared.volume, prepared.pre, prepared.grid
        spacing_source = prepared.spacing_source
    else:
        vol = _load_scan(scan)
        emit(progress, "stage", name="preprocess")
        pre = preprocess(vol, spacing, spacing_source=spacing_origin(spacing_source, model, getattr(head, "path", None)))
        grid = SuperpatchGrid.for_preprocessed(pre, model.cfg.superpatch)
    net = ProbeModel(model, head).to(dev).eval()
    probs = np.zeros((grid.n, len(organs)), dtype=np.float32)
    emit(progress, "start", step=0, total=grid.n)
    with torch.inference_mode():
        for chunk in _batches(grid.iter_superpatches(pre.array), batch):
            check_cancel(cancel, "inference")
            x = torch.from_numpy(np.stack([p for _, _, p in chunk]))[:, None].to(dev)
            with autocast(dev, bf16):
                logits = net(x)
            idx = [i for i, _, _ in chunk]
            p = torch.sigmoid(logits.float()).cpu().numpy()
            check_output(p, "organ probabilities", model, getattr(head, "path", None))
            probs[idx] = p
            emit(progress, "step", step=idx[-1] + 1, total=grid.n)
    info = {"shape_zyx": list(vol.shape), "spacing_zyx": list(pre.spacing_zyx), "spacing_source": spacing_source,
            "grid": list(grid.grid_shape), "superpatches": grid.n}
    return InferResult(vol, grid, probs, list(organs), threshold, info)


def write_infer_outputs(result: InferResult, out_dir: str | os.PathLike, stem: str | None = None) -> dict[str, Any]:
    """CSV of per-superpatch probabilities and one NIfTI probability map per organ, on the scan's grid."""
    from ..data import write_volume

    out_dir = Path(out_dir)
    try:
        return _write_infer_outputs(result, out_dir, stem)
    except OSError as exc:
        raise NemesisInputError(f"{out_dir}: cannot write the outputs ({output_reason(exc)})") from None


def output_reason(exc: OSError) -> str:
    """An OSError as a short reason (``No space left on device``, ``Read-only file system``, ...)."""
    reason = exc.strerror or " ".join(str(exc).split()) or exc.__class__.__name__
    return f"{reason}: {exc.filename}" if exc.filename is not None and exc.strerror else reason


def _write_infer_outputs(result: InferResult, out_dir: Path, stem: str | None) -> dict[str, Any]:
    from ..data import write_volume

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or scan_stem(result.volume.source)
    rows = result.rows()
    csv_path = out_dir / f"{stem}_organs.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()) if rows else ["superpatch"])
        w.writeheader()
        w.writerows(rows)
    maps = {}
    for k, organ in enumerate(result.organs):
        path = out_dir / f"{stem}_prob_{organ.replace(' ', '_')}.nii.gz"
        write_volume(result.probability_map(k), path, reference=result.volume)
        maps[organ] = str(path)
    return {"csv": str(csv_path), "maps": maps}


def scan_stem(source) -> str:
    """A scan's file name without its image extension (``scan`` for arrays made in memory)."""
    from ..data.formats import scan_stem as strip_scan_suffix

    return strip_scan_suffix(Path(str(source)).name) if source else "scan"


# ---- reconstruction --------------------------------------------------------------------------
class ReconMetrics:
    """Running PSNR / SSIM over masked patches and over all voxels, superpatch by superpatch.

    PSNR: data range 1 (window units). SSIM: scikit-image's definition (7^3 uniform window,
    K1 = 0.01, K2 = 0.03) computed within each superpatch and averaged over voxels. Voxels in the
    padding beyond the scan are excluded.
    """

    def __init__(self) -> None:
        self.sq = {"masked": 0.0, "all": 0.0}
        self.ssim = {"masked": 0.0, "all": 0.0}
        self.n = {"masked": 0, "all": 0}
        self.n_ssim = {"masked": 0, "all": 0}  # voxels whose SSIM was added (all of them unless ssim=False)

    def add(self, clean: np.ndarray, recon: np.ndarray, masked_voxels: np.ndarray, valid: tuple[slice, ...],
            ssim: bool = True) -> None:
        """Add one superpatch; ``ssim=False`` adds its squared errors only (SSIM, the costly part, stays
        out: ``result()`` then reports ``ssim_*`` None unless other superpatches brought it)."""
        err = (clean.astype(np.float64) - recon.astype(np.float64)) ** 2
        sel_all = np.zeros(clean.shape, dtype=bool)
        sel_all[valid] = True
        smap = None
        if ssim:
            from skimage.metrics import structural_similarity

            _, smap = structural_similarity(clean.astype(np.float64), recon.astype(np.float64), data_range=1.0,
                                            full=True)
        for key, sel in (("all", sel_all), ("masked", sel_all & masked_voxels)):
            self.sq[key] += float(err[sel].sum())
            self.n[key] += int(sel.sum())
            if smap is not None:
                self.ssim[key] += float(smap[sel].sum())
                self.n_ssim[key] += int(sel.sum())

    def result(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for key in ("masked", "all"):
            n = self.n[key]
            mse = self.sq[key] / n if n else None
            out[f"psnr_{key}"] = (float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))) if mse is not None else None
            n_ssim = self.n_ssim[key]
            out[f"ssim_{key}"] = self.ssim[key] / n_ssim if n_ssim else None
        return out


def reconstruct_superpatches(
    model: NemesisMAE,
    items,
    strategy: str,
    ratio: float,
    noise: float,
    seed: int,
    device: torch.device,
    batch: int = 2,
    bf16: bool = False,
    cancel: CancelFn | None = None,
):
    """For each ``(index, clean (S,S,S))``, yield ``(index, clean, noisy, masked_input, recon, masked_voxels)``.

    Superpatch i's mask and noise come from a generator seeded with (seed, i): reproducible and
    independent of batching. The mask is drawn first, so the noise level never changes the mask.
    """
    s, p = model.cfg.superpatch, model.cfg.patch
    model = model.to(device).eval()
    with torch.inference_mode():
        for chunk in _batches(items, batch):
            check_cancel(cancel, "reconstruction")
            clean = np.stack([c for _, c in chunk]).astype(np.float32)
            noisy = clean.copy()
            masks = []
            for j, (i, _) in enumerate(chunk):
                g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, int(i)]).generate_state(1)[0]))
                masks.append(make_mask(strategy, model.grid, ratio, batch=1, generator=g))
                if noise > 0:
                    noisy[j] += noise * torch.randn(clean.shape[1:], generator=g).numpy()
            mask = torch.cat(masks)
            x = torch.from_numpy(noisy)[:, None].to(device)
            with autocast(device, bf16):
                rec = model.reconstruct(x, mask.to(device))
            rec = rec.float().cpu().numpy()[:, 0]
            g = s // p
            vox = mask.view(-1, g, g, g).numpy().repeat(p, 1).repeat(p, 2).repeat(p, 3)
            for j, (i, _) in enumerate(chunk):
                masked_input = np.where(vox[j], 0.0, noisy[j]).astype(np.float32)
                yield i, clean[j], noisy[j], masked_input, rec[j], vox[j]


__all__ = ["infer_scan", "write_infer_outputs", "scan_stem", "spacing_origin", "check_output", "reconstruct_superpatches", "ReconMetrics",
           "InferResult", "to_hu", "recorded_spacing"]
